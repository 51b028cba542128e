// One non-blocking HTTP loop (libcurl multi) for every provider call.
//
// Why: a daemon with many sessions makes many small API calls; a thread per
// call (or a blocking call on a worker) does not scale, and connections to
// one API should be reused. One thread runs a curl multi handle; `send`
// queues a request from any thread and its callback runs later on the loop
// thread (it must not block: copy and hand over, as actors do).
//
// Retries are decided here, by the project's one retry policy
// (engine/retry.hpp): connection errors, 408, 429 and 5xx are retried with
// jittered exponential backoff up to `max_attempts`, and a `Retry-After`
// (seconds or an HTTP date) is honoured when it is longer than the backoff.
// A call that must not be repeated blindly (a create whose first attempt
// may have succeeded) sets `max_attempts = 1` and decides itself.
//
// Rate limits: calls naming the same `rate_key` (Fly: one per machine and
// action) are spaced by a token bucket of `rate_per_s` with `rate_burst`;
// a call waits for its token, it is never refused for it.
//
// Every answer, error or not, carries the provider's request id when the
// response had one (`request_id_header`), so errors can name it. Header
// values (tokens) never appear in errors or stats.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <caf/expected.hpp>

#include "providers/http/http_client.hpp"

namespace aloft {

struct http_call_options {
  /// Attempts in all, the first included; 1 = never retried.
  int max_attempts = 5;
  int64_t base_delay_ms = 200;
  int64_t max_delay_ms = 10'000;
  /// Which statuses are retried besides connection errors: 408, 429, 5xx.
  bool retry_408 = true;
  /// Calls with the same key share a token bucket; empty: no limit.
  std::string rate_key;
  double rate_per_s = 1.0;
  int rate_burst = 3;
  /// What the call is, for messages ("create machine for s-...").
  std::string what;
};

/// The outcome of a call: the last response (any status; the caller maps
/// statuses to errors with `error_from_status`), or a transport error after
/// the last attempt. `attempts` counts tries made; `request_id` is the
/// provider's id of the last response, if any.
struct http_outcome {
  caf::expected<http_response> response{caf::error{}};
  int attempts = 0;
  std::string request_id;
};

struct http_loop_stats {
  uint64_t requests = 0;       // attempts sent
  uint64_t retries = 0;        // attempts beyond the first
  uint64_t rate_waits = 0;     // calls that waited for a rate token
  uint64_t connections = 0;    // connections opened (reuse keeps it low)
  uint64_t in_flight = 0;
};

struct http_loop_options {
  /// Connections kept per host for reuse.
  long max_host_connections = 16;
  /// Header naming the provider's request id (Fly: "fly-request-id").
  std::string request_id_header = "fly-request-id";
};

class http_loop {
public:
  explicit http_loop(http_loop_options opts = {});
  /// Ends the loop: calls still pending are answered with `cancelled`, then
  /// the thread is joined. Do not destroy the loop from its own callback.
  ~http_loop();

  http_loop(const http_loop&) = delete;
  http_loop& operator=(const http_loop&) = delete;

  using done_fn = std::function<void(http_outcome)>;

  /// Sends `req` (its `timeout` bounds each attempt). Thread-safe.
  void send(http_request req, http_call_options opts, done_fn done);

  http_loop_stats stats() const;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace aloft
