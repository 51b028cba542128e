// The one retry policy: whether and when to try a failed call again.
//
// Pure: the caller supplies the attempt number and a jitter source in
// [0, 1), so tests pin the delays.
#pragma once

#include <cstdint>

#include <caf/error.hpp>

namespace aloft {

struct retry_policy {
  int max_attempts = 5;        // including the first
  int64_t base_delay_ms = 200;
  int64_t max_delay_ms = 10'000;
};

struct retry_decision {
  bool retry = false;
  int64_t delay_ms = 0;
};

/// `attempt` counts from 1 (the call that just failed). `retry_after_ms` is a
/// server's hint (0: none); it is honoured when not longer than the maximum.
retry_decision decide_retry(const caf::error& err, int attempt, const retry_policy& p,
                            double jitter, int64_t retry_after_ms = 0);

} // namespace aloft
