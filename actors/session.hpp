// The session actor: one per VM session, the state machine of its VM's life.
//
//   pending -> provisioning -> booting -> running -> stopping -> destroyed
//       |            |             |          |           |
//        +------------+-------------+----------+-----------+--> failed
//                                   booting/running --> lost (VM gone)
//
// What each state waits for:
//   pending       the record's first durable write
//   provisioning  keys, then the provider's create (intent persisted first,
//                 with the idempotency key the VM is tagged with)
//   booting       the VM's sshd, the transport, the agent's launch
//   running       agent output and status; the watchdog's deadlines
//   stopping      the provider's confirmation that the VM is gone
// Every transition is persisted before it is acted on and then published to
// the registry as an event. On restart the actor is spawned with the
// persisted record and `rehydrate_atom` resumes from that state; reconnecting
// never creates, starts or revives a VM.
//
// Protocol:
//   (launch_atom)               -> session_record, once pending is durable
//   (rehydrate_atom)            resume a persisted record
//   (get_atom)                  -> session_record
//   (stop_atom)                 -> done_atom: end the agent, keep the VM
//   (destroy_atom)              -> done_atom, once stopping is durable
//   (extend_atom, int64 s)      -> session_record with the later hard deadline
//   (activity_atom, string src) push the idle deadline (attach input)
//   (guards_atom, guards)       new idle and hard timeouts and auto-destroy,
//                               measured from the last activity and from
//                               the session's creation; persisted, re-armed
// The session links a watchdog actor (actors/watchdog.hpp).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>
#include <string>

#include <caf/actor.hpp>
#include <caf/expected.hpp>
#include <caf/fwd.hpp>

#include "engine/git_sync.hpp"
#include "engine/home.hpp"
#include "engine/session_record.hpp"

namespace aloft {

class store;
class wall_clock;
class transport_factory;
class executor;

/// The values of a session's agent secrets, by name, from the credential
/// store (called when the agent starts; may read a file).
using agent_secrets_fn = std::function<caf::expected<std::vector<std::pair<std::string, std::string>>>(
  const session_record&)>;

struct session_env {
  store* db = nullptr;
  const wall_clock* clock = nullptr;
  transport_factory* transports = nullptr; // nullptr: no agent (bench fakes)
  executor* blocking = nullptr;
  home_layout home;
  std::string installation_id;
  caf::actor registry;
  int status_interval_s = 5;
  int64_t hard_warning_ms = 600'000;
  int64_t retry_delay_ms = 5'000;   // reconnect and destroy retries
  int64_t provider_timeout_ms = 120'000; // a destroy or get that never answers
  uint64_t cpu_activity_ticks = 5;  // CPU ticks per probe that count as busy
  bool ssh_keys = true;             // make per-session SSH keys
  agent_secrets_fn agent_secrets;   // empty: agents get no secrets
  /// The sync bounds now (settings.json's `sync`, which a reload changes);
  /// empty: the defaults.
  std::function<sync::limits()> sync_limits;
};

caf::actor spawn_session(caf::actor_system& sys, session_record rec, caf::actor account,
                         std::shared_ptr<const session_env> env);

} // namespace aloft
