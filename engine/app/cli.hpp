// The `aloft` command line: argument parsing, human and --json output, exit
// codes, and the client side of the daemon's socket.
//
// Parsing and formatting are pure functions (tested as such); `run_client`
// does the I/O: it finds the daemon through the same home resolution as
// `aloft serve`, sends protocol requests (protocol.hpp) and prints the
// replies. `serve` itself lives in serve.hpp, because it opens the engine.
//
// `sync-up` and `sync-down` show progress while they wait: a second
// connection follows the session's `sync` events, and `progress_view`
// (pure) turns them into a bar redrawn in place on a terminal, or into one
// plain line per phase otherwise, on stderr.
//
// Nothing here is shared between threads.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <string_view>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "engine/base/error.hpp"
#include "engine/base/json.hpp"

namespace aloft {

/// Exit codes scripts can rely on; `aloft --help` and docs/protocol.md list
/// them.
namespace exit_codes {
constexpr int ok = 0;
constexpr int failed = 1;
constexpr int usage = 2;
constexpr int not_found = 3;
constexpr int no_daemon = 4;
constexpr int refused = 5;     // failed_precondition: not in this state
constexpr int unavailable = 6; // temporary: retry
} // namespace exit_codes

/// The exit code for an error with `code` (ok -> 0).
int exit_code_for(errc code);

/// A parsed command line.
struct cli_command {
  std::string name; // "launch", "ls", ...; empty with only --help/--version
  std::string home; // --home; empty: $ALOFT_HOME or the XDG directories
  bool json = false;
  bool help = false;
  bool version = false;
  bool follow = false;
  std::string id; // the session, for commands that take one

  // launch
  std::string account;
  std::string agent;
  std::string profile; // launch --profile
  std::string worktree;
  int64_t idle_timeout_s = -1;
  int64_t hard_timeout_s = -1;
  bool no_auto_destroy = false;

  // extend
  int64_t seconds = 0;

  // events
  int64_t count = -1; // -n; < 0: the default
  bool include_output = false;
  std::string session;

  // sync-down
  std::string sync_mode = "apply"; // "apply", "branch" or "dry_run"
  std::string branch;              // --branch NAME

  // show
  bool changes = false; // --changes: with --json, include `sync_state`

  // account SUBCOMMAND [NAME [KEY VALUE]]
  std::string subcommand; // add, ls, validate, set, enable, disable, default, rm
  std::string account_name; // the account (`account` subcommands)
  std::string key, value; // account set; account secret: key only
  std::string provider;   // account add --provider
  std::vector<std::pair<std::string, std::string>> options; // provider options
  std::vector<std::string> secret_names; // account add --secret NAME: more to read
  int64_t max_vms = -1;                  // --max-vms
  bool apply_to_running = false;
  bool force = false;
};

/// Parses the arguments after the program name. Errors: invalid_argument
/// whose message says what is wrong (the caller exits with `usage`).
caf::expected<cli_command> parse_cli(const std::vector<std::string>& args);

/// Parses "90s", "30m", "2h", "1d", "1h30m" or plain seconds ("45") into
/// seconds. Errors: invalid_argument (empty, zero, unknown unit, overflow).
caf::expected<int64_t> parse_duration(std::string_view text);

/// Renders a span for a table: "45s", "13m20s", "7h59m", "2d03h".
std::string format_duration(int64_t ms);

/// Renders a wall-clock time (ms since the epoch) as "2026-11-28 22:25:51Z".
std::string format_time(int64_t ms);

std::string usage_text();
/// Help for one command; empty when `name` is not a command.
std::string command_help(const std::string& name);

/// The protocol request `cmd` sends (for commands that send one request).
json request_for(const cli_command& cmd, int64_t request_id);

// -- human output ------------------------------------------------------------

/// The `ls` table from a `list` result.
std::string format_ls(const json& list_result, int64_t now_ms);
/// The `show` page from a `show` result; with a `sync_state` member (a
/// `sync_state` result), also whether each side changed since the last sync.
std::string format_show(const json& show_result, int64_t now_ms);
/// One line for an event.
std::string format_event(const json& ev);
std::string format_launch(const json& record);
std::string format_extend(const json& record, int64_t now_ms);
/// The outcome of a `sync_up` result: "synced up <commit>: N files, X bytes".
std::string format_sync_up(const json& result);
/// The outcome of a `sync_down` result: what changed (diffstat and files),
/// each conflict with where the agent's version is, the saved ref, the
/// branch; a dry run says that nothing was written.
std::string format_sync_down(const json& result);
/// "812 bytes", "3.2 KiB", "17.4 MiB", "1.1 GiB".
std::string format_bytes(uint64_t n);
/// The `account ls` table from an `account_list` result.
std::string format_accounts(const json& list_result);
/// One account after `account add` or `account set`.
std::string format_account(const json& account);
/// What `reload` did, and its problems.
std::string format_reload(const json& report);
/// An error for a person: the message and what to do about it.
std::string format_error(const std::string& code, const std::string& message);

// -- sync progress -----------------------------------------------------------

/// Where a sync is, as a `sync` event says: its `data` is the JSON
/// {"direction","phase","done","total"} (bytes; total 0 when not known yet)
/// and its `message` a line for a person.
struct sync_progress {
  std::string direction; // "up" or "down"
  std::string phase;     // "snapshot", "send", "receive", "apply", "done"
  uint64_t done = 0;
  uint64_t total = 0;
  std::string message;
};

/// Reads a `sync` event (as the protocol sends events). Returns false when
/// `ev` is not a sync event. Data that cannot be read leaves the numbers 0
/// and keeps the message, which is then shown instead.
bool read_sync_progress(const json& ev, sync_progress& out);

/// The text of one progress line, without control sequences, at most
/// `width` - 1 columns: "up: send [=====>    ] 3.2 MiB / 17.4 MiB  18%"
/// with `bar`, else "up: send 3.2 MiB of 17.4 MiB (18%)".
std::string progress_line(const sync_progress& p, size_t width, bool bar);

/// Turns progress into what to write to stderr. On a terminal, one line is
/// redrawn in place ("\r", the line, erase to its end) whenever its text
/// changes; otherwise a plain line is written per phase change. Pure: it
/// only returns text.
class progress_view {
public:
  explicit progress_view(bool terminal, size_t width = 80);
  /// What to write for `p`; empty when nothing changes on screen.
  std::string update(const sync_progress& p);
  /// What to write before other output (clears a drawn bar); empty if none.
  std::string finish();

private:
  bool terminal_;
  size_t width_;
  std::string last_; // terminal: the line drawn; plain: "direction phase"
  bool drawn_ = false;
};

// -- attach ------------------------------------------------------------------

/// How `attach` runs the OpenSSH client.
struct attach_plan {
  std::string known_hosts_path; // next to the client key
  std::string known_hosts_line; // "[host]:port ssh-ed25519 AAAA..."
  std::vector<std::string> argv; // ssh and its arguments; key paths only
};

/// Builds the plan from an `attach` result. Everything in it came from the
/// daemon and ends up in an argv and a known_hosts file, so it is checked:
/// no option-like or multi-line values. Errors: invalid_argument.
caf::expected<attach_plan> plan_attach(const json& attach_result);

/// Writes the known_hosts file (0600, replaced atomically).
caf::error write_known_hosts(const attach_plan& plan);

// -- running -----------------------------------------------------------------

/// How the client shows progress on `err`.
struct client_options {
  bool progress_terminal = false; // err is a terminal: redraw a bar in place
  size_t width = 80;              // its columns
};

/// Runs a client command (everything but `serve`) against the daemon and
/// returns the exit code. `attach` replaces the process with ssh on success
/// (with --json it prints the plan instead). Sync commands show progress on
/// `err`: a bar when `progress_terminal`, else plain lines unless --json.
int run_client(const cli_command& cmd, std::ostream& out, std::ostream& err,
               const client_options& opts);

/// The same with options for the process's own stderr when `err` is
/// std::cerr (a bar when fd 2 is a terminal), else plain progress.
int run_client(const cli_command& cmd, std::ostream& out, std::ostream& err);

/// Prints help or a usage error for `args` when that is all there is to do;
/// returns -1 when the command should run.
int handle_help_and_usage(const caf::expected<cli_command>& parsed, std::ostream& out,
                          std::ostream& err);

} // namespace aloft
