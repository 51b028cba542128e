// The fake provider's answers: inline without a latency; later, from its own
// thread, with one; dropped when it goes first. And which calls `gets`
// counts.
#include "providers/fake/fake_provider.hpp"

#include <future>
#include <thread>

#include <gtest/gtest.h>

namespace aloft {
namespace {

using namespace std::chrono_literals;

vm_request request_for(const std::string& session) {
  vm_request r;
  r.installation_id = "i-1";
  r.session_id = session;
  r.idempotency_key = "k-" + session;
  return r;
}

TEST(fake_provider, answers_inline_without_a_latency) {
  fake_provider p;
  bool answered = false;
  p.create(request_for("s-1"), [&](caf::expected<vm_info> vm) {
    ASSERT_TRUE(vm);
    answered = true;
  });
  EXPECT_TRUE(answered);
}

TEST(fake_provider, answers_later_from_its_own_thread_with_a_latency) {
  fake_provider p{fake_provider_options{0.0, 20ms}};
  std::promise<std::thread::id> answered_on;
  auto f = answered_on.get_future();
  auto t0 = std::chrono::steady_clock::now();
  p.create(request_for("s-1"), [&](caf::expected<vm_info> vm) {
    EXPECT_TRUE(vm);
    answered_on.set_value(std::this_thread::get_id());
  });
  // The call took effect at once; only its answer waits.
  EXPECT_EQ(p.vm_count(), 1u);
  ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 20ms);
  EXPECT_NE(f.get(), std::this_thread::get_id());
}

TEST(fake_provider, answers_in_call_order) {
  fake_provider p{fake_provider_options{0.0, 1ms}};
  std::mutex mtx;
  std::vector<int> order;
  std::promise<void> last;
  for (int i = 0; i < 50; ++i)
    p.get("vm-" + std::to_string(i), [&, i](caf::expected<vm_info>) {
      std::lock_guard<std::mutex> guard{mtx};
      order.push_back(i);
      if (i == 49)
        last.set_value();
    });
  ASSERT_EQ(last.get_future().wait_for(10s), std::future_status::ready);
  std::lock_guard<std::mutex> guard{mtx};
  ASSERT_EQ(order.size(), 50u);
  for (int i = 0; i < 50; ++i)
    EXPECT_EQ(order[i], i);
}

TEST(fake_provider, drops_answers_still_pending_when_it_goes) {
  bool answered = false;
  {
    fake_provider p{fake_provider_options{0.0, std::chrono::hours(1)}};
    p.destroy("vm-1", [&](caf::error) { answered = true; });
  } // must not wait the hour
  EXPECT_FALSE(answered);
}

TEST(fake_provider, counts_gets_but_not_waits_for_ready) {
  fake_provider p;
  vm_info vm;
  p.create(request_for("s-1"), [&](caf::expected<vm_info> v) { vm = *v; });
  p.wait_ready(vm.vm_id, [](caf::expected<vm_info> v) { EXPECT_TRUE(v); });
  EXPECT_EQ(p.gets(), 0u);
  p.get(vm.vm_id, [](caf::expected<vm_info> v) {
    ASSERT_TRUE(v);
    EXPECT_EQ(v->status, vm_status::running);
  });
  p.get("vm-missing", [](caf::expected<vm_info> v) {
    ASSERT_TRUE(v);
    EXPECT_EQ(v->status, vm_status::gone);
  });
  EXPECT_EQ(p.gets(), 2u);
  EXPECT_EQ(p.calls(), 4u);
}

} // namespace
} // namespace aloft
