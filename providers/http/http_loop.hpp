// One non-blocking HTTP loop (libcurl multi) for every provider call.
//
// Why: a daemon with many sessions makes many small API calls; a thread per
// call (or a blocking call on a worker) does not scale, and connections to
// one API should be reused. One thread runs a curl multi handle; `send`
// queues a request from any thread and its callback runs later on the loop
// thread (it must not block: copy and hand over, as actors do).
//
// Retries are decided here, by the project's one retry policy
// (engine/retry.hpp): connection errors, attempts that timed out, 408, 429
// and 5xx are retried with jittered exponential backoff up to
// `max_attempts`, and a `Retry-After` (seconds or an HTTP date) is honoured
// when it is longer than the backoff and not longer than `max_delay_ms`
// (the policy ignores a longer one). A call that must not be repeated
// blindly (a create whose first attempt may have succeeded or timed out)
// sets `max_attempts = 1` and decides itself.
//
// Rate limits: calls naming the same `rate_key` (Fly: one per machine and
// action) are spaced by a token bucket of `rate_per_s` with `rate_burst`;
// every attempt (retries included) takes a token, waits for it in turn
// (first come, first served) on the loop's timers, and is never refused
// for it.
//
// Every answer, error or not, carries the provider's request id when the
// response had one (`request_id_header`), so errors can name it. Header
// values (tokens) never appear in errors or stats.
//
// Concurrency: `send` and `stats` are safe from any thread, callbacks
// included (a callback's `send` is queued, never run inline). Callbacks run
// on the loop thread, one at a time. Timers (backoff, rate tokens) are the
// loop's own: no thread ever sleeps for a call.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

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
/// statuses to errors with `error_from_status`), or an error after the last
/// attempt: unavailable, deadline_exceeded (transport, retried), data_loss
/// (a body over `max_http_body`, not retried), invalid_argument (a request
/// that cannot be sent; `attempts` is 0), cancelled (the loop ended). An
/// error's message reads "<what>: <url without query>: <cause>[; after <n>
/// attempts][; request id <id>]".
/// `attempts` counts tries sent; `request_id` is the provider's id from the
/// last attempt's response headers (sanitized, at most 64 characters), empty
/// when that attempt got none.
struct http_outcome {
  caf::expected<http_response> response{caf::error{}};
  int attempts = 0;
  std::string request_id;
};

struct http_loop_stats {
  uint64_t requests = 0;    // attempts sent
  uint64_t retries = 0;     // attempts beyond the first
  uint64_t rate_waits = 0;  // attempts that waited for a rate token
  uint64_t connections = 0; // connections opened (reuse keeps it low)
  uint64_t in_flight = 0;   // calls sent and not yet answered
};

struct http_loop_options {
  /// Connections per host, open at once and kept for reuse; transfers
  /// beyond it wait inside libcurl for a free connection.
  long max_host_connections = 16;
  /// Header naming the provider's request id (Fly: "fly-request-id").
  std::string request_id_header = "fly-request-id";
  /// Seed of the backoff jitter; 0: from std::random_device.
  uint64_t jitter_seed = 0;
};

/// The delay a `Retry-After` value asks for, in ms, at `now`: delta-seconds
/// ("120") or an HTTP date (RFC 9110: IMF-fixdate, RFC 850, asctime). 0 for
/// a date in the past and for a value that is neither; at most a day.
int64_t retry_after_ms(std::string_view value, std::chrono::system_clock::time_point now);

class http_loop {
public:
  explicit http_loop(http_loop_options opts = {});
  /// Ends the loop: calls still running, waiting or queued are answered with
  /// `cancelled` (on the loop thread), timers set with `after` are dropped
  /// without running, then the thread is joined. When the last owner lets
  /// go inside one of the loop's callbacks (a callback holding its owner),
  /// the loop ends the same way once that callback returns, without a join.
  /// A callback answered `cancelled` must not send the same call again
  /// forever.
  ~http_loop();

  http_loop(const http_loop&) = delete;
  http_loop& operator=(const http_loop&) = delete;

  using done_fn = std::function<void(http_outcome)>;

  /// Queues `req` (its `timeout` bounds each attempt) and returns at once;
  /// `done` runs exactly once, on the loop thread, with the outcome. It must
  /// not block. Thread-safe.
  void send(http_request req, http_call_options opts, done_fn done);

  /// Runs `fn` on the loop thread once `delay` has passed, for callers
  /// that pace their own follow-up calls (polling a machine's state). Not
  /// run if the loop ends first. It must not block. Thread-safe.
  void after(std::chrono::milliseconds delay, std::function<void()> fn);

  /// Ends the loop now (what the destructor does): pending calls are
  /// answered `cancelled`, timers dropped, the thread joined; later sends
  /// are answered `cancelled` at once. Idempotent. Lets an owner break the
  /// cycle of callbacks that hold references to whatever holds the loop.
  void shutdown();

  http_loop_stats stats() const;

private:
  struct impl;
  // Shared with the loop thread, which outlives this object when the last
  // owner lets go from a callback.
  std::shared_ptr<impl> impl_;
};

} // namespace aloft
