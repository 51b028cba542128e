#include "tests/emulators/fly/fly_faults.hpp"

#include <algorithm>

namespace aloft::test {

const std::vector<std::string>& fly_ops() {
  static const std::vector<std::string> ops{
      "tokens_current",  "apps_create",   "apps_get",      "apps_list",
      "apps_delete",     "ips_list",      "ips_create",    "ips_delete",
      "machines_create", "machines_list", "machines_get",  "machines_delete",
      "machines_start",  "machines_stop", "machines_wait", "unknown"};
  return ops;
}

std::string fly_fault_label(const fly_fault& f) {
  std::string out = f.op.empty() ? "any" : f.op;
  switch (f.what) {
  case fly_fault::kind::status:
    out += " " + std::to_string(f.status);
    if (!f.fly_status.empty())
      out += " " + f.fly_status;
    break;
  case fly_fault::kind::reset:
    out += " reset";
    break;
  case fly_fault::kind::malformed_json:
    out += " malformed_json";
    break;
  }
  if (f.after_effect && f.what != fly_fault::kind::malformed_json)
    out += " after effect";
  return out;
}

void fly_fault_plan::add(fly_fault f) {
  if (f.count > 0)
    rules_.push_back(std::move(f));
}

void fly_fault_plan::set_random(double rate, uint64_t seed) {
  rate_ = std::clamp(rate, 0.0, 1.0);
  rng_.seed(seed);
}

void fly_fault_plan::clear() {
  rules_.clear();
  rate_ = 0;
}

std::optional<fly_fault> fly_fault_plan::next(const std::string& op, bool after_effect) {
  for (auto i = rules_.begin(); i != rules_.end(); ++i) {
    bool after = i->after_effect || i->what == fly_fault::kind::malformed_json;
    if (after != after_effect || (!i->op.empty() && i->op != op))
      continue;
    auto out = *i;
    out.count = 1;
    if (--i->count <= 0)
      rules_.erase(i);
    return out;
  }
  if (after_effect || rate_ <= 0)
    return std::nullopt;
  std::uniform_real_distribution<double> coin{0.0, 1.0};
  if (coin(rng_) >= rate_)
    return std::nullopt;
  fly_fault f;
  f.op = op;
  switch (std::uniform_int_distribution<int>{0, 2}(rng_)) {
  case 0:
    f.status = 503;
    f.message = "emulator: random fault: service unavailable";
    break;
  case 1:
    f.status = 429;
    f.retry_after_s = 1;
    f.message = "emulator: random fault: rate limited";
    break;
  default:
    f.what = fly_fault::kind::reset;
    break;
  }
  return f;
}

size_t fly_fault_plan::pending() const {
  return rules_.size();
}

bool fly_rate_limiter::allow(const std::string& key, double rate, double burst,
                             time_point now) {
  auto [it, fresh] = buckets_.try_emplace(key);
  auto& b = it->second;
  if (fresh) {
    b.tokens = burst;
  } else {
    std::chrono::duration<double> elapsed = now - b.last;
    b.tokens = std::min(burst, b.tokens + std::max(0.0, elapsed.count()) * rate);
  }
  b.last = now;
  if (b.tokens < 1.0)
    return false;
  b.tokens -= 1.0;
  return true;
}

} // namespace aloft::test
