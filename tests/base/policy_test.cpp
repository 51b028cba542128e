// Table tests of the pure decisions: watchdog, reconcile, retry, agent probe.
#include <gtest/gtest.h>

#include "engine/agent_script.hpp"
#include "engine/base/error.hpp"
#include "engine/reconcile.hpp"
#include "engine/retry.hpp"
#include "engine/watchdog_policy.hpp"

namespace aloft {
namespace {

struct watchdog_case {
  const char* name;
  watchdog_input in;
  int64_t now;
  watchdog_action action;
  int64_t next_at;
  const char* next_timer;
};

TEST(watchdog_policy, decisions) {
  auto in = [](int64_t idle, int64_t hard, bool auto_destroy = true, bool warned = false,
               bool reported = false) {
    watchdog_input w;
    w.idle_deadline = idle;
    w.hard_deadline = hard;
    w.hard_warning_ms = 100;
    w.auto_destroy = auto_destroy;
    w.hard_warned = warned;
    w.idle_reported = reported;
    return w;
  };
  using a = watchdog_action;
  watchdog_case cases[] = {
    {"idle first", in(500, 10'000), 0, a::none, 500, "idle"},
    {"idle expired", in(500, 10'000), 500, a::finish_idle, 0, ""},
    {"hard wins over idle", in(500, 400), 450, a::finish_hard, 0, ""},
    {"warning before hard", in(10'000, 1000), 0, a::none, 900, "hard_warning"},
    {"warning due", in(10'000, 1000), 900, a::warn_hard, 1000, "hard"},
    {"already warned", in(10'000, 1000, true, true), 950, a::none, 1000, "hard"},
    {"idle without auto-destroy reports", in(500, 10'000, false), 600, a::report_idle,
     9900, "hard_warning"},
    {"reported idle is not reported again", in(500, 10'000, false, false, true), 700,
     a::none, 9900, "hard_warning"},
    {"nothing armed", in(0, 0), 5, a::none, 0, ""},
    // After a restart halfway through the window the same absolute deadline
    // yields the time left, not the full timeout.
    {"restart halfway", in(10'000, 100'000), 6'000, a::none, 10'000, "idle"},
  };
  for (auto& c : cases) {
    auto d = decide_watchdog(c.in, c.now);
    EXPECT_EQ(d.action, c.action) << c.name;
    EXPECT_EQ(d.next_at, c.next_at) << c.name;
    EXPECT_EQ(d.next_timer, c.next_timer) << c.name;
  }
  EXPECT_EQ(push_idle_deadline(1000, 100, 500), 1000) << "never earlier";
  EXPECT_EQ(push_idle_deadline(1000, 800, 500), 1300);
}

session_record live(const std::string& id, const std::string& key, const std::string& vm,
                    session_state s = session_state::running) {
  session_record r;
  r.id = id;
  r.idempotency_key = key;
  r.vm_id = vm;
  r.state = s;
  return r;
}

vm_info vm(const std::string& id, const std::string& session, const std::string& key,
           const std::string& inst = "i-1") {
  vm_info v;
  v.vm_id = id;
  v.status = vm_status::running;
  v.session_id = session;
  v.idempotency_key = key;
  v.installation_id = inst;
  return v;
}

TEST(reconcile, plans) {
  std::vector<session_record> sessions = {
    live("s-a", "k-a", "vm-a"),
    live("s-b", "k-b", "", session_state::provisioning),
    live("s-c", "k-c", "vm-c", session_state::destroyed),
    live("s-d", "k-d", "vm-d", session_state::lost),
  };
  std::vector<vm_info> observed = {
    vm("vm-a", "s-a", "k-a"),          // owned: keep
    vm("vm-a2", "s-a", "k-a"),         // duplicate of s-a: destroy
    vm("vm-b", "s-b", "k-b"),          // interrupted create: adopt
    vm("vm-c", "s-c", "k-c"),          // session destroyed: destroy
    vm("vm-d", "s-d", "k-d"),          // lost session: keep for an explicit destroy
    vm("vm-x", "s-x", "k-x"),          // nobody's: destroy
    vm("vm-o", "s-o", "k-o", "i-2"),   // another installation: not ours
  };
  auto plan = plan_reconcile("i-1", "", sessions, observed);
  std::vector<std::string> destroyed;
  for (auto& v : plan.destroy)
    destroyed.push_back(v.vm_id);
  EXPECT_EQ(destroyed, (std::vector<std::string>{"vm-a2", "vm-c", "vm-x"}));
  ASSERT_EQ(plan.adopt.size(), 1u);
  EXPECT_EQ(plan.adopt[0].session_id, "s-b");
  EXPECT_EQ(plan.keep.size(), 2u);
  EXPECT_EQ(plan.reasons.size(), plan.destroy.size());
}

TEST(reconcile, another_accounts_vms_are_left_to_that_account) {
  auto mine = live("s-a", "k-a", "vm-a");
  mine.account = "fly-a";
  auto theirs = live("s-b", "k-b", "", session_state::provisioning);
  theirs.account = "fly-b";
  auto theirs_done = live("s-c", "k-c", "vm-c", session_state::destroyed);
  theirs_done.account = "fly-b";
  std::vector<vm_info> observed = {
    vm("vm-a", "s-a", "k-a"),   // mine: keep
    vm("vm-b", "s-b", "k-b"),   // fly-b's interrupted create: not adopted here
    vm("vm-b2", "s-b", "k-x"),  // fly-b's business, even if odd
    vm("vm-c", "s-c", "k-c"),   // fly-b's destroyed session: fly-b destroys it
    vm("vm-x", "s-x", "k-x"),   // nobody's: either account may destroy it
  };
  auto plan = plan_reconcile("i-1", "fly-a", {mine, theirs, theirs_done}, observed);
  ASSERT_EQ(plan.destroy.size(), 1u);
  EXPECT_EQ(plan.destroy[0].vm_id, "vm-x");
  EXPECT_TRUE(plan.adopt.empty());
  EXPECT_EQ(plan.keep.size(), 4u);
}

TEST(reconcile, an_empty_list_destroys_and_adopts_nothing) {
  auto plan = plan_reconcile("i-1", "", {live("s-a", "k-a", "vm-a")}, {});
  EXPECT_TRUE(plan.destroy.empty());
  EXPECT_TRUE(plan.adopt.empty());
}

TEST(retry, decisions) {
  retry_policy p;
  p.max_attempts = 4;
  p.base_delay_ms = 100;
  p.max_delay_ms = 1000;
  auto unavailable = make_error(errc::unavailable, "503");
  EXPECT_FALSE(decide_retry(make_error(errc::invalid_argument, "x"), 1, p, 0.5).retry);
  EXPECT_FALSE(decide_retry(make_error(errc::deadline_exceeded, "x"), 1, p, 0.5).retry);
  EXPECT_FALSE(decide_retry(unavailable, 4, p, 0.5).retry) << "bounded";
  auto d1 = decide_retry(unavailable, 1, p, 0.0);
  auto d3 = decide_retry(unavailable, 3, p, 1.0);
  EXPECT_TRUE(d1.retry);
  EXPECT_EQ(d1.delay_ms, 50);
  EXPECT_EQ(d3.delay_ms, 400);
  EXPECT_EQ(decide_retry(unavailable, 3, p, 0.0, 900).delay_ms, 900) << "Retry-After";
  EXPECT_EQ(decide_retry(unavailable, 1, p, 0.0, 5000).delay_ms, 50)
    << "a Retry-After beyond the maximum is not honoured";
}

TEST(agent_probe, parses_status_lines_and_rejects_anything_else) {
  auto p = parse_agent_probe("S - 120 1700000000 42");
  ASSERT_TRUE(p);
  EXPECT_FALSE(p->exit_code);
  EXPECT_EQ(p->log_size, 120u);
  EXPECT_EQ(p->terminal_activity, 1700000000);
  EXPECT_EQ(p->cpu_ticks, 42u);
  auto q = parse_agent_probe("S 3 10 0 0");
  ASSERT_TRUE(q && q->exit_code);
  EXPECT_EQ(*q->exit_code, 3);
  for (auto bad : {"", "S", "X - 1 2 3", "S - 1 2", "S - 1 2 3 4", "S 999 1 2 3",
                   "S - -1 2 3", "S - 1x 2 3", "S - 99999999999999999999 2 3"})
    EXPECT_FALSE(parse_agent_probe(bad)) << bad;
}

TEST(agent_script, quotes_paths_for_the_shell) {
  EXPECT_EQ(shell_quote("a b"), "'a b'");
  EXPECT_EQ(shell_quote("it's"), "'it'\\''s'");
  EXPECT_EQ(agent_state_dir("/sandbox/x/work"), "/sandbox/x/aloft");
}

} // namespace
} // namespace aloft
