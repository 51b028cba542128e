#include "engine/watchdog_policy.hpp"

#include <algorithm>

namespace aloft {

const char* to_string(watchdog_action a) {
  switch (a) {
    case watchdog_action::none: return "none";
    case watchdog_action::warn_hard: return "warn_hard";
    case watchdog_action::report_idle: return "report_idle";
    case watchdog_action::finish_idle: return "finish_idle";
    case watchdog_action::finish_hard: return "finish_hard";
  }
  return "none";
}

watchdog_decision decide_watchdog(const watchdog_input& in, int64_t now) {
  watchdog_decision d;
  // The hard deadline wins over everything: it is the cap nothing extends.
  if (in.hard_deadline > 0 && now >= in.hard_deadline) {
    d.action = watchdog_action::finish_hard;
    return d;
  }
  bool idle_armed = in.idle_deadline > 0 && !(in.idle_reported && !in.auto_destroy);
  if (idle_armed && now >= in.idle_deadline) {
    d.action = in.auto_destroy ? watchdog_action::finish_idle
                               : watchdog_action::report_idle;
    if (d.action == watchdog_action::finish_idle)
      return d;
    idle_armed = false; // reported once; activity re-arms it
  }
  int64_t warn_at = in.hard_deadline > 0 ? in.hard_deadline - in.hard_warning_ms : 0;
  if (in.hard_deadline > 0 && !in.hard_warned && now >= warn_at
      && d.action == watchdog_action::none)
    d.action = watchdog_action::warn_hard;
  bool warned = in.hard_warned || d.action == watchdog_action::warn_hard;
  // Next: the earliest timer still ahead.
  auto consider = [&](int64_t at, const char* name) {
    if (at > 0 && at > now && (d.next_at == 0 || at < d.next_at)) {
      d.next_at = at;
      d.next_timer = name;
    }
  };
  if (idle_armed)
    consider(in.idle_deadline, "idle");
  if (in.hard_deadline > 0) {
    if (!warned)
      consider(warn_at, "hard_warning");
    consider(in.hard_deadline, "hard");
  }
  return d;
}

int64_t push_idle_deadline(int64_t current, int64_t now, int64_t idle_timeout_ms) {
  return std::max(current, now + idle_timeout_ms);
}

} // namespace aloft
