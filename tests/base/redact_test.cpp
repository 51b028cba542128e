#include "engine/base/redact.hpp"

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace aloft {
namespace {

// The registry is process-wide: each test registers values no other test
// uses and forgets them at the end.
class scoped_secrets {
public:
  explicit scoped_secrets(std::vector<std::string> values) : values_(std::move(values)) {
    for (auto& v : values_)
      register_secret(v);
  }
  ~scoped_secrets() {
    for (auto& v : values_)
      forget_secret(v);
  }

private:
  std::vector<std::string> values_;
};

TEST(redact, replaces_every_occurrence_of_a_secret) {
  scoped_secrets s{{"tok-one-3f9a0c"}};
  EXPECT_EQ(redact("a tok-one-3f9a0c b tok-one-3f9a0ctok-one-3f9a0c"),
            "a [redacted] b [redacted][redacted]");
  EXPECT_FALSE(is_clean("x tok-one-3f9a0c"));
  EXPECT_TRUE(is_clean("x tok-one-3f9a0"));
  EXPECT_EQ(redact("nothing secret here"), "nothing secret here");
  EXPECT_EQ(redact(""), "");
}

TEST(redact, replaces_several_secrets) {
  scoped_secrets s{{"alpha-secret-11", "beta-secret-22", "gamma-secret-33"}};
  EXPECT_EQ(
      redact("{\"a\":\"alpha-secret-11\",\"b\":\"beta-secret-22\"} gamma-secret-33."),
      "{\"a\":\"[redacted]\",\"b\":\"[redacted]\"} [redacted].");
}

TEST(redact, overlapping_secrets_leave_no_fragment) {
  // One value inside another: the longer one wins, nothing of it is left.
  scoped_secrets s{{"inner-9d8c7b", "outer-inner-9d8c7b-tail"}};
  EXPECT_EQ(redact("[outer-inner-9d8c7b-tail] and inner-9d8c7b"),
            "[[redacted]] and [redacted]");
  // The end of one value is the start of another: the run is hidden whole.
  scoped_secrets t{{"left-part-shared-4e5f", "shared-4e5f-right-part"}};
  EXPECT_EQ(redact("<left-part-shared-4e5f-right-part>"), "<[redacted]>");
}

TEST(redact, short_values_are_ignored) {
  scoped_secrets s{{"ab", "12345"}};
  EXPECT_EQ(redact("ab 12345 abc"), "ab 12345 abc");
  EXPECT_TRUE(is_clean("12345"));
}

TEST(redact, registering_twice_and_forgetting) {
  register_secret("twice-registered-77");
  register_secret("twice-registered-77");
  EXPECT_EQ(redact("twice-registered-77"), "[redacted]");
  forget_secret("twice-registered-77");
  EXPECT_EQ(redact("twice-registered-77"), "twice-registered-77");
  EXPECT_TRUE(is_clean("twice-registered-77"));
  forget_secret("never-registered-88"); // harmless
}

TEST(redact, threads_register_and_redact_concurrently) {
  constexpr int writers = 4;
  constexpr int per_writer = 50;
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  // A value registered before the readers start is always redacted.
  scoped_secrets fixed{{"always-there-0a1b2c"}};
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r)
    readers.emplace_back([&] {
      while (!stop.load()) {
        if (redact("x always-there-0a1b2c y") != "x [redacted] y")
          failures.fetch_add(1);
      }
    });
  std::vector<std::thread> threads;
  for (int w = 0; w < writers; ++w)
    threads.emplace_back([&, w] {
      for (int i = 0; i < per_writer; ++i) {
        auto value = "concurrent-" + std::to_string(w) + "-" + std::to_string(i);
        register_secret(value);
        if (redact("<" + value + ">") != "<[redacted]>")
          failures.fetch_add(1);
      }
    });
  for (auto& t : threads)
    t.join();
  stop = true;
  for (auto& t : readers)
    t.join();
  EXPECT_EQ(failures.load(), 0);
  for (int w = 0; w < writers; ++w)
    for (int i = 0; i < per_writer; ++i) {
      auto value = "concurrent-" + std::to_string(w) + "-" + std::to_string(i);
      EXPECT_EQ(redact(value), "[redacted]");
      forget_secret(value);
    }
}

} // namespace
} // namespace aloft
