// The Fly emulator's decisions about misbehaving: which call gets a fault
// (injected on demand or drawn at a seeded random rate) and which call is
// over Fly's rate limit.
//
// Why: a provider's retry, ambiguity and rate-limit handling is only tested
// when the API misbehaves in the ways the real one does (429 with
// Retry-After, 5xx bursts, a connection reset, a 408 on a create that still
// created the machine, a body that does not parse). Rules name an
// operation (see `fly_ops`) or every operation.
//
// Plain values and pure decisions (time is an argument); not synchronised:
// the emulator calls them under its lock.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace aloft::test {

/// The operations of the emulated API, as fault rules and counters name
/// them: tokens_current, apps_create, apps_get, apps_list, apps_delete,
/// ips_list, ips_create, ips_delete, machines_create, machines_list,
/// machines_get, machines_delete, machines_start, machines_stop,
/// machines_wait; "unknown" for a path it does not serve.
const std::vector<std::string>& fly_ops();

/// One fault rule: the next `count` calls to `op` ("" for any operation)
/// misbehave as `what` says.
struct fly_fault {
  enum class kind : uint8_t {
    /// Answer `status` with `{"error": message, "status": fly_status}`
    /// (the member "status" only when `fly_status` is set), and a
    /// `Retry-After: retry_after_s` header when that is positive.
    status,
    /// Close the connection without answering.
    reset,
    /// Answer as usual but with the body cut short, so it does not parse.
    /// The call always takes effect first.
    malformed_json,
  };
  kind what = kind::status;
  std::string op;
  int count = 1;
  int status = 503;
  int retry_after_s = 0;
  std::string fly_status;
  std::string message;
  /// The call takes effect before the fault (status and reset): the client
  /// cannot tell whether it did, as with a 408 on a create that still
  /// created the machine.
  bool after_effect = false;
};

/// A short description ("machines_create 408 after effect") for counters.
std::string fly_fault_label(const fly_fault& f);

class fly_fault_plan {
public:
  /// Appends a rule; rules are consulted in the order they were added.
  void add(fly_fault f);
  /// Every further call gets, with probability `rate` (0..1), one of: 503,
  /// 429 with Retry-After 1, a reset; drawn from a generator seeded with
  /// `seed`, so a run can be replayed.
  void set_random(double rate, uint64_t seed);
  /// Removes every rule and the random rate.
  void clear();

  /// The fault for the call to `op` now, in phase `after_effect`, taking
  /// one count of its rule; nullopt when none applies. Random faults act
  /// only before the effect.
  std::optional<fly_fault> next(const std::string& op, bool after_effect);

  /// Rules with counts left.
  size_t pending() const;

private:
  std::vector<fly_fault> rules_;
  double rate_ = 0;
  std::mt19937_64 rng_;
};

/// Token buckets keyed by a string (Fly: one per machine or app, and
/// action): `rate` tokens a second, at most `burst` saved up.
class fly_rate_limiter {
public:
  using time_point = std::chrono::steady_clock::time_point;

  /// Whether a call under `key` may proceed at `now`; it takes a token when
  /// it does.
  bool allow(const std::string& key, double rate, double burst, time_point now);

private:
  struct bucket {
    double tokens = 0;
    time_point last;
  };
  std::map<std::string, bucket> buckets_;
};

} // namespace aloft::test
