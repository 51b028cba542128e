// The sync actor: one per sync job (up or down), spawned by its session.
//
// Up:   snapshot the local worktree (executor) -> pack what the VM lacks ->
//       stream it through the session's resident shell (one long-lived
//       channel of its transport) into the VM's repository and update its
//       checkout. A first sync sends the pack with the index git wrote for
//       it, which the VM installs as it is.
// Down: snapshot the agent's worktree on the VM (for an apply, the local
//       state it merges into is taken meanwhile, on the executor) ->
//       receive the pack (bounded, checked as untrusted before anything
//       enters the local repository, on the executor) -> store it under the
//       session's refs -> apply, branch or dry run (or, for a safety sync,
//       only the safety ref).
// It publishes `sync` progress events (bytes and phase) and replies to its
// session with a `sync_outcome`, then quits. Blocking git work runs on the
// executor; bytes move on the transport's I/O thread.
//
// Protocol: spawned with the job; `(sync_atom)` -> sync_outcome.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/fwd.hpp>

#include "engine/git_sync.hpp"

namespace aloft {

class executor;
class resident_shell;
class wall_clock;

struct sync_job {
  std::string session;
  bool up = true;
  bool safety = false; // down into the safety ref only, no apply
  std::string worktree; // local
  std::string workdir;  // on the VM
  std::string base;     // the last synced-up snapshot ("" before the first)
  std::string vm_now;   // up: the VM's snapshot its worktree matched, if newer
  sync::apply_mode mode = sync::apply_mode::apply;
  std::string branch;
  sync::limits limits;
};

/// What a sync job did. An up job for a worktree that is not a git
/// repository succeeds with an empty `commit` and says why in `notes`.
struct sync_outcome {
  std::string commit;
  std::string base;
  std::string ref;
  uint64_t bytes = 0;
  uint64_t files = 0;
  std::vector<std::string> notes;
  sync::apply_result applied;
};

/// Whether the two sides moved since the last sync: -1 unknown (with a
/// note saying why), 0 no, 1 yes.
struct sync_state {
  int local_changed = -1; // the local worktree vs the last synced-up snapshot
  int vm_changed = -1;    // the VM's worktree vs what was last brought down (or up)
  std::string local_note;
  std::string vm_note;
};

/// Spawns a sync job; send it `(sync_atom)` to run it once.
caf::actor spawn_sync(caf::actor_system& sys, sync_job job,
                      std::shared_ptr<resident_shell> shell, executor* blocking,
                      caf::actor registry);

} // namespace aloft

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(aloft::sync_job)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(aloft::sync_outcome)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(aloft::sync_state)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(aloft::sync::apply_mode)
