#include "tests/support/actor_fixture.hpp"

#include <chrono>
#include <cstdlib>

#include <caf/scheduler/test_coordinator.hpp>
#include <caf/send.hpp>

#include "actors/atoms.hpp"
#include "actors/messages.hpp"
#include "engine/base/error.hpp"
#include "engine/base/ids.hpp"

namespace aloft::testing {

namespace {

caf::scheduler::test_coordinator& coordinator(caf::actor_system& sys) {
  return dynamic_cast<caf::scheduler::test_coordinator&>(sys.scheduler());
}

} // namespace

actor_fixture::actor_fixture() {
  char tmpl[] = "/tmp/aloft-actors-XXXXXX";
  home_ = ::mkdtemp(tmpl);
  cfg_.set("scheduler.policy", caf::atom("testing"));
  start();
}

actor_fixture::~actor_fixture() {
  crash();
  std::system(("rm -rf '" + home_ + "'").c_str());
}

void actor_fixture::start() {
  gate_ = std::make_unique<crashable_store>(*db_);
  provider_->frozen = false;
  sys_ = std::make_unique<caf::actor_system>(cfg_);
  self_ = std::make_unique<caf::scoped_actor>(*sys_);
  auto senv = std::make_shared<session_env>();
  senv->db = gate_.get();
  senv->clock = &clock_;
  senv->blocking = &blocking_;
  senv->home = resolve_home(home_);
  senv->installation_id = "i-test";
  senv->ssh_keys = ssh_keys_;
  senv->retry_delay_ms = 1000;
  senv->provider_timeout_ms = 5000;
  registry_env renv;
  renv.sessions = senv;
  renv.accounts["local"] = default_local_account();
  renv.providers["local"] = client_ ? client_ : std::shared_ptr<provider>{provider_};
  registry_ = spawn_registry(*sys_, std::move(renv));
  caf::anon_send(registry_, subscribe_atom::value, uint64_t{1},
                 subscriber_fn{[this](const event& e) { events_.push_back(e); }});
  session_records records;
  db_->scan(family::sessions, [&](const std::string&, const std::string& v) {
    if (auto rec = decode_session_record(v))
      records.push_back(*rec);
  });
  auto done = ask<done_atom>(rehydrate_atom::value, records);
  ASSERT_TRUE(done) << describe(done.error());
}

void actor_fixture::crash() {
  if (!sys_)
    return;
  // From here on nothing reaches the store or the provider, as if the
  // process had died; the actors are then shut down.
  gate_->cut_ = true;
  provider_->frozen = true;
  auto& sched = coordinator(*sys_);
  caf::anon_send_exit(registry_, caf::exit_reason::kill);
  registry_ = nullptr;
  sched.run();
  self_.reset();
  sys_.reset();
}

void actor_fixture::use_client(std::shared_ptr<provider> client) {
  client_ = std::move(client);
  ssh_keys_ = true;
  restart();
}

void actor_fixture::run() {
  coordinator(*sys_).run();
}

void actor_fixture::advance(int64_t ms) {
  auto& sched = coordinator(*sys_);
  // Step in one-second slices so the wall clock and CAF's clock stay in step
  // when timers re-arm relative to `now`.
  while (ms > 0) {
    auto step = std::min<int64_t>(ms, 1000);
    clock_.advance_ms(step);
    sched.clock().advance_time(std::chrono::milliseconds{step});
    sched.run();
    ms -= step;
  }
}

session_record actor_fixture::launch(int64_t idle_s, int64_t hard_s, bool auto_destroy) {
  session_record draft;
  draft.id = make_session_id();
  draft.account = "local";
  draft.provider = "fake";
  draft.idempotency_key = make_idempotency_key();
  draft.agent_cmd = "true";
  draft.auto_destroy = auto_destroy;
  draft.idle_timeout_ms = idle_s * 1000;
  draft.created_at = clock_.now_ms();
  draft.idle_deadline = draft.created_at + idle_s * 1000;
  draft.hard_deadline = draft.created_at + hard_s * 1000;
  auto rec = ask<session_record>(launch_atom::value, draft);
  EXPECT_TRUE(rec) << describe(rec.error());
  run();
  return rec ? *rec : draft;
}

session_record actor_fixture::stored(const std::string& id) {
  auto bytes = db_->get(family::sessions, id);
  EXPECT_TRUE(bytes);
  if (!bytes)
    return {};
  auto rec = decode_session_record(*bytes);
  EXPECT_TRUE(rec);
  return rec ? *rec : session_record{};
}

session_record actor_fixture::snapshot(const std::string& id) {
  auto rec = ask<session_record>(get_atom::value, id);
  EXPECT_TRUE(rec);
  return rec ? *rec : session_record{};
}

} // namespace aloft::testing
