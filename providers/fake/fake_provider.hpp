// An in-process provider for tests and the bench harness.
//
// It keeps real state (VMs with tags), completes calls inline on the
// caller's thread (so tests on the deterministic scheduler stay
// deterministic), fails a configurable share of creates as `unavailable`
// (so retries are exercised), and can simulate a crash window: with
// `swallow_create` the VM is created but the reply never arrives; with
// `swallow_destroy` the VM is destroyed but the reply never arrives.
//
// With a `latency`, a call still takes effect at once but its answer comes
// that much later from the provider's own timer thread, as a cloud API's
// would: no thread waits for it. Answers still pending when the provider is
// destroyed are dropped.
// Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "providers/provider.hpp"

namespace aloft {

struct fake_provider_options {
  /// Share of creates that fail as `unavailable`.
  double failure_rate = 0.0;
  /// How long each call takes to answer; zero: inline on the caller's thread.
  std::chrono::microseconds latency{0};
  /// Whether it stands for a remote API (whose accounts pace their calls).
  bool remote_api = false;
};

class fake_provider final : public provider {
public:
  explicit fake_provider(double failure_rate = 0.0);
  explicit fake_provider(fake_provider_options opts);
  ~fake_provider() override;

  std::string kind() const override { return "fake"; }
  bool remote_api() const override { return remote_api_; }
  void create(const vm_request& req, callback<vm_info> done) override;
  void wait_ready(const std::string& vm_id, callback<vm_info> done) override;
  void get(const std::string& vm_id, callback<vm_info> done) override;
  void list(const std::string& installation_id, callback<std::vector<vm_info>> done) override;
  void destroy(const std::string& vm_id, done_callback done) override;

  /// Adds a VM as if someone else had created it.
  void add_vm(vm_info vm);
  /// Removes a VM behind the engine's back (the provider lost it).
  void vanish(const std::string& vm_id);

  /// While holding, `list` answers only at `release_lists`, with the VMs
  /// there are then (a slow list that sees what was created meanwhile).
  void hold_lists(bool on);
  void release_lists();

  size_t vm_count() const;
  std::vector<vm_info> vms() const;
  size_t creates() const;
  /// Every call made, for rate figures.
  uint64_t calls() const { return calls_; }
  /// Calls of `get` (not counting `wait_ready`): how many sessions asked
  /// about their VM.
  uint64_t gets() const { return gets_; }

  bool swallow_create = false;
  /// While frozen every call is dropped unanswered (the engine "crashed").
  std::atomic<bool> frozen{false};
  bool swallow_destroy = false;
  caf::error fail_create;

private:
  class timer_thread;

  bool should_fail(); // REQUIRES: mtx_ held
  vm_info lookup(const std::string& vm_id) const;
  /// Runs `answer` now, or after the latency on the timer thread.
  void reply(std::function<void()> answer);

  double failure_rate_;
  std::chrono::microseconds latency_;
  bool remote_api_;
  std::unique_ptr<timer_thread> timer_; // only with a latency
  std::mt19937 rng_{42};
  std::atomic<uint64_t> calls_{0};
  std::atomic<uint64_t> gets_{0};
  mutable std::mutex mtx_;
  std::map<std::string, vm_info> vms_;
  size_t creates_ = 0;
  size_t next_ = 0;
  bool hold_lists_ = false;
  std::vector<std::pair<std::string, callback<std::vector<vm_info>>>> held_lists_;
};

} // namespace aloft
