// The C ABI over a fake engine: same replies as the socket, events through
// callbacks, and no crash on NULLs.
#include "engine/app/c_api.hpp"

#include <atomic>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "aloft.h"
#include "engine/app/protocol.hpp"
#include "tests/app/fake_engine.hpp"

namespace aloft {
namespace {

using testing::fake_engine;
using testing::temp_dir;

json parse_reply(char* text) {
  EXPECT_NE(text, nullptr);
  if (!text)
    return json{};
  auto j = json::parse(text);
  aloft_free(text);
  EXPECT_TRUE(j);
  return j ? *j : json{};
}

struct collected {
  std::vector<std::string> events;
};

extern "C" void collect_event(const char* event_json, void* ctx) {
  static_cast<collected*>(ctx)->events.emplace_back(event_json);
}

TEST(c_api, calls_answer_like_the_socket) {
  temp_dir dir;
  auto owned = std::make_unique<fake_engine>(dir.path());
  auto& eng = *owned;
  auto id = eng.add_session(session_state::running);
  auto h = aloft_wrap_engine(std::move(owned));
  ASSERT_NE(h, nullptr);

  auto hello = parse_reply(aloft_call(h, R"({"id":1,"op":"hello"})"));
  EXPECT_EQ(hello.find("result")->get_int("protocol"), ALOFT_PROTOCOL_VERSION);
  auto show = parse_reply(
    aloft_call(h, (R"({"id":2,"op":"show","args":{"id":")" + id + "\"}}").c_str()));
  EXPECT_EQ(show.find("result")->find("session")->get_string("id"), id);
  auto bad = parse_reply(aloft_call(h, "{nope"));
  EXPECT_FALSE(bad.get_bool("ok"));
  auto null_req = parse_reply(aloft_call(h, nullptr));
  EXPECT_EQ(null_req.find("error")->get_string("code"), "invalid_argument");
  auto null_engine = parse_reply(aloft_call(nullptr, "{}"));
  EXPECT_FALSE(null_engine.get_bool("ok"));
  aloft_close(h);
}

TEST(c_api, subscribers_get_events_until_they_unsubscribe) {
  temp_dir dir;
  auto owned = std::make_unique<fake_engine>(dir.path());
  auto& eng = *owned;
  auto id = eng.add_session(session_state::running);
  auto h = aloft_wrap_engine(std::move(owned));
  collected got;
  EXPECT_EQ(aloft_subscribe(h, nullptr, &got), 0u);
  EXPECT_EQ(aloft_subscribe(nullptr, collect_event, &got), 0u);
  auto handle = aloft_subscribe(h, collect_event, &got);
  ASSERT_NE(handle, 0u);
  eng.set_state(id, session_state::stopping);
  ASSERT_EQ(got.events.size(), 1u);
  auto ev = json::parse(got.events[0]);
  ASSERT_TRUE(ev);
  EXPECT_EQ(ev->get_string("state"), "stopping");
  EXPECT_EQ(ev->get_string("session"), id);
  aloft_unsubscribe(h, handle);
  aloft_unsubscribe(h, handle); // twice is harmless
  eng.set_state(id, session_state::destroyed);
  EXPECT_EQ(got.events.size(), 1u);
  EXPECT_EQ(eng.subscriber_count(), 0u);
  aloft_close(h);
}

TEST(c_api, close_ends_remaining_subscriptions_and_ignores_null) {
  temp_dir dir;
  auto h = aloft_wrap_engine(std::make_unique<fake_engine>(dir.path()));
  collected got;
  aloft_subscribe(h, collect_event, &got);
  aloft_close(h);
  aloft_close(nullptr);
  aloft_free(nullptr);
  EXPECT_EQ(aloft_wrap_engine(nullptr), nullptr);
}

} // namespace
} // namespace aloft

namespace aloft {
namespace {

// aloft_open runs the real engine on a fresh home: the one test here that
// does not use the fake, so that the C entry point itself is exercised.
TEST(c_api, open_runs_the_real_engine_on_a_fresh_home) {
  temp_dir dir;
  char* error = nullptr;
  auto h = aloft_open(dir.path().c_str(), &error);
  ASSERT_NE(h, nullptr) << (error ? error : "");
  EXPECT_EQ(error, nullptr);
  auto hello = parse_reply(aloft_call(h, R"({"id":1,"op":"hello"})"));
  EXPECT_EQ(hello.find("result")->get_int("protocol"), ALOFT_PROTOCOL_VERSION);
  auto list = parse_reply(aloft_call(h, R"({"id":2,"op":"list"})"));
  EXPECT_EQ(list.find("result")->find("sessions")->size(), 0u);
  aloft_close(h);
}

} // namespace
} // namespace aloft
