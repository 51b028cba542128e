// The account actor: one per provider account.
//
// It owns the account's provider client and is the only way sessions reach
// it. It retries what the retry policy calls retryable (with jittered
// backoff, so a burst of sessions does not hammer a rate-limited API), caps
// the provider calls in flight, limits the rate at which they start (its
// own token bucket: accounts of one provider do not share a budget), and
// runs reconcile: list the VMs tagged with
// this installation, destroy those no session owns, and report each action
// as an event.
//
// Protocol (replies are the value or a caf::error):
//   (create_atom, vm_request)          -> vm_info
//   (ready_atom, std::string vm_id)    -> vm_info
//   (get_atom, std::string vm_id)      -> vm_info (status gone if absent)
//   (list_atom)                        -> vm_infos of this installation
//   (destroy_atom, std::string vm_id)  -> done_atom
//   (reconcile_atom)                   -> done_atom; lists the VMs, then
//                                         asks the registry for its sessions
// Provider callbacks come back as `actor_task` messages.
#pragma once

#include <memory>
#include <string>

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include "config/account.hpp"
#include "engine/retry.hpp"

namespace aloft {

class provider;

struct account_env {
  std::string installation_id;
  caf::actor registry; // receives (publish_atom, event) and (list_atom) for reconcile
  retry_policy retry;
  size_t max_in_flight = 64;
  /// Provider calls started per second (a token bucket with `rate_burst`);
  /// <= 0: unlimited. Calls beyond it wait in order, never refused.
  double rate_per_s = 0;
  double rate_burst = 20;
};

caf::actor spawn_account(caf::actor_system& sys, account acct,
                         std::shared_ptr<provider> client, account_env env);

} // namespace aloft
