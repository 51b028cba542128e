// The watchdog actor: one per session, holding its idle and hard deadlines.
//
// Protocol:
//   (arm_atom, watchdog_input)  -> (re)arms from absolute deadlines; the
//                                  timer fires after `deadline - now`
//   (timeout_atom, uint64 epoch) - its own timer; stale epochs are ignored
//                                  (CAF 0.17 cannot cancel a delayed send)
// On a decision other than `none` it sends the session
// `(timeout_atom, watchdog_action)` and waits to be re-armed.
//
// Time: `now` from the wall clock seam; delays through CAF's clock, so tests
// on the testing scheduler advance both by hand.
#pragma once

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

namespace aloft {

class wall_clock;

/// Spawns a watchdog reporting to `session`. Linked to it by the caller.
caf::actor spawn_watchdog(caf::actor_system& sys, caf::actor session,
                          const wall_clock* clock);

} // namespace aloft
