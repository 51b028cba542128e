#include "providers/fake/fake_provider.hpp"

#include <condition_variable>
#include <queue>
#include <thread>

#include "engine/base/error.hpp"

namespace aloft {

// Runs answers once they are due, in due order, on one thread that sleeps
// only until the next one.
class fake_provider::timer_thread {
public:
  timer_thread() : thread_([this] { run(); }) {}

  ~timer_thread() {
    {
      std::lock_guard<std::mutex> guard{mtx_};
      stopping_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }

  void at(std::chrono::steady_clock::time_point due, std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> guard{mtx_};
      queue_.push({due, next_++, std::move(fn)});
    }
    cv_.notify_one();
  }

private:
  struct entry {
    std::chrono::steady_clock::time_point due;
    uint64_t seq; // keeps answers due at the same time in call order
    std::function<void()> fn;
    bool operator>(const entry& other) const {
      return due != other.due ? due > other.due : seq > other.seq;
    }
  };

  void run() {
    std::unique_lock<std::mutex> lock{mtx_};
    while (!stopping_) {
      if (queue_.empty()) {
        cv_.wait(lock);
        continue;
      }
      auto due = queue_.top().due;
      if (std::chrono::steady_clock::now() < due) {
        cv_.wait_until(lock, due);
        continue;
      }
      auto fn = std::move(const_cast<entry&>(queue_.top()).fn);
      queue_.pop();
      lock.unlock();
      fn();
      lock.lock();
    }
  }

  std::mutex mtx_;
  std::condition_variable cv_;
  std::priority_queue<entry, std::vector<entry>, std::greater<entry>> queue_;
  uint64_t next_ = 0;
  bool stopping_ = false;
  std::thread thread_; // last: starts once the rest is ready
};

fake_provider::fake_provider(double failure_rate)
  : fake_provider(fake_provider_options{failure_rate, {}}) {}

fake_provider::fake_provider(fake_provider_options opts)
  : failure_rate_(opts.failure_rate), latency_(opts.latency), remote_api_(opts.remote_api) {
  if (latency_.count() > 0)
    timer_ = std::make_unique<timer_thread>();
}

// The timer thread ends (dropping answers not yet due) before the state its
// answers read goes.
fake_provider::~fake_provider() {
  timer_.reset();
}

void fake_provider::reply(std::function<void()> answer) {
  if (!timer_) {
    answer();
    return;
  }
  timer_->at(std::chrono::steady_clock::now() + latency_, std::move(answer));
}

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
  caf::error failed;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (fail_create)
      failed = fail_create;
    else if (should_fail())
      failed = make_error(errc::unavailable, "injected failure");
  }
  if (failed) {
    reply([done, failed] { done(failed); });
    return;
  }
  {
    std::lock_guard<std::mutex> guard{mtx_};
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
  reply([done, vm] { done(vm); });
}

vm_info fake_provider::lookup(const std::string& vm_id) const {
  std::lock_guard<std::mutex> guard{mtx_};
  auto i = vms_.find(vm_id);
  if (i != vms_.end())
    return i->second;
  vm_info vm;
  vm.vm_id = vm_id;
  vm.status = vm_status::gone;
  return vm;
}

void fake_provider::wait_ready(const std::string& vm_id, callback<vm_info> done) {
  if (frozen)
    return;
  ++calls_;
  auto vm = lookup(vm_id);
  reply([done, vm] {
    if (vm.status != vm_status::running)
      done(make_error(errc::not_found, "VM is " + std::string{to_string(vm.status)}));
    else
      done(vm);
  });
}

void fake_provider::get(const std::string& vm_id, callback<vm_info> done) {
  if (frozen)
    return;
  ++calls_;
  ++gets_;
  auto vm = lookup(vm_id);
  reply([done, vm] { done(vm); });
}

void fake_provider::list(const std::string& installation_id,
                         callback<std::vector<vm_info>> done) {
  if (frozen)
    return;
  ++calls_;
  std::vector<vm_info> out;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (hold_lists_) {
      held_lists_.emplace_back(installation_id, std::move(done));
      return;
    }
    for (auto& [id, vm] : vms_)
      if (vm.installation_id == installation_id)
        out.push_back(vm);
  }
  reply([done, out = std::move(out)] { done(out); });
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
  reply([done] { done(caf::error{}); });
}

void fake_provider::hold_lists(bool on) {
  std::lock_guard<std::mutex> guard{mtx_};
  hold_lists_ = on;
}

void fake_provider::release_lists() {
  decltype(held_lists_) held;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    held.swap(held_lists_);
  }
  for (auto& [installation_id, done] : held) {
    std::vector<vm_info> out;
    {
      std::lock_guard<std::mutex> guard{mtx_};
      for (auto& [id, vm] : vms_)
        if (vm.installation_id == installation_id)
          out.push_back(vm);
    }
    reply([done = std::move(done), out = std::move(out)] { done(out); });
  }
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
