// A resident shell on the VM: one long-lived exec channel that runs scripts
// sent to it, one after another.
//
// Why: every new exec channel costs a round of channel setup and a login
// shell on the VM (tens to hundreds of milliseconds, more where the login
// shell's startup files are heavy). Sync's incremental targets need a few
// milliseconds of overhead, so sync runs its VM-side scripts here: the only
// process started per request is a plain `sh`.
//
// Wire format (engine -> VM): "<script bytes> <stdin bytes>\n", the script,
// then its stdin. (VM -> engine): "R <exit code> <stdout bytes> <stderr
// bytes>\n", then stdout, then stderr. The VM buffers a request's output in
// a temporary directory, so the sizes are known before the bytes are sent.
// Everything the VM sends is untrusted: headers are parsed strictly and
// sizes are bounded; anything malformed kills the shell and fails every
// pending request.
//
// Thread-safe: `run` may be called from any thread; `done` callbacks run on
// the transport's I/O thread, in request order.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include <caf/error.hpp>

#include "engine/transport.hpp"

namespace aloft {

class resident_shell : public std::enable_shared_from_this<resident_shell> {
public:
  /// Exit code and output of one script; `err` set when the shell itself
  /// failed (connection lost, malformed answer).
  using done_fn = std::function<void(const caf::error& err, int code, std::string out,
                                     std::string err_text)>;

  /// Starts the shell on `t`. `max_output` bounds one answer's stdout +
  /// stderr.
  static std::shared_ptr<resident_shell> start(std::shared_ptr<transport> t,
                                               uint64_t max_output);

  ~resident_shell();

  /// Queues `script` with `input` as its stdin.
  void run(std::string script, std::string input, done_fn done);

  /// Whether the shell still runs (false once it failed or was closed).
  bool alive() const;

  /// Bytes sent to and received from the VM so far (for progress).
  uint64_t bytes_out() const;
  uint64_t bytes_in() const;

  /// Ends the shell; pending requests fail with `cancelled`.
  void close();

  /// The loop the VM runs (exposed for tests).
  static std::string loop_command();

private:
  resident_shell(uint64_t max_output);
  void on_stdout(std::string_view bytes);
  void on_exit(const caf::error& err, int code);
  void fail_all(const caf::error& err);
  void kill(const caf::error& err);

  mutable std::mutex mtx_;
  std::shared_ptr<channel> ch_;
  std::deque<done_fn> pending_;
  bool dead_ = false;
  uint64_t max_output_;
  // Parser state, touched on the I/O thread only.
  std::string buf_;
  bool in_body_ = false;
  int code_ = 0;
  uint64_t out_size_ = 0;
  uint64_t err_size_ = 0;
};

} // namespace aloft
