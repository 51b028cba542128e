#include "engine/app/cli.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <iostream>
#include <memory>
#include <ostream>
#include <utility>

#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/app/daemon.hpp"
#include "engine/app/protocol.hpp"
#include "engine/app/secret_input.hpp"
#include "providers/validate.hpp"
#include "engine/base/files.hpp"
#include "engine/base/ids.hpp"
#include "engine/home.hpp"
#include "engine/session_record.hpp"

namespace aloft {

namespace {

// -- command table ---------------------------------------------------------

struct flag_spec {
  const char* long_name;  // "--follow"
  const char* short_name; // "-f" or nullptr
  const char* value_name; // "N" when the flag takes a value, else nullptr
  const char* help;
};

struct command_spec {
  const char* name;
  std::vector<const char*> positionals;
  std::vector<flag_spec> flags;
  const char* summary;
  const char* details;
  const char* options_synopsis = nullptr; // replaces the generated "[--x] [--y]"
};

const std::vector<command_spec>& commands() {
  static const std::vector<command_spec> table = {
    {"serve",
     {},
     {},
     "run the daemon for this home, in the foreground",
     "Opens the engine (store, accounts, live sessions) and listens on the\n"
     "home's Unix socket (mode 0600). Prints one line saying where. Stops\n"
     "cleanly on Ctrl-C or SIGTERM; the agents keep running on their VMs."},
    {"launch",
     {},
     {
       {"--agent", nullptr, "CMD", "the agent's command line"},
       {"--profile", nullptr, "NAME",
        "an agent profile from settings.json: its command and secrets"},
       {"--account", nullptr, "NAME", "the provider account (default: local)"},
       {"--worktree", nullptr, "PATH", "the local worktree of the session (default: .)"},
       {"--idle-timeout", nullptr, "S",
        "idle window before auto-destroy (90s, 30m, 2h or seconds)"},
       {"--hard-timeout", nullptr, "S", "maximum lifetime of the VM"},
       {"--no-auto-destroy", nullptr, nullptr,
        "warn instead of destroying when idle"},
     },
     "start an agent in a new VM session",
     "Provisions a VM with the account's provider and starts the agent\n"
     "there (--agent, or a profile's command; a profile's secrets are read\n"
     "from the account's credentials and put in the agent's environment). Prints the new session's id; follow it with\n"
     "`aloft logs ID -f`. Timeouts default to the account's guards."},
    {"ls",
     {},
     {},
     "list sessions, newest first",
     "Columns: ID, ACCOUNT, STATE (the VM), AGENT (the agent's status),\n"
     "IDLE IN and HARD IN (time left before the idle and hard timeouts),\n"
     "AGE. IDLE IN is `off` when auto-destroy is off."},
    {"show",
     {"ID"},
     {{"--changes", nullptr, nullptr,
       "with --json, also compare both worktrees (always done without --json)"}},
     "show one session: every field, the next timer, the last activity",
     "Prints the session's record, which timer fires next and when, what\n"
     "last pushed the idle deadline, and the sync state: the snapshots last\n"
     "synced up and down (or never), the safety ref taken before a timed\n"
     "destroy, and whether the local worktree changed since the last sync up\n"
     "and the agent's since the last sync (this takes a snapshot of each, a\n"
     "second or more on a large tree). --json leaves that comparison out, so\n"
     "polling stays cheap, unless --changes asks for it (`sync_state`)."},
    {"logs",
     {"ID"},
     {{"--follow", "-f", nullptr, "keep printing output as it arrives"}},
     "print the agent's output",
     "Prints the output delivered so far. With -f, keeps printing new output\n"
     "until the session ends (or Ctrl-C)."},
    {"attach",
     {"ID"},
     {},
     "open an interactive terminal on the agent",
     "Opens the agent's tmux session over SSH, with the session's key and its\n"
     "pinned host key. Detaching (tmux: Ctrl-b d) leaves the agent running;\n"
     "several terminals may be attached at once. With --json, prints the\n"
     "connection details instead of attaching."},
    {"sync-up",
     {"ID"},
     {},
     "send the local worktree's current state to the VM",
     "Snapshots the session's local worktree (HEAD, staged, unstaged and\n"
     "untracked files that are not ignored) without touching your index or\n"
     "files, sends only the objects the VM lacks, and checks the snapshot out\n"
     "on the VM. Shows progress on stderr (a bar on a terminal). Prints\n"
     "\"synced up COMMIT: N files, X bytes\". Interrupting the command does\n"
     "not stop the sync; `aloft show ID` tells where it got to."},
    {"sync-down",
     {"ID"},
     {
       {"--apply", nullptr, nullptr,
        "merge the agent's changes into the local worktree (the default)"},
       {"--branch", nullptr, "NAME", "create branch NAME with the agent's changes instead"},
       {"--dry-run", nullptr, nullptr, "print what would change; write nothing"},
     },
     "bring the agent's changes home",
     "Snapshots the agent's worktree on the VM (its index and branches are\n"
     "left alone), brings the new objects back, checks them as untrusted and\n"
     "stores the snapshot under refs/aloft/sessions/ID/. Then:\n"
     "  --apply    a three-way merge into the local worktree (base: the last\n"
     "             sync up). Your local state is saved to a ref first. A file\n"
     "             changed on both sides is a conflict: it is left exactly as\n"
     "             it was locally, and the agent's version stays readable with\n"
     "             `git show REF:PATH` (printed for each conflict).\n"
     "  --branch   a new local branch holding the agent's changes on top of\n"
     "             the base; the worktree is not touched.\n"
     "  --dry-run  the diffstat of what would change.\n"
     "Conflicts are not a failure: the command exits 0 and ends with\n"
     "\"N conflicts\" (with --json, the `conflicts` list). Shows progress on\n"
     "stderr; interrupting the command does not stop the sync.",
     "[--apply | --branch NAME | --dry-run]"},
    {"extend",
     {"ID", "DURATION"},
     {},
     "move the hard deadline later",
     "DURATION is like 90s, 30m, 2h, 1h30m or plain seconds."},
    {"stop",
     {"ID"},
     {},
     "end the agent, keep the VM",
     "The VM stays (so its work can be synced down) until its idle timeout or\n"
     "`aloft destroy`."},
    {"destroy", {"ID"}, {}, "destroy the session's VM", "Ends the agent and removes the VM."},
    {"account",
     {"SUBCOMMAND"},
     {
       {"--provider", nullptr, "P", "add: local, fly, modal or vercel"},
       {"--api-url", nullptr, "URL", "add: the provider's API (default: the public one)"},
       {"--org", nullptr, "SLUG", "add, fly: the organization (default: personal)"},
       {"--app-prefix", nullptr, "P", "add, fly: prefix of app names (default: aloft)"},
       {"--ip-mode", nullptr, "M", "add, fly: ipv6 or ipv6+ipv4"},
       {"--team", nullptr, "ID", "add, vercel: the team id"},
       {"--project", nullptr, "ID", "add, vercel: the project id"},
       {"--runtime", nullptr, "R", "add, vercel: node24, node22 or python3.13"},
       {"--vcpus", nullptr, "N", "add, vercel: 1, 2, 4 or 8"},
       {"--environment", nullptr, "E", "add, modal: the environment (default: main)"},
       {"--app-name", nullptr, "A", "add, modal: the app name (default: aloft)"},
       {"--option", nullptr, "KEY=VALUE", "add: any provider option"},
       {"--secret", nullptr, "NAME", "add: also read secret NAME (for agents)"},
       {"--idle-timeout", nullptr, "S", "add: the idle guard (default 800s)"},
       {"--hard-timeout", nullptr, "S", "add: the hard guard (default 8h)"},
       {"--no-auto-destroy", nullptr, nullptr, "add: warn instead of destroying when idle"},
       {"--max-vms", nullptr, "N", "add: live VMs at most (default 10)"},
       {"--apply-to-running", nullptr, nullptr, "set: re-arm the live sessions' guards too"},
       {"--force", nullptr, nullptr, "rm: destroy the account's live sessions first"},
     },
     "manage provider accounts",
     "  account add NAME --provider P [options]   validate and store an account\n"
     "  account ls                                accounts, secrets masked\n"
     "  account validate NAME                     check its secrets with the API\n"
     "  account set NAME KEY VALUE                an option, guard or cap\n"
     "  account enable|disable NAME\n"
     "  account default NAME                      the account launch uses\n"
     "  account rm NAME [--force]\n"
     "  account secret NAME KEY                   add or replace one secret\n"
     "`add` reads the secrets (Fly and Vercel: a token; Modal: token id and\n"
     "secret) from a prompt that does not echo, or one per line from stdin;\n"
     "never from the command line. It checks them against the provider's API\n"
     "first: if that fails, nothing is stored. Secrets go to the credential\n"
     "store, everything else to settings.json. Keys for `set`:\n"
     "idle_timeout_s, hard_timeout_s, auto_destroy_on_idle,\n"
     "max_concurrent_vms, enabled, and the provider's options. Guards apply\n"
     "to new sessions; --apply-to-running re-arms the live ones too.",
     "SUBCOMMAND [NAME [KEY VALUE]] [options]"},
    {"reload",
     {},
     {},
     "read settings.json again",
     "The daemon applies the accounts that validate and reports the\n"
     "others, which keep their previous definition (SIGHUP does the same)."},
    {"events",
     {},
     {
       {"--follow", "-f", nullptr, "keep printing events as they happen"},
       {"-n", nullptr, "N", "how many past events to print first (default 20)"},
       {"--session", nullptr, "ID", "only this session's events"},
       {"--output", nullptr, nullptr, "include agent output events"},
     },
     "print recent events",
     "Prints state changes, agent exits, activity, warnings and errors."},
  };
  return table;
}

const command_spec* find_command(const std::string& name) {
  for (auto& c : commands())
    if (name == c.name)
      return &c;
  return nullptr;
}

const flag_spec* find_flag(const command_spec& spec, const std::string& name) {
  for (auto& f : spec.flags)
    if (name == f.long_name || (f.short_name && name == f.short_name))
      return &f;
  return nullptr;
}

caf::error usage_error(std::string message) {
  return make_error(errc::invalid_argument, std::move(message));
}

caf::error check_id(const std::string& id) {
  if (is_valid_session_id(id))
    return {};
  return usage_error("'" + id
                     + "' is not a session id (ids look like s-3f9a0c1d2e4b; "
                       "`aloft ls` lists them)");
}

// `account SUBCOMMAND ...`: how many names each subcommand takes.
caf::error parse_account_positionals(cli_command& cmd, const std::vector<std::string>& pos) {
  static const std::pair<const char*, size_t> subs[] = {
    {"add", 1}, {"ls", 0}, {"validate", 1}, {"set", 3}, {"enable", 1},
    {"disable", 1}, {"default", 1}, {"rm", 1}, {"secret", 2},
  };
  const char* hint = " (see aloft account --help)";
  if (pos.empty())
    return usage_error(std::string{"account needs a subcommand: add, ls, validate, set, "
                                   "enable, disable, default or rm"} + hint);
  cmd.subcommand = pos[0];
  size_t want = SIZE_MAX;
  for (auto& [name, n] : subs)
    if (cmd.subcommand == name)
      want = n;
  if (want == SIZE_MAX)
    return usage_error("unknown account subcommand '" + cmd.subcommand + "'" + hint);
  if (pos.size() - 1 < want)
    return usage_error("account " + cmd.subcommand + " needs "
                       + (want == 3 ? "NAME KEY VALUE" : want == 2 ? "NAME KEY" : "NAME")
                       + hint);
  if (pos.size() - 1 > want)
    return usage_error("unexpected argument '" + pos[want + 1] + "'" + hint);
  if (want >= 1)
    cmd.account_name = pos[1];
  if (want >= 2)
    cmd.key = pos[2];
  if (want == 3)
    cmd.value = pos[3];
  bool adding = cmd.subcommand == "add";
  if (adding && cmd.provider.empty())
    return usage_error("account add needs --provider (local, fly, modal or vercel)");
  if (!adding && (!cmd.provider.empty() || !cmd.options.empty() || !cmd.secret_names.empty()
                  || cmd.max_vms > 0 || cmd.idle_timeout_s > 0 || cmd.hard_timeout_s > 0
                  || cmd.no_auto_destroy))
    return usage_error("provider, option, secret and guard flags go with `account add`; "
                       "change an account with `account set NAME KEY VALUE`");
  if (cmd.apply_to_running && cmd.subcommand != "set")
    return usage_error("--apply-to-running goes with `account set`");
  if (cmd.force && cmd.subcommand != "rm")
    return usage_error("--force goes with `account rm`");
  return {};
}

caf::error apply_flag(cli_command& cmd, const std::string& flag, const std::string& value) {
  auto duration = [&](int64_t& out) -> caf::error {
    auto d = parse_duration(value);
    if (!d)
      return usage_error(flag + ": " + message_of(d.error()));
    out = *d;
    return {};
  };
  static const std::pair<const char*, const char*> option_flags[] = {
    {"--api-url", "api_url"},   {"--org", "org"},         {"--app-prefix", "app_prefix"},
    {"--ip-mode", "ip_mode"},   {"--team", "team"},       {"--project", "project"},
    {"--runtime", "runtime"},   {"--vcpus", "vcpus"},     {"--environment", "environment"},
    {"--app-name", "app_name"},
  };
  for (auto& [f, key] : option_flags)
    if (flag == f) {
      cmd.options.emplace_back(key, value);
      return {};
    }
  if (flag == "--option") {
    auto eq = value.find('=');
    if (eq == std::string::npos || eq == 0)
      return usage_error("--option: expected KEY=VALUE, got '" + value + "'");
    cmd.options.emplace_back(value.substr(0, eq), value.substr(eq + 1));
    return {};
  }
  if (flag == "--provider")
    cmd.provider = value;
  else if (flag == "--secret") {
    if (value.empty())
      return usage_error("--secret needs the secret's name (like ANTHROPIC_API_KEY)");
    cmd.secret_names.push_back(value);
  } else if (flag == "--max-vms") {
    char* end = nullptr;
    auto n = std::strtoll(value.c_str(), &end, 10);
    if (value.empty() || *end != '\0' || n < 1 || n > 100000)
      return usage_error("--max-vms: expected a count from 1 to 100000, got '" + value + "'");
    cmd.max_vms = n;
  } else if (flag == "--apply-to-running")
    cmd.apply_to_running = true;
  else if (flag == "--force")
    cmd.force = true;
  else if (flag == "--agent")
    cmd.agent = value;
  else if (flag == "--profile")
    cmd.profile = value;
  else if (flag == "--account")
    cmd.account = value;
  else if (flag == "--worktree")
    cmd.worktree = value;
  else if (flag == "--idle-timeout")
    return duration(cmd.idle_timeout_s);
  else if (flag == "--hard-timeout")
    return duration(cmd.hard_timeout_s);
  else if (flag == "--no-auto-destroy")
    cmd.no_auto_destroy = true;
  else if (flag == "--follow" || flag == "-f")
    cmd.follow = true;
  else if (flag == "--output")
    cmd.include_output = true;
  else if (flag == "--changes")
    cmd.changes = true;
  else if (flag == "--apply")
    cmd.sync_mode = "apply";
  else if (flag == "--dry-run")
    cmd.sync_mode = "dry_run";
  else if (flag == "--branch") {
    if (auto err = check_branch_name(value))
      return usage_error("--branch: " + message_of(err));
    cmd.sync_mode = "branch";
    cmd.branch = value;
  }
  else if (flag == "--session") {
    if (auto err = check_id(value))
      return err;
    cmd.session = value;
  } else if (flag == "-n") {
    char* end = nullptr;
    errno = 0;
    auto n = std::strtoll(value.c_str(), &end, 10);
    if (value.empty() || *end != '\0' || errno != 0 || n < 0 || n > max_events)
      return usage_error("-n: expected a count from 0 to " + std::to_string(max_events)
                         + ", got '" + value + "'");
    cmd.count = n;
  }
  return {};
}

std::string printable(const std::string& s) {
  // Text from the daemon goes to a terminal: control characters could move
  // the cursor or retitle the window, so they are shown, not obeyed.
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::string pad(const std::string& s, size_t width) {
  return s.size() >= width ? s : s + std::string(width - s.size(), ' ');
}

std::string table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (auto& row : rows)
    for (size_t i = 0; i < row.size(); ++i) {
      if (widths.size() <= i)
        widths.push_back(0);
      widths[i] = std::max(widths[i], row[i].size());
    }
  std::string out;
  for (auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i)
      line += i + 1 < row.size() ? pad(row[i], widths[i] + 2) : row[i];
    out += line + "\n";
  }
  return out;
}

std::string agent_text(const json& rec) {
  auto status = rec.get_string("agent_status");
  if (status == "exited" || status == "failed")
    return status + " (" + std::to_string(rec.get_int("exit_code", -1)) + ")";
  return status;
}

bool terminal_state(const json& rec) {
  session_state st;
  return session_state_from_string(rec.get_string("state"), st) && is_terminal(st);
}

std::string countdown(int64_t deadline, int64_t now_ms) {
  if (deadline <= 0)
    return "-";
  if (deadline <= now_ms)
    return "due";
  return format_duration(deadline - now_ms);
}

std::string relative(int64_t at, int64_t now_ms) {
  if (at <= 0)
    return "never";
  if (at > now_ms)
    return format_time(at) + " (in " + format_duration(at - now_ms) + ")";
  return format_time(at) + " (" + format_duration(now_ms - at) + " ago)";
}

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
           std::chrono::system_clock::now().time_since_epoch())
    .count();
}

bool is_shell_safe_value(const std::string& s) {
  if (s.empty() || s.front() == '-')
    return false;
  for (unsigned char c : s)
    if (c <= 0x20 || c == 0x7f)
      return false;
  return true;
}

// A commit as people read it; anything that is not a full hex id (a ref
// name, say) is shown whole.
std::string short_commit(const std::string& sha) {
  constexpr size_t short_len = 12;
  bool hex = sha.size() >= short_len
             && std::all_of(sha.begin(), sha.end(), [](unsigned char c) {
                  return std::isxdigit(c) != 0;
                });
  return hex ? sha.substr(0, short_len) : sha;
}

// Quotes `s` for a POSIX shell when it needs it, so a printed command can be
// pasted as it is.
std::string shell_quote(const std::string& s) {
  bool plain = !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) {
    return std::isalnum(c) || std::strchr("_-./:@%+=,", c) != nullptr;
  });
  if (plain)
    return s;
  std::string out = "'";
  for (char c : s)
    out += c == '\'' ? std::string{"'\\''"} : std::string(1, c);
  return out + "'";
}

std::vector<std::string> string_list(const json& j, std::string_view key) {
  std::vector<std::string> out;
  if (auto a = j.find(key); a && a->is_array())
    for (auto& item : a->items())
      if (item.is_string())
        out.push_back(item.as_string());
  return out;
}

// Each line of a multi-line text from the daemon, defanged, indented.
std::string printable_lines(const std::string& text, const std::string& indent) {
  std::string out;
  size_t start = 0;
  while (start < text.size()) {
    auto nl = text.find('\n', start);
    auto line = text.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
    if (!line.empty() && line.back() == '\r')
      line.pop_back();
    out += indent + printable(line) + "\n";
    if (nl == std::string::npos)
      break;
    start = nl + 1;
  }
  return out;
}

std::string plural(uint64_t n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

// -- talking to the daemon -------------------------------------------------

// One connection to the daemon, with a line buffer for its replies.
class connection {
public:
  explicit connection(int fd) : fd_(fd) {}
  ~connection() {
    if (fd_ >= 0)
      ::close(fd_);
  }
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  caf::error send(const json& request) {
    auto line = encode_line(request);
    size_t done = 0;
    while (done < line.size()) {
      auto n = ::send(fd_, line.data() + done, line.size() - done, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0)
        return from_errno(errno, "sending to the daemon");
      done += static_cast<size_t>(n);
    }
    return {};
  }

  /// The next reply line; `timeout_ms` < 0 waits as long as it takes.
  caf::expected<json> next(int timeout_ms) {
    for (;;) {
      json line;
      auto got = try_next(line);
      if (!got)
        return got.error();
      if (*got)
        return line;
      pollfd p{fd_, POLLIN, 0};
      auto rc = ::poll(&p, 1, timeout_ms);
      if (rc < 0 && errno == EINTR)
        continue;
      if (rc < 0)
        return from_errno(errno, "waiting for the daemon");
      if (rc == 0)
        return make_error(errc::unavailable,
                          "the daemon did not answer in time; it may be busy");
      if (auto err = receive())
        return err;
    }
  }

  /// Takes a line that has already arrived, without waiting: true and
  /// `out` set, or false when no whole line is buffered.
  caf::expected<bool> try_next(json& out) {
    // Replies come from our own daemon, but a bound still keeps a confused
    // peer from eating all memory.
    constexpr size_t max_reply = size_t{256} << 20;
    auto nl = buf_.find('\n');
    if (nl == std::string::npos) {
      if (buf_.size() > max_reply)
        return make_error(errc::internal, "the daemon sent an overlong reply");
      return false;
    }
    auto line = buf_.substr(0, nl);
    buf_.erase(0, nl + 1);
    auto j = json::parse(line);
    if (!j)
      return make_error(errc::internal,
                        "the daemon sent a line that is not JSON: " + message_of(j.error()));
    out = std::move(*j);
    return true;
  }

  /// Reads what the socket holds (call when poll says it is readable).
  /// Errors: unavailable when the daemon closed the connection.
  caf::error receive() {
    char chunk[65536];
    for (;;) {
      auto n = ::recv(fd_, chunk, sizeof(chunk), 0);
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0)
        return from_errno(errno, "reading from the daemon");
      if (n == 0)
        return make_error(errc::unavailable,
                          "the daemon closed the connection (was it stopped?)");
      buf_.append(chunk, static_cast<size_t>(n));
      return {};
    }
  }

  int fd() const { return fd_; }

private:
  int fd_;
  std::string buf_;
};

constexpr int reply_timeout_ms = 120'000;

caf::error error_from_reply(const json& reply) {
  auto e = reply.find("error");
  if (!e || !e->is_object())
    return make_error(errc::internal, "the daemon sent a malformed error reply");
  return make_error(errc_from_string(e->get_string("code")), e->get_string("message"));
}

// Sends `request` and waits for its one reply.
caf::expected<json> call(connection& conn, const json& request) {
  if (auto err = conn.send(request))
    return err;
  auto reply = conn.next(reply_timeout_ms);
  if (!reply)
    return reply.error();
  if (!reply->get_bool("ok"))
    return error_from_reply(*reply);
  auto r = reply->find("result");
  return r ? *r : json{};
}

struct client_context {
  const cli_command& cmd;
  std::ostream& out;
  std::ostream& err;
  int64_t next_id = 1;

  int fail(const caf::error& e) {
    auto code = code_of(e);
    if (cmd.json) {
      auto j = json::object();
      j.set("error", json::object()
                       .set("code", to_string(code))
                       .set("message", message_of(e)));
      out << encode_line(j) << std::flush;
    } else {
      err << format_error(to_string(code), message_of(e)) << std::flush;
    }
    return exit_code_for(code);
  }

  void print_json(const json& j) { out << encode_line(j) << std::flush; }
};

caf::expected<std::string> absolute_worktree(const std::string& given) {
  auto path = given.empty() ? std::string{"."} : given;
  char resolved[PATH_MAX];
  if (!::realpath(path.c_str(), resolved))
    return make_error(errc::invalid_argument,
                      "--worktree " + path + ": " + std::strerror(errno));
  struct stat st;
  if (::stat(resolved, &st) != 0 || !S_ISDIR(st.st_mode))
    return make_error(errc::invalid_argument,
                      "--worktree " + path + " is not a directory");
  return std::string{resolved};
}


// Sends the command's streaming request and hands every reply's result to
// `on_item` (with whether more follow) until the stream ends; `--json`
// prints each result as it is instead.
template <class OnItem>
int stream_replies(client_context& ctx, connection& conn, OnItem on_item) {
  if (auto err = conn.send(request_for(ctx.cmd, ctx.next_id++)))
    return ctx.fail(err);
  for (;;) {
    auto reply = conn.next(-1);
    if (!reply)
      return ctx.fail(reply.error());
    if (!reply->get_bool("ok"))
      return ctx.fail(error_from_reply(*reply));
    auto result = reply->find("result");
    json item = result ? *result : json::object();
    bool more = reply->get_bool("more");
    if (ctx.cmd.json)
      ctx.print_json(item);
    else
      on_item(item, more);
    if (!more)
      return exit_codes::ok;
  }
}

int run_logs(client_context& ctx, connection& conn) {
  auto& cmd = ctx.cmd;
  if (!cmd.follow) {
    int64_t offset = 0;
    for (;;) {
      auto req = request_for(cmd, ctx.next_id++);
      auto args = *req.find("args");
      args.set("offset", offset);
      req.set("args", args);
      auto chunk = call(conn, req);
      if (!chunk)
        return ctx.fail(chunk.error());
      if (cmd.json)
        ctx.print_json(*chunk);
      else
        ctx.out << chunk->get_string("data");
      auto next = chunk->get_int("next_offset", offset);
      if (chunk->get_bool("eof", true) || next <= offset)
        break;
      offset = next;
    }
    ctx.out << std::flush;
    return exit_codes::ok;
  }
  return stream_replies(ctx, conn, [&](const json& item, bool more) {
    if (more)
      ctx.out << item.get_string("data") << std::flush;
    else
      ctx.err << "aloft: " << printable(item.get_string("end", "stream ended")) << "\n";
  });
}

int run_events(client_context& ctx, connection& conn) {
  auto& cmd = ctx.cmd;
  if (!cmd.follow) {
    auto result = call(conn, request_for(cmd, ctx.next_id++));
    if (!result)
      return ctx.fail(result.error());
    if (cmd.json) {
      ctx.print_json(*result);
    } else if (auto evs = result->find("events")) {
      for (auto& ev : evs->items())
        ctx.out << format_event(ev);
    }
    ctx.out << std::flush;
    return exit_codes::ok;
  }
  return stream_replies(ctx, conn, [&](const json& item, bool more) {
    if (more)
      ctx.out << format_event(item) << std::flush;
  });
}

int run_attach(client_context& ctx, connection& conn) {
  auto& cmd = ctx.cmd;
  auto info = call(conn, request_for(cmd, ctx.next_id++));
  if (!info)
    return ctx.fail(info.error());
  auto plan = plan_attach(*info);
  if (!plan)
    return ctx.fail(plan.error());
  if (cmd.json) {
    auto argv = json::array();
    for (auto& a : plan->argv)
      argv.push_back(a);
    auto j = *info;
    j.set("known_hosts_path", plan->known_hosts_path);
    j.set("ssh_argv", std::move(argv));
    ctx.print_json(j);
    return exit_codes::ok;
  }
  if (auto err = write_known_hosts(*plan))
    return ctx.fail(err);
  // Attaching is activity: it pushes the idle deadline once, before the
  // terminal exists (input in it is the VM's business from then on).
  auto activity = json::object();
  activity.set("id", ctx.next_id++).set("op", "activity");
  activity.set("args", json::object().set("id", cmd.id).set("source", "attach"));
  if (auto r = call(conn, activity); !r)
    return ctx.fail(r.error());
  ctx.out << std::flush;
  ctx.err << std::flush;
  std::vector<char*> argv;
  for (auto& a : plan->argv)
    argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  ::execvp(argv[0], argv.data());
  return ctx.fail(make_error(errc::failed_precondition,
                             std::string{"cannot run ssh: "} + std::strerror(errno)
                               + "; install the OpenSSH client"));
}

// Sends a `hello` on the progress connection and reads until its reply,
// passing the stream items before it to `on_item`: every event the daemon
// queued for this connection before the hello is then in hand. False when
// the connection failed (progress is then given up, never the sync).
bool progress_barrier(connection& watch, const std::string& tag,
                      const std::function<void(const json&)>& on_item) {
  constexpr int barrier_timeout_ms = 10'000;
  auto hello = json::object();
  hello.set("id", tag).set("op", "hello").set("args", json::object());
  if (watch.send(hello))
    return false;
  for (;;) {
    auto line = watch.next(barrier_timeout_ms);
    if (!line)
      return false;
    if (line->get_bool("more")) {
      on_item(*line);
      continue;
    }
    if (line->get_string("id") == tag)
      return line->get_bool("ok");
    if (!line->get_bool("ok"))
      return false; // the events stream itself was refused
  }
}

// A second connection that streams `session`'s events, set up completely
// (the daemon has subscribed) before this returns. Null when that fails.
std::unique_ptr<connection> follow_progress(const std::string& socket,
                                            const std::string& session) {
  auto fd = connect_unix_socket(socket);
  if (!fd)
    return nullptr;
  auto watch = std::make_unique<connection>(*fd);
  auto req = json::object();
  req.set("id", "progress").set("op", "events");
  req.set("args", json::object().set("n", 0).set("follow", true).set("session", session));
  if (watch->send(req))
    return nullptr;
  // Events before our sync starts belong to somebody else's: skip them.
  if (!progress_barrier(*watch, "ready", [](const json&) {}))
    return nullptr;
  return watch;
}

int run_sync(client_context& ctx, connection& conn, const std::string& socket,
             const client_options& opts) {
  auto& cmd = ctx.cmd;
  progress_view view{opts.progress_terminal, opts.width};
  auto on_item = [&](const json& line) {
    auto ev = line.find("result");
    sync_progress p;
    if (ev && line.get_bool("more") && read_sync_progress(*ev, p))
      ctx.err << view.update(p) << std::flush;
  };
  // Progress is for people: with --json it is shown only on a terminal.
  std::unique_ptr<connection> watch;
  if (opts.progress_terminal || !cmd.json)
    watch = follow_progress(socket, cmd.id);
  auto req = request_for(cmd, ctx.next_id++);
  auto req_id = req.get_int("id");
  if (auto err = conn.send(req))
    return ctx.fail(err);
  json reply;
  auto give_up = [&](const caf::error& err) {
    ctx.err << view.finish() << std::flush;
    return ctx.fail(err);
  };
  // A sync takes as long as it takes: wait without a timeout, until the
  // reply or until the daemon goes away.
  for (;;) {
    while (watch) {
      json line;
      auto got = watch->try_next(line);
      if (!got)
        watch.reset();
      else if (!*got)
        break;
      else
        on_item(line);
    }
    auto got = conn.try_next(reply);
    if (!got)
      return give_up(got.error());
    if (*got) {
      if (reply.get_int("id") == req_id)
        break;
      continue; // not ours; nothing else was asked on this connection
    }
    pollfd fds[2] = {{conn.fd(), POLLIN, 0}, {watch ? watch->fd() : -1, POLLIN, 0}};
    auto rc = ::poll(fds, 2, -1);
    if (rc < 0 && errno == EINTR)
      continue;
    if (rc < 0)
      return give_up(from_errno(errno, "waiting for the daemon"));
    if (fds[0].revents != 0)
      if (auto err = conn.receive())
        return give_up(err);
    if (watch && fds[1].revents != 0 && watch->receive())
      watch.reset(); // progress is lost; the sync's reply is not
  }
  // The reply can overtake the last progress events (they travel on the
  // other connection): collect those before drawing the end.
  if (watch)
    progress_barrier(*watch, "done", on_item);
  ctx.err << view.finish() << std::flush;
  if (!reply.get_bool("ok"))
    return ctx.fail(error_from_reply(reply));
  auto r = reply.find("result");
  json result = r ? *r : json::object();
  if (cmd.json)
    ctx.print_json(result);
  else
    ctx.out << (cmd.name == "sync-up" ? format_sync_up(result) : format_sync_down(result))
            << std::flush;
  return exit_codes::ok;
}

} // namespace

// -- exit codes and parsing -------------------------------------------------

int exit_code_for(errc code) {
  switch (code) {
    case errc::ok: return exit_codes::ok;
    case errc::invalid_argument:
    case errc::out_of_range: return exit_codes::usage;
    case errc::not_found: return exit_codes::not_found;
    case errc::failed_precondition: return exit_codes::refused;
    case errc::unavailable:
    case errc::resource_exhausted:
    case errc::aborted: return exit_codes::unavailable;
    default: return exit_codes::failed;
  }
}

caf::expected<int64_t> parse_duration(std::string_view text) {
  if (text.empty())
    return usage_error("expected a duration like 90s, 30m, 2h or seconds, got ''");
  auto bad = [&](const std::string& why) {
    return usage_error("expected a duration like 90s, 30m, 2h or seconds, got '"
                       + std::string{text} + "' (" + why + ")");
  };
  int64_t total = 0;
  size_t i = 0;
  bool any_unit = false;
  while (i < text.size()) {
    if (text[i] < '0' || text[i] > '9')
      return bad("a number must come first");
    int64_t n = 0;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
      if (n > (INT64_MAX - 9) / 10)
        return bad("too large");
      n = n * 10 + (text[i] - '0');
      ++i;
    }
    int64_t unit = 1;
    if (i < text.size()) {
      switch (text[i]) {
        case 's': unit = 1; break;
        case 'm': unit = 60; break;
        case 'h': unit = 3600; break;
        case 'd': unit = 86400; break;
        default: return bad(std::string{"unknown unit '"} + text[i] + "'");
      }
      ++i;
      any_unit = true;
    } else if (any_unit) {
      return bad("a unit is missing after the last number");
    }
    if (n > (INT64_MAX / 1000 - total) / unit)
      return bad("too large");
    total += n * unit;
  }
  if (total <= 0)
    return bad("it must be longer than zero");
  return total;
}

std::string format_duration(int64_t ms) {
  if (ms < 0)
    ms = 0;
  auto s = ms / 1000;
  char buf[32];
  if (s < 60)
    std::snprintf(buf, sizeof(buf), "%llds", static_cast<long long>(s));
  else if (s < 3600)
    std::snprintf(buf, sizeof(buf), "%lldm%02llds", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  else if (s < 86400)
    std::snprintf(buf, sizeof(buf), "%lldh%02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>(s % 3600 / 60));
  else
    std::snprintf(buf, sizeof(buf), "%lldd%02lldh", static_cast<long long>(s / 86400),
                  static_cast<long long>(s % 86400 / 3600));
  return buf;
}

std::string format_time(int64_t ms) {
  if (ms <= 0)
    return "-";
  time_t t = static_cast<time_t>(ms / 1000);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%SZ", &tm);
  return buf;
}

caf::expected<cli_command> parse_cli(const std::vector<std::string>& args) {
  cli_command cmd;
  const command_spec* spec = nullptr;
  std::vector<std::string> positionals;
  bool only_positionals = false;
  bool help_word = false;
  std::string sync_mode_flag; // the sync-down mode flag seen, to refuse a second
  for (size_t i = 0; i < args.size(); ++i) {
    auto a = args[i];
    if (!only_positionals && a == "--") {
      only_positionals = true;
      continue;
    }
    if (!only_positionals && a.size() > 1 && a[0] == '-') {
      std::string name = a;
      std::string value;
      bool has_inline_value = false;
      if (auto eq = a.find('='); a.compare(0, 2, "--") == 0 && eq != std::string::npos) {
        name = a.substr(0, eq);
        value = a.substr(eq + 1);
        has_inline_value = true;
      }
      auto take_value = [&](const std::string& what) -> caf::error {
        if (has_inline_value)
          return {};
        if (i + 1 >= args.size())
          return usage_error(name + " needs a value (" + what + ")");
        value = args[++i];
        return {};
      };
      if (name == "--home") {
        if (auto err = take_value("DIR"))
          return err;
        if (value.empty())
          return usage_error("--home needs a directory");
        cmd.home = value;
        continue;
      }
      if (name == "--json" || name == "-h" || name == "--help" || name == "--version") {
        if (has_inline_value)
          return usage_error(name + " takes no value");
        if (name == "--json")
          cmd.json = true;
        else if (name == "--version")
          cmd.version = true;
        else
          cmd.help = true;
        continue;
      }
      const flag_spec* flag = spec ? find_flag(*spec, name) : nullptr;
      if (!flag)
        return usage_error("unknown option " + name
                           + (spec ? " for `aloft " + std::string{spec->name}
                                       + "` (see aloft " + spec->name + " --help)"
                                   : std::string{" (see aloft --help)"}));
      if (flag->value_name) {
        if (auto err = take_value(flag->value_name))
          return err;
      } else if (has_inline_value) {
        return usage_error(name + " takes no value");
      }
      if (auto err = apply_flag(cmd, flag->long_name, value))
        return err;
      std::string long_name = flag->long_name;
      if (long_name == "--apply" || long_name == "--branch" || long_name == "--dry-run") {
        if (!sync_mode_flag.empty() && sync_mode_flag != long_name)
          return usage_error(sync_mode_flag + " and " + long_name
                             + " exclude each other (sync-down does one of --apply, "
                               "--branch NAME, --dry-run)");
        sync_mode_flag = long_name;
      }
      continue;
    }
    if (!spec) {
      if (a == "help" && !help_word) {
        help_word = true;
        cmd.help = true;
        continue;
      }
      spec = find_command(a);
      if (!spec)
        return usage_error("unknown command '" + a + "' (see aloft --help)");
      cmd.name = spec->name;
      continue;
    }
    positionals.push_back(a);
  }
  if (cmd.help || cmd.version)
    return cmd;
  if (!spec)
    return cmd; // nothing to run: the caller prints the usage
  auto usage_hint = std::string{" (see aloft "} + spec->name + " --help)";
  if (cmd.name == "account") {
    if (auto err = parse_account_positionals(cmd, positionals))
      return err;
    return cmd;
  }
  if (positionals.size() < spec->positionals.size())
    return usage_error(std::string{spec->name} + " needs "
                       + spec->positionals[positionals.size()] + usage_hint);
  if (positionals.size() > spec->positionals.size())
    return usage_error("unexpected argument '" + positionals[spec->positionals.size()]
                       + "'" + usage_hint);
  if (!spec->positionals.empty()) {
    if (auto err = check_id(positionals[0]))
      return err;
    cmd.id = positionals[0];
  }
  if (cmd.name == "extend") {
    auto d = parse_duration(positionals[1]);
    if (!d)
      return usage_error("extend: " + message_of(d.error()));
    cmd.seconds = *d;
  }
  if (cmd.name == "launch" && cmd.agent.empty() && cmd.profile.empty())
    return usage_error("launch needs --agent CMD (the agent's command line) or --profile NAME"
                       + usage_hint);
  return cmd;
}

// -- help --------------------------------------------------------------------

namespace {

std::string synopsis(const command_spec& c) {
  std::string s = std::string{"aloft "} + c.name;
  for (auto p : c.positionals)
    s += std::string{" "} + p;
  if (c.options_synopsis)
    return s + " " + c.options_synopsis;
  for (auto& f : c.flags) {
    // A flag whose help says "(required)" is shown without brackets.
    bool required = std::string{f.help}.find("(required)") != std::string::npos;
    s += required ? " " : " [";
    s += f.short_name ? f.short_name : f.long_name;
    if (f.value_name)
      s += std::string{" "} + f.value_name;
    if (!required)
      s += "]";
  }
  return s;
}

const char* exit_code_table = "Exit codes:\n"
                              "  0  ok\n"
                              "  1  failed\n"
                              "  2  usage error (bad arguments or a bad request)\n"
                              "  3  not found (no such session)\n"
                              "  4  no daemon running (start one with `aloft serve`)\n"
                              "  5  refused in the session's current state\n"
                              "  6  temporarily unavailable; retry\n";

const char* common_options = "Options for every command:\n"
                             "  --home DIR   the state directory (default: $ALOFT_HOME,\n"
                             "               else the XDG data, config and runtime dirs)\n"
                             "  --json       machine-readable output (docs/protocol.md)\n"
                             "  -h, --help   help for a command\n";

} // namespace

std::string usage_text() {
  std::string s = "aloft - run coding agents in cloud VMs\n\n"
                  "Usage: aloft [--home DIR] [--json] COMMAND [ARGS]\n\n"
                  "Commands:\n";
  size_t name_width = 0;
  for (auto& c : commands())
    name_width = std::max(name_width, std::string{c.name}.size());
  for (auto& c : commands())
    s += "  " + pad(c.name, name_width + 2) + c.summary + "\n";
  s += "\n";
  s += common_options;
  s += "\nStart the daemon with `aloft serve`; the other commands talk to it.\n"
       "`aloft COMMAND --help` describes one command.\n\n";
  s += exit_code_table;
  return s;
}

std::string command_help(const std::string& name) {
  auto c = find_command(name);
  if (!c)
    return {};
  std::string summary = c->summary;
  summary[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(summary[0])));
  std::string s = "Usage: " + synopsis(*c) + "\n\n" + summary + ".\n\n" + c->details
                  + "\n";
  if (!c->flags.empty()) {
    s += "\nOptions:\n";
    for (auto& f : c->flags) {
      std::string left = f.short_name ? std::string{f.short_name} + ", " + f.long_name
                                      : std::string{f.long_name};
      if (f.short_name && std::string{f.short_name} == f.long_name)
        left = f.long_name;
      if (f.value_name)
        left += std::string{" "} + f.value_name;
      s += "  " + pad(left, 22) + f.help + "\n";
    }
  }
  s += "\n";
  s += common_options;
  s += "\n";
  s += exit_code_table;
  return s;
}

int handle_help_and_usage(const caf::expected<cli_command>& parsed, std::ostream& out,
                          std::ostream& err) {
  if (!parsed) {
    err << "aloft: " << message_of(parsed.error()) << "\n";
    return exit_codes::usage;
  }
  if (parsed->help) {
    if (parsed->name.empty())
      out << usage_text();
    else
      out << command_help(parsed->name);
    return exit_codes::ok;
  }
  if (parsed->version) {
    out << "aloft (protocol " << protocol_version << ")\n";
    return exit_codes::ok;
  }
  if (parsed->name.empty()) {
    err << usage_text();
    return exit_codes::usage;
  }
  return -1;
}

// -- requests ----------------------------------------------------------------

json request_for(const cli_command& cmd, int64_t request_id) {
  auto req = json::object();
  req.set("id", request_id);
  auto args = json::object();
  auto& n = cmd.name;
  if (n == "launch") {
    req.set("op", "launch");
    if (!cmd.agent.empty())
      args.set("agent", cmd.agent);
    if (!cmd.profile.empty())
      args.set("profile", cmd.profile);
    if (!cmd.account.empty())
      args.set("account", cmd.account);
    if (!cmd.worktree.empty())
      args.set("worktree", cmd.worktree);
    if (cmd.idle_timeout_s > 0)
      args.set("idle_timeout_s", cmd.idle_timeout_s);
    if (cmd.hard_timeout_s > 0)
      args.set("hard_timeout_s", cmd.hard_timeout_s);
    if (cmd.no_auto_destroy)
      args.set("auto_destroy", false);
  } else if (n == "ls") {
    req.set("op", "list");
  } else if (n == "logs") {
    req.set("op", "logs");
    args.set("id", cmd.id);
    if (cmd.follow)
      args.set("follow", true);
  } else if (n == "extend") {
    req.set("op", "extend");
    args.set("id", cmd.id);
    args.set("seconds", cmd.seconds);
  } else if (n == "events") {
    req.set("op", "events");
    args.set("n", cmd.count >= 0 ? cmd.count : 20);
    if (cmd.follow)
      args.set("follow", true);
    if (cmd.include_output)
      args.set("include_output", true);
    if (!cmd.session.empty())
      args.set("session", cmd.session);
  } else if (n == "reload") {
    req.set("op", "reload");
  } else if (n == "account") {
    auto& sub = cmd.subcommand;
    if (sub == "ls") {
      req.set("op", "account_list");
    } else if (sub == "add") {
      req.set("op", "account_add");
      args.set("name", cmd.account_name);
      args.set("provider", cmd.provider);
      auto opts = json::object();
      for (auto& [k, v] : cmd.options)
        opts.set(k, v);
      if (!cmd.options.empty())
        args.set("options", std::move(opts));
      if (cmd.idle_timeout_s > 0)
        args.set("idle_timeout_s", cmd.idle_timeout_s);
      if (cmd.hard_timeout_s > 0)
        args.set("hard_timeout_s", cmd.hard_timeout_s);
      if (cmd.no_auto_destroy)
        args.set("auto_destroy_on_idle", false);
      if (cmd.max_vms > 0)
        args.set("max_concurrent_vms", cmd.max_vms);
      // Secrets are read and added by run_client, never from arguments.
    } else if (sub == "secret") {
      req.set("op", "account_secret");
      args.set("name", cmd.account_name).set("key", cmd.key);
      // The value is read and added by run_client.
    } else if (sub == "set") {
      req.set("op", "account_set");
      args.set("name", cmd.account_name).set("key", cmd.key).set("value", cmd.value);
      if (cmd.apply_to_running)
        args.set("apply_to_running", true);
    } else {
      // validate, enable, disable, default, rm
      req.set("op", "account_" + sub);
      args.set("name", cmd.account_name);
      if (cmd.force)
        args.set("force", true);
    }
  } else if (n == "sync-up") {
    req.set("op", "sync_up");
    args.set("id", cmd.id);
  } else if (n == "sync-down") {
    req.set("op", "sync_down");
    args.set("id", cmd.id);
    args.set("mode", cmd.sync_mode);
    if (cmd.sync_mode == "branch")
      args.set("branch", cmd.branch);
  } else {
    // show, attach, stop, destroy: the op has the command's name.
    req.set("op", n);
    args.set("id", cmd.id);
  }
  req.set("args", std::move(args));
  return req;
}

// -- human output --------------------------------------------------------------

std::string format_accounts(const json& list_result) {
  auto list = list_result.find("accounts");
  if (!list || list->size() == 0)
    return "no accounts\n";
  std::vector<std::vector<std::string>> rows = {
    {"NAME", "PROVIDER", "STATE", "LIVE", "IDLE", "HARD", "SECRETS", "PROBLEM"}};
  for (auto& a : list->items()) {
    auto g = a.find("guards");
    std::string state = a.get_bool("enabled", true) ? "enabled" : "disabled";
    if (a.get_bool("default"))
      state += ",default";
    std::string secrets;
    if (auto sec = a.find("secrets"); sec && sec->is_object())
      for (size_t i = 0; i < sec->keys().size(); ++i)
        secrets += (secrets.empty() ? "" : " ") + sec->keys()[i] + "="
                   + sec->items()[i].as_string();
    if (secrets.empty())
      secrets = "-";
    auto idle = g ? g->get_int("idle_timeout_s") : 0;
    std::string idle_text = g && !g->get_bool("auto_destroy_on_idle", true)
                              ? "off"
                              : format_duration(idle * 1000);
    rows.push_back({printable(a.get_string("name")), printable(a.get_string("provider")),
                    state, std::to_string(a.get_int("live_sessions")), idle_text,
                    format_duration((g ? g->get_int("hard_timeout_s") : 0) * 1000),
                    printable(secrets), printable(a.get_string("problem"))});
  }
  std::vector<size_t> width(rows[0].size(), 0);
  for (auto& r : rows)
    for (size_t i = 0; i < r.size(); ++i)
      width[i] = std::max(width[i], r[i].size());
  std::string out;
  for (auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i)
      line += i + 1 < r.size() ? pad(r[i], width[i] + 2) : r[i];
    while (!line.empty() && line.back() == ' ')
      line.pop_back();
    out += line + "\n";
  }
  return out;
}

std::string format_account(const json& a) {
  std::string out = "  " + printable(a.get_string("name")) + " ("
                    + printable(a.get_string("provider")) + ")"
                    + (a.get_bool("enabled", true) ? "" : ", disabled")
                    + (a.get_bool("default") ? ", default" : "") + "\n";
  if (auto opts = a.find("options"); opts && opts->is_object())
    for (size_t i = 0; i < opts->keys().size(); ++i)
      out += "  " + printable(opts->keys()[i]) + ": "
             + printable(opts->items()[i].as_string()) + "\n";
  if (auto g = a.find("guards")) {
    out += "  idle timeout: " + format_duration(g->get_int("idle_timeout_s") * 1000)
           + (g->get_bool("auto_destroy_on_idle", true) ? " (destroys)" : " (warns only)")
           + "\n";
    out += "  hard timeout: " + format_duration(g->get_int("hard_timeout_s") * 1000) + "\n";
  }
  out += "  max concurrent VMs: " + std::to_string(a.get_int("max_concurrent_vms")) + "\n";
  if (auto sec = a.find("secrets"); sec && sec->is_object() && sec->size() > 0) {
    out += "  secrets (" + printable(a.get_string("store")) + " store):";
    for (size_t i = 0; i < sec->keys().size(); ++i)
      out += " " + printable(sec->keys()[i]) + "=" + printable(sec->items()[i].as_string());
    out += "\n";
  }
  if (auto p = a.get_string("problem"); !p.empty())
    out += "  problem: " + printable(p) + "\n";
  return out;
}

std::string format_reload(const json& r) {
  auto names = [&](const char* key) {
    std::string s;
    if (auto xs = r.find(key))
      for (auto& x : xs->items())
        s += (s.empty() ? "" : ", ") + printable(x.as_string());
    return s.empty() ? std::string{"none"} : s;
  };
  std::string out = "reloaded settings: added " + names("added") + "; changed "
                    + names("changed") + "; removed " + names("removed") + "\n";
  if (auto ps = r.find("problems"))
    for (auto& p : ps->items())
      out += "problem: " + printable(p.as_string()) + "\n";
  return out;
}

std::string format_ls(const json& list_result, int64_t now) {
  auto sessions = list_result.find("sessions");
  if (!sessions || sessions->size() == 0)
    return "no sessions (start one with `aloft launch --agent CMD`)\n";
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"ID", "ACCOUNT", "STATE", "AGENT", "IDLE IN", "HARD IN", "AGE"});
  for (auto& rec : sessions->items()) {
    bool done = terminal_state(rec);
    std::string idle = "-";
    if (!done)
      idle = rec.get_bool("auto_destroy", true)
               ? countdown(rec.get_int("idle_deadline"), now)
               : "off";
    std::string hard = done ? "-" : countdown(rec.get_int("hard_deadline"), now);
    auto created = rec.get_int("created_at");
    rows.push_back({printable(rec.get_string("id")), printable(rec.get_string("account")),
                    printable(rec.get_string("state")), printable(agent_text(rec)), idle,
                    hard, created > 0 ? format_duration(now - created) : "-"});
  }
  return table(rows);
}

std::string format_show(const json& show_result, int64_t now) {
  static const json empty = json::object();
  auto found = show_result.find("session");
  const json& rec = found ? *found : empty;
  bool done = terminal_state(rec);
  std::vector<std::vector<std::string>> rows;
  auto row = [&](const std::string& k, const std::string& v) {
    rows.push_back({k + ":", v});
  };
  auto str = [&](const char* key) { return printable(rec.get_string(key)); };
  row("id", str("id"));
  row("account", str("account") + " (provider " + str("provider") + ")");
  auto state = str("state");
  if (!rec.get_string("reason").empty())
    state += " (" + str("reason") + ")";
  row("state", state);
  row("agent", printable(agent_text(rec)));
  row("command", str("agent_cmd"));
  row("worktree", str("worktree"));
  if (!rec.get_string("vm_id").empty())
    row("vm", str("vm_id"));
  if (!rec.get_string("host").empty())
    row("ssh", str("user") + "@" + str("host") + ":"
                 + std::to_string(rec.get_int("port")));
  if (!rec.get_string("workdir").empty())
    row("workdir", str("workdir"));
  row("created", relative(rec.get_int("created_at"), now));
  row("auto-destroy", std::string{rec.get_bool("auto_destroy", true) ? "on" : "off"}
                        + ", idle timeout "
                        + format_duration(rec.get_int("idle_timeout_ms")));
  row("idle deadline", relative(rec.get_int("idle_deadline"), now));
  row("hard deadline", relative(rec.get_int("hard_deadline"), now));
  auto timer = show_result.get_string("next_timer");
  auto at = show_result.get_int("next_timer_at");
  std::string next = "none";
  if (!done && !timer.empty()) {
    std::string action;
    // Before a timed destroy the engine syncs the agent's work down to the
    // session's safety ref (never into the worktree).
    if (timer == "idle")
      action = rec.get_bool("auto_destroy", true)
                 ? "sync down to a safety ref, then destroy"
                 : "warn (auto-destroy is off)";
    else if (timer == "hard")
      action = "sync down to a safety ref, then destroy";
    else
      action = printable(timer);
    next = printable(timer) + " timeout " + (at > now ? "in " + format_duration(at - now)
                                                      : std::string{"due now"})
           + " (at " + format_time(at) + "): " + action;
  }
  row("next timer", next);
  auto activity = rec.get_string("last_activity");
  row("last activity",
      activity.empty() ? "none yet"
                       : printable(activity) + ", "
                           + relative(rec.get_int("last_activity_at"), now));
  row("log", std::to_string(rec.get_int("log_offset")) + " bytes delivered");
  auto synced = [&](const char* key) {
    auto sha = rec.get_string(key);
    return sha.empty() ? std::string{"never"} : printable(short_commit(sha));
  };
  row("synced up", synced("synced_up"));
  row("synced down", synced("synced_down"));
  if (!rec.get_string("safety_ref").empty())
    row("safety ref", str("safety_ref"));
  if (auto st = show_result.find("sync_state"); st && st->is_object()) {
    // true, false, or null when the engine could not tell (the note says why).
    auto side = [&](const char* key, const char* note_key, const std::string& yes,
                    const std::string& no) {
      auto v = st->find(key);
      if (v && v->is_bool())
        return v->as_bool() ? yes : no;
      auto note = st->get_string(note_key);
      return std::string{"unknown"} + (note.empty() ? "" : " (" + printable(note) + ")");
    };
    row("local changes",
        side("local_changed", "local_note", "yes, since the last sync up",
             "none since the last sync up"));
    row("agent changes",
        side("vm_changed", "vm_note", "yes, not synced down yet", "none since the last sync"));
  }
  return table(rows);
}

std::string format_event(const json& ev) {
  auto kind = ev.get_string("kind");
  std::string detail;
  if (kind == "output") {
    detail = std::to_string(ev.get_string("data").size()) + " bytes at offset "
             + std::to_string(ev.get_int("offset"));
  } else {
    detail = ev.get_string("state");
    auto msg = ev.get_string("message");
    if (!msg.empty())
      detail += (detail.empty() ? "" : ": ") + msg;
  }
  auto session = ev.get_string("session");
  return format_time(ev.get_int("at_ms")) + "  " + pad(printable(session.empty() ? "-" : session), 14)
         + "  " + pad(printable(kind), 10) + "  " + printable(detail) + "\n";
}

std::string format_launch(const json& rec) {
  auto id = printable(rec.get_string("id"));
  return "launched " + id + " on account " + printable(rec.get_string("account"))
         + " (" + printable(rec.get_string("state")) + ")\n"
         + "  follow its output:  aloft logs " + id + " -f\n"
         + "  open a terminal:    aloft attach " + id + "\n";
}

std::string format_extend(const json& rec, int64_t now) {
  return printable(rec.get_string("id")) + ": hard deadline is now "
         + relative(rec.get_int("hard_deadline"), now) + "\n";
}

std::string format_bytes(uint64_t n) {
  if (n < 1024)
    return std::to_string(n) + (n == 1 ? " byte" : " bytes");
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n) / 1024;
  size_t u = 0;
  while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f %s", v, units[u]);
  return buf;
}

std::string format_sync_up(const json& r) {
  auto files = static_cast<uint64_t>(std::max<int64_t>(0, r.get_int("files")));
  auto bytes = static_cast<uint64_t>(std::max<int64_t>(0, r.get_int("bytes")));
  std::string s = "synced up " + printable(short_commit(r.get_string("commit"))) + ": "
                  + plural(files, "file", "files") + ", " + format_bytes(bytes) + "\n";
  for (auto& note : string_list(r, "notes"))
    s += "note: " + printable(note) + "\n";
  return s;
}

std::string format_sync_down(const json& r) {
  auto mode = r.get_string("mode", "apply");
  auto commit = printable(short_commit(r.get_string("commit")));
  auto base = r.get_string("base");
  auto base_text = base.empty() ? std::string{} : " (base " + printable(short_commit(base)) + ")";
  auto changed = string_list(r, "changed");
  auto conflicts = string_list(r, "conflicts");
  auto diffstat = r.get_string("diffstat");
  std::string s;
  if (mode == "dry_run")
    s += "dry run: nothing was written; the agent's snapshot " + commit + base_text
         + " would change " + plural(changed.size(), "file", "files") + "\n";
  else if (mode == "branch")
    s += "created branch " + printable(r.get_string("branch")) + " at " + commit + base_text
         + " with the agent's changes; your worktree was not touched\n";
  else
    s += "synced down " + commit + base_text + ": "
         + plural(changed.size(), "file", "files") + " changed\n";
  if (changed.empty() && conflicts.empty() && diffstat.empty())
    s += "no changes from the agent\n";
  s += printable_lines(diffstat, "");
  if (!changed.empty()) {
    s += mode == "dry_run" ? "would change:\n" : mode == "branch" ? "changes:\n" : "changed:\n";
    for (auto& path : changed)
      s += "  " + printable(path) + "\n";
  }
  auto ref = r.get_string("ref");
  if (ref.empty())
    ref = r.get_string("commit");
  for (auto& path : conflicts)
    s += "conflict: " + printable(path)
         + " was left as it was locally; the agent's version: git show "
         + printable(shell_quote(ref + ":" + path)) + "\n";
  auto saved = r.get_string("saved_ref");
  if (!saved.empty())
    s += "your local state before the sync is saved as " + printable(saved) + "\n";
  for (auto& note : string_list(r, "notes"))
    s += "note: " + printable(note) + "\n";
  if (!conflicts.empty())
    s += plural(conflicts.size(), "conflict", "conflicts")
         + ": the local files were left as they were; merge the agent's versions by "
           "hand\n";
  return s;
}

// -- sync progress -------------------------------------------------------------

bool read_sync_progress(const json& ev, sync_progress& out) {
  if (ev.get_string("kind") != "sync")
    return false;
  out = sync_progress{};
  out.message = ev.get_string("message");
  auto data = json::parse(ev.get_string("data"));
  if (data && data->is_object()) {
    out.direction = data->get_string("direction");
    out.phase = data->get_string("phase");
    out.done = static_cast<uint64_t>(std::max<int64_t>(0, data->get_int("done")));
    out.total = static_cast<uint64_t>(std::max<int64_t>(0, data->get_int("total")));
  }
  return true;
}

std::string progress_line(const sync_progress& p, size_t width, bool bar) {
  // Names from the daemon are short words; a long one is cut, not wrapped.
  auto word = [](const std::string& w) { return printable(w.substr(0, 16)); };
  std::string line;
  if (p.direction.empty() && p.phase.empty()) {
    line = printable(p.message.empty() ? std::string{"syncing"} : p.message);
  } else {
    line = (p.direction.empty() ? std::string{"sync"} : word(p.direction)) + ": "
           + word(p.phase);
    std::string amount;
    int pct = -1;
    if (p.total > 0) {
      amount = format_bytes(p.done) + (bar ? " / " : " of ") + format_bytes(p.total);
      pct = p.done >= p.total
              ? 100
              : static_cast<int>(static_cast<double>(p.done) * 100 / static_cast<double>(p.total));
    } else if (p.done > 0) {
      amount = format_bytes(p.done);
    }
    if (bar && pct >= 0) {
      char tail[16];
      std::snprintf(tail, sizeof(tail), "  %3d%%", pct);
      auto fixed = line.size() + 3 + 2 + amount.size() + std::strlen(tail);
      size_t room = width > fixed + 1 ? width - 1 - fixed : 0;
      size_t cells = std::min<size_t>(30, room);
      if (cells >= 5) {
        auto full = cells * static_cast<size_t>(pct) / 100;
        std::string cellstr(full, '=');
        if (full < cells)
          cellstr += '>' + std::string(cells - full - 1, ' ');
        line += " [" + cellstr + "] ";
      } else {
        line += " ";
      }
      line += amount + tail;
    } else {
      if (!amount.empty())
        line += " " + amount;
      if (pct >= 0)
        line += " (" + std::to_string(pct) + "%)";
    }
  }
  if (width > 1 && line.size() > width - 1)
    line.resize(width - 1);
  return line;
}

progress_view::progress_view(bool terminal, size_t width)
  : terminal_(terminal), width_(width) {}

std::string progress_view::update(const sync_progress& p) {
  if (terminal_) {
    auto line = progress_line(p, width_, true);
    if (drawn_ && line == last_)
      return {};
    last_ = line;
    drawn_ = true;
    return "\r" + line + "\x1b[K";
  }
  auto key = p.direction + " " + p.phase;
  if (p.direction.empty() && p.phase.empty())
    key = p.message;
  if (key == last_)
    return {};
  last_ = key;
  return progress_line(p, std::string::npos, false) + "\n";
}

std::string progress_view::finish() {
  if (!terminal_ || !drawn_)
    return {};
  drawn_ = false;
  last_.clear();
  return "\r\x1b[K";
}

std::string format_error(const std::string& code, const std::string& message) {
  std::string hint;
  auto c = errc_from_string(code);
  switch (c) {
    case errc::not_found: hint = "`aloft ls` lists the sessions this daemon knows"; break;
    case errc::failed_precondition:
      hint = "`aloft show ID` says what state the session is in";
      break;
    case errc::unavailable:
    case errc::resource_exhausted:
    case errc::aborted: hint = "this is temporary: try again"; break;
    default: break;
  }
  std::string s = "aloft: " + printable(message.empty() ? code : message) + "\n";
  if (!hint.empty())
    s += "  (" + hint + ")\n";
  return s;
}

// -- attach --------------------------------------------------------------------

caf::expected<attach_plan> plan_attach(const json& info) {
  auto host = info.get_string("host");
  auto user = info.get_string("user");
  auto key = info.get_string("client_key_path");
  auto host_key = info.get_string("host_public_key");
  auto command = info.get_string("command");
  auto port = info.get_int("port", 0);
  auto bad = [](const std::string& what) {
    return make_error(errc::invalid_argument, "the daemon's attach details: " + what);
  };
  if (!is_shell_safe_value(host))
    return bad("host is empty or malformed");
  if (!is_shell_safe_value(user) || user.find('@') != std::string::npos)
    return bad("user is empty or malformed");
  if (port <= 0 || port > 65535)
    return bad("port " + std::to_string(port) + " is out of range");
  if (key.empty() || key.front() != '/' || key.find('\n') != std::string::npos)
    return bad("client_key_path must be an absolute path");
  // The pinned key becomes one known_hosts line: it must be exactly one
  // "type base64" entry, or it could smuggle in more hosts.
  auto space = host_key.find(' ');
  if (space == std::string::npos || space == 0 || space + 1 >= host_key.size())
    return bad("host_public_key is not a 'type base64' key");
  for (unsigned char ch : host_key)
    if (ch < 0x20 || ch == 0x7f)
      return bad("host_public_key holds control characters");
  if (command.empty())
    return bad("command is empty");
  attach_plan plan;
  auto slash = key.rfind('/');
  plan.known_hosts_path = key.substr(0, slash == 0 ? 1 : slash) + "/known_hosts";
  auto pattern = port == 22 ? host : "[" + host + "]:" + std::to_string(port);
  plan.known_hosts_line = pattern + " " + host_key + "\n";
  plan.argv = {"ssh",
               "-tt",
               "-i",
               key,
               "-p",
               std::to_string(port),
               "-o",
               "IdentitiesOnly=yes",
               "-o",
               "StrictHostKeyChecking=yes",
               "-o",
               "UserKnownHostsFile=" + plan.known_hosts_path,
               "-o",
               "LogLevel=ERROR",
               // ssh reads options after the destination too; `--` ends them,
               // so nothing from the daemon is taken for one.
               "--",
               user + "@" + host,
               command};
  return plan;
}

caf::error write_known_hosts(const attach_plan& plan) {
  return files::write_file_atomically(plan.known_hosts_path, plan.known_hosts_line, 0600);
}

// -- running -------------------------------------------------------------------

int run_client(const cli_command& cmd, std::ostream& out, std::ostream& err) {
  client_options opts;
  if (&err == &std::cerr && ::isatty(STDERR_FILENO)) {
    opts.progress_terminal = true;
    winsize ws{};
    if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
      opts.width = ws.ws_col;
  }
  return run_client(cmd, out, err, opts);
}

// Reads the secrets `account add` needs: the provider's (a prompt without
// echo on a terminal, else one line each from stdin), then any --secret.
caf::expected<json> read_account_secrets(const cli_command& cmd, std::ostream& err) {
  auto secrets = json::object();
  auto keys = required_secrets(cmd.provider);
  for (auto& k : cmd.secret_names)
    keys.push_back(k);
  for (auto& key : keys) {
    auto what = key == "token" ? cmd.provider + " API token"
                               : key == "token_id" || key == "token_secret"
                                   ? cmd.provider + " " + key
                                   : "secret " + key;
    auto value = read_secret(0, what + " for account " + cmd.account_name + ": ", err);
    if (!value)
      return annotate(value.error(), "account " + cmd.account_name + ": " + what);
    secrets.set(key, *value);
  }
  return secrets;
}

std::string format_account_result(const cli_command& cmd, const json& r) {
  auto& sub = cmd.subcommand;
  if (sub == "ls")
    return format_accounts(r);
  if (sub == "add")
    return "added account " + printable(r.get_string("name")) + "\n" + format_account(r);
  if (sub == "set") {
    auto s = format_account(r);
    auto n = r.get_int("rearmed_sessions");
    if (cmd.apply_to_running)
      s += "re-armed " + std::to_string(n) + " live session(s)\n";
    return s;
  }
  if (sub == "validate")
    return "account " + printable(cmd.account_name) + ": the provider accepts its credentials\n";
  if (sub == "enable" || sub == "disable")
    return "account " + printable(cmd.account_name) + " " + sub + "d\n";
  if (sub == "default")
    return "account " + printable(cmd.account_name) + " is the default for `aloft launch`\n";
  if (sub == "rm")
    return "removed account " + printable(cmd.account_name) + " and its secrets\n";
  if (sub == "secret")
    return "stored secret " + printable(cmd.key) + " of account "
           + printable(cmd.account_name) + "\n";
  return {};
}

int run_client(const cli_command& cmd, std::ostream& out, std::ostream& err,
               const client_options& opts) {
  client_context ctx{cmd, out, err};
  auto layout = resolve_home(cmd.home);
  auto socket = layout.socket_path();
  auto fd = connect_unix_socket(socket);
  if (!fd) {
    auto code = code_of(fd.error());
    if (code == errc::not_found || code == errc::unavailable) {
      auto start = std::string{"aloft serve"}
                   + (cmd.home.empty() ? "" : " --home " + cmd.home);
      auto message = "no aloft daemon is running for this home (no answer on " + socket
                     + "); start one with `" + start + "`";
      if (cmd.json) {
        auto j = json::object();
        j.set("error", json::object().set("code", "unavailable").set("message", message));
        ctx.print_json(j);
      } else {
        err << "aloft: " << message << "\n";
      }
      return exit_codes::no_daemon;
    }
    return ctx.fail(annotate(fd.error(), "cannot reach the daemon"));
  }
  connection conn{*fd};
  auto now = now_ms();
  if (cmd.name == "logs")
    return run_logs(ctx, conn);
  if (cmd.name == "events")
    return run_events(ctx, conn);
  if (cmd.name == "attach")
    return run_attach(ctx, conn);
  if (cmd.name == "sync-up" || cmd.name == "sync-down")
    return run_sync(ctx, conn, socket, opts);
  auto req = request_for(cmd, ctx.next_id++);
  if (cmd.name == "launch") {
    // The daemon's working directory is not ours: send an absolute path.
    auto wt = absolute_worktree(cmd.worktree);
    if (!wt)
      return ctx.fail(wt.error());
    auto args = *req.find("args");
    args.set("worktree", *wt);
    req.set("args", std::move(args));
  }
  if (cmd.name == "account" && cmd.subcommand == "secret") {
    auto value = read_secret(0, "secret " + cmd.key + " for account " + cmd.account_name + ": ",
                             err);
    if (!value)
      return ctx.fail(value.error());
    auto args = *req.find("args");
    args.set("value", *value);
    req.set("args", std::move(args));
  }
  if (cmd.name == "account" && cmd.subcommand == "add") {
    auto secrets = read_account_secrets(cmd, err);
    if (!secrets)
      return ctx.fail(secrets.error());
    if (secrets->size() > 0) {
      auto args = *req.find("args");
      args.set("secrets", std::move(*secrets));
      req.set("args", std::move(args));
    }
  }
  auto result = call(conn, req);
  if (!result)
    return ctx.fail(result.error());
  if (cmd.name == "show" && (!cmd.json || cmd.changes)) {
    // A comparison that cannot be made (an older daemon, no VM) is shown as
    // unknown with the reason; it never fails `show`.
    auto st_req = json::object();
    st_req.set("id", ctx.next_id++).set("op", "sync_state");
    st_req.set("args", json::object().set("id", cmd.id));
    auto st = call(conn, st_req);
    json state = st ? *st : json::object();
    if (!st) {
      auto why = message_of(st.error());
      state.set("local_changed", json{}).set("vm_changed", json{});
      state.set("local_note", why).set("vm_note", why);
    }
    result->set("sync_state", std::move(state));
  }
  if (cmd.json) {
    ctx.print_json(*result);
    return exit_codes::ok;
  }
  auto& n = cmd.name;
  if (n == "launch")
    out << format_launch(*result);
  else if (n == "ls")
    out << format_ls(*result, now);
  else if (n == "show")
    out << format_show(*result, now);
  else if (n == "extend")
    out << format_extend(*result, now);
  else if (n == "stop")
    out << "stopping the agent of " << cmd.id
        << "; the VM stays until its idle timeout or `aloft destroy " << cmd.id << "`\n";
  else if (n == "destroy")
    out << "destroying " << cmd.id << "\n";
  else if (n == "reload")
    out << format_reload(*result);
  else if (n == "account")
    out << format_account_result(cmd, *result);
  out << std::flush;
  return exit_codes::ok;
}

} // namespace aloft
