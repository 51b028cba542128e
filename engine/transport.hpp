// The transport seam: run commands on a VM and stream bytes in and out.
//
// A transport is one long-lived connection to one VM (for SSH: one
// authenticated session, multiplexing channels). Everything is asynchronous:
// calls return at once and callbacks run later on the transport's I/O thread,
// never on the caller's. Callbacks must be cheap and must not block: actors
// turn them into messages. Implementations are thread-safe.
//
// Implementations: `ssh_transport` (libssh2, engine/ssh_transport.hpp) and a
// scripted fake in tests/support.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace aloft {

/// Where a VM's SSH server is and how to trust and log in to it.
struct ssh_endpoint {
  std::string host;
  uint16_t port = 22;
  std::string user;
  std::string client_key_path;  // private key file (0600) of the session
  std::string host_public_key;  // pinned "ssh-ed25519 AAAA..." line
};

struct exec_callbacks {
  /// Bytes the command wrote to stdout / stderr, in order.
  std::function<void(std::string_view)> on_stdout;
  std::function<void(std::string_view)> on_stderr;
  /// Called exactly once: with the exit code, or with an error when the
  /// channel or connection failed (then `exit_code` is -1).
  std::function<void(const caf::error& err, int exit_code)> on_exit;
};

/// A running command.
class channel {
public:
  virtual ~channel() = default;
  /// Queues `bytes` for the command's stdin.
  virtual void write(std::string bytes) = 0;
  /// Sends EOF on stdin once everything queued has been written.
  virtual void close_stdin() = 0;
  /// Ends the command; `on_exit` still runs (with `cancelled`).
  virtual void cancel() = 0;
  /// Bytes read from the command so far (stdout + stderr); for progress and
  /// for tests that check how much moved.
  virtual uint64_t bytes_in() const = 0;
  virtual uint64_t bytes_out() const = 0;
};

class transport {
public:
  virtual ~transport() = default;
  /// Starts `command` (a shell command line run by the VM's login shell).
  virtual std::shared_ptr<channel> exec(std::string command, exec_callbacks cb) = 0;
  /// Closes the connection; running channels end with `cancelled`.
  virtual void close() = 0;
  /// Whether the connection is still up.
  virtual bool is_open() const = 0;
};

class transport_factory {
public:
  virtual ~transport_factory() = default;
  using connect_callback
    = std::function<void(caf::expected<std::shared_ptr<transport>>)>;
  /// Connects, checks the host key against `ep.host_public_key` (a mismatch
  /// is `permission_denied` saying so) and authenticates with the session's
  /// key. `done` runs once, on the I/O thread.
  virtual void connect(const ssh_endpoint& ep, connect_callback done) = 0;
};

} // namespace aloft
