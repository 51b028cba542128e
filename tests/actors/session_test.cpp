// The session state machine, watchdog and rehydration on the deterministic
// scheduler with a fake provider, the in-memory store and a virtual clock.
#include <algorithm>

#include <gtest/gtest.h>

#include "actors/atoms.hpp"
#include "actors/messages.hpp"
#include "engine/base/error.hpp"
#include "tests/support/actor_fixture.hpp"

namespace aloft::testing {
namespace {

using st = session_state;

class session_test : public actor_fixture {
protected:
  std::vector<std::string> states_of(const std::string& id) {
    std::vector<std::string> out;
    for (auto& e : events_)
      if (e.session == id && e.kind == "state")
        out.push_back(e.state);
    return out;
  }
  bool has_event(const std::string& kind, const std::string& needle) {
    return std::any_of(events_.begin(), events_.end(), [&](const event& e) {
      return e.kind == kind && e.message.find(needle) != std::string::npos;
    });
  }
};

TEST_F(session_test, launch_walks_every_state_to_running_and_persists_each) {
  auto rec = launch();
  EXPECT_EQ(rec.state, st::pending);
  auto s = stored(rec.id);
  EXPECT_EQ(s.state, st::running);
  EXPECT_FALSE(s.vm_id.empty());
  EXPECT_EQ(s.transitions, 3u);
  EXPECT_EQ(states_of(rec.id),
            (std::vector<std::string>{"pending", "provisioning", "booting", "running"}));
  EXPECT_EQ(provider_->vm_count(), 1u);
  EXPECT_EQ(snapshot(rec.id).state, st::running);
}

TEST_F(session_test, destroy_records_destroyed_only_after_the_vm_is_gone) {
  auto rec = launch();
  provider_->swallow_destroy = true; // the provider never confirms
  auto done = ask<done_atom>(destroy_atom::value, rec.id);
  ASSERT_TRUE(done);
  run();
  EXPECT_EQ(stored(rec.id).state, st::stopping);
  provider_->swallow_destroy = false;
  advance(5000); // the unanswered call times out
  EXPECT_EQ(stored(rec.id).state, st::stopping);
  advance(1000); // then it is retried
  EXPECT_EQ(stored(rec.id).state, st::destroyed);
  EXPECT_EQ(provider_->vm_count(), 0u);
}

TEST_F(session_test, idle_timeout_destroys_the_vm) {
  auto rec = launch(/*idle_s=*/5);
  advance(4000);
  EXPECT_EQ(stored(rec.id).state, st::running);
  advance(2000);
  auto s = stored(rec.id);
  EXPECT_EQ(s.state, st::destroyed);
  EXPECT_NE(s.reason.find("idle timeout"), std::string::npos) << s.reason;
  EXPECT_EQ(provider_->vm_count(), 0u);
}

TEST_F(session_test, activity_pushes_the_idle_deadline) {
  auto rec = launch(/*idle_s=*/5);
  advance(4000);
  caf::anon_send(registry_, activity_atom::value, rec.id, std::string{"attach"});
  run();
  advance(4000);
  EXPECT_EQ(stored(rec.id).state, st::running);
  EXPECT_EQ(snapshot(rec.id).last_activity, "attach");
  advance(2000);
  EXPECT_EQ(stored(rec.id).state, st::destroyed);
}

TEST_F(session_test, with_auto_destroy_off_idleness_only_raises_an_event) {
  auto rec = launch(/*idle_s=*/5, /*hard_s=*/3600, /*auto_destroy=*/false);
  advance(10'000);
  EXPECT_EQ(stored(rec.id).state, st::running);
  EXPECT_TRUE(has_event("warning", "auto-destroy is off"));
  EXPECT_EQ(provider_->vm_count(), 1u);
}

TEST_F(session_test, hard_deadline_warns_first_then_destroys) {
  auto rec = launch(/*idle_s=*/100'000, /*hard_s=*/1200);
  advance(599'000);
  EXPECT_FALSE(has_event("warning", "hard deadline"));
  advance(2'000);
  EXPECT_TRUE(has_event("warning", "hard deadline"));
  EXPECT_TRUE(stored(rec.id).hard_warned);
  advance(600'000);
  auto s = stored(rec.id);
  EXPECT_EQ(s.state, st::destroyed);
  EXPECT_EQ(s.reason, "hard timeout reached");
}

TEST_F(session_test, extend_moves_the_hard_deadline) {
  auto rec = launch(/*idle_s=*/100'000, /*hard_s=*/100);
  auto ext = ask<session_record>(extend_atom::value, rec.id, int64_t{100});
  ASSERT_TRUE(ext);
  EXPECT_EQ(ext->hard_deadline, rec.hard_deadline + 100'000);
  advance(150'000);
  EXPECT_EQ(stored(rec.id).state, st::running);
  advance(60'000);
  EXPECT_EQ(stored(rec.id).state, st::destroyed);
  auto bad = ask<session_record>(extend_atom::value, rec.id, int64_t{10});
  ASSERT_FALSE(bad);
  EXPECT_EQ(code_of(bad.error()), errc::failed_precondition);
}

TEST_F(session_test, restart_halfway_through_the_idle_window_rearms_with_the_time_left) {
  auto rec = launch(/*idle_s=*/10);
  advance(6000);
  restart();
  advance(3000);
  EXPECT_EQ(stored(rec.id).state, st::running);
  advance(2000);
  EXPECT_EQ(stored(rec.id).state, st::destroyed);
}

TEST_F(session_test, restart_past_the_hard_deadline_destroys) {
  auto rec = launch(/*idle_s=*/100'000, /*hard_s=*/60);
  crash();
  clock_.advance_ms(120'000);
  start();
  EXPECT_EQ(stored(rec.id).state, st::destroyed);
  EXPECT_EQ(provider_->vm_count(), 0u);
}

TEST_F(session_test, vm_gone_while_away_is_lost_with_the_reason) {
  auto rec = launch();
  crash();
  provider_->vanish(stored(rec.id).vm_id);
  start();
  auto s = stored(rec.id);
  EXPECT_EQ(s.state, st::lost);
  EXPECT_NE(s.reason.find("gone"), std::string::npos) << s.reason;
  EXPECT_EQ(provider_->creates(), 1u) << "reconnecting must never create a VM";
}

// Crash points: after restart each case ends with exactly one VM owned by the
// session, or none, never a stray one.
TEST_F(session_test, crash_after_the_intent_write_creates_once_after_restart) {
  provider_->frozen = true; // the create call never happens
  auto rec = launch();
  EXPECT_EQ(stored(rec.id).state, st::provisioning);
  restart();
  EXPECT_EQ(stored(rec.id).state, st::running);
  EXPECT_EQ(provider_->vm_count(), 1u);
  EXPECT_EQ(provider_->vms()[0].session_id, rec.id);
}

TEST_F(session_test, crash_after_create_returned_adopts_the_vm_by_its_key) {
  provider_->swallow_create = true; // created, but the reply is lost
  auto rec = launch();
  EXPECT_EQ(stored(rec.id).state, st::provisioning);
  EXPECT_EQ(provider_->vm_count(), 1u);
  provider_->swallow_create = false;
  restart();
  auto s = stored(rec.id);
  EXPECT_EQ(s.state, st::running);
  EXPECT_EQ(provider_->vm_count(), 1u);
  EXPECT_EQ(provider_->creates(), 1u);
  EXPECT_EQ(s.vm_id, provider_->vms()[0].vm_id);
}

TEST_F(session_test, crash_before_the_destroy_is_recorded_finishes_after_restart) {
  auto rec = launch();
  provider_->swallow_destroy = true; // destroyed, but the reply is lost
  ASSERT_TRUE(ask<done_atom>(destroy_atom::value, rec.id));
  run();
  EXPECT_EQ(stored(rec.id).state, st::stopping);
  EXPECT_EQ(provider_->vm_count(), 0u);
  provider_->swallow_destroy = false;
  restart();
  EXPECT_EQ(stored(rec.id).state, st::destroyed);
  EXPECT_EQ(provider_->vm_count(), 0u);
}

TEST_F(session_test, reconcile_destroys_unowned_vms_and_keeps_owned_ones) {
  auto rec = launch();
  vm_info stray;
  stray.vm_id = "stray-1";
  stray.status = vm_status::running;
  stray.installation_id = "i-test";
  stray.session_id = "s-000000000000";
  provider_->add_vm(stray);
  vm_info foreign = stray;
  foreign.vm_id = "foreign-1";
  foreign.installation_id = "i-other";
  provider_->add_vm(foreign);
  caf::anon_send(registry_, reconcile_atom::value);
  run();
  auto vms = provider_->vms();
  ASSERT_EQ(vms.size(), 2u);
  EXPECT_TRUE(std::any_of(vms.begin(), vms.end(),
                          [&](const vm_info& v) { return v.session_id == rec.id; }));
  EXPECT_TRUE(std::any_of(vms.begin(), vms.end(),
                          [&](const vm_info& v) { return v.vm_id == "foreign-1"; }));
  EXPECT_TRUE(has_event("reconcile", "destroyed unowned VM stray-1"));
}

// A reconcile whose list is slow must not take a session launched while it
// waited for a stray: the sessions it judges by are read after the VMs.
TEST_F(session_test, reconcile_never_destroys_the_vm_of_a_session_launched_while_it_listed) {
  provider_->hold_lists(true);
  caf::anon_send(registry_, reconcile_atom::value);
  run();
  auto rec = launch();
  ASSERT_EQ(stored(rec.id).state, st::running);
  provider_->hold_lists(false);
  provider_->release_lists();
  run();
  EXPECT_EQ(provider_->vm_count(), 1u);
  EXPECT_EQ(stored(rec.id).state, st::running);
  EXPECT_FALSE(has_event("reconcile", "destroying VM"));
}

// Holds creates until the test answers them, as a slow cloud API would.
class holding_provider final : public provider {
public:
  explicit holding_provider(std::shared_ptr<fake_provider> inner) : inner_(std::move(inner)) {}
  std::string kind() const override { return "fake"; }
  void create(const vm_request&, callback<vm_info> done) override {
    held.push_back(std::move(done));
  }
  void wait_ready(const std::string& id, callback<vm_info> done) override {
    inner_->wait_ready(id, std::move(done));
  }
  void get(const std::string& id, callback<vm_info> done) override {
    inner_->get(id, std::move(done));
  }
  void list(const std::string& inst, callback<std::vector<vm_info>> done) override {
    inner_->list(inst, std::move(done));
  }
  void destroy(const std::string& id, done_callback done) override {
    inner_->destroy(id, std::move(done));
  }
  std::vector<callback<vm_info>> held;

private:
  std::shared_ptr<fake_provider> inner_;
};

// A destroy asked while the create is in flight, and the create then times
// out at the provider (which made the VM anyway, or not): the session
// still ends destroyed, and no VM is left.
TEST_F(session_test, a_destroy_during_a_create_that_times_out_leaves_no_vm) {
  for (bool made_anyway : {true, false}) {
    auto holding = std::make_shared<holding_provider>(provider_);
    client_ = holding;
    restart();
    auto rec = launch();
    ASSERT_EQ(holding->held.size(), 1u);
    ASSERT_EQ(stored(rec.id).state, st::provisioning);
    auto destroyed = (*self_)->request(registry_, caf::infinite, destroy_atom::value, rec.id);
    run();
    ASSERT_EQ(stored(rec.id).state, st::stopping);
    if (made_anyway) {
      vm_info late;
      late.vm_id = "late-1";
      late.status = vm_status::running;
      late.installation_id = "i-test";
      late.session_id = rec.id;
      late.idempotency_key = rec.idempotency_key;
      provider_->add_vm(late);
    }
    auto answer = std::move(holding->held.front());
    holding->held.clear();
    answer(make_error(errc::deadline_exceeded, "create timed out"));
    run();
    EXPECT_EQ(stored(rec.id).state, st::destroyed) << stored(rec.id).reason;
    EXPECT_EQ(provider_->vm_count(), 0u) << (made_anyway ? "the late VM is left" : "");
    bool answered = false;
    destroyed.receive([&](done_atom) { answered = true; },
                      [&](caf::error& err) { ADD_FAILURE() << describe(err); });
    EXPECT_TRUE(answered) << "the destroy request got no answer";
    EXPECT_FALSE(has_event("error", "refused transition"));
  }
}

TEST_F(session_test, a_failed_create_fails_the_session_with_the_reason) {
  provider_->fail_create = make_error(errc::permission_denied, "quota exceeded");
  auto rec = launch();
  auto s = stored(rec.id);
  EXPECT_EQ(s.state, st::failed);
  EXPECT_NE(s.reason.find("quota exceeded"), std::string::npos) << s.reason;
  EXPECT_EQ(provider_->vm_count(), 0u);
}

TEST_F(session_test, unknown_ids_are_not_found) {
  auto r = ask<session_record>(get_atom::value, std::string{"s-0123456789ab"});
  ASSERT_FALSE(r);
  EXPECT_EQ(code_of(r.error()), errc::not_found);
  auto d = ask<done_atom>(destroy_atom::value, std::string{"s-0123456789ab"});
  ASSERT_FALSE(d);
  EXPECT_EQ(code_of(d.error()), errc::not_found);
}

} // namespace
} // namespace aloft::testing
