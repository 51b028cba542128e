#include "providers/http/http_loop.hpp"

#include <algorithm>
#include <atomic>
#include <functional>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <curl/curl.h>

#include "engine/base/error.hpp"
#include "engine/retry.hpp"
#include "providers/http/curl_transfer.hpp"

namespace aloft {

namespace {

using steady = std::chrono::steady_clock;

constexpr size_t max_request_id_chars = 64;

constexpr int64_t max_retry_after_ms = int64_t{24} * 3600 * 1000;

/// Idle token buckets (full again) are forgotten this often, so that keys
/// naming short-lived things (machines) do not accumulate.
constexpr auto bucket_sweep_interval = std::chrono::seconds(30);

/// The longest the loop sleeps without a reason to wake.
constexpr int max_poll_ms = 60'000;

struct call {
  http_request req;
  http_call_options opts;
  http_loop::done_fn done;
  int attempts = 0;
  /// A rate token was taken for the next attempt (it waited for it).
  bool holds_token = false;
  /// The next or current attempt's transfer (prepared before it waits
  /// for a rate token); none during a backoff.
  std::unique_ptr<http_detail::curl_transfer> transfer;
  std::string request_id;
};

using call_ptr = std::unique_ptr<call>;

/// Something waiting on the loop's clock: a call's backoff or rate token,
/// or a caller's `after`.
struct timer {
  steady::time_point due;
  uint64_t seq; // ties keep the order of arrival
  call_ptr waiting;
  std::function<void()> fn; // when `waiting` is null
};

struct queued_timer {
  steady::time_point due;
  std::function<void()> fn;
};

/// Orders `std::push_heap` and friends into a min-heap on (due, seq).
struct fires_later {
  bool operator()(const timer& x, const timer& y) const {
    return x.due != y.due ? x.due > y.due : x.seq > y.seq;
  }
};

/// A token bucket whose tokens may go negative: each taker reserves the
/// next token, and waits until the bucket has refilled to it. That spaces
/// takers by 1/rate after the burst and serves them in order.
struct token_bucket {
  double tokens = 0;
  double rate = 1;
  double burst = 1;
  steady::time_point last;

  void refill(steady::time_point now) {
    std::chrono::duration<double> elapsed = now - last;
    tokens = std::min(burst, tokens + elapsed.count() * rate);
    last = now;
  }
};

} // namespace

int64_t retry_after_ms(std::string_view value,
                       std::chrono::system_clock::time_point now) {
  auto v = http_detail::trim(value);
  if (v.empty())
    return 0;
  if (v.find_first_not_of("0123456789") == std::string_view::npos) {
    // More digits than a day in seconds needs: capped without parsing.
    if (v.size() > 9)
      return max_retry_after_ms;
    return std::min<int64_t>(std::stoll(std::string{v}) * 1000, max_retry_after_ms);
  }
  auto when = curl_getdate(std::string{v}.c_str(), nullptr);
  if (when < 0)
    return 0;
  auto delta = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::system_clock::from_time_t(when) - now);
  return std::clamp<int64_t>(delta.count(), 0, max_retry_after_ms);
}

struct http_loop::impl {
  explicit impl(http_loop_options o) : opts(std::move(o)) {}
  ~impl();

  void run();
  void start_attempt(call_ptr c);
  void launch(call_ptr c);
  void finished(CURL* easy, CURLcode rc);
  void deliver(call_ptr c, caf::expected<http_response> result);
  void wait_until(call_ptr c, steady::time_point due);
  void add_timer(timer t);
  void fire_timers(steady::time_point now);
  bool take_token(const http_call_options& o, steady::time_point now,
                  steady::time_point& ready);
  void sweep_buckets(steady::time_point now);
  int poll_timeout_ms(steady::time_point now) const;
  void cancel_everything();
  void cancel(call_ptr c);
  void cancel_queued();
  caf::error describe_failure(const call& c, const caf::error& err) const;

  const http_loop_options opts;
  CURLM* multi = nullptr;
  std::thread thread;

  // Shared with senders.
  std::mutex mtx;
  std::vector<call_ptr> queue;
  std::vector<queued_timer> queued_timers;
  bool stopping = false;
  bool closed = false; // shutdown joined the thread: sends are answered at once

  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> retries{0};
  std::atomic<uint64_t> rate_waits{0};
  std::atomic<uint64_t> connections{0};
  std::atomic<uint64_t> in_flight{0};

  // The loop thread's own.
  std::unordered_map<CURL*, call_ptr> running;
  std::vector<timer> timers; // a heap, see fires_later
  uint64_t timer_seq = 0;
  std::unordered_map<std::string, token_bucket> buckets;
  steady::time_point next_sweep;
  std::mt19937_64 rng;
};

http_loop::http_loop(http_loop_options opts)
    : impl_(std::make_shared<impl>(std::move(opts))) {
  auto& d = *impl_;
  d.rng.seed(d.opts.jitter_seed != 0 ? d.opts.jitter_seed : std::random_device{}());
  if (http_detail::ensure_curl_initialized() != CURLE_OK)
    return;
  d.multi = curl_multi_init();
  if (d.multi == nullptr)
    return;
  long per_host = std::max(1L, d.opts.max_host_connections);
  curl_multi_setopt(d.multi, CURLMOPT_MAX_HOST_CONNECTIONS, per_host);
  // The cache holds the idle connections of a few hosts (API, auth).
  curl_multi_setopt(d.multi, CURLMOPT_MAXCONNECTS, per_host * 4);
  d.next_sweep = steady::now() + bucket_sweep_interval;
  d.thread = std::thread([keep = impl_] { keep->run(); });
}

http_loop::~http_loop() {
  shutdown();
}

void http_loop::shutdown() {
  auto& d = *impl_;
  if (d.multi == nullptr)
    return;
  {
    std::lock_guard<std::mutex> guard{d.mtx};
    d.stopping = true;
  }
  curl_multi_wakeup(d.multi);
  if (!d.thread.joinable())
    return;
  if (d.thread.get_id() == std::this_thread::get_id()) {
    // Destroyed from a callback: the loop notices `stopping` when the
    // callback returns, and its own reference keeps `impl` alive until then.
    d.thread.detach();
    return;
  }
  d.thread.join();
  {
    std::lock_guard<std::mutex> guard{d.mtx};
    d.closed = true;
  }
  // What was sent since is answered now: callbacks own the callers'
  // references (to a provider that owns this loop), so nothing may wait.
  // Sends from now on see `closed` under the same lock and answer at once.
  d.cancel_queued();
}

http_loop::impl::~impl() {
  // A send from another thread that raced with the loop's last look at the
  // queue is answered here.
  cancel_queued();
  if (multi != nullptr)
    curl_multi_cleanup(multi);
}

void http_loop::send(http_request req, http_call_options opts, done_fn done) {
  auto c = std::make_unique<call>();
  c->req = std::move(req);
  c->opts = std::move(opts);
  c->done = std::move(done);
  auto& d = *impl_;
  ++d.in_flight;
  if (d.multi == nullptr) {
    // No loop could be made: nothing will ever run the call.
    auto err =
        make_error(errc::internal, url_for_messages(c->req.url)
                                       + ": libcurl could not make a multi handle");
    d.deliver(std::move(c), std::move(err));
    return;
  }
  {
    // Checked and queued under one lock: `shutdown` sets `closed` and then
    // drains the queue, so a call is either drained or refused here, never
    // left between the two.
    std::lock_guard<std::mutex> guard{d.mtx};
    if (!d.closed)
      d.queue.push_back(std::move(c)); // leaves `c` empty
  }
  if (c) {
    d.deliver(std::move(c), make_error(errc::cancelled, "the HTTP loop has shut down"));
    return;
  }
  curl_multi_wakeup(d.multi);
}

void http_loop::after(std::chrono::milliseconds delay, std::function<void()> fn) {
  auto& d = *impl_;
  if (d.multi == nullptr)
    return;
  {
    std::lock_guard<std::mutex> guard{d.mtx};
    if (d.stopping)
      return;
    d.queued_timers.push_back({steady::now() + delay, std::move(fn)});
  }
  curl_multi_wakeup(d.multi);
}

http_loop_stats http_loop::stats() const {
  auto& d = *impl_;
  http_loop_stats s;
  s.requests = d.requests.load();
  s.retries = d.retries.load();
  s.rate_waits = d.rate_waits.load();
  s.connections = d.connections.load();
  s.in_flight = d.in_flight.load();
  return s;
}

// -- the loop ----------------------------------------------------------------

void http_loop::impl::run() {
  for (;;) {
    std::vector<call_ptr> incoming;
    std::vector<queued_timer> incoming_timers;
    {
      std::lock_guard<std::mutex> guard{mtx};
      if (stopping)
        break;
      incoming.swap(queue);
      incoming_timers.swap(queued_timers);
    }
    for (auto& t : incoming_timers)
      add_timer(timer{t.due, timer_seq++, nullptr, std::move(t.fn)});
    for (auto& c : incoming)
      start_attempt(std::move(c));
    fire_timers(steady::now());
    int still_running = 0;
    curl_multi_perform(multi, &still_running);
    int left = 0;
    while (CURLMsg* m = curl_multi_info_read(multi, &left)) {
      if (m->msg != CURLMSG_DONE)
        continue;
      // The message dies with the handle's removal: copy it first.
      auto* easy = m->easy_handle;
      auto rc = m->data.result;
      finished(easy, rc);
    }
    auto now = steady::now();
    if (now >= next_sweep) {
      sweep_buckets(now);
      next_sweep = now + bucket_sweep_interval;
    }
    // Returns early for libcurl's own timeouts, socket activity, and
    // curl_multi_wakeup (a send, or the destructor).
    curl_multi_poll(multi, nullptr, 0, poll_timeout_ms(now), nullptr);
  }
  cancel_everything();
}

void http_loop::impl::start_attempt(call_ptr c) {
  if (!c->transfer) {
    c->transfer = std::make_unique<http_detail::curl_transfer>();
    if (auto err = c->transfer->prepare(c->req)) {
      c->transfer.reset();
      deliver(std::move(c), std::move(err));
      return;
    }
  }
  if (!c->opts.rate_key.empty() && !c->holds_token) {
    steady::time_point ready;
    auto now = steady::now();
    if (!take_token(c->opts, now, ready)) {
      // The token is reserved: the attempt starts when the bucket reaches it.
      c->holds_token = true;
      ++rate_waits;
      wait_until(std::move(c), ready);
      return;
    }
  }
  c->holds_token = false;
  launch(std::move(c));
}

void http_loop::impl::launch(call_ptr c) {
  auto* easy = c->transfer->handle();
  // Over TLS, a new transfer waits for a connection being opened to say
  // (ALPN) whether it multiplexes (HTTP/2) rather than open another. Not
  // over plain HTTP: libcurl would wait for a first response there.
  if (c->req.url.compare(0, 8, "https://") == 0)
    curl_easy_setopt(easy, CURLOPT_PIPEWAIT, 1L);
  if (auto rc = curl_multi_add_handle(multi, easy); rc != CURLM_OK) {
    c->transfer.reset();
    auto err = make_error(errc::internal, url_for_messages(c->req.url)
                                              + ": libcurl: " + curl_multi_strerror(rc));
    deliver(std::move(c), std::move(err));
    return;
  }
  ++c->attempts;
  ++requests;
  if (c->attempts > 1)
    ++retries;
  running.emplace(easy, std::move(c));
}

void http_loop::impl::finished(CURL* easy, CURLcode rc) {
  auto it = running.find(easy);
  if (it == running.end())
    return;
  auto c = std::move(it->second);
  running.erase(it);
  curl_multi_remove_handle(multi, easy);
  connections += static_cast<uint64_t>(std::max(0L, c->transfer->new_connections()));
  c->request_id.clear();
  if (auto* id = c->transfer->received().header(opts.request_id_header))
    c->request_id = sanitize_provider_text(*id, max_request_id_chars);
  auto result = c->transfer->finish(rc);
  c->transfer.reset();

  // What the policy is asked about: a transport failure that a later
  // attempt may not meet, or a status saying "later".
  caf::error why;
  int64_t server_delay_ms = 0;
  if (!result) {
    auto code = code_of(result.error());
    // A timed-out attempt is retried too: calls that must not be repeated
    // blindly set max_attempts = 1.
    if (code == errc::unavailable || code == errc::deadline_exceeded)
      why = make_error(errc::unavailable);
  } else {
    auto status = result->status;
    if (status == 429)
      why = make_error(errc::resource_exhausted);
    else if ((status >= 500 && status < 600) || (status == 408 && c->opts.retry_408))
      why = make_error(errc::unavailable);
    if (why)
      if (auto* after = result->header("Retry-After"))
        server_delay_ms = retry_after_ms(*after, std::chrono::system_clock::now());
  }
  if (why) {
    retry_policy policy;
    policy.max_attempts = std::max(1, c->opts.max_attempts);
    policy.base_delay_ms = std::max<int64_t>(0, c->opts.base_delay_ms);
    policy.max_delay_ms = std::max<int64_t>(0, c->opts.max_delay_ms);
    auto jitter = std::uniform_real_distribution<double>{0.0, 1.0}(rng);
    auto next = decide_retry(why, c->attempts, policy, jitter, server_delay_ms);
    if (next.retry) {
      wait_until(std::move(c), steady::now() + std::chrono::milliseconds(next.delay_ms));
      return;
    }
  }
  deliver(std::move(c), std::move(result));
}

void http_loop::impl::deliver(call_ptr c, caf::expected<http_response> result) {
  http_outcome out;
  out.attempts = c->attempts;
  if (result)
    out.response = std::move(result);
  else
    out.response = describe_failure(*c, result.error());
  out.request_id = std::move(c->request_id);
  auto done = std::move(c->done);
  c.reset();
  --in_flight;
  if (done)
    done(std::move(out));
}

caf::error http_loop::impl::describe_failure(const call& c, const caf::error& err) const {
  auto msg = message_of(err);
  if (!c.opts.what.empty())
    msg = msg.empty() ? c.opts.what : c.opts.what + ": " + msg;
  if (c.attempts > 1)
    msg += "; after " + std::to_string(c.attempts) + " attempts";
  if (!c.request_id.empty())
    msg += "; request id " + c.request_id;
  return make_error(code_of(err), std::move(msg));
}

// -- timers and rate tokens ---------------------------------------------------

void http_loop::impl::wait_until(call_ptr c, steady::time_point due) {
  add_timer(timer{due, timer_seq++, std::move(c), {}});
}

void http_loop::impl::add_timer(timer t) {
  timers.push_back(std::move(t));
  std::push_heap(timers.begin(), timers.end(), fires_later{});
}

void http_loop::impl::fire_timers(steady::time_point now) {
  while (!timers.empty() && timers.front().due <= now) {
    std::pop_heap(timers.begin(), timers.end(), fires_later{});
    auto t = std::move(timers.back());
    timers.pop_back();
    if (t.waiting)
      start_attempt(std::move(t.waiting));
    else if (t.fn)
      t.fn();
  }
}

int http_loop::impl::poll_timeout_ms(steady::time_point now) const {
  auto until = next_sweep;
  if (!timers.empty())
    until = std::min(until, timers.front().due);
  if (until <= now)
    return 0;
  // Rounded up: waking a little early would only spin.
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(until - now).count();
  return static_cast<int>(std::min<int64_t>(ms, max_poll_ms));
}

bool http_loop::impl::take_token(const http_call_options& o, steady::time_point now,
                                 steady::time_point& ready) {
  double rate = std::max(o.rate_per_s, 1e-3);
  double burst = std::max(1, o.rate_burst);
  auto [it, fresh] = buckets.try_emplace(o.rate_key);
  auto& b = it->second;
  if (fresh) {
    b.tokens = burst;
    b.last = now;
  }
  // The latest call's settings apply to the key.
  b.rate = rate;
  b.burst = burst;
  b.refill(now);
  b.tokens -= 1;
  if (b.tokens >= 0)
    return true;
  ready = now
          + std::chrono::duration_cast<steady::duration>(
              std::chrono::duration<double>(-b.tokens / rate));
  return false;
}

void http_loop::impl::sweep_buckets(steady::time_point now) {
  for (auto it = buckets.begin(); it != buckets.end();) {
    it->second.refill(now);
    // A full bucket is the same as no bucket.
    if (it->second.tokens >= it->second.burst)
      it = buckets.erase(it);
    else
      ++it;
  }
}

// -- shutdown -----------------------------------------------------------------

void http_loop::impl::cancel(call_ptr c) {
  c->transfer.reset();
  auto err = make_error(errc::cancelled,
                        url_for_messages(c->req.url) + ": the HTTP loop stopped");
  deliver(std::move(c), std::move(err));
}

// Cancels the calls queued by other threads and drops queued timers, until
// none are left: a cancelled call's callback may send again.
void http_loop::impl::cancel_queued() {
  for (;;) {
    std::vector<call_ptr> queued;
    std::vector<queued_timer> dropped; // destroyed unlocked: they may own anything
    {
      std::lock_guard<std::mutex> guard{mtx};
      queued.swap(queue);
      dropped.swap(queued_timers);
    }
    if (queued.empty() && dropped.empty())
      break;
    for (auto& c : queued)
      cancel(std::move(c));
  }
}

void http_loop::impl::cancel_everything() {
  std::vector<call_ptr> pending;
  for (auto& [easy, c] : running) {
    curl_multi_remove_handle(multi, easy);
    pending.push_back(std::move(c));
  }
  running.clear();
  // Taken out before any callback runs: a callback may add timers.
  auto waiting = std::move(timers);
  timers.clear();
  for (auto& t : waiting)
    if (t.waiting)
      pending.push_back(std::move(t.waiting));
  for (auto& c : pending)
    cancel(std::move(c));
  waiting.clear(); // the callers' `after` functions, dropped unrun
  cancel_queued();
}

} // namespace aloft
