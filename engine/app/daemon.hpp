// aloft::daemon - serves the JSON-lines protocol (protocol.hpp) on a Unix
// socket, for the `aloft` command line and any other local client.
//
// CAF 0.17's network layer has no Unix sockets, so the daemon runs its own
// poll() loop on the thread that calls `run()`: non-blocking sockets, an input
// and an output buffer per client, many clients at once. Plain requests go
// through `handle_request`, synchronously on that thread (engine calls are
// short). Streaming requests (`logs` and `events` with `follow`) subscribe to
// the engine; subscriber callbacks arrive on engine threads, so they only
// queue the event under a mutex and wake the loop through an eventfd.
//
// Long ops (`sync_up`, `sync_down`, `sync_state`; see `pace_of`) would
// stall every client for seconds or minutes, so their arguments are checked
// on the loop and the engine call runs on a small fixed pool of worker
// threads with a bounded queue (a full queue is refused with
// `resource_exhausted`): one pool for transfers, one for checks, so a
// `sync_state` never waits behind a long sync. The
// worker posts the reply to the same eventfd-woken queue the subscribers
// use, and the loop sends it to the client if that client is still
// connected; a client that left gets nothing, and the sync itself runs to
// its end (the engine has no cancel). `run()` returns only after the syncs
// that are running have ended: the engine may be writing into a worktree.
// Jobs still queued at shutdown are dropped unanswered.
//
// The socket file is created 0600 (the umask is narrowed around bind, then
// the file is chmod-ed before listen), and only peers of the same user (or
// root) are served.
//
// Concurrency contract: `listen`, `run` and the destructor are called from
// one thread; `stop` from any thread and from a signal handler. The engine
// must outlive the daemon (its worker threads are joined before `run()` or
// the destructor returns).
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "engine/app/api.hpp"

namespace aloft {

struct daemon_options {
  /// Connections beyond this are refused with `resource_exhausted`.
  size_t max_clients = 256;
  /// A client that lets this much unread output pile up (a follow stream it
  /// does not read) is disconnected, so it cannot grow the daemon unbounded.
  size_t max_output_bytes = size_t{64} << 20;
  /// Events queued by subscribers between two turns of the loop; beyond it
  /// events are dropped (a `logs` stream refills what it missed from the
  /// log file).
  size_t max_queued_events = 65536;
  /// Worker threads for transfers (sync_up, sync_down); the most that run
  /// at once. Started on first use.
  size_t worker_threads = 2;
  /// Worker threads for checks (sync_state).
  size_t check_threads = 2;
  /// Long ops waiting for a worker, per pool; one more is refused with
  /// `resource_exhausted`.
  size_t max_queued_jobs = 64;
  /// Where the daemon reports what a person running it may want to know
  /// (stale socket replaced, client dropped). Never carries secrets.
  std::function<void(const std::string&)> log;
};

class daemon {
public:
  daemon(engine& e, std::string socket_path, daemon_options opts = {});
  ~daemon();

  daemon(const daemon&) = delete;
  daemon& operator=(const daemon&) = delete;

  /// Creates the listening socket. A stale socket file (nobody answers) is
  /// replaced. Errors: already_exists when another daemon answers on the
  /// path; failed_precondition when the path exists and is not a socket;
  /// invalid_argument when the path is too long for a Unix socket; errno
  /// failures naming the call.
  caf::error listen();

  /// Serves clients until `stop()`; then closes every connection, ends every
  /// subscription and removes the socket file. REQUIRES: `listen()`
  /// succeeded. Errors: poll() itself failed.
  caf::error run();

  /// Makes `run()` return soon. Thread-safe and async-signal-safe.
  void stop();

  /// Makes the loop reload settings.json soon (engine::reload), logging what
  /// changed and every problem. Thread-safe and async-signal-safe (SIGHUP).
  void reload();

  const std::string& socket_path() const;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

/// Connects to the daemon's socket at `path` (blocking, close-on-exec).
/// Errors: not_found when no socket file exists, unavailable when the file
/// exists but nobody answers (a stale socket), invalid_argument when the
/// path is too long; other errno failures.
caf::expected<int> connect_unix_socket(const std::string& path);

} // namespace aloft
