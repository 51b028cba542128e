// Reconcile: what to do with the VMs a provider reports, as a pure function
// of what is persisted and what is observed.
//
// Rules, in order:
// - a VM tagged with another installation's id is none of our business;
// - a VM whose session belongs to another account is that account's
//   business (two accounts may see the same organization's VMs);
// - a VM whose idempotency key matches a live session that has no VM yet is
//   adopted by that session (a create interrupted by a crash);
// - a VM that a live session records as its own is kept;
// - a VM whose session is known (any state) but that is not the session's
//   recorded VM, while the session has one, is a duplicate: destroyed;
// - a VM whose session is known and lost or stopping is kept: only an
//   explicit command acts on it;
// - a VM whose session is unknown, destroyed or failed is an orphan:
//   destroyed.
// Absence proves nothing: a session whose VM is missing from the list is
// never touched here (an empty or partial list must not cause destruction or
// a second create); its own actor confirms by id.
#pragma once

#include <string>
#include <vector>

#include "engine/session_record.hpp"
#include "engine/vm.hpp"

namespace aloft {

struct reconcile_adoption {
  std::string session_id;
  vm_info vm;
};

struct reconcile_plan {
  std::vector<reconcile_adoption> adopt;
  std::vector<vm_info> destroy; // with a reason each, same index
  std::vector<std::string> reasons;
  std::vector<vm_info> keep;
};

/// `sessions` are every session the engine knows (all accounts);
/// `account` is the account whose VMs `observed` lists.
reconcile_plan plan_reconcile(const std::string& installation_id,
                              const std::string& account,
                              const std::vector<session_record>& sessions,
                              const std::vector<vm_info>& observed);

} // namespace aloft
