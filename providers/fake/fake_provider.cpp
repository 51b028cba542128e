#include "providers/fake/fake_provider.hpp"

#include "engine/base/error.hpp"

namespace aloft {

bool fake_provider::should_fail() {
  if (failure_rate_ <= 0)
    return false;
  std::uniform_real_distribution<double> d{0, 1};
  return d(rng_) < failure_rate_;
}

void fake_provider::create(const vm_request& req, callback<vm_info> done) {
  if (frozen)
    return;
  ++calls_;
  vm_info vm;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (fail_create) {
      done(fail_create);
      return;
    }
    if (should_fail()) {
      done(make_error(errc::unavailable, "injected failure"));
      return;
    }
    ++creates_;
    vm.vm_id = "fake-" + std::to_string(++next_);
    vm.status = vm_status::running;
    vm.host = "127.0.0.1";
    vm.port = 22;
    vm.user = "agent";
    vm.workdir = "/work";
    vm.installation_id = req.installation_id;
    vm.session_id = req.session_id;
    vm.idempotency_key = req.idempotency_key;
    vms_[vm.vm_id] = vm;
    if (swallow_create)
      return;
  }
  done(vm);
}

void fake_provider::wait_ready(const std::string& vm_id, callback<vm_info> done) {
  get(vm_id, [done](caf::expected<vm_info> vm) {
    if (vm && vm->status != vm_status::running)
      done(make_error(errc::not_found, "VM is " + std::string{to_string(vm->status)}));
    else
      done(std::move(vm));
  });
}

void fake_provider::get(const std::string& vm_id, callback<vm_info> done) {
  if (frozen)
    return;
  ++calls_;
  vm_info vm;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    auto i = vms_.find(vm_id);
    if (i != vms_.end()) {
      vm = i->second;
    } else {
      vm.vm_id = vm_id;
      vm.status = vm_status::gone;
    }
  }
  done(vm);
}

void fake_provider::list(const std::string& installation_id,
                         callback<std::vector<vm_info>> done) {
  if (frozen)
    return;
  ++calls_;
  std::vector<vm_info> out;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    for (auto& [id, vm] : vms_)
      if (vm.installation_id == installation_id)
        out.push_back(vm);
  }
  done(out);
}

void fake_provider::destroy(const std::string& vm_id, done_callback done) {
  if (frozen)
    return;
  ++calls_;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    vms_.erase(vm_id);
    if (swallow_destroy)
      return;
  }
  done(caf::error{});
}

void fake_provider::add_vm(vm_info vm) {
  std::lock_guard<std::mutex> guard{mtx_};
  vms_[vm.vm_id] = vm;
}

void fake_provider::vanish(const std::string& vm_id) {
  std::lock_guard<std::mutex> guard{mtx_};
  vms_.erase(vm_id);
}

size_t fake_provider::vm_count() const {
  std::lock_guard<std::mutex> guard{mtx_};
  return vms_.size();
}

std::vector<vm_info> fake_provider::vms() const {
  std::lock_guard<std::mutex> guard{mtx_};
  std::vector<vm_info> out;
  for (auto& [id, vm] : vms_)
    out.push_back(vm);
  return out;
}

size_t fake_provider::creates() const {
  std::lock_guard<std::mutex> guard{mtx_};
  return creates_;
}

} // namespace aloft
