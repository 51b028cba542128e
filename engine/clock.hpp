// The wall-clock seam.
//
// Persisted deadlines are wall-clock times (ms since the epoch) read through
// this interface; relative delays for CAF timers are computed from them as
// `deadline - now`. Tests use `manual_clock` and advance it together with
// CAF's test clock. Implementations are thread-safe.
#pragma once

#include <atomic>
#include <cstdint>

namespace aloft {

class wall_clock {
public:
  virtual ~wall_clock() = default;
  /// Milliseconds since the Unix epoch.
  virtual int64_t now_ms() const = 0;
};

class system_clock final : public wall_clock {
public:
  int64_t now_ms() const override;
};

/// A clock that moves only when told to.
class manual_clock final : public wall_clock {
public:
  explicit manual_clock(int64_t start_ms = 1'700'000'000'000) : now_(start_ms) {}
  int64_t now_ms() const override { return now_.load(); }
  void advance_ms(int64_t d) { now_ += d; }
  void set_ms(int64_t t) { now_ = t; }

private:
  std::atomic<int64_t> now_;
};

} // namespace aloft
