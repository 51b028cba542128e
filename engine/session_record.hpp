// The persisted record of one VM session, and its state vocabulary.
//
// A session's state is the life of its VM:
//
//   pending -> provisioning -> booting -> running -> stopping -> destroyed
//      |            |             |          |           |
//      +------------+-------------+----------+-----------+--> failed
//                                            +--> lost (VM gone while we were away)
//
// The agent's status is a separate field: the agent may exit while the VM
// stays up (so its work can still be synced down).
//
// Key layout: family `sessions`, key = session id, value = the JSON of
// `to_json(session_record)`.
// Version history:
//   v1: id, account, provider, state, idempotency_key, vm endpoint, agent,
//       deadlines, log offset.
//   v2: adds auto_destroy, last_activity, last_activity_at, reason,
//       transitions, hard_warned, agent_status, exit_code. A v1 record reads
//       with auto_destroy = true and agent_status derived from exit_code.
//   v3: adds synced_up, synced_down, vm_synced_down, safety_ref (sync).
//       Older records read with them empty.
//   v4: adds profile and agent_secrets (the names of the secrets handed to
//       the agent; never their values). Older records read with none.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "engine/base/json.hpp"

namespace aloft {

enum class session_state : uint8_t {
  pending,
  provisioning,
  booting,
  running,
  stopping,
  destroyed,
  failed,
  lost,
};

const char* to_string(session_state s);
bool session_state_from_string(const std::string& name, session_state& out);

/// Whether the state is final: no actor is spawned for it on restart.
bool is_terminal(session_state s);

/// Whether `from -> to` is an allowed transition.
bool is_allowed_transition(session_state from, session_state to);

enum class agent_status : uint8_t {
  not_started,
  running,
  exited,   // exit code 0
  failed,   // non-zero exit code
  stopped,  // stopped by `aloft stop`
};

const char* to_string(agent_status s);
bool agent_status_from_string(const std::string& name, agent_status& out);

struct session_record {
  static constexpr int current_version = 4;

  int version = current_version;
  std::string id;
  std::string account;
  std::string provider;
  session_state state = session_state::pending;

  // Write-ahead intent: persisted before the provider's create call and sent
  // as a tag, so a create interrupted by a crash is found and adopted.
  std::string idempotency_key;

  // The VM, once created.
  std::string vm_id;
  std::string host;
  uint16_t port = 0;
  std::string user;
  std::string workdir; // the agent's worktree on the VM

  // The agent.
  std::string agent_cmd;
  std::string worktree; // local worktree path
  aloft::agent_status agent_status = aloft::agent_status::not_started;
  int exit_code = -1;
  uint64_t log_offset = 0; // bytes of the agent's log already delivered
  std::string profile;     // the agent profile launched, if any
  // Names of the account's secrets put in the agent's environment; the
  // values are read from the credential store when the agent starts.
  std::vector<std::string> agent_secrets;

  // Cost guards: absolute wall-clock times in ms since the epoch.
  bool auto_destroy = true;
  int64_t idle_timeout_ms = 800'000;
  int64_t created_at = 0;
  int64_t idle_deadline = 0;
  int64_t hard_deadline = 0;
  bool hard_warned = false;
  std::string last_activity; // what last pushed the idle deadline
  int64_t last_activity_at = 0;

  // Sync: the last snapshots moved each way, and the safety ref taken
  // before a timed destroy.
  std::string synced_up;
  std::string synced_down;
  bool vm_synced_down = false; // the last sync was down: the VM matches synced_down
  std::string safety_ref;

  std::string reason; // why failed/lost/destroyed
  uint64_t transitions = 0;
};

json to_json(const session_record& r);

/// Reads any known version of the record. Errors are `data_loss` naming what
/// is wrong, so the caller can quarantine the record.
caf::expected<session_record> session_record_from_json(const json& j);

/// Parses and decodes a stored value.
caf::expected<session_record> decode_session_record(const std::string& bytes);
std::string encode_session_record(const session_record& r);

} // namespace aloft
