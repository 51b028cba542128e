// The Fly emulator's pure parts: the fault plan, the rate limiter and the
// program's flags.
#include "engine/base/base64.hpp"
#include "tests/emulators/fly/fly_faults.hpp"

#include <set>

#include <gtest/gtest.h>

#include "engine/base/error.hpp"
#include "tests/emulators/fly/fly_emulator_flags.hpp"
#include "tests/emulators/fly/machine_sandbox.hpp"

namespace aloft::test {
namespace {

using namespace std::chrono_literals;

fly_fault status_fault(std::string op, int count, int status, bool after = false) {
  fly_fault f;
  f.op = std::move(op);
  f.count = count;
  f.status = status;
  f.after_effect = after;
  return f;
}

// -- fly_fault_plan -------------------------------------------------------------

TEST(fly_fault_plan_test, rules_apply_to_their_operation_for_their_count_in_order) {
  fly_fault_plan plan;
  plan.add(status_fault("apps_get", 2, 429));
  plan.add(status_fault("", 1, 503));
  auto a = plan.next("machines_get", false);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->status, 503) << "the rule for any operation";
  EXPECT_FALSE(plan.next("machines_get", false));
  EXPECT_EQ(plan.next("apps_get", false)->status, 429);
  EXPECT_EQ(plan.next("apps_get", false)->status, 429);
  EXPECT_FALSE(plan.next("apps_get", false));
  EXPECT_EQ(plan.pending(), 0u);
}

TEST(fly_fault_plan_test, after_effect_rules_and_malformed_bodies_act_after_the_call) {
  fly_fault_plan plan;
  plan.add(status_fault("machines_create", 1, 408, true));
  fly_fault bad_body;
  bad_body.what = fly_fault::kind::malformed_json;
  bad_body.op = "apps_get";
  plan.add(bad_body);
  EXPECT_FALSE(plan.next("machines_create", false));
  EXPECT_FALSE(plan.next("apps_get", false));
  EXPECT_EQ(plan.next("machines_create", true)->status, 408);
  EXPECT_EQ(plan.next("apps_get", true)->what, fly_fault::kind::malformed_json);
  EXPECT_EQ(plan.pending(), 0u);
}

TEST(fly_fault_plan_test, a_count_of_zero_adds_nothing_and_clear_drops_everything) {
  fly_fault_plan plan;
  plan.add(status_fault("apps_get", 0, 500));
  EXPECT_EQ(plan.pending(), 0u);
  plan.add(status_fault("apps_get", 3, 500));
  plan.set_random(1.0, 1);
  plan.clear();
  EXPECT_EQ(plan.pending(), 0u);
  EXPECT_FALSE(plan.next("apps_get", false));
}

TEST(fly_fault_plan_test, random_faults_follow_the_rate_and_replay_with_the_seed) {
  auto draw = [](uint64_t seed) {
    fly_fault_plan plan;
    plan.set_random(0.3, seed);
    std::vector<std::string> out;
    for (int i = 0; i < 400; ++i) {
      auto f = plan.next("apps_get", false);
      out.push_back(f ? fly_fault_label(*f) : "-");
      EXPECT_FALSE(plan.next("apps_get", true)) << "random faults act before the effect";
    }
    return out;
  };
  auto first = draw(42);
  EXPECT_EQ(first, draw(42));
  EXPECT_NE(first, draw(43));
  int faults = 0;
  std::set<std::string> kinds;
  for (auto& x : first)
    if (x != "-") {
      ++faults;
      kinds.insert(x);
    }
  EXPECT_GT(faults, 80);
  EXPECT_LT(faults, 160);
  EXPECT_EQ(kinds,
            (std::set<std::string>{"apps_get 503", "apps_get 429", "apps_get reset"}));
}

// -- fly_rate_limiter -------------------------------------------------------------

TEST(fly_rate_limiter_test, allows_a_burst_then_one_call_a_second_per_key) {
  fly_rate_limiter limiter;
  auto t0 = std::chrono::steady_clock::time_point{} + 100s;
  for (int i = 0; i < 3; ++i)
    EXPECT_TRUE(limiter.allow("m1 stop", 1, 3, t0)) << i;
  EXPECT_FALSE(limiter.allow("m1 stop", 1, 3, t0));
  EXPECT_TRUE(limiter.allow("m2 stop", 1, 3, t0)) << "keys are independent";
  EXPECT_FALSE(limiter.allow("m1 stop", 1, 3, t0 + 500ms));
  EXPECT_TRUE(limiter.allow("m1 stop", 1, 3, t0 + 1000ms));
  EXPECT_FALSE(limiter.allow("m1 stop", 1, 3, t0 + 1100ms));
  // A long pause saves up the burst again, never more.
  for (int i = 0; i < 3; ++i)
    EXPECT_TRUE(limiter.allow("m1 stop", 1, 3, t0 + 60s)) << i;
  EXPECT_FALSE(limiter.allow("m1 stop", 1, 3, t0 + 60s));
}

// -- base64 ---------------------------------------------------------------------------

TEST(fly_emulator_base64_test, round_trips_and_rejects_what_is_not_base64) {
  for (std::string s : {"", "a", "ab", "abc", "abcd", "ssh-ed25519 AAAA key\n"}) {
    std::string back;
    ASSERT_TRUE(base64_decode(base64_encode(s), back)) << s;
    EXPECT_EQ(back, s);
  }
  std::string out;
  EXPECT_TRUE(base64_decode("aGVs\nbG8=", out));
  EXPECT_EQ(out, "hello");
  EXPECT_FALSE(base64_decode("aGVsbG8*", out));
  EXPECT_FALSE(base64_decode("aG=Vs", out));
}

// -- flags ------------------------------------------------------------------------------

TEST(fly_emulator_flags_test, reads_options_and_faults) {
  auto cli = parse_fly_emulator_flags({"--port",
                                       "8080",
                                       "--token",
                                       "t1",
                                       "--org",
                                       "acme",
                                       "--boot-delay-ms",
                                       "50",
                                       "--fault-rate",
                                       "0.1",
                                       "--seed",
                                       "9",
                                       "--sandboxes",
                                       "/tmp/sb",
                                       "--rate-limit",
                                       "--fail",
                                       "apps_get:2:429:3",
                                       "--fail-after",
                                       "machines_create:1:408",
                                       "--reset",
                                       "any:1",
                                       "--malformed",
                                       "machines_list:2",
                                       "--create-timeout",
                                       "1",
                                       "--capacity",
                                       "2:503",
                                       "--stuck-starting",
                                       "1",
                                       "--token-expires-after",
                                       "10",
                                       "--empty-list",
                                       "3",
                                       "--taken-app",
                                       "someone-elses"},
                                      "");
  ASSERT_TRUE(cli) << describe(cli.error());
  EXPECT_EQ(cli->options.port, 8080);
  EXPECT_EQ(cli->options.token, "t1");
  EXPECT_EQ(cli->options.org, "acme");
  EXPECT_EQ(cli->options.boot_delay, 50ms);
  EXPECT_DOUBLE_EQ(cli->options.fault_rate, 0.1);
  EXPECT_EQ(cli->options.seed, 9u);
  EXPECT_EQ(cli->options.sandboxes_dir, "/tmp/sb");
  EXPECT_TRUE(cli->own_sandboxes_dir);
  EXPECT_TRUE(cli->options.rate_limit);
  ASSERT_EQ(cli->faults.size(), 4u);
  EXPECT_EQ(fly_fault_label(cli->faults[0]), "apps_get 429");
  EXPECT_EQ(cli->faults[0].count, 2);
  EXPECT_EQ(cli->faults[0].retry_after_s, 3);
  EXPECT_EQ(fly_fault_label(cli->faults[1]), "machines_create 408 after effect");
  EXPECT_EQ(fly_fault_label(cli->faults[2]), "any reset");
  EXPECT_EQ(fly_fault_label(cli->faults[3]), "machines_list malformed_json");
  EXPECT_EQ(cli->faults[3].count, 2);
  EXPECT_EQ(cli->create_timeouts, 1);
  EXPECT_EQ(cli->capacity_errors, 2);
  EXPECT_EQ(cli->capacity_status, 503);
  EXPECT_EQ(cli->stuck_launches, 1);
  EXPECT_EQ(cli->token_expires_after, 10);
  EXPECT_EQ(cli->empty_lists, 3);
  EXPECT_EQ(cli->taken_apps, std::vector<std::string>{"someone-elses"});
}

TEST(fly_emulator_flags_test, the_token_may_come_from_the_environment) {
  auto cli = parse_fly_emulator_flags({}, "from-env");
  ASSERT_TRUE(cli);
  EXPECT_EQ(cli->options.token, "from-env");
  EXPECT_FALSE(cli->own_sandboxes_dir);
  cli = parse_fly_emulator_flags({"--token", "flag"}, "from-env");
  ASSERT_TRUE(cli);
  EXPECT_EQ(cli->options.token, "flag");
}

TEST(fly_emulator_flags_test, refuses_what_it_cannot_read) {
  struct row {
    std::vector<std::string> args;
    std::string says;
  };
  std::vector<row> rows{
      {{}, "token is required"},
      {{"--token", "t", "--port", "70000"}, "--port"},
      {{"--token", "t", "--port"}, "a value is required"},
      {{"--token", "t", "--fault-rate", "1.5"}, "--fault-rate"},
      {{"--token", "t", "--fail", "apps_get:2"}, "OP:N:STATUS"},
      {{"--token", "t", "--fail", "no_such_op:1:500"}, "unknown operation"},
      {{"--token", "t", "--fail", "apps_get:0:500"}, "positive"},
      {{"--token", "t", "--fail", "apps_get:1:200"}, "400 to 599"},
      {{"--token", "t", "--reset", "apps_get:1:2"}, "OP:N"},
      {{"--token", "t", "--sandboxes", "relative"}, "absolute"},
      {{"--token", "t", "--bogus", "1"}, "unknown flag"},
      {{"--token", "t", "stray"}, "unexpected argument"},
  };
  for (auto& r : rows) {
    auto cli = parse_fly_emulator_flags(r.args, "");
    ASSERT_FALSE(cli) << r.says;
    EXPECT_EQ(code_of(cli.error()), errc::invalid_argument);
    EXPECT_NE(message_of(cli.error()).find(r.says), std::string::npos)
        << message_of(cli.error());
  }
}

} // namespace
} // namespace aloft::test
