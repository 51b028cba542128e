// The Fly provider against the Fly emulator: every call, and every fault the
// emulator can inject, over a real socket; machines reached over real SSH.
#include <cstdio>
#include <cstdlib>
#include <future>

#include <gtest/gtest.h>

#include "engine/base/error.hpp"
#include "engine/executor.hpp"
#include "engine/keys.hpp"
#include "engine/ssh_transport.hpp"
#include "providers/fly/fly_provider.hpp"
#include "providers/http/http_loop.hpp"
#include "tests/emulators/fly/fly_emulator.hpp"
#include "tests/support/local_vm.hpp"

namespace aloft {
namespace {

using namespace std::chrono_literals;

class fly_provider_test : public ::testing::Test {
protected:
  void SetUp() override {
    test::fly_emulator_options eo;
    eo.sandboxes_dir = tmp_.path() + "/emulator";
    eo.token = token_;
    eo.boot_delay = 20ms;
    eo.wait_second = 50ms;
    if (std::getenv("FLY_EMULATOR_LOG"))
      eo.log = [](const std::string& line) { std::fprintf(stderr, "emulator: %s\n", line.c_str()); };
    emu_ = std::make_unique<test::fly_emulator>(eo);
    ASSERT_TRUE(emu_->ok()) << emu_->error();
    http_loop_options ho;
    http_ = std::make_shared<http_loop>(ho);
    pool_ = std::make_shared<thread_pool>(2);
    auto keys = make_session_keys(tmp_.path() + "/keys");
    ASSERT_TRUE(keys) << describe(keys.error());
    keys_ = *keys;
  }

  void TearDown() override {
    if (http_)
      http_->shutdown();
    provider_.reset();
    emu_.reset(); // destroys every sandbox
    EXPECT_TRUE(test::processes_matching(tmp_.path() + "/emulator").empty());
  }

  std::shared_ptr<provider> make(const std::string& ip_mode = "ipv6") {
    fly_provider_options o;
    o.api_url = emu_->base_url();
    o.token = "Bearer " + token_; // a pasted scheme is stripped
    o.org = "personal";
    o.ip_mode = ip_mode;
    o.account = "fly-a";
    o.installation_id = "i-0123456789ab";
    o.http = http_;
    o.exec = pool_;
    o.boot_timeout = 20s;
    o.ssh_poll_interval = 20ms;
    provider_ = make_fly_provider(o);
    return provider_;
  }

  vm_request request(const std::string& session, const std::string& key) {
    vm_request r;
    r.installation_id = "i-0123456789ab";
    r.session_id = session;
    r.idempotency_key = key;
    r.client_public_key = keys_.client_public_key;
    r.host_private_key = keys_.host_private_key;
    r.host_public_key = keys_.host_public_key;
    r.hard_deadline_ms = (std::time(nullptr) + 3600) * 1000LL;
    return r;
  }

  caf::expected<vm_info> create(provider& p, const vm_request& r) {
    return test::await<vm_info>([&](auto cb) { p.create(r, cb); }, 60s);
  }
  caf::expected<vm_info> ready(provider& p, const std::string& id) {
    return test::await<vm_info>([&](auto cb) { p.wait_ready(id, cb); }, 60s);
  }
  caf::expected<vm_info> get(provider& p, const std::string& id) {
    return test::await<vm_info>([&](auto cb) { p.get(id, cb); }, 60s);
  }
  caf::expected<std::vector<vm_info>> list(provider& p) {
    return test::await<std::vector<vm_info>>(
      [&](auto cb) { p.list("i-0123456789ab", cb); }, 60s);
  }
  caf::error destroy(provider& p, const std::string& id) {
    return test::await_done([&](auto cb) { p.destroy(id, cb); }, 60s);
  }

  // Runs `echo` over SSH on the machine.
  std::string ssh_echo(const vm_info& vm) {
    auto factory = make_ssh_transport_factory();
    ssh_endpoint ep;
    ep.host = vm.host;
    ep.port = vm.port;
    ep.user = vm.user;
    ep.client_key_path = keys_.client_key_path;
    ep.host_public_key = keys_.host_public_key;
    auto t = test::connect(*factory, ep);
    if (!t)
      return "connect failed: " + describe(t.error());
    auto r = test::run(**t, "echo on-the-machine");
    return r ? r->out : "exec failed";
  }

  test::temp_dir tmp_;
  std::string token_ = "fo1_FAKE_EMULATOR_TOKEN_0123456789";
  std::unique_ptr<test::fly_emulator> emu_;
  std::shared_ptr<http_loop> http_;
  std::shared_ptr<thread_pool> pool_;
  std::shared_ptr<provider> provider_;
  session_keys keys_;
};

TEST_F(fly_provider_test, a_machine_is_created_reached_over_ssh_listed_and_destroyed) {
  auto& p = *make();
  auto vm = create(p, request("s-000000000001", "k-1"));
  ASSERT_TRUE(vm) << describe(vm.error());
  EXPECT_EQ(vm->session_id, "s-000000000001");
  EXPECT_EQ(vm->idempotency_key, "k-1");
  auto up = ready(p, vm->vm_id);
  ASSERT_TRUE(up) << describe(up.error());
  EXPECT_EQ(up->status, vm_status::running);
  EXPECT_EQ(up->host, "::1") << "ipv6 mode connects to the app's v6 address";
  EXPECT_NE(up->port, 0);
  EXPECT_EQ(ssh_echo(*up), "on-the-machine\n");
  auto all = list(p);
  ASSERT_TRUE(all) << describe(all.error());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ(all->front().vm_id, vm->vm_id);
  EXPECT_EQ(emu_->calls("apps_create"), 1) << "the app is made once";
  ASSERT_FALSE(destroy(p, vm->vm_id));
  auto after = get(p, vm->vm_id);
  ASSERT_TRUE(after);
  EXPECT_EQ(after->status, vm_status::gone);
  EXPECT_EQ(emu_->live_machines(), 0u);
  EXPECT_FALSE(destroy(p, vm->vm_id)) << "destroying a gone machine succeeds";
}

TEST_F(fly_provider_test, ipv6_plus_ipv4_connects_over_the_dedicated_v4) {
  auto& p = *make("ipv6+ipv4");
  auto vm = create(p, request("s-000000000002", "k-2"));
  ASSERT_TRUE(vm) << describe(vm.error());
  auto up = ready(p, vm->vm_id);
  ASSERT_TRUE(up) << describe(up.error());
  EXPECT_EQ(up->host, "127.0.0.1");
  EXPECT_EQ(ssh_echo(*up), "on-the-machine\n");
}

TEST_F(fly_provider_test, a_create_that_times_out_but_creates_is_adopted_not_doubled) {
  auto& p = *make();
  ASSERT_TRUE(list(p)); // the app exists
  emu_->inject_create_timeout(1);
  auto vm = create(p, request("s-000000000003", "k-3"));
  ASSERT_TRUE(vm) << describe(vm.error());
  EXPECT_EQ(vm->idempotency_key, "k-3");
  EXPECT_EQ(emu_->live_machines(), 1u);
  EXPECT_EQ(emu_->calls("machines_create"), 1) << "found by its key, not made again";
  auto up = ready(p, vm->vm_id);
  EXPECT_TRUE(up) << describe(up.error());
}

TEST_F(fly_provider_test, a_create_whose_answer_is_lost_is_adopted_and_one_never_made_is_retried) {
  auto& p = *make();
  ASSERT_TRUE(list(p));
  test::fly_fault lost;
  lost.op = "machines_create";
  lost.what = test::fly_fault::kind::reset;
  lost.after_effect = true; // made, then the connection dropped
  emu_->inject(lost);
  auto vm = create(p, request("s-00000000000b", "k-b"));
  ASSERT_TRUE(vm) << describe(vm.error());
  EXPECT_EQ(emu_->live_machines(), 1u);
  test::fly_fault early;
  early.op = "machines_create";
  early.what = test::fly_fault::kind::reset; // dropped before anything was made
  emu_->inject(early);
  auto second = create(p, request("s-00000000000c", "k-c"));
  ASSERT_TRUE(second) << describe(second.error());
  EXPECT_NE(second->vm_id, vm->vm_id);
  EXPECT_EQ(emu_->live_machines(), 2u) << "one machine per session, none doubled";
}

TEST_F(fly_provider_test, insufficient_capacity_is_retried_then_reported_as_such) {
  auto& p = *make();
  ASSERT_TRUE(list(p));
  emu_->inject_insufficient_capacity(1);
  auto vm = create(p, request("s-000000000004", "k-4"));
  ASSERT_TRUE(vm) << "one refusal is retried: " << describe(vm.error());
  emu_->inject_insufficient_capacity(100);
  auto refused = create(p, request("s-000000000005", "k-5"));
  ASSERT_FALSE(refused);
  EXPECT_EQ(code_of(refused.error()), errc::resource_exhausted);
  EXPECT_NE(message_of(refused.error()).find("no capacity"), std::string::npos)
    << message_of(refused.error());
  // Named with Fly's request id, for support.
  EXPECT_NE(message_of(refused.error()).find("; request id "), std::string::npos)
    << message_of(refused.error());
  EXPECT_EQ(emu_->live_machines(), 1u);
}

TEST_F(fly_provider_test, rate_limits_and_server_errors_are_retried) {
  auto& p = *make();
  auto vm = create(p, request("s-000000000006", "k-6"));
  ASSERT_TRUE(vm) << describe(vm.error());
  test::fly_fault f;
  f.op = "machines_get";
  f.what = test::fly_fault::kind::status;
  f.status = 429;
  f.retry_after_s = 1;
  f.count = 2;
  emu_->inject(f);
  test::fly_fault g;
  g.op = "machines_list";
  g.what = test::fly_fault::kind::status;
  g.status = 503;
  g.count = 2;
  emu_->inject(g);
  auto got = get(p, vm->vm_id);
  EXPECT_TRUE(got) << describe(got.error());
  auto all = list(p);
  ASSERT_TRUE(all) << describe(all.error());
  EXPECT_EQ(all->size(), 1u);
  EXPECT_GE(http_->stats().retries, 4u);
}

TEST_F(fly_provider_test, an_expired_token_is_unauthenticated) {
  auto& p = *make();
  ASSERT_TRUE(list(p));
  emu_->expire_token_after(0);
  auto r = list(p);
  ASSERT_FALSE(r);
  EXPECT_EQ(code_of(r.error()), errc::unauthenticated);
  EXPECT_EQ(message_of(r.error()).find(token_), std::string::npos);
}

TEST_F(fly_provider_test, a_machine_stuck_starting_is_a_deadline_not_a_hang) {
  fly_provider_options o;
  auto& p = *make();
  ASSERT_TRUE(list(p));
  emu_->stick_next_launches(1);
  auto vm = create(p, request("s-000000000007", "k-7"));
  ASSERT_TRUE(vm) << describe(vm.error());
  // A provider with a short boot timeout for this one.
  o.api_url = emu_->base_url();
  o.token = token_;
  o.account = "fly-a";
  o.installation_id = "i-0123456789ab";
  o.http = http_;
  o.exec = pool_;
  o.boot_timeout = 2s;
  auto quick = make_fly_provider(o);
  auto up = ready(*quick, vm->vm_id);
  ASSERT_FALSE(up);
  EXPECT_EQ(code_of(up.error()), errc::deadline_exceeded);
  EXPECT_EQ(emu_->machine_state("aloft-0123456789ab-fly-a", vm->vm_id), "starting");
}

TEST_F(fly_provider_test, malformed_answers_are_errors_naming_the_call) {
  auto& p = *make();
  auto vm = create(p, request("s-000000000008", "k-8"));
  ASSERT_TRUE(vm) << describe(vm.error());
  test::fly_fault f;
  f.op = "machines_get";
  f.what = test::fly_fault::kind::malformed_json;
  f.count = 1;
  emu_->inject(f);
  auto got = get(p, vm->vm_id);
  ASSERT_FALSE(got);
  EXPECT_EQ(code_of(got.error()), errc::data_loss);
  EXPECT_NE(message_of(got.error()).find("get machine " + vm->vm_id), std::string::npos)
    << message_of(got.error());
}

TEST_F(fly_provider_test, an_app_name_owned_by_someone_else_says_what_to_change) {
  emu_->reserve_app_name("aloft-0123456789ab-fly-a");
  auto& p = *make();
  auto vm = create(p, request("s-000000000009", "k-9"));
  ASSERT_FALSE(vm);
  EXPECT_NE(message_of(vm.error()).find("app_prefix"), std::string::npos)
    << message_of(vm.error());
}

TEST_F(fly_provider_test, creates_keep_to_flys_rate_of_one_a_second_after_a_burst_of_three) {
  auto& p = *make();
  ASSERT_TRUE(list(p));
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::future<caf::expected<vm_info>>> all;
  for (int i = 0; i < 5; ++i) {
    auto pr = std::make_shared<std::promise<caf::expected<vm_info>>>();
    all.push_back(pr->get_future());
    p.create(request("s-00000000010" + std::to_string(i), "k-r" + std::to_string(i)),
             [pr](caf::expected<vm_info> r) { pr->set_value(std::move(r)); });
  }
  for (auto& f : all) {
    ASSERT_EQ(f.wait_for(60s), std::future_status::ready);
    auto r = f.get();
    EXPECT_TRUE(r) << describe(r.error());
  }
  // Three at once, then one a second: the fifth starts two seconds in.
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 1800ms);
  EXPECT_EQ(emu_->live_machines(), 5u);
}

TEST_F(fly_provider_test, listing_without_an_app_creates_nothing) {
  auto& p = *make();
  auto all = list(p);
  ASSERT_TRUE(all) << describe(all.error());
  EXPECT_TRUE(all->empty());
  EXPECT_EQ(emu_->calls("apps_create"), 0);
}

TEST_F(fly_provider_test, the_init_ends_the_machine_at_its_hard_deadline) {
  auto& p = *make();
  auto req = request("s-00000000000a", "k-a");
  req.hard_deadline_ms = (std::time(nullptr) + 1) * 1000LL;
  auto vm = create(p, req);
  ASSERT_TRUE(vm) << describe(vm.error());
  ASSERT_TRUE(test::wait_until(
    [&] {
      auto g = get(p, vm->vm_id);
      return g && g->status == vm_status::gone;
    },
    30s))
    << "auto_destroy after the init exits";
  EXPECT_EQ(emu_->live_machines(), 0u);
}

} // namespace
} // namespace aloft
