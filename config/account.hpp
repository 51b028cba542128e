// The non-secret half of a provider account and its cost guards.
//
// An account names a provider and carries that provider's options and the
// guards applied to every session launched with it. Secrets never live here:
// they are reached through a credential store by the account's name.
//
// The engine always has a built-in `local` account (the default), so the
// whole flow runs on one machine with no cloud account. Plain values.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "engine/base/json.hpp"

namespace aloft {

/// Idle and hard timeouts of a session, and whether idleness destroys.
struct guards {
  bool auto_destroy_on_idle = true;
  int64_t idle_timeout_s = 800;
  int64_t hard_timeout_s = 8 * 3600;
  /// How long before the hard deadline a warning event is published.
  int64_t hard_warning_s = 600;
};

struct account {
  std::string name;
  std::string provider; // "local", "fly", "modal", "vercel"
  bool enabled = true;
  std::map<std::string, std::string> options;
  aloft::guards guards;
  int max_concurrent_vms = 10;
};

bool operator==(const aloft::guards& x, const aloft::guards& y);
inline bool operator!=(const aloft::guards& x, const aloft::guards& y) {
  return !(x == y);
}
bool operator==(const account& x, const account& y);
inline bool operator!=(const account& x, const account& y) {
  return !(x == y);
}

/// The built-in account every engine has.
account default_local_account();

json to_json(const aloft::guards& g);
json to_json(const account& a);

/// Reads an account written by `to_json`; errors name the missing field.
caf::expected<account> account_from_json(const json& j);

} // namespace aloft
