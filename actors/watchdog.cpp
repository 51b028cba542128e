#include "actors/watchdog.hpp"

#include <chrono>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/stateful_actor.hpp>

#include "actors/atoms.hpp"
#include "actors/messages.hpp"
#include "engine/clock.hpp"

namespace aloft {

namespace {

struct watchdog_state {
  caf::actor session;
  const wall_clock* clock = nullptr;
  watchdog_input input;
  uint64_t epoch = 0;        // identifies the one timer that counts
  int64_t scheduled_at = 0;  // when that timer fires; 0: none
};

using watchdog_ptr = caf::stateful_actor<watchdog_state>*;

void evaluate(watchdog_ptr self) {
  auto& st = self->state;
  auto now = st.clock->now_ms();
  auto d = decide_watchdog(st.input, now);
  if (d.action != watchdog_action::none) {
    self->send(st.session, timeout_atom::value, d.action);
    if (d.action == watchdog_action::finish_idle || d.action == watchdog_action::finish_hard) {
      // The session is finishing: nothing more to watch.
      ++st.epoch;
      st.scheduled_at = 0;
      return;
    }
    // Reported once; the session persists the flag and re-arms.
    if (d.action == watchdog_action::warn_hard)
      st.input.hard_warned = true;
    if (d.action == watchdog_action::report_idle)
      st.input.idle_reported = true;
    d = decide_watchdog(st.input, now);
  }
  if (d.next_at == 0) {
    ++st.epoch;
    st.scheduled_at = 0;
    return;
  }
  // Activity only ever moves deadlines later: keep the pending timer, which
  // re-evaluates when it fires, instead of piling up one timer per push.
  if (st.scheduled_at != 0 && st.scheduled_at <= d.next_at)
    return;
  ++st.epoch;
  st.scheduled_at = d.next_at;
  self->delayed_send(self, std::chrono::milliseconds{d.next_at - now},
                     timeout_atom::value, st.epoch);
}

caf::behavior watchdog(watchdog_ptr self, caf::actor session, const wall_clock* clock) {
  self->state.session = std::move(session);
  self->state.clock = clock;
  return {
    [=](arm_atom, const watchdog_input& in) {
      self->state.input = in;
      evaluate(self);
    },
    [=](timeout_atom, uint64_t epoch) {
      if (epoch != self->state.epoch)
        return;
      self->state.scheduled_at = 0;
      evaluate(self);
    },
  };
}

} // namespace

caf::actor spawn_watchdog(caf::actor_system& sys, caf::actor session,
                          const wall_clock* clock) {
  return sys.spawn(watchdog, std::move(session), clock);
}

} // namespace aloft
