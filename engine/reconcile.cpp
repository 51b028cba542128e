#include "engine/reconcile.hpp"

#include <unordered_map>

namespace aloft {

reconcile_plan plan_reconcile(const std::string& installation_id,
                              const std::string& account,
                              const std::vector<session_record>& sessions,
                              const std::vector<vm_info>& observed) {
  reconcile_plan plan;
  std::unordered_map<std::string, const session_record*> by_id;
  std::unordered_map<std::string, const session_record*> by_key;
  for (auto& s : sessions) {
    by_id[s.id] = &s;
    if (!s.idempotency_key.empty())
      by_key[s.idempotency_key] = &s;
  }
  for (auto& vm : observed) {
    if (vm.installation_id != installation_id)
      continue;
    auto orphan = [&](std::string reason) {
      plan.destroy.push_back(vm);
      plan.reasons.push_back(std::move(reason));
    };
    const session_record* owner = nullptr;
    if (auto i = by_id.find(vm.session_id); i != by_id.end())
      owner = i->second;
    if (!owner) {
      if (auto i = by_key.find(vm.idempotency_key);
          !vm.idempotency_key.empty() && i != by_key.end())
        owner = i->second;
    }
    if (!owner) {
      orphan("no session owns it");
      continue;
    }
    if (!account.empty() && owner->account != account) {
      plan.keep.push_back(vm); // another account's session: its own reconcile decides
      continue;
    }
    if (owner->state == session_state::destroyed
        || owner->state == session_state::failed) {
      orphan("its session " + owner->id + " is " + to_string(owner->state));
      continue;
    }
    if (owner->vm_id.empty()) {
      if (!is_terminal(owner->state) && vm.idempotency_key == owner->idempotency_key)
        plan.adopt.push_back({owner->id, vm});
      else if (is_terminal(owner->state))
        plan.keep.push_back(vm);
      else
        orphan("session " + owner->id + " did not create it (idempotency key differs)");
      continue;
    }
    if (owner->vm_id == vm.vm_id) {
      plan.keep.push_back(vm);
      continue;
    }
    orphan("duplicate: session " + owner->id + " owns VM " + owner->vm_id);
  }
  return plan;
}

} // namespace aloft
