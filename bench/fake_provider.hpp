// An in-process provider for the bench harness: VMs are map entries, calls
// complete inline on the caller's thread, and a configurable share of
// creates fails as `unavailable` (so the retry path is exercised).
// Thread-safe.
#pragma once

#include <atomic>
#include <map>
#include <mutex>
#include <random>

#include "providers/provider.hpp"

namespace aloft::bench {

class fake_provider final : public provider {
public:
  explicit fake_provider(double failure_rate = 0.0) : failure_rate_(failure_rate) {}

  std::string kind() const override { return "fake"; }
  void create(const vm_request& req, callback<vm_info> done) override;
  void wait_ready(const std::string& vm_id, callback<vm_info> done) override;
  void get(const std::string& vm_id, callback<vm_info> done) override;
  void list(const std::string& installation_id, callback<std::vector<vm_info>> done) override;
  void destroy(const std::string& vm_id, done_callback done) override;

  size_t vm_count() const;
  uint64_t calls() const { return calls_; }

private:
  bool should_fail();

  double failure_rate_;
  mutable std::mutex mtx_;
  std::map<std::string, vm_info> vms_;
  std::mt19937 rng_{42};
  uint64_t next_ = 0;
  std::atomic<uint64_t> calls_{0};
};

} // namespace aloft::bench
