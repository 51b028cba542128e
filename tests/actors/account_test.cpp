// Per-account behaviour of the actor graph on the deterministic scheduler:
// the cap on live sessions, guards re-armed on live sessions, quota errors
// reported with the account's live VMs, accounts added and forgotten at run
// time.
#include <gtest/gtest.h>

#include "actors/atoms.hpp"
#include "actors/messages.hpp"
#include "engine/base/error.hpp"
#include "engine/base/ids.hpp"
#include "tests/support/actor_fixture.hpp"

namespace aloft::testing {
namespace {

using st = session_state;

class account_test : public actor_fixture {
protected:
  // A draft on `account`, as the engine makes one.
  session_record draft_on(const std::string& account, int64_t idle_s = 800) {
    session_record d;
    d.id = make_session_id();
    d.account = account;
    d.provider = "fake";
    d.idempotency_key = make_idempotency_key();
    d.agent_cmd = "true";
    d.auto_destroy = true;
    d.idle_timeout_ms = idle_s * 1000;
    d.created_at = clock_.now_ms();
    d.idle_deadline = d.created_at + d.idle_timeout_ms;
    d.hard_deadline = d.created_at + 8 * 3600 * 1000;
    return d;
  }

  void set_account(const account& a) {
    auto r = ask<done_atom>(account_atom::value, a);
    ASSERT_TRUE(r) << describe(r.error());
  }
};

TEST_F(account_test, launches_beyond_max_concurrent_vms_are_refused_until_one_ends) {
  auto a = default_local_account();
  a.max_concurrent_vms = 2;
  set_account(a);
  auto one = launch();
  launch();
  auto third = ask<session_record>(launch_atom::value, draft_on("local"));
  ASSERT_FALSE(third);
  EXPECT_EQ(code_of(third.error()), errc::resource_exhausted);
  EXPECT_NE(message_of(third.error()).find("max_concurrent_vms"), std::string::npos)
    << message_of(third.error());
  auto done = ask<done_atom>(destroy_atom::value, one.id);
  ASSERT_TRUE(done);
  run();
  ASSERT_EQ(stored(one.id).state, st::destroyed);
  auto again = ask<session_record>(launch_atom::value, draft_on("local"));
  EXPECT_TRUE(again) << describe(again.error());
}

TEST_F(account_test, new_guards_reach_only_the_accounts_live_sessions) {
  auto other = std::make_shared<fake_provider>();
  account b;
  b.name = "other";
  b.provider = "fake";
  auto added = ask<done_atom>(account_atom::value, b, provider_ptr{other});
  ASSERT_TRUE(added);
  auto mine = launch(/*idle_s=*/1000);
  auto theirs = ask<session_record>(launch_atom::value, draft_on("other", 1000));
  ASSERT_TRUE(theirs);
  run();
  guards g;
  g.idle_timeout_s = 5;
  auto n = ask<uint64_t>(guards_atom::value, std::string{"local"}, g);
  ASSERT_TRUE(n);
  EXPECT_EQ(*n, 1u);
  run();
  EXPECT_EQ(stored(mine.id).idle_timeout_ms, 5000);
  advance(6000);
  EXPECT_EQ(stored(mine.id).state, st::destroyed);
  EXPECT_EQ(stored(theirs->id).state, st::running);
  EXPECT_EQ(stored(theirs->id).idle_timeout_ms, 1'000'000);
  EXPECT_EQ(other->vm_count(), 1u);
}

TEST_F(account_test, a_quota_error_says_so_with_the_accounts_live_vms) {
  launch();
  launch();
  provider_->fail_create = make_error(errc::resource_exhausted, "machine quota exceeded");
  auto rec = launch();
  advance(60'000); // every retry, with backoff
  auto s = stored(rec.id);
  EXPECT_EQ(s.state, st::failed);
  EXPECT_NE(s.reason.find("machine quota exceeded"), std::string::npos) << s.reason;
  EXPECT_NE(s.reason.find("quota or rate limit (account local has 2 live VMs)"),
            std::string::npos)
    << s.reason;
}

TEST_F(account_test, a_forgotten_account_launches_nothing_and_its_sessions_finish) {
  auto rec = launch();
  auto gone = ask<done_atom>(forget_atom::value, std::string{"local"});
  ASSERT_TRUE(gone);
  auto refused = ask<session_record>(launch_atom::value, draft_on("local"));
  ASSERT_FALSE(refused);
  EXPECT_EQ(code_of(refused.error()), errc::invalid_argument);
  // The live session still reaches its (retired) account actor.
  auto done = ask<done_atom>(destroy_atom::value, rec.id);
  ASSERT_TRUE(done);
  run();
  EXPECT_EQ(stored(rec.id).state, st::destroyed);
  EXPECT_EQ(provider_->vm_count(), 0u);
}

TEST_F(account_test, an_account_without_a_client_is_known_but_cannot_launch) {
  account fly;
  fly.name = "fly-a";
  fly.provider = "fly";
  auto added = ask<done_atom>(account_atom::value, fly, provider_ptr{});
  ASSERT_TRUE(added);
  auto r = ask<session_record>(launch_atom::value, draft_on("fly-a"));
  ASSERT_FALSE(r);
  EXPECT_EQ(code_of(r.error()), errc::unimplemented);
  EXPECT_NE(message_of(r.error()).find("fly provider"), std::string::npos);
}

TEST_F(account_test, a_cloud_account_paces_its_calls_and_the_local_one_does_not) {
  fake_provider_options remote;
  remote.remote_api = true; // stands for a cloud API: paced
  auto cloud = std::make_shared<fake_provider>(remote);
  account c;
  c.name = "cloud";
  c.provider = "fly";
  c.max_concurrent_vms = 1000;
  ASSERT_TRUE(ask<done_atom>(account_atom::value, c, provider_ptr{cloud}));
  auto local = default_local_account();
  local.max_concurrent_vms = 1000;
  set_account(local);
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(ask<session_record>(launch_atom::value, draft_on("cloud")));
    ASSERT_TRUE(ask<session_record>(launch_atom::value, draft_on("local")));
  }
  run();
  // The local account made all its VMs at once; the cloud one only its
  // burst of calls (each session makes two: create, then wait for it).
  EXPECT_EQ(provider_->creates(), 100u);
  EXPECT_LE(cloud->creates(), 40u);
  EXPECT_GE(cloud->creates(), 20u);
  advance(1000);
  auto after_one_second = cloud->creates();
  EXPECT_LE(after_one_second, 60u) << "20 calls a second after the burst";
  advance(20'000);
  EXPECT_EQ(cloud->creates(), 100u) << "paced, never refused";
  EXPECT_EQ(cloud->vm_count(), 100u);
}

} // namespace
} // namespace aloft::testing
