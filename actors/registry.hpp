// The registry actor: the root of Aloft's actor graph.
//
// It owns the account actors and the session actors, routes commands to
// them, keeps a snapshot of every session's record (updated by the sessions
// after each durable transition) so that listing never waits on a session,
// publishes events to subscribers and appends them to the store's journal,
// and at start rehydrates every persisted session and reconciles each
// account's VMs.
//
// Protocol (replies are the value or a caf::error):
//   (launch_atom, session_record draft)   -> session_record (durably pending)
//   (list_atom)                           -> session_records
//   (get_atom, id)                        -> session_record
//   (stop_atom, id) / (destroy_atom, id)  -> done_atom
//   (extend_atom, id, int64 seconds)      -> session_record
//   (activity_atom, id, source)
//   (events_atom, uint64 n)               -> events_list (last n journaled)
//   (subscribe_atom, uint64 handle, subscriber_fn) / (unsub_atom, handle)
//   (rehydrate_atom, session_records)     -> done_atom, once every live
//                                            session's actor is spawned
//   (reconcile_atom)                      reconcile every account now
//   (publish_atom, event)                 an engine-wide event
//   (publish_atom, session_record, event) from sessions
//   (account_atom, account, provider_ptr) -> done_atom: add or replace an
//                                            account (a null client: known,
//                                            cannot launch)
//   (account_atom, account)               -> done_atom: new guards or cap
//   (forget_atom, name)                   -> done_atom: no new sessions
//   (guards_atom, name, guards)           -> uint64 sessions re-armed
// A launch beyond the account's max_concurrent_vms live sessions is refused
// (resource_exhausted).
#pragma once

#include <map>
#include <memory>
#include <string>

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include "actors/session.hpp"
#include "config/account.hpp"

namespace aloft {

class provider;

struct registry_env {
  std::shared_ptr<session_env> sessions; // template; `registry` is filled in
  std::map<std::string, account> accounts;
  std::map<std::string, std::shared_ptr<provider>> providers; // by account name
  uint64_t next_event_seq = 1;
  size_t events_kept = 1000;
  int64_t reconcile_interval_ms = 10 * 60 * 1000;
  int64_t provider_retry_base_ms = 200;
  /// Each cloud account's own rate of provider calls (burst, then per s).
  double cloud_calls_per_s = 20;
  double cloud_calls_burst = 40;
};

caf::actor spawn_registry(caf::actor_system& sys, registry_env env);

} // namespace aloft
