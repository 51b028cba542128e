// An in-process provider for tests and the bench harness.
//
// It keeps real state (VMs with tags), completes calls inline on the
// caller's thread (so tests on the deterministic scheduler stay
// deterministic), fails a configurable share of creates as `unavailable`
// (so retries are exercised), and can simulate a crash window: with
// `swallow_create` the VM is created but the reply never arrives; with
// `swallow_destroy` the VM is destroyed but the reply never arrives.
// Thread-safe.
#pragma once

#include <atomic>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "providers/provider.hpp"

namespace aloft {

class fake_provider final : public provider {
public:
  explicit fake_provider(double failure_rate = 0.0) : failure_rate_(failure_rate) {}

  std::string kind() const override { return "fake"; }
  void create(const vm_request& req, callback<vm_info> done) override;
  void wait_ready(const std::string& vm_id, callback<vm_info> done) override;
  void get(const std::string& vm_id, callback<vm_info> done) override;
  void list(const std::string& installation_id, callback<std::vector<vm_info>> done) override;
  void destroy(const std::string& vm_id, done_callback done) override;

  /// Adds a VM as if someone else had created it.
  void add_vm(vm_info vm);
  /// Removes a VM behind the engine's back (the provider lost it).
  void vanish(const std::string& vm_id);

  size_t vm_count() const;
  std::vector<vm_info> vms() const;
  size_t creates() const;
  /// Every call made, for rate figures.
  uint64_t calls() const { return calls_; }

  bool swallow_create = false;
  /// While frozen every call is dropped unanswered (the engine "crashed").
  std::atomic<bool> frozen{false};
  bool swallow_destroy = false;
  caf::error fail_create;

private:
  bool should_fail(); // REQUIRES: mtx_ held

  double failure_rate_;
  std::mt19937 rng_{42};
  std::atomic<uint64_t> calls_{0};
  mutable std::mutex mtx_;
  std::map<std::string, vm_info> vms_;
  size_t creates_ = 0;
  size_t next_ = 0;
};

} // namespace aloft
