// The watchdog's decision: a pure function of the deadlines and `now`.
//
// Both deadlines are absolute wall-clock times, so after a restart the timers
// are re-armed with the time left, never the time configured. The hard
// deadline cannot be pushed by activity (only by an explicit `extend` from a
// client); the idle deadline is pushed by the agent's activity only.
#pragma once

#include <cstdint>
#include <string>

namespace aloft {

struct watchdog_input {
  int64_t idle_deadline = 0; // 0: no idle timer
  int64_t hard_deadline = 0; // 0: no hard timer
  int64_t hard_warning_ms = 600'000;
  bool auto_destroy = true;
  bool hard_warned = false;  // the warning event was already published
  bool idle_reported = false; // with auto-destroy off: idleness was reported
};

enum class watchdog_action : uint8_t {
  none,
  warn_hard,   // publish a warning: the hard deadline is near
  report_idle, // idle with auto-destroy off: publish an event, keep the VM
  finish_idle, // idle with auto-destroy on: sync down, then destroy
  finish_hard, // past the hard deadline: sync down, then destroy
};

const char* to_string(watchdog_action a);

struct watchdog_decision {
  watchdog_action action = watchdog_action::none;
  int64_t next_at = 0;    // when to decide again; 0: nothing armed
  std::string next_timer; // "idle", "hard", "hard_warning" or ""
};

watchdog_decision decide_watchdog(const watchdog_input& in, int64_t now);

/// The idle deadline after activity at `now`: never earlier than the current
/// one.
int64_t push_idle_deadline(int64_t current, int64_t now, int64_t idle_timeout_ms);

} // namespace aloft
