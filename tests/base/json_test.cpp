#include "engine/base/json.hpp"

#include <gtest/gtest.h>

#include "engine/base/error.hpp"

namespace aloft {
namespace {

TEST(json, round_trips_nested_values) {
  auto j = json::object();
  j.set("name", "a \"quoted\"\nline");
  j.set("n", 42);
  j.set("big", static_cast<long long>(1) << 53);
  j.set("real", 2.5);
  j.set("yes", true);
  j.set("none", nullptr);
  auto arr = json::array();
  arr.push_back(1);
  arr.push_back(json::object().set("k", "v"));
  j.set("list", arr);
  auto back = json::parse(j.dump());
  ASSERT_TRUE(back) << describe(back.error());
  EXPECT_EQ(*back, j);
  EXPECT_EQ(back->get_string("name"), "a \"quoted\"\nline");
  EXPECT_EQ(back->find("list")->at(1).get_string("k"), "v");
}

// Iterating simdjson's object through a temporary dangled and crashed at -O2
// on any object; every stored record is one.
TEST(json, regression_objects_and_arrays_from_temporaries_parse) {
  auto j = json::parse(R"({"a":{"b":[1,2,{"c":"d"}]},"e":[]})");
  ASSERT_TRUE(j);
  EXPECT_EQ(j->find("a")->find("b")->size(), 3u);
  EXPECT_EQ(j->find("a")->find("b")->at(2).get_string("c"), "d");
}

TEST(json, malformed_input_is_an_error_not_a_crash) {
  for (auto text : {"", "{", "{\"a\":}", "[1,2", "nul", "{\"a\" 1}"}) {
    auto j = json::parse(text);
    ASSERT_FALSE(j) << text;
    EXPECT_EQ(code_of(j.error()), errc::invalid_argument);
  }
}

TEST(json, readers_fall_back_on_missing_or_mistyped_members) {
  auto j = json::parse(R"({"s":1,"i":"x","b":"true"})");
  ASSERT_TRUE(j);
  EXPECT_EQ(j->get_string("s", "fb"), "fb");
  EXPECT_EQ(j->get_int("i", 7), 7);
  EXPECT_EQ(j->get_bool("b", true), true);
  EXPECT_EQ(j->get_int("missing", -1), -1);
}

TEST(error, codes_carry_retry_meaning_and_context) {
  auto err = annotate(make_error(errc::unavailable, "HTTP 503"), "fly: create machine");
  EXPECT_EQ(code_of(err), errc::unavailable);
  EXPECT_EQ(message_of(err), "fly: create machine: HTTP 503");
  EXPECT_TRUE(is_retryable(err));
  EXPECT_FALSE(is_retryable(make_error(errc::failed_precondition, "no")));
  EXPECT_FALSE(is_retryable(make_error(errc::deadline_exceeded, "unknown outcome")));
  EXPECT_EQ(describe(err), "unavailable: fly: create machine: HTTP 503");
  EXPECT_EQ(errc_from_string("not_found"), errc::not_found);
}

} // namespace
} // namespace aloft
