// The event published on every change a client may care about.
//
// Events go to subscribers (the daemon's `events -f`, the desktop UI) and,
// unless transient (agent output, sync progress), into the store's events
// journal.
//
// Kinds:
//   state     - a session changed state (`state` holds the new one)
//   agent     - the agent's status changed (started, exited with code)
//   output    - a chunk of the agent's output (`data` holds the text)
//   activity  - the idle deadline moved (throttled; `message` names the source)
//   warning   - the hard deadline is near, or the VM was idle with
//               auto-destroy off
//   reconcile - an unowned VM was found and destroyed, or a VM adopted
//   quarantine - a stored record could not be read and was set aside
//   sync      - a sync job's progress (`data` holds JSON: direction, phase,
//               done, total) and its end
//   error     - something failed that a person should see
//
// Key layout in the `events` family: 16 hex digits of `seq`, big-endian, so
// a scan returns events in order.
#pragma once

#include <cstdint>
#include <string>

#include "engine/base/json.hpp"

namespace aloft {

struct event {
  uint64_t seq = 0;
  int64_t at_ms = 0; // wall clock
  std::string session; // empty for engine-wide events
  std::string kind;
  std::string state;
  std::string message;
  std::string data;
  uint64_t offset = 0; // output events: where `data` starts in the agent's log
  bool transient = false; // for subscribers only, not journaled
};

json to_json(const event& e);
event event_from_json(const json& j);

/// The journal key of `seq`.
std::string event_key(uint64_t seq);

} // namespace aloft
