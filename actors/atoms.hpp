// The message vocabulary of Aloft's actors: atoms and message types.
//
// Atoms are verbs ending in `_atom` (at most 10 characters of text each, as
// CAF 0.17 requires).
#pragma once

#include <caf/atom.hpp>

namespace aloft {

using launch_atom = caf::atom_constant<caf::atom("launch")>;
using list_atom = caf::atom_constant<caf::atom("list")>;
using stop_atom = caf::atom_constant<caf::atom("stop")>;
using destroy_atom = caf::atom_constant<caf::atom("destroy")>;
using extend_atom = caf::atom_constant<caf::atom("extend")>;
using activity_atom = caf::atom_constant<caf::atom("activity")>;
using publish_atom = caf::atom_constant<caf::atom("publish")>;
using subscribe_atom = caf::atom_constant<caf::atom("subscribe")>;
using timeout_atom = caf::atom_constant<caf::atom("timeout")>;
using tick_atom = caf::atom_constant<caf::atom("tick")>;
using rehydrate_atom = caf::atom_constant<caf::atom("rehydrate")>;
using reconcile_atom = caf::atom_constant<caf::atom("reconcile")>;
using arm_atom = caf::atom_constant<caf::atom("arm")>;
using get_atom = caf::atom_constant<caf::atom("get")>;
using done_atom = caf::atom_constant<caf::atom("done")>;
using create_atom = caf::atom_constant<caf::atom("create")>;
using ready_atom = caf::atom_constant<caf::atom("ready")>;
using unsub_atom = caf::atom_constant<caf::atom("unsub")>;
using events_atom = caf::atom_constant<caf::atom("events")>;
using sync_atom = caf::atom_constant<caf::atom("sync")>;
using sync_up_atom = caf::atom_constant<caf::atom("syncup")>;
using sync_down_atom = caf::atom_constant<caf::atom("syncdown")>;
using sync_state_atom = caf::atom_constant<caf::atom("syncstate")>;
using account_atom = caf::atom_constant<caf::atom("account")>;
using forget_atom = caf::atom_constant<caf::atom("forget")>;
using guards_atom = caf::atom_constant<caf::atom("guards")>;

} // namespace aloft
