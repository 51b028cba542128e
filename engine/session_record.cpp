#include "engine/session_record.hpp"

#include "engine/base/error.hpp"

namespace aloft {

namespace {

constexpr const char* state_names[] = {
  "pending", "provisioning", "booting", "running",
  "stopping", "destroyed", "failed", "lost",
};

constexpr const char* agent_names[] = {
  "not_started", "running", "exited", "failed", "stopped",
};

} // namespace

const char* to_string(session_state s) {
  return state_names[static_cast<size_t>(s)];
}

bool session_state_from_string(const std::string& name, session_state& out) {
  for (size_t i = 0; i < std::size(state_names); ++i)
    if (name == state_names[i]) {
      out = static_cast<session_state>(i);
      return true;
    }
  return false;
}

bool is_terminal(session_state s) {
  return s == session_state::destroyed || s == session_state::failed
         || s == session_state::lost;
}

bool is_allowed_transition(session_state from, session_state to) {
  using st = session_state;
  // A lost session may still own what is left of its VM: only an explicit
  // destroy moves it on.
  if (from == st::lost)
    return to == st::stopping;
  if (is_terminal(from))
    return false;
  if (to == st::failed || to == st::stopping)
    return true;
  switch (from) {
    case st::pending: return to == st::provisioning;
    case st::provisioning: return to == st::booting || to == st::lost;
    case st::booting: return to == st::running || to == st::lost;
    case st::running: return to == st::lost;
    case st::stopping: return to == st::destroyed || to == st::lost;
    default: return false;
  }
}

const char* to_string(agent_status s) {
  return agent_names[static_cast<size_t>(s)];
}

bool agent_status_from_string(const std::string& name, agent_status& out) {
  for (size_t i = 0; i < std::size(agent_names); ++i)
    if (name == agent_names[i]) {
      out = static_cast<agent_status>(i);
      return true;
    }
  return false;
}

json to_json(const session_record& r) {
  auto j = json::object();
  j.set("v", r.version);
  j.set("id", r.id);
  j.set("account", r.account);
  j.set("provider", r.provider);
  j.set("state", to_string(r.state));
  j.set("idempotency_key", r.idempotency_key);
  j.set("vm_id", r.vm_id);
  j.set("host", r.host);
  j.set("port", static_cast<int>(r.port));
  j.set("user", r.user);
  j.set("workdir", r.workdir);
  j.set("agent_cmd", r.agent_cmd);
  j.set("worktree", r.worktree);
  j.set("agent_status", to_string(r.agent_status));
  j.set("exit_code", r.exit_code);
  j.set("log_offset", static_cast<long long>(r.log_offset));
  j.set("profile", r.profile);
  auto names = json::array();
  for (auto& n : r.agent_secrets)
    names.push_back(n);
  j.set("agent_secrets", std::move(names));
  j.set("auto_destroy", r.auto_destroy);
  j.set("idle_timeout_ms", r.idle_timeout_ms);
  j.set("created_at", r.created_at);
  j.set("idle_deadline", r.idle_deadline);
  j.set("hard_deadline", r.hard_deadline);
  j.set("hard_warned", r.hard_warned);
  j.set("last_activity", r.last_activity);
  j.set("last_activity_at", r.last_activity_at);
  j.set("synced_up", r.synced_up);
  j.set("synced_down", r.synced_down);
  j.set("vm_synced_down", r.vm_synced_down);
  j.set("safety_ref", r.safety_ref);
  j.set("reason", r.reason);
  j.set("transitions", static_cast<long long>(r.transitions));
  return j;
}

caf::expected<session_record> session_record_from_json(const json& j) {
  if (!j.is_object())
    return make_error(errc::data_loss, "session record is not a JSON object");
  session_record r;
  r.version = static_cast<int>(j.get_int("v", 0));
  if (r.version < 1 || r.version > session_record::current_version)
    return make_error(errc::data_loss, "session record has unknown version "
                                         + std::to_string(r.version));
  r.id = j.get_string("id");
  if (r.id.empty())
    return make_error(errc::data_loss, "session record has no id");
  r.account = j.get_string("account");
  r.provider = j.get_string("provider");
  if (!session_state_from_string(j.get_string("state"), r.state))
    return make_error(errc::data_loss, "session record " + r.id
                                         + " has unknown state '"
                                         + j.get_string("state") + "'");
  r.idempotency_key = j.get_string("idempotency_key");
  r.vm_id = j.get_string("vm_id");
  r.host = j.get_string("host");
  auto port = j.get_int("port", 0);
  if (port < 0 || port > 65535)
    return make_error(errc::data_loss, "session record " + r.id + " has port "
                                         + std::to_string(port));
  r.port = static_cast<uint16_t>(port);
  r.user = j.get_string("user");
  r.workdir = j.get_string("workdir");
  r.agent_cmd = j.get_string("agent_cmd");
  r.worktree = j.get_string("worktree");
  r.exit_code = static_cast<int>(j.get_int("exit_code", -1));
  r.log_offset = static_cast<uint64_t>(j.get_int("log_offset", 0));
  r.idle_timeout_ms = j.get_int("idle_timeout_ms", 800'000);
  r.created_at = j.get_int("created_at");
  r.idle_deadline = j.get_int("idle_deadline");
  r.hard_deadline = j.get_int("hard_deadline");
  if (r.version == 1) {
    // v1 had no agent status: an exit code means the agent is done.
    r.auto_destroy = true;
    if (r.exit_code >= 0)
      r.agent_status = r.exit_code == 0 ? agent_status::exited : agent_status::failed;
    else if (r.state == session_state::running)
      r.agent_status = agent_status::running;
    r.version = session_record::current_version;
    return r;
  }
  if (!agent_status_from_string(j.get_string("agent_status", "not_started"),
                                r.agent_status))
    return make_error(errc::data_loss, "session record " + r.id
                                         + " has unknown agent status");
  r.auto_destroy = j.get_bool("auto_destroy", true);
  r.hard_warned = j.get_bool("hard_warned", false);
  r.last_activity = j.get_string("last_activity");
  r.last_activity_at = j.get_int("last_activity_at");
  r.reason = j.get_string("reason");
  r.synced_up = j.get_string("synced_up");
  r.synced_down = j.get_string("synced_down");
  r.vm_synced_down = j.get_bool("vm_synced_down", false);
  r.safety_ref = j.get_string("safety_ref");
  r.profile = j.get_string("profile");
  if (auto names = j.find("agent_secrets"); names && names->is_array())
    for (auto& n : names->items()) {
      if (!n.is_string())
        return make_error(errc::data_loss, "session record " + r.id
                                             + " has a secret name that is not a string");
      r.agent_secrets.push_back(n.as_string());
    }
  r.transitions = static_cast<uint64_t>(j.get_int("transitions"));
  return r;
}

caf::expected<session_record> decode_session_record(const std::string& bytes) {
  auto j = json::parse(bytes);
  if (!j)
    return make_error(errc::data_loss, "session record: " + message_of(j.error()));
  return session_record_from_json(*j);
}

std::string encode_session_record(const session_record& r) {
  return to_json(r).dump();
}

} // namespace aloft
