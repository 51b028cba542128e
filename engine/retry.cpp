#include "engine/retry.hpp"

#include <algorithm>

#include "engine/base/error.hpp"

namespace aloft {

retry_decision decide_retry(const caf::error& err, int attempt, const retry_policy& p,
                            double jitter, int64_t retry_after_ms) {
  retry_decision d;
  if (!err || !is_retryable(err) || attempt >= p.max_attempts)
    return d;
  d.retry = true;
  // Exponential backoff with full jitter in the upper half of the window.
  int64_t window = p.base_delay_ms << std::min(attempt - 1, 20);
  window = std::min(window, p.max_delay_ms);
  d.delay_ms = window / 2 + static_cast<int64_t>(jitter * static_cast<double>(window / 2));
  if (retry_after_ms > 0 && retry_after_ms <= p.max_delay_ms)
    d.delay_ms = std::max(d.delay_ms, retry_after_ms);
  return d;
}

} // namespace aloft
