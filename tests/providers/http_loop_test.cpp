// The shared HTTP loop (curl multi) against the loopback test server:
// concurrency, connection reuse, retries and their pacing, per-key rate
// limits, per-attempt timeouts, request ids, shutdown and re-entrancy.
//
// Waiting is bounded and event-driven (condition variables, never sleeps);
// timing is asserted on the server's arrival times, with lower bounds only.
#include "providers/http/http_loop.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "engine/base/error.hpp"
#include "tests/support/http_server.hpp"

namespace aloft {
namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;
using std::chrono::steady_clock;
using test::http_reply;
using test::http_request_seen;
using test::http_server;

/// How long a test waits for an answer before it fails (never reached
/// when the loop works; generous for a loaded machine).
constexpr auto answer_bound = 60s;

/// Outcomes collected from callbacks, with a bounded wait for a count.
/// Declare it before the loop: the loop's destructor may still answer.
class outcomes {
public:
  http_loop::done_fn sink(std::string tag = {}) {
    return [this, tag](http_outcome o) {
      std::lock_guard<std::mutex> guard{mtx_};
      got_.emplace_back(tag, std::move(o));
      cv_.notify_all();
    };
  }

  /// Whether `n` outcomes arrived within the bound.
  bool wait(size_t n) {
    std::unique_lock<std::mutex> lock{mtx_};
    return cv_.wait_for(lock, answer_bound, [&] { return got_.size() >= n; });
  }

  std::vector<std::pair<std::string, http_outcome>> all() {
    std::lock_guard<std::mutex> guard{mtx_};
    return got_;
  }

  size_t size() {
    std::lock_guard<std::mutex> guard{mtx_};
    return got_.size();
  }

  /// Whether an outcome tagged `tag` arrived within the bound.
  bool wait_tag(const std::string& tag) {
    std::unique_lock<std::mutex> lock{mtx_};
    return cv_.wait_for(lock, answer_bound, [&] {
      return std::any_of(got_.begin(), got_.end(),
                         [&](auto& entry) { return entry.first == tag; });
    });
  }

private:
  std::mutex mtx_;
  std::condition_variable cv_;
  std::vector<std::pair<std::string, http_outcome>> got_;
};

/// Sends one call and waits (bounded) for its outcome.
http_outcome call(http_loop& loop, http_request req, http_call_options opts = {}) {
  auto answered = std::make_shared<std::promise<http_outcome>>();
  auto future = answered->get_future();
  loop.send(std::move(req), std::move(opts),
            [answered](http_outcome o) { answered->set_value(std::move(o)); });
  if (future.wait_for(answer_bound) != std::future_status::ready) {
    ADD_FAILURE() << "no answer within " << answer_bound.count() << " s";
    http_outcome none;
    none.response = make_error(errc::internal, "test: no answer");
    return none;
  }
  return future.get();
}

http_request get(const http_server& server, const std::string& path) {
  http_request req;
  req.url = server.base_url() + path;
  return req;
}

/// Options that retry quickly, so that tests measure the server's pacing
/// (Retry-After, rate limits) rather than the backoff.
http_call_options quick_retries(int max_attempts = 5) {
  http_call_options o;
  o.max_attempts = max_attempts;
  o.base_delay_ms = 5;
  o.max_delay_ms = 10'000;
  return o;
}

/// A handler's barrier: handlers wait until the test opens it (bounded),
/// and the test can wait until `n` handlers arrived.
class gate {
public:
  void pass() {
    std::unique_lock<std::mutex> lock{mtx_};
    ++arrived_;
    cv_.notify_all();
    cv_.wait_for(lock, answer_bound, [&] { return open_; });
  }

  bool wait_arrivals(int n) {
    std::unique_lock<std::mutex> lock{mtx_};
    return cv_.wait_for(lock, answer_bound, [&] { return arrived_ >= n; });
  }

  void open() {
    std::lock_guard<std::mutex> guard{mtx_};
    open_ = true;
    cv_.notify_all();
  }

private:
  std::mutex mtx_;
  std::condition_variable cv_;
  int arrived_ = 0;
  bool open_ = false;
};

/// Opens a gate when the test ends, before the server (declared earlier)
/// stops and joins its handlers.
struct open_at_exit {
  std::shared_ptr<gate> g;
  ~open_at_exit() { g->open(); }
};

/// A route answering `statuses` in turn, then 200.
test::http_handler in_turn(std::vector<http_reply> replies) {
  auto next = std::make_shared<std::atomic<size_t>>(0);
  auto list = std::make_shared<std::vector<http_reply>>(std::move(replies));
  return [next, list](const http_request_seen&) {
    auto i = next->fetch_add(1);
    return i < list->size() ? (*list)[i] : http_reply::json(200, R"({"ok":true})");
  };
}

milliseconds between(const http_request_seen& earlier, const http_request_seen& later) {
  return std::chrono::duration_cast<milliseconds>(later.received_at
                                                  - earlier.received_at);
}

// -- answers -----------------------------------------------------------------

TEST(http_loop_test, answers_with_status_body_and_request_id) {
  http_server server;
  server.route("GET", "/hello", [](const http_request_seen&) {
    auto r = http_reply::json(200, R"({"hi":1})");
    r.headers.emplace_back("Fly-Request-Id", "req-42");
    return r;
  });
  http_loop loop;
  auto out = call(loop, get(server, "/hello?x=1"));
  ASSERT_TRUE(out.response) << describe(out.response.error());
  EXPECT_EQ(out.response->status, 200);
  EXPECT_EQ(out.response->body, R"({"hi":1})");
  EXPECT_EQ(out.attempts, 1);
  EXPECT_EQ(out.request_id, "req-42");
  auto stats = loop.stats();
  EXPECT_EQ(stats.requests, 1u);
  EXPECT_EQ(stats.retries, 0u);
  EXPECT_EQ(stats.in_flight, 0u);
}

TEST(http_loop_test, the_request_id_is_sanitized_and_bounded) {
  http_server server;
  server.route("GET", "/", [](const http_request_seen&) {
    auto r = http_reply::json(200, "{}");
    // A direction override and 100 characters.
    r.headers.emplace_back("x-request-id", "\xE2\x80\xAE" + std::string(100, 'a'));
    return r;
  });
  http_loop_options lo;
  lo.request_id_header = "X-Request-Id";
  http_loop loop{lo};
  auto out = call(loop, get(server, "/"));
  ASSERT_TRUE(out.response) << describe(out.response.error());
  EXPECT_LE(out.request_id.size(), 64u);
  EXPECT_EQ(out.request_id.find("\xE2\x80\xAE"), std::string::npos);
  EXPECT_EQ(out.request_id.substr(0, 10), std::string(10, 'a'));
}

TEST(http_loop_test, many_concurrent_calls_from_several_threads_are_all_answered) {
  http_server server;
  server.route("POST", "/echo/", [](const http_request_seen& r) {
    return http_reply::json(200, r.path + " " + r.body);
  });
  outcomes got;
  http_loop loop;
  constexpr int threads = 4;
  constexpr int per_thread = 50;
  std::vector<std::thread> senders;
  for (int t = 0; t < threads; ++t)
    senders.emplace_back([&, t] {
      for (int i = 0; i < per_thread; ++i) {
        auto tag = std::to_string(t) + "-" + std::to_string(i);
        http_request req;
        req.method = "POST";
        req.url = server.base_url() + "/echo/" + tag;
        req.body = "body-" + tag;
        loop.send(std::move(req), {}, got.sink(tag));
      }
    });
  for (auto& s : senders)
    s.join();
  ASSERT_TRUE(got.wait(threads * per_thread)) << got.size() << " answered";
  std::map<std::string, int> seen;
  for (auto& [tag, out] : got.all()) {
    ASSERT_TRUE(out.response) << tag << ": " << describe(out.response.error());
    EXPECT_EQ(out.response->status, 200);
    EXPECT_EQ(out.response->body, "/echo/" + tag + " body-" + tag);
    ++seen[tag];
  }
  EXPECT_EQ(seen.size(), size_t{threads * per_thread});
  auto stats = loop.stats();
  EXPECT_EQ(stats.requests, uint64_t{threads * per_thread});
  EXPECT_EQ(stats.in_flight, 0u);
  EXPECT_LE(stats.connections, 16u) << "at most max_host_connections at once";
}

TEST(http_loop_test, sequential_calls_reuse_one_connection) {
  http_server server;
  server.route("GET", "/",
               [](const http_request_seen&) { return http_reply::json(200, "{}"); });
  http_loop loop;
  for (int i = 0; i < 100; ++i) {
    auto out = call(loop, get(server, "/n/" + std::to_string(i)));
    ASSERT_TRUE(out.response) << describe(out.response.error());
  }
  EXPECT_EQ(server.requests().size(), 100u);
  EXPECT_LT(server.connections_accepted(), 10u);
  EXPECT_LT(loop.stats().connections, 10u);
  EXPECT_GE(loop.stats().connections, 1u);
}

// -- retries -----------------------------------------------------------------

TEST(http_loop_test, a_503_then_200_is_retried_and_succeeds) {
  http_server server;
  server.route("GET", "/", in_turn({http_reply::json(503, R"({"error":"busy"})")}));
  http_loop loop;
  auto out = call(loop, get(server, "/"), quick_retries());
  ASSERT_TRUE(out.response) << describe(out.response.error());
  EXPECT_EQ(out.response->status, 200);
  EXPECT_EQ(out.attempts, 2);
  EXPECT_EQ(server.requests().size(), 2u);
  EXPECT_EQ(loop.stats().retries, 1u);
  EXPECT_EQ(loop.stats().requests, 2u);
}

TEST(http_loop_test, a_429_with_retry_after_waits_that_long) {
  http_server server;
  auto busy = http_reply::json(429, R"({"error":"rate limited"})");
  busy.headers.emplace_back("Retry-After", "1");
  server.route("GET", "/", in_turn({busy}));
  http_loop loop;
  auto out = call(loop, get(server, "/"), quick_retries());
  ASSERT_TRUE(out.response) << describe(out.response.error());
  EXPECT_EQ(out.response->status, 200);
  EXPECT_EQ(out.attempts, 2);
  auto seen = server.requests();
  ASSERT_EQ(seen.size(), 2u);
  // The backoff alone would be a few ms.
  EXPECT_GE(between(seen[0], seen[1]), 950ms);
}

TEST(http_loop_test, a_404_is_delivered_at_once) {
  http_server server;
  http_loop loop;
  auto out = call(loop, get(server, "/nothing/here"), quick_retries());
  ASSERT_TRUE(out.response) << describe(out.response.error());
  EXPECT_EQ(out.response->status, 404);
  EXPECT_EQ(out.attempts, 1);
  EXPECT_EQ(server.requests().size(), 1u);
}

TEST(http_loop_test, a_408_is_retried_unless_the_call_says_not_to) {
  http_server server;
  server.route("GET", "/", [](const http_request_seen&) {
    return http_reply::json(408, R"({"error":"wait timed out"})");
  });
  http_loop loop;
  auto opts = quick_retries(2);
  EXPECT_EQ(call(loop, get(server, "/a"), opts).attempts, 2);
  opts.retry_408 = false;
  auto out = call(loop, get(server, "/b"), opts);
  ASSERT_TRUE(out.response) << describe(out.response.error());
  EXPECT_EQ(out.response->status, 408);
  EXPECT_EQ(out.attempts, 1);
  EXPECT_EQ(server.requests_to("/b").size(), 1u);
}

TEST(http_loop_test,
     max_attempts_bounds_the_attempts_and_the_last_response_is_delivered) {
  http_server server;
  server.route("GET", "/", [](const http_request_seen&) {
    return http_reply::json(500, R"({"error":"broken"})");
  });
  http_loop loop;
  auto out = call(loop, get(server, "/"), quick_retries(4));
  ASSERT_TRUE(out.response) << describe(out.response.error());
  EXPECT_EQ(out.response->status, 500);
  EXPECT_EQ(out.attempts, 4);
  EXPECT_EQ(server.requests().size(), 4u);
  EXPECT_EQ(loop.stats().retries, 3u);
}

TEST(http_loop_test, max_attempts_one_never_retries) {
  http_server server;
  server.route("GET", "/", [](const http_request_seen&) {
    return http_reply::json(503, R"({"error":"busy"})");
  });
  http_loop loop;
  auto out = call(loop, get(server, "/"), quick_retries(1));
  ASSERT_TRUE(out.response) << describe(out.response.error());
  EXPECT_EQ(out.response->status, 503);
  EXPECT_EQ(out.attempts, 1);
  EXPECT_EQ(server.requests().size(), 1u);
}

TEST(http_loop_test, a_dropped_connection_is_retried) {
  http_server server;
  server.route("GET", "/", in_turn({http_reply::drop()}));
  // A fresh loop: the first attempt opens its own connection, so libcurl
  // does not silently retry it the way it retries a stale reused one.
  http_loop loop;
  auto out = call(loop, get(server, "/"), quick_retries());
  ASSERT_TRUE(out.response) << describe(out.response.error());
  EXPECT_EQ(out.response->status, 200);
  EXPECT_EQ(out.attempts, 2);
  EXPECT_EQ(server.requests().size(), 2u);
}

TEST(http_loop_test,
     an_attempt_outlasting_its_timeout_is_deadline_exceeded_after_the_attempts) {
  http_server server;
  auto slow = std::make_shared<gate>();
  open_at_exit release{slow};
  server.route("GET", "/slow", [slow](const http_request_seen&) {
    slow->pass();
    return http_reply::json(200, "{}");
  });
  http_loop loop;
  auto req = get(server, "/slow?token=q");
  req.timeout = 200ms;
  req.headers = {{"Authorization", "Bearer fo1_FAKE_TEST_TOKEN_0123456789"}};
  auto opts = quick_retries(3);
  opts.what = "get machine m-1";
  auto out = call(loop, req, opts);
  ASSERT_FALSE(out.response);
  EXPECT_EQ(code_of(out.response.error()), errc::deadline_exceeded);
  EXPECT_EQ(out.attempts, 3);
  EXPECT_EQ(server.requests().size(), 3u);
  auto msg = message_of(out.response.error());
  EXPECT_EQ(msg.rfind("get machine m-1: " + server.base_url() + "/slow: ", 0), 0u) << msg;
  EXPECT_NE(msg.find("after 3 attempts"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("token=q"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("FAKE_TEST_TOKEN"), std::string::npos) << msg;
}

TEST(http_loop_test, a_refused_connection_is_unavailable_naming_the_call_and_url) {
  auto base = "http://127.0.0.1:" + std::to_string(test::closed_port());
  http_loop loop;
  http_request req;
  req.url = base + "/v1/apps?secret=1";
  req.headers = {{"Authorization", "Bearer fo1_FAKE_TEST_TOKEN_0123456789"}};
  auto opts = quick_retries(2);
  opts.what = "list apps";
  auto out = call(loop, req, opts);
  ASSERT_FALSE(out.response);
  EXPECT_EQ(code_of(out.response.error()), errc::unavailable);
  EXPECT_EQ(out.attempts, 2);
  EXPECT_TRUE(out.request_id.empty());
  auto msg = message_of(out.response.error());
  EXPECT_EQ(msg.rfind("list apps: " + base + "/v1/apps: ", 0), 0u) << msg;
  EXPECT_EQ(msg.find("secret"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("FAKE_TEST_TOKEN"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("request id"), std::string::npos) << msg;
}

TEST(http_loop_test,
     an_oversized_body_is_data_loss_naming_the_request_id_and_not_retried) {
  http_server server;
  server.route("GET", "/big", [](const http_request_seen&) {
    auto r = http_reply::text(200, std::string(max_http_body + 1, 'x'));
    r.headers.emplace_back("fly-request-id", "big-1");
    return r;
  });
  http_loop loop;
  auto opts = quick_retries();
  opts.what = "list machines";
  auto out = call(loop, get(server, "/big"), opts);
  ASSERT_FALSE(out.response);
  EXPECT_EQ(code_of(out.response.error()), errc::data_loss);
  EXPECT_EQ(out.attempts, 1);
  EXPECT_EQ(out.request_id, "big-1");
  auto msg = message_of(out.response.error());
  EXPECT_EQ(msg.rfind("list machines: ", 0), 0u) << msg;
  EXPECT_NE(msg.find("request id big-1"), std::string::npos) << msg;
  EXPECT_EQ(server.requests().size(), 1u);
}

TEST(http_loop_test, an_invalid_request_is_refused_without_attempts) {
  http_loop loop;
  http_request req;
  req.url = "http://127.0.0.1:1/x";
  req.headers = {{"Authorization", "Bearer fo1_FAKE_TEST_TOKEN\r\nX-Evil: 1"}};
  auto out = call(loop, req);
  ASSERT_FALSE(out.response);
  EXPECT_EQ(code_of(out.response.error()), errc::invalid_argument);
  EXPECT_EQ(out.attempts, 0);
  EXPECT_EQ(message_of(out.response.error()).find("FAKE_TEST_TOKEN"), std::string::npos);
  EXPECT_EQ(loop.stats().requests, 0u);
}

// -- rate limits ---------------------------------------------------------------

TEST(http_loop_test, calls_sharing_a_rate_key_are_spaced_and_other_keys_are_not) {
  http_server server;
  server.route("GET", "/",
               [](const http_request_seen&) { return http_reply::json(200, "{}"); });
  outcomes got;
  http_loop loop;
  auto limited = [](std::string key) {
    http_call_options o;
    o.rate_key = std::move(key);
    o.rate_per_s = 5;
    o.rate_burst = 2;
    return o;
  };
  for (int i = 0; i < 10; ++i)
    loop.send(get(server, "/same/" + std::to_string(i)), limited("machine-1/start"),
              got.sink());
  for (int i = 0; i < 5; ++i)
    loop.send(get(server, "/other/" + std::to_string(i)),
              limited("machine-" + std::to_string(100 + i) + "/start"), got.sink());
  ASSERT_TRUE(got.wait(15));
  for (auto& [tag, out] : got.all())
    ASSERT_TRUE(out.response) << describe(out.response.error());

  auto same = server.requests_to("/same/");
  auto other = server.requests_to("/other/");
  ASSERT_EQ(same.size(), 10u);
  ASSERT_EQ(other.size(), 5u);
  // A burst of 2, then 8 more at 5/s: 1.6 s from the first to the last.
  EXPECT_GE(between(same.front(), same.back()), 1400ms);
  // After the burst (whose two calls race each other), in the order sent.
  for (size_t i = 2; i < same.size(); ++i)
    EXPECT_EQ(same[i].path, "/same/" + std::to_string(i));
  // Every other key had a full bucket: none waited behind machine-1.
  EXPECT_EQ(loop.stats().rate_waits, 8u);
  for (auto& r : other)
    EXPECT_LT(r.received_at, same.back().received_at) << r.path;
}

TEST(http_loop_test, a_retry_takes_a_rate_token_too) {
  http_server server;
  server.route("GET", "/", in_turn({http_reply::json(503, "{}")}));
  http_loop loop;
  auto opts = quick_retries();
  opts.rate_key = "app/create";
  opts.rate_per_s = 2;
  opts.rate_burst = 1;
  auto out = call(loop, get(server, "/"), opts);
  ASSERT_TRUE(out.response) << describe(out.response.error());
  EXPECT_EQ(out.attempts, 2);
  auto seen = server.requests();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_GE(between(seen[0], seen[1]), 450ms);
  EXPECT_EQ(loop.stats().rate_waits, 1u);
}

// -- the loop itself -------------------------------------------------------------

TEST(http_loop_test, a_callback_may_send_another_call) {
  http_server server;
  server.route("GET", "/", [](const http_request_seen& r) {
    return http_reply::json(200, "\"" + r.path + "\"");
  });
  http_loop loop;
  std::promise<http_outcome> second;
  auto second_future = second.get_future();
  loop.send(get(server, "/first"), {}, [&](http_outcome first) {
    EXPECT_TRUE(first.response);
    loop.send(get(server, "/second"), {},
              [&](http_outcome o) { second.set_value(std::move(o)); });
  });
  ASSERT_EQ(second_future.wait_for(answer_bound), std::future_status::ready);
  auto out = second_future.get();
  ASSERT_TRUE(out.response) << describe(out.response.error());
  EXPECT_EQ(out.response->body, "\"/second\"");
}

TEST(http_loop_test, after_runs_on_the_loop_thread_once_the_delay_passed) {
  http_loop loop;
  std::promise<std::thread::id> ran;
  auto ran_future = ran.get_future();
  auto start = steady_clock::now();
  loop.after(100ms, [&] { ran.set_value(std::this_thread::get_id()); });
  ASSERT_EQ(ran_future.wait_for(answer_bound), std::future_status::ready);
  EXPECT_GE(steady_clock::now() - start, 100ms);
  EXPECT_NE(ran_future.get(), std::this_thread::get_id());
}

TEST(http_loop_test, the_destructor_answers_running_waiting_and_queued_calls_cancelled) {
  http_server server;
  auto blocked = std::make_shared<gate>();
  open_at_exit release{blocked};
  server.route("GET", "/block", [blocked](const http_request_seen&) {
    blocked->pass();
    return http_reply::json(200, "{}");
  });
  server.route("GET", "/fast",
               [](const http_request_seen&) { return http_reply::json(200, "{}"); });
  server.route("GET", "/busy",
               [](const http_request_seen&) { return http_reply::json(503, "{}"); });
  outcomes got;
  auto loop = std::make_unique<http_loop>();
  // Two running (their handler blocks).
  http_call_options once;
  once.max_attempts = 1;
  auto blocking = [&](std::string path) {
    auto req = get(server, path);
    req.timeout = answer_bound;
    return req;
  };
  loop->send(blocking("/block/1"), once, got.sink("running"));
  loop->send(blocking("/block/2"), once, got.sink("running"));
  // One answered, then one waiting for a rate token for a minute.
  http_call_options slow_rate;
  slow_rate.rate_key = "k";
  slow_rate.rate_per_s = 1.0 / 60;
  slow_rate.rate_burst = 1;
  loop->send(get(server, "/fast/1"), slow_rate, got.sink("answered"));
  loop->send(get(server, "/fast/2"), slow_rate, got.sink("rate"));
  // One in a long backoff; its callback sends again, which is cancelled too.
  http_call_options long_backoff;
  long_backoff.base_delay_ms = 60'000;
  long_backoff.max_delay_ms = 60'000;
  http_loop* raw = loop.get();
  loop->send(get(server, "/busy"), long_backoff,
             [&, raw, sink = got.sink("backoff")](http_outcome o) {
               sink(std::move(o));
               raw->send(get(server, "/fast/3"), {}, got.sink("resent"));
             });
  ASSERT_TRUE(blocked->wait_arrivals(2));
  ASSERT_TRUE(got.wait_tag("answered"));
  loop.reset();
  ASSERT_TRUE(got.wait(6));
  std::map<std::string, int> cancelled;
  for (auto& [tag, out] : got.all()) {
    if (tag == "answered") {
      ASSERT_TRUE(out.response) << describe(out.response.error());
      EXPECT_EQ(out.response->status, 200);
      continue;
    }
    ASSERT_FALSE(out.response) << tag;
    EXPECT_EQ(code_of(out.response.error()), errc::cancelled) << tag;
    ++cancelled[tag];
  }
  EXPECT_EQ(cancelled["running"], 2);
  EXPECT_EQ(cancelled["rate"], 1);
  EXPECT_EQ(cancelled["backoff"], 1);
  EXPECT_EQ(cancelled["resent"], 1);
}

TEST(http_loop_test, the_last_owner_may_let_go_inside_a_callback) {
  http_server server;
  auto held = std::make_shared<gate>();
  open_at_exit release{held};
  server.route("GET", "/", [held](const http_request_seen&) {
    held->pass();
    return http_reply::json(200, "{}");
  });
  auto loop = std::make_shared<http_loop>();
  std::promise<void> answered;
  auto answered_future = answered.get_future();
  // The callback owns the loop, as a provider's callback owns its provider.
  loop->send(get(server, "/"), {}, [owner = loop, &answered](http_outcome) mutable {
    owner.reset();
    answered.set_value();
  });
  ASSERT_TRUE(held->wait_arrivals(1));
  loop.reset();
  held->open();
  ASSERT_EQ(answered_future.wait_for(answer_bound), std::future_status::ready);
}

TEST(http_loop_test, sixteen_in_flight_over_loopback) {
  http_server server;
  server.route("GET", "/", [](const http_request_seen&) {
    return http_reply::json(200, R"({"id":"m-1","state":"started"})");
  });
  http_loop loop;
  constexpr int total = 1000;
  constexpr int window = 16;
  std::mutex mtx;
  std::condition_variable cv;
  int sent = 0;
  int answered = 0;
  int failed = 0;
  // Each answer sends the next call: `window` calls stay in flight.
  std::function<void()> send_next = [&] {
    loop.send(get(server, "/v1/apps/a/machines/" + std::to_string(sent++)), {},
              [&](http_outcome o) {
                std::lock_guard<std::mutex> guard{mtx};
                if (!o.response || o.response->status != 200)
                  ++failed;
                ++answered;
                if (sent < total)
                  send_next();
                cv.notify_all();
              });
  };
  auto start = steady_clock::now();
  {
    std::lock_guard<std::mutex> guard{mtx};
    for (int i = 0; i < window; ++i)
      send_next();
  }
  std::unique_lock<std::mutex> lock{mtx};
  ASSERT_TRUE(cv.wait_for(lock, answer_bound, [&] { return answered == total; }));
  auto seconds = std::chrono::duration<double>(steady_clock::now() - start).count();
  EXPECT_EQ(failed, 0);
  auto stats = loop.stats();
  std::printf("[ figures  ] %d calls, %d in flight: %.0f calls/s, %llu connections\n",
              total, window, total / seconds,
              static_cast<unsigned long long>(stats.connections));
  EXPECT_EQ(stats.requests, uint64_t{total});
  EXPECT_LE(stats.connections, uint64_t{window});
}

// -- Retry-After -------------------------------------------------------------------

TEST(http_loop_test, retry_after_reads_seconds_and_http_dates) {
  // 1700000000 is Tue, 14 Nov 2023 22:13:20 GMT.
  auto now = std::chrono::system_clock::from_time_t(1700000000);
  struct row {
    const char* value;
    int64_t ms;
  } rows[] = {
      {"1", 1000},
      {" 120 ", 120'000},
      {"0", 0},
      {"", 0},
      {"soon", 0},
      {"99999999999999", 24 * 3600 * 1000},
      {"Tue, 14 Nov 2023 22:13:50 GMT", 30'000},   // IMF-fixdate
      {"Tuesday, 14-Nov-23 22:13:50 GMT", 30'000}, // RFC 850
      {"Tue Nov 14 22:13:50 2023", 30'000},        // asctime
      {"Tue, 14 Nov 2023 22:00:00 GMT", 0},        // past
      {"Wed, 14 Nov 2029 22:00:00 GMT", 24 * 3600 * 1000},
  };
  for (auto& r : rows)
    EXPECT_EQ(retry_after_ms(r.value, now), r.ms) << "'" << r.value << "'";
}

} // namespace
} // namespace aloft
