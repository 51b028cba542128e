#include "bench/fake_provider.hpp"

#include "engine/base/error.hpp"

namespace aloft::bench {

bool fake_provider::should_fail() {
  if (failure_rate_ <= 0)
    return false;
  std::uniform_real_distribution<double> d{0, 1};
  return d(rng_) < failure_rate_;
}

void fake_provider::create(const vm_request& req, callback<vm_info> done) {
  ++calls_;
  vm_info vm;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (should_fail()) {
      done(make_error(errc::unavailable, "injected failure"));
      return;
    }
    vm.vm_id = "bench-" + std::to_string(++next_);
    vm.status = vm_status::running;
    vm.host = "127.0.0.1";
    vm.installation_id = req.installation_id;
    vm.session_id = req.session_id;
    vm.idempotency_key = req.idempotency_key;
    vms_[vm.vm_id] = vm;
  }
  done(std::move(vm));
}

void fake_provider::wait_ready(const std::string& vm_id, callback<vm_info> done) {
  get(vm_id, std::move(done));
}

void fake_provider::get(const std::string& vm_id, callback<vm_info> done) {
  ++calls_;
  vm_info vm;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    auto i = vms_.find(vm_id);
    if (i != vms_.end())
      vm = i->second;
    else
      vm.vm_id = vm_id;
  }
  done(std::move(vm));
}

void fake_provider::list(const std::string& installation_id,
                         callback<std::vector<vm_info>> done) {
  ++calls_;
  std::vector<vm_info> out;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    for (auto& [id, vm] : vms_)
      if (vm.installation_id == installation_id)
        out.push_back(vm);
  }
  done(std::move(out));
}

void fake_provider::destroy(const std::string& vm_id, done_callback done) {
  ++calls_;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    vms_.erase(vm_id);
  }
  done(caf::error{});
}

size_t fake_provider::vm_count() const {
  std::lock_guard<std::mutex> guard{mtx_};
  return vms_.size();
}

} // namespace aloft::bench
