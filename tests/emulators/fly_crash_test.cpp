// A crash between the Fly create and the session's next durable write: the
// machine exists, the record does not name it. After the restart the
// session finds it by its idempotency key and adopts it; no second machine
// is made. On the deterministic scheduler, with the real Fly provider and
// the emulator.
#include <chrono>
#include <thread>

#include <gtest/gtest.h>

#include "actors/atoms.hpp"
#include "actors/messages.hpp"
#include "engine/base/error.hpp"
#include "engine/base/ids.hpp"
#include "engine/executor.hpp"
#include "providers/fly/fly_provider.hpp"
#include "providers/http/http_loop.hpp"
#include "tests/emulators/fly/fly_emulator.hpp"
#include "tests/support/actor_fixture.hpp"
#include "tests/support/local_vm.hpp"

namespace aloft::testing {
namespace {

using namespace std::chrono_literals;

class fly_crash_test : public actor_fixture {
protected:
  void SetUp() override {
    // The machine's init reads the hard deadline as wall-clock time.
    clock_.set_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count());
    test::fly_emulator_options eo;
    eo.sandboxes_dir = tmp_.path() + "/emulator";
    eo.token = "fo1_FAKE_EMULATOR_TOKEN_0123456789";
    eo.boot_delay = 20ms;
    eo.wait_second = 50ms;
    emu_ = std::make_unique<test::fly_emulator>(eo);
    ASSERT_TRUE(emu_->ok()) << emu_->error();
    fly_provider_options o;
    o.api_url = emu_->base_url();
    o.token = eo.token;
    o.account = "local";
    o.installation_id = "i-test";
    o.http = http_;
    o.exec = pool_;
    o.boot_timeout = 20s;
    o.ssh_poll_interval = 20ms;
    use_client(make_fly_provider(o));
  }

  void TearDown() override {
    crash();
    http_->shutdown();
    emu_.reset();
  }

  // Runs the scheduler while real callbacks arrive, until `pred` or `bound`.
  bool run_until(const std::function<bool()>& pred, std::chrono::milliseconds bound) {
    auto until = std::chrono::steady_clock::now() + bound;
    for (;;) {
      run();
      if (pred())
        return true;
      if (std::chrono::steady_clock::now() > until)
        return false;
      std::this_thread::sleep_for(5ms);
    }
  }

  std::string dump_events() {
    std::string out;
    for (auto& e : events_)
      out += "\n  " + e.kind + " " + e.state + " " + e.message;
    return out;
  }

  test::temp_dir tmp_;
  std::unique_ptr<test::fly_emulator> emu_;
  std::shared_ptr<http_loop> http_ = std::make_shared<http_loop>();
  std::shared_ptr<thread_pool> pool_ = std::make_shared<thread_pool>(2);
};

TEST_F(fly_crash_test, a_machine_made_just_before_a_crash_is_adopted_after_the_restart) {
  session_record draft;
  draft.id = make_session_id();
  draft.account = "local";
  draft.provider = "fly";
  draft.idempotency_key = make_idempotency_key();
  draft.agent_cmd = "true";
  draft.idle_timeout_ms = 3600'000;
  draft.created_at = clock_.now_ms();
  draft.idle_deadline = draft.created_at + draft.idle_timeout_ms;
  draft.hard_deadline = draft.created_at + 3600'000;
  auto rec = ask<session_record>(launch_atom::value, draft);
  ASSERT_TRUE(rec) << describe(rec.error());
  // The create reaches the emulator; the session never hears of it (the
  // scheduler does not run again before the crash).
  ASSERT_TRUE(test::wait_until([&] { return emu_->live_machines() == 1; }, 30s));
  EXPECT_EQ(stored(draft.id).state, session_state::provisioning);
  EXPECT_TRUE(stored(draft.id).vm_id.empty());
  restart();
  ASSERT_TRUE(run_until([&] { return stored(draft.id).state == session_state::running; },
                        60s))
    << to_string(stored(draft.id).state) << ": " << stored(draft.id).reason;
  EXPECT_EQ(emu_->live_machines(), 1u) << "adopted, not made again";
  EXPECT_EQ(emu_->calls("machines_create"), 1);
  EXPECT_FALSE(stored(draft.id).vm_id.empty());
  EXPECT_EQ(emu_->machine_state("aloft-test-local", stored(draft.id).vm_id), "started");
}

TEST_F(fly_crash_test, an_empty_list_never_destroys_or_doubles_a_machine) {
  session_record draft;
  draft.id = make_session_id();
  draft.account = "local";
  draft.provider = "fly";
  draft.idempotency_key = make_idempotency_key();
  draft.agent_cmd = "true";
  draft.idle_timeout_ms = 3600'000;
  draft.created_at = clock_.now_ms();
  draft.idle_deadline = draft.created_at + draft.idle_timeout_ms;
  draft.hard_deadline = draft.created_at + 3600'000;
  ASSERT_TRUE(ask<session_record>(launch_atom::value, draft));
  ASSERT_TRUE(run_until([&] { return stored(draft.id).state == session_state::running; }, 60s))
    << to_string(stored(draft.id).state) << ": " << stored(draft.id).reason << " " << dump_events();
  auto vm = stored(draft.id).vm_id;
  // The provider lists nothing while the machine runs: reconcile and a
  // restart must confirm by id, never act on absence.
  emu_->empty_next_lists(10);
  caf::anon_send(registry_, reconcile_atom::value);
  restart();
  ASSERT_TRUE(run_until([&] { return emu_->calls("machines_get") >= 2; }, 30s));
  run_until([] { return false; }, 500ms);
  EXPECT_EQ(stored(draft.id).state, session_state::running);
  EXPECT_EQ(stored(draft.id).vm_id, vm);
  EXPECT_EQ(emu_->live_machines(), 1u);
  EXPECT_EQ(emu_->calls("machines_create"), 1);
  EXPECT_EQ(emu_->calls("machines_delete"), 0);
}

} // namespace
} // namespace aloft::testing
