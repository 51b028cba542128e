#include "engine/base/redact.hpp"

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace aloft {

namespace {

constexpr size_t min_secret_size = 6;
constexpr std::string_view replacement = "[redacted]";

using secret_list = std::vector<std::string>;

// Writers copy the list, change the copy and publish it; readers take the
// current snapshot under a short lock and scan it without holding anything.
// `count` lets the common case (nothing registered) skip the lock entirely.
struct registry {
  std::mutex mtx;
  std::shared_ptr<const secret_list> values = std::make_shared<const secret_list>();
  std::atomic<size_t> count{0};
};

// Never destroyed: output may be redacted from other threads or static
// destructors while the process exits.
registry& the_registry() {
  static auto* r = new registry;
  return *r;
}

std::shared_ptr<const secret_list> snapshot() {
  auto& r = the_registry();
  if (r.count.load(std::memory_order_acquire) == 0)
    return nullptr;
  std::lock_guard<std::mutex> guard{r.mtx};
  return r.values;
}

void publish(registry& r, secret_list values) {
  // Longest first, in a fixed order; redact's output does not depend on the
  // order, since it hides the union of all matches.
  std::sort(values.begin(), values.end(), [](const auto& x, const auto& y) {
    return x.size() != y.size() ? x.size() > y.size() : x < y;
  });
  auto n = values.size();
  r.values = std::make_shared<const secret_list>(std::move(values));
  r.count.store(n, std::memory_order_release);
}

} // namespace

void register_secret(std::string_view secret) {
  if (secret.size() < min_secret_size)
    return;
  auto& r = the_registry();
  std::lock_guard<std::mutex> guard{r.mtx};
  if (std::find(r.values->begin(), r.values->end(), secret) != r.values->end())
    return;
  auto values = *r.values;
  values.emplace_back(secret);
  publish(r, std::move(values));
}

void forget_secret(std::string_view secret) {
  auto& r = the_registry();
  std::lock_guard<std::mutex> guard{r.mtx};
  auto i = std::find(r.values->begin(), r.values->end(), secret);
  if (i == r.values->end())
    return;
  auto values = *r.values;
  values.erase(values.begin() + (i - r.values->begin()));
  publish(r, std::move(values));
}

std::string redact(std::string_view text) {
  auto values = snapshot();
  if (!values)
    return std::string{text};
  // Every byte covered by any occurrence of any value is hidden, and each
  // run of covered bytes becomes one `[redacted]`. Values that overlap in
  // the text (one inside another, or a suffix of one starting another)
  // therefore leave no fragment of either behind.
  std::vector<std::pair<size_t, size_t>> spans; // [begin, end)
  for (auto& v : *values)
    for (auto pos = text.find(v); pos != std::string_view::npos;
         pos = text.find(v, pos + 1))
      spans.emplace_back(pos, pos + v.size());
  if (spans.empty())
    return std::string{text};
  std::sort(spans.begin(), spans.end());
  std::string out;
  out.reserve(text.size());
  size_t copied = 0;
  for (size_t i = 0; i < spans.size();) {
    auto begin = spans[i].first;
    auto end = spans[i].second;
    for (++i; i < spans.size() && spans[i].first < end; ++i)
      end = std::max(end, spans[i].second);
    out.append(text.substr(copied, begin - copied));
    out.append(replacement);
    copied = end;
  }
  out.append(text.substr(copied));
  return out;
}

bool is_clean(std::string_view text) {
  auto values = snapshot();
  if (!values)
    return true;
  return std::none_of(values->begin(), values->end(), [&](const std::string& v) {
    return text.find(v) != std::string_view::npos;
  });
}

} // namespace aloft
