// aloft::engine - the public C++ API of Aloft.
//
// One engine per home directory. It owns the actor system, the store, the
// accounts and their providers. The daemon, the C ABI and the bench harness
// all drive Aloft through this interface; tests drive it with a fake.
//
// Calls are synchronous from the caller's point of view (each is a short
// request to the registry actor, well under a millisecond) and thread-safe.
// Subscribers are called on an actor thread: they must not block (copy the
// event and return).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "config/account.hpp"
#include "config/credentials.hpp"
#include "engine/event.hpp"
#include "engine/session_record.hpp"
#include "engine/transport.hpp"

namespace aloft {

struct launch_request {
  std::string account;   // empty: the default account
  std::string agent_cmd; // required unless the profile gives one
  /// An agent profile from settings.json: its command (unless agent_cmd is
  /// given) and the secrets put in the agent's environment.
  std::string profile;
  std::string worktree;  // local path; empty: the current directory
  int64_t idle_timeout_s = -1; // < 0: the account's guard
  int64_t hard_timeout_s = -1;
  int auto_destroy = -1;       // < 0: the account's guard; 0 off; 1 on
};

/// A session as `show` reports it: the record plus what the watchdog will do.
struct session_view {
  session_record record;
  std::string next_timer; // "idle", "hard", or "" when none is armed
  int64_t next_timer_at = 0;
};

/// What `aloft attach` needs to open its own SSH connection.
struct attach_info {
  ssh_endpoint endpoint;
  std::string command; // the remote command that attaches to the agent
};

/// How `sync_down` brings the agent's changes home.
enum class sync_down_mode { apply, branch, dry_run };

struct sync_down_request {
  std::string id;
  sync_down_mode mode = sync_down_mode::apply;
  std::string branch; // branch mode: the new branch's name
};

/// What a sync job did.
struct sync_result {
  std::string direction; // "up" or "down"
  std::string commit;    // the snapshot moved
  std::string base;      // the last synced-up snapshot it is relative to
  std::string ref;       // where the snapshot is stored locally
  uint64_t bytes = 0;    // pack bytes moved
  uint64_t files = 0;    // files in the snapshot (up)
  std::vector<std::string> changed;   // down: paths written (or, dry run, that would be)
  std::vector<std::string> conflicts; // down/apply: paths left as they were locally
  std::vector<std::string> notes;     // what is not synced (submodules, ...)
  std::string saved_ref; // down/apply: the local state saved before writing
  std::string branch;    // down/branch: the branch created
  std::string diffstat;  // down: what changed, as `git diff --stat`
};

/// Whether the two sides moved since the last sync: -1 unknown (the note
/// says why), 0 no, 1 yes.
struct sync_status {
  int local_changed = -1; // the local worktree since the last sync up
  int vm_changed = -1;    // the VM's worktree since what was last brought down
  std::string local_note;
  std::string vm_note;
};

/// An account as `aloft account ls` reports it. Secrets appear only masked.
struct account_view {
  aloft::account account;
  bool is_default = false;
  bool built_in = false;       // the `local` account every engine has
  bool can_launch = false;     // its provider is available in this build
  std::map<std::string, std::string> secrets; // key -> masked value
  std::string store;           // the credential store holding them
  size_t live_sessions = 0;
  std::string problem;         // why it cannot be used now, if it cannot
};

/// What `aloft reload` (and SIGHUP) did.
struct reload_report {
  std::vector<std::string> added, changed, removed;
  std::vector<std::string> problems; // each names file, line and path
};

class engine {
public:
  virtual ~engine() = default;

  virtual std::string installation_id() const = 0;

  /// Creates a session (persisted as pending before this returns) and starts
  /// it. Errors: invalid_argument (bad request, unknown account).
  virtual caf::expected<session_record> launch(const launch_request& req) = 0;

  /// Every session the engine knows, newest first.
  virtual std::vector<session_record> list() = 0;

  /// One session. Errors: not_found.
  virtual caf::expected<session_view> show(const std::string& id) = 0;

  /// Ends the agent; keeps the VM (idle timeout still applies).
  virtual caf::error stop(const std::string& id) = 0;

  /// Destroys the VM; returns once the session is stopping.
  virtual caf::error destroy(const std::string& id) = 0;

  /// Moves the hard deadline `seconds` later. Errors: not_found,
  /// failed_precondition (session finished), invalid_argument.
  virtual caf::expected<session_record> extend(const std::string& id,
                                               int64_t seconds) = 0;

  /// Where and how to attach. Errors: failed_precondition when the VM is not
  /// running (attaching never starts or revives a VM).
  virtual caf::expected<attach_info> attach(const std::string& id) = 0;

  /// Reports activity from outside the engine (attach input).
  virtual void activity(const std::string& id, const std::string& source) = 0;

  /// Sends the local worktree's current state to the VM (only the objects
  /// the VM lacks) and updates the VM's checkout. Publishes `sync` progress
  /// events. Errors: failed_precondition (VM not running, not a git
  /// worktree), resource_exhausted (over the upload limit).
  virtual caf::expected<sync_result> sync_up(const std::string& id) = 0;

  /// Snapshots the agent's worktree on the VM, brings the new objects back
  /// (checked as untrusted), stores the snapshot under the session's refs,
  /// then applies it, makes a branch, or only reports (dry run). Nothing
  /// local is overwritten. Publishes `sync` progress events.
  virtual caf::expected<sync_result> sync_down(const sync_down_request& req) = 0;

  /// Compares the local worktree and the VM's worktree with the last
  /// snapshots (takes a snapshot of each, keeps nothing). Errors: not_found,
  /// failed_precondition (the session has no VM).
  /// An engine that cannot tell says so.
  virtual caf::expected<sync_status> sync_state(const std::string& id);

  /// The local file holding the agent's output delivered so far.
  virtual caf::expected<std::string> log_path(const std::string& id) = 0;

  /// The last `n` journaled events, oldest first.
  virtual std::vector<event> events(size_t n) = 0;

  // -- accounts ----------------------------------------------------------------
  // The non-secret half lives in settings.json, the secrets in the
  // credential store. Every error names the account and says what to do.

  virtual std::vector<account_view> accounts();

  /// Checks `secrets` against the provider's API, then stores the secrets
  /// and the account. A failure stores nothing. Errors: invalid_argument
  /// (bad name or option, missing secret), already_exists, and the
  /// validation's own (unauthenticated, permission_denied, not_found,
  /// unavailable).
  virtual caf::expected<account_view> add_account(const account& a,
                                                  const secret_map& secrets);

  /// Checks the stored secrets of `name` against the provider's API again.
  virtual caf::error validate_account(const std::string& name);

  /// Sets an option, guard or cap (`max_concurrent_vms`). Guards apply to new
  /// sessions; with `apply_to_running` also to the account's live sessions.
  /// Returns the view and, in `rearmed`, how many live sessions were updated.
  virtual caf::expected<account_view> set_account(const std::string& name,
                                                  const std::string& key,
                                                  const std::string& value,
                                                  bool apply_to_running,
                                                  size_t* rearmed = nullptr);

  virtual caf::error enable_account(const std::string& name, bool enabled);

  /// Adds or replaces one secret of an account (an agent's key, or a new
  /// provider token, which is validated first). A failure stores nothing.
  virtual caf::error set_account_secret(const std::string& name, const std::string& key,
                                        const std::string& value);

  /// Makes `name` the account `launch` uses without one.
  virtual caf::error set_default_account(const std::string& name);

  /// Removes the account and its secrets. Refused (failed_precondition)
  /// while it has live sessions, unless `force`, which destroys them first.
  virtual caf::error remove_account(const std::string& name, bool force);

  /// Reads settings.json again. Accounts that validate are applied; the
  /// others keep their previous definition and are reported.
  virtual reload_report reload();

  using subscriber = std::function<void(const event&)>;
  /// Calls `fn` for every event from now on; returns a handle for
  /// `unsubscribe`.
  virtual uint64_t subscribe(subscriber fn) = 0;
  virtual void unsubscribe(uint64_t handle) = 0;
};

struct engine_options {
  std::string home; // empty: $ALOFT_HOME or the XDG directories
  size_t scheduler_threads = 0; // 0: the number of cores
  size_t worker_threads = 4;    // bounded pool for blocking calls
};

/// Opens the engine: the store, the accounts, rehydration of every live
/// session. Errors: the store cannot be opened (another daemon holds it),
/// the home cannot be created.
caf::expected<std::unique_ptr<engine>> open_engine(const engine_options& opts);

} // namespace aloft
