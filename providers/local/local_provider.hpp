// The local provider: a "VM" is a sandbox directory with its own sshd on
// loopback.
//
// Why: it is the default provider, so the whole flow (keys, create, connect,
// sync, agent, destroy) runs on one machine with no cloud account, and the
// cloud emulators in tests reuse it for their "VMs".
//
// A sandbox `sandboxes_dir/<vm_id>/` holds:
//   tags.json        installation_id, session_id, idempotency_key, vm_id, port
//   sshd_config      written here; Port, ListenAddress 127.0.0.1, ...
//   host_key         the session's host key (0600), pinned by the engine
//   authorized_keys  the session's client public key
//   sshd.pid         written by sshd once it listens
//   sshd.log         sshd's own log (errors only)
//   work/            the agent's worktree (vm_info::workdir)
//   aloft/           the agent's log, pid and exit files, tmux socket
// sshd runs detached (own session, no inherited descriptors, minimal
// environment), so it outlives the engine the way a cloud VM does.
//
// Concurrency: thread-safe. Every call returns at once; the blocking work
// (files, process start, polling a port) runs on the executor given in the
// options, and callbacks run on that executor's threads.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "providers/provider.hpp"

namespace aloft {

class executor;

struct local_provider_options {
  /// Where sandboxes live (normally home_layout::sandboxes_dir()); created
  /// 0700 if missing.
  std::string sandboxes_dir;
  /// Runs the blocking work. When empty, the provider makes its own pool of
  /// two threads (then do not drop the provider's last reference inside one
  /// of its callbacks: the pool cannot join itself).
  std::shared_ptr<executor> exec;
  /// The OpenSSH server; must be an absolute path (sshd re-executes itself).
  std::string sshd_path = "/usr/sbin/sshd";
  /// Bound for sshd to listen (create) and to answer (wait_ready).
  std::chrono::milliseconds boot_timeout{10000};
  /// Bound for processes to exit after SIGTERM before SIGKILL (destroy).
  std::chrono::milliseconds stop_timeout{3000};
};

/// Makes a local provider. Nothing happens on disk until the first call;
/// `sandboxes_dir` is created (0700) by `create`.
std::shared_ptr<provider> make_local_provider(local_provider_options opts);

} // namespace aloft
