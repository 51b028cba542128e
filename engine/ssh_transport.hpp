// The SSH transport: libssh2 sessions driven by one I/O thread.
//
// Why: every VM with raw TCP (local, Fly, Modal) is reached over SSH, and the
// engine keeps one long-lived authenticated session per VM session (a fresh
// connection costs tens of milliseconds; a channel on an open one much less).
// The number of threads must not grow with the number of sessions, so all
// sessions and all their channels are non-blocking libssh2 objects driven by
// a single poll() loop.
//
// Concurrency contract:
// - `ssh_io_loop` owns exactly one thread. Every libssh2 object is touched
//   only on that thread.
// - `connect`, and every method of the `transport` and `channel` objects it
//   hands out, may be called from any thread: they queue work for the loop
//   and wake it, and return at once.
// - Every callback (connect's `done`, `on_stdout`, `on_stderr`, `on_exit`)
//   runs on the I/O thread, except when the loop has already shut down: then
//   `on_exit(cancelled)` / `done(cancelled)` run on the caller's thread.
//   Callbacks must be cheap and must not block; they may call back into the
//   transport (that only queues work).
// - Dropping the last reference to a transport closes the connection; a
//   channel object keeps its transport alive.
// - Destroying the loop ends every channel with `cancelled`, fails pending
//   connects with `cancelled`, closes every session and joins the thread.
//
// Host keys are pinned: `ssh_endpoint::host_public_key` must be set, and a
// server presenting another key is refused with `permission_denied`. There is
// no trust on first use.
//
// Stdin written with `channel::write` is queued without a bound; callers that
// stream large inputs pace themselves with `bytes_out()`.
//
// A session with no channel reads nothing (libssh2 reads only on behalf of a
// channel); it only watches for the server hanging up, and TCP keepalives
// notice a server that vanished. So servers must not rely on the client
// answering their own keepalive probes (sshd's ClientAliveInterval) while a
// session is idle.
//
// A command killed by a signal exits with 128 + the signal's number, as in a
// shell; `on_exit` carries an error only when the channel or the connection
// failed (`unavailable`), or on cancel/close/shutdown (`cancelled`).
//
// Cancelling a channel closes it; sshd then closes the command's pipes, but
// libssh2 1.10 cannot send a signal, so a command that neither reads nor
// writes (`sleep`) runs on until it ends by itself.
//
// A session's exec cost is mostly the remote login shell's start-up: sshd
// runs every command through the user's shell and rc files.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <thread>

#include "engine/transport.hpp"

namespace aloft {

class executor;

struct ssh_options {
  /// Bound on TCP connect + key exchange + authentication.
  std::chrono::milliseconds connect_timeout{15000};
  /// Receive window of each exec channel. Large windows keep a fast stream
  /// from stalling on window adjustments (see reference/performance.md).
  uint32_t window_size = 16u << 20;
  /// Size of each read from a channel.
  size_t read_chunk = 1u << 20;
  /// SO_SNDBUF of each socket; 0 keeps the system's (auto-tuned) size.
  /// Tests shrink it to force sends that block mid-packet.
  int socket_send_buffer = 0;
  /// Where blocking DNS lookups run. Numeric addresses never block; with no
  /// executor, names are resolved on the I/O thread.
  std::shared_ptr<executor> resolver;
};

namespace detail {
class ssh_loop_core;
} // namespace detail

/// The SSH transport factory: one I/O thread for any number of sessions.
class ssh_io_loop final : public transport_factory {
public:
  explicit ssh_io_loop(ssh_options opts = {});
  /// Ends every channel (`cancelled`), closes every session, joins the thread.
  ~ssh_io_loop() override;

  ssh_io_loop(const ssh_io_loop&) = delete;
  ssh_io_loop& operator=(const ssh_io_loop&) = delete;

  void connect(const ssh_endpoint& ep, connect_callback done) override;

  /// The I/O thread on which callbacks run (for tests and assertions).
  std::thread::id io_thread_id() const;

  /// Live sessions and channels, read from the I/O thread's last turn.
  size_t session_count() const;
  size_t channel_count() const;

private:
  std::shared_ptr<detail::ssh_loop_core> core_;
  std::thread thread_;
};

/// The production transport factory.
std::unique_ptr<transport_factory> make_ssh_transport_factory(ssh_options opts = {});

} // namespace aloft
