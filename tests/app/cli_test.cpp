// The command line: parsing, formatting and exit codes as pure functions,
// then whole commands against a daemon serving a fake engine.
#include "engine/app/cli.hpp"

#include <sstream>
#include <sys/stat.h>

#include <fstream>

#include <gtest/gtest.h>

#include "engine/app/protocol.hpp"
#include "tests/app/fake_engine.hpp"
#include "tests/app/test_client.hpp"

namespace aloft {
namespace {

using testing::fake_engine;
using testing::running_daemon;
using testing::temp_dir;

caf::expected<cli_command> parse(std::vector<std::string> args) {
  return parse_cli(args);
}

std::string parse_error(std::vector<std::string> args) {
  auto r = parse_cli(args);
  EXPECT_FALSE(r) << "parsed: " << (args.empty() ? "" : args[0]);
  return r ? "" : message_of(r.error());
}

// -- parsing -------------------------------------------------------------------

TEST(cli_parse, launch_with_every_option) {
  auto c = parse({"launch", "--account", "team", "--agent", "claude -p hi", "--worktree",
                  "/src", "--idle-timeout", "15m", "--hard-timeout=2h",
                  "--no-auto-destroy", "--json", "--home", "/tmp/h"});
  ASSERT_TRUE(c) << message_of(c.error());
  EXPECT_EQ(c->name, "launch");
  EXPECT_EQ(c->account, "team");
  EXPECT_EQ(c->agent, "claude -p hi");
  EXPECT_EQ(c->worktree, "/src");
  EXPECT_EQ(c->idle_timeout_s, 900);
  EXPECT_EQ(c->hard_timeout_s, 7200);
  EXPECT_TRUE(c->no_auto_destroy);
  EXPECT_TRUE(c->json);
  EXPECT_EQ(c->home, "/tmp/h");
}

TEST(cli_parse, global_options_go_anywhere) {
  auto c = parse({"--home", "/h", "--json", "ls"});
  ASSERT_TRUE(c);
  EXPECT_EQ(c->name, "ls");
  EXPECT_EQ(c->home, "/h");
  EXPECT_TRUE(c->json);
  auto d = parse({"show", "s-0123456789ab", "--home=/x"});
  ASSERT_TRUE(d);
  EXPECT_EQ(d->id, "s-0123456789ab");
  EXPECT_EQ(d->home, "/x");
}

TEST(cli_parse, every_command_with_its_arguments) {
  auto id = std::string{"s-0123456789ab"};
  for (auto name : {"show", "attach", "stop", "destroy", "logs"}) {
    auto c = parse({name, id});
    ASSERT_TRUE(c) << name;
    EXPECT_EQ(c->name, name);
    EXPECT_EQ(c->id, id);
  }
  auto f = parse({"logs", id, "-f"});
  ASSERT_TRUE(f);
  EXPECT_TRUE(f->follow);
  auto e = parse({"extend", id, "1h30m"});
  ASSERT_TRUE(e);
  EXPECT_EQ(e->seconds, 5400);
  auto ev = parse({"events", "-f", "-n", "5", "--output", "--session", id});
  ASSERT_TRUE(ev);
  EXPECT_TRUE(ev->follow);
  EXPECT_EQ(ev->count, 5);
  EXPECT_TRUE(ev->include_output);
  EXPECT_EQ(ev->session, id);
  auto s = parse({"serve", "--home", "/h"});
  ASSERT_TRUE(s);
  EXPECT_EQ(s->name, "serve");
}

TEST(cli_parse, sync_commands_and_their_modes) {
  auto id = std::string{"s-0123456789ab"};
  EXPECT_TRUE(parse({"show", id, "--changes"})->changes);
  EXPECT_FALSE(parse({"show", id})->changes);
  auto up = parse({"sync-up", id});
  ASSERT_TRUE(up);
  EXPECT_EQ(up->name, "sync-up");
  EXPECT_EQ(up->id, id);
  auto down = parse({"sync-down", id});
  ASSERT_TRUE(down);
  EXPECT_EQ(down->sync_mode, "apply"); // the default
  EXPECT_EQ(parse({"sync-down", id, "--apply"})->sync_mode, "apply");
  EXPECT_EQ(parse({"sync-down", id, "--dry-run"})->sync_mode, "dry_run");
  auto branch = parse({"sync-down", "--branch", "agent/fix-1", id, "--json"});
  ASSERT_TRUE(branch) << message_of(branch.error());
  EXPECT_EQ(branch->sync_mode, "branch");
  EXPECT_EQ(branch->branch, "agent/fix-1");
  EXPECT_TRUE(branch->json);
  EXPECT_EQ(parse({"sync-down", id, "--branch=topic"})->branch, "topic");
  // Saying the same mode twice is harmless.
  EXPECT_TRUE(parse({"sync-down", id, "--dry-run", "--dry-run"}));
}

TEST(cli_parse, sync_usage_errors) {
  auto id = std::string{"s-0123456789ab"};
  EXPECT_NE(parse_error({"sync-up"}).find("sync-up needs ID"), std::string::npos);
  EXPECT_NE(parse_error({"sync-down"}).find("sync-down needs ID"), std::string::npos);
  EXPECT_NE(parse_error({"sync-up", "nope"}).find("is not a session id"), std::string::npos);
  EXPECT_NE(parse_error({"sync-up", id, "--dry-run"}).find("unknown option --dry-run"),
            std::string::npos);
  EXPECT_NE(parse_error({"sync-down", id, "--apply", "--dry-run"})
              .find("--apply and --dry-run exclude each other"),
            std::string::npos);
  EXPECT_NE(parse_error({"sync-down", id, "--branch", "x", "--apply"}).find("exclude each other"),
            std::string::npos);
  EXPECT_NE(parse_error({"sync-down", id, "--branch"}).find("--branch needs a value"),
            std::string::npos);
  EXPECT_NE(parse_error({"sync-down", id, "--branch", "a..b"})
              .find("--branch: the branch name \"a..b\" must not contain \"..\""),
            std::string::npos);
  EXPECT_NE(parse_error({"sync-down", id, "--branch=-x"}).find("must not start with '-'"),
            std::string::npos);
  EXPECT_NE(parse_error({"sync-down", id, "--branch", "x.lock"}).find(".lock"),
            std::string::npos);
  EXPECT_NE(parse_error({"sync-down", id, "extra"}).find("unexpected argument 'extra'"),
            std::string::npos);
}

TEST(cli_parse, help_forms) {
  EXPECT_TRUE(parse({"--help"})->help);
  EXPECT_TRUE(parse({"-h"})->help);
  auto h = parse({"help", "logs"});
  ASSERT_TRUE(h);
  EXPECT_TRUE(h->help);
  EXPECT_EQ(h->name, "logs");
  auto g = parse({"logs", "--help"}); // no ID needed to ask for help
  ASSERT_TRUE(g);
  EXPECT_TRUE(g->help);
  EXPECT_EQ(g->name, "logs");
  EXPECT_TRUE(parse({"--version"})->version);
}

TEST(cli_parse, usage_errors_say_what_is_wrong) {
  EXPECT_NE(parse_error({"frob"}).find("unknown command 'frob'"), std::string::npos);
  EXPECT_NE(parse_error({"ls", "--verbose"}).find("unknown option --verbose for `aloft ls`"),
            std::string::npos);
  EXPECT_NE(parse_error({"show"}).find("show needs ID"), std::string::npos);
  EXPECT_NE(parse_error({"show", "s-0123456789ab", "extra"}).find("unexpected argument 'extra'"),
            std::string::npos);
  EXPECT_NE(parse_error({"show", "my-session"}).find("is not a session id"),
            std::string::npos);
  EXPECT_NE(parse_error({"extend", "s-0123456789ab"}).find("needs DURATION"),
            std::string::npos);
  EXPECT_NE(parse_error({"extend", "s-0123456789ab", "soon"}).find("expected a duration"),
            std::string::npos);
  EXPECT_NE(parse_error({"launch"}).find("launch needs --agent"), std::string::npos);
  EXPECT_NE(parse_error({"launch", "--agent"}).find("--agent needs a value"),
            std::string::npos);
  EXPECT_NE(parse_error({"launch", "--agent", "x", "--idle-timeout", "0"}).find("--idle-timeout"),
            std::string::npos);
  EXPECT_NE(parse_error({"events", "-n", "many"}).find("-n: expected a count"),
            std::string::npos);
  EXPECT_NE(parse_error({"ls", "--json=yes"}).find("takes no value"), std::string::npos);
  EXPECT_NE(parse_error({"--home"}).find("--home needs a value"), std::string::npos);
  EXPECT_NE(parse_error({"-f", "logs"}).find("unknown option -f"), std::string::npos);
}

TEST(cli_parse, no_command_parses_to_nothing_to_run) {
  auto c = parse({});
  ASSERT_TRUE(c);
  std::ostringstream out, err;
  EXPECT_EQ(handle_help_and_usage(c, out, err), exit_codes::usage);
  EXPECT_NE(err.str().find("Usage: aloft"), std::string::npos);
}

TEST(cli_parse, durations) {
  struct row {
    const char* text;
    int64_t seconds;
  };
  for (auto r : {row{"90s", 90}, row{"30m", 1800}, row{"2h", 7200}, row{"45", 45},
                 row{"1d", 86400}, row{"1h30m", 5400}, row{"2m5s", 125}}) {
    auto d = parse_duration(r.text);
    ASSERT_TRUE(d) << r.text;
    EXPECT_EQ(*d, r.seconds) << r.text;
  }
  for (auto bad : {"", "0", "0s", "-5", "5x", "h", "1h30", "1.5h", "99999999999999999999",
                   "9999999999999999d"})
    EXPECT_FALSE(parse_duration(bad)) << bad;
}

TEST(cli_format, durations_for_tables) {
  EXPECT_EQ(format_duration(0), "0s");
  EXPECT_EQ(format_duration(-5), "0s");
  EXPECT_EQ(format_duration(45'999), "45s");
  EXPECT_EQ(format_duration(800'000), "13m20s");
  EXPECT_EQ(format_duration(28'740'000), "7h59m");
  EXPECT_EQ(format_duration(183'600'000), "2d03h");
  EXPECT_EQ(format_time(0), "-");
  EXPECT_EQ(format_time(1'800'000'000'000), "2027-01-15 08:00:00Z");
}

TEST(cli_exit_codes, follow_the_documented_table) {
  EXPECT_EQ(exit_code_for(errc::ok), 0);
  EXPECT_EQ(exit_code_for(errc::internal), 1);
  EXPECT_EQ(exit_code_for(errc::unknown), 1);
  EXPECT_EQ(exit_code_for(errc::deadline_exceeded), 1);
  EXPECT_EQ(exit_code_for(errc::invalid_argument), 2);
  EXPECT_EQ(exit_code_for(errc::not_found), 3);
  EXPECT_EQ(exit_code_for(errc::failed_precondition), 5);
  EXPECT_EQ(exit_code_for(errc::unavailable), 6);
  EXPECT_EQ(exit_code_for(errc::resource_exhausted), 6);
  EXPECT_EQ(exit_codes::no_daemon, 4);
  auto help = usage_text();
  for (auto line : {"0  ok", "1  failed", "2  usage error", "3  not found",
                    "4  no daemon running", "5  refused", "6  temporarily unavailable"})
    EXPECT_NE(help.find(line), std::string::npos) << line;
}

TEST(cli_format, help_lists_every_command_and_each_has_its_own) {
  auto help = usage_text();
  for (auto name : {"serve", "launch", "ls", "show", "logs", "attach", "extend", "stop",
                    "destroy", "events", "sync-up", "sync-down"}) {
    EXPECT_NE(help.find(std::string{"  "} + name + " "), std::string::npos) << name;
    auto own = command_help(name);
    EXPECT_NE(own.find(std::string{"Usage: aloft "} + name), std::string::npos) << name;
    EXPECT_NE(own.find("--home DIR"), std::string::npos) << name;
  }
  EXPECT_NE(command_help("launch").find("--idle-timeout S"), std::string::npos);
  EXPECT_EQ(command_help("nope"), "");
  auto down = command_help("sync-down");
  EXPECT_NE(down.find("Usage: aloft sync-down ID [--apply | --branch NAME | --dry-run]"),
            std::string::npos)
    << down;
  EXPECT_NE(down.find("exits 0"), std::string::npos);
  EXPECT_NE(down.find("git show REF:PATH"), std::string::npos);
  EXPECT_NE(command_help("sync-up").find("Usage: aloft sync-up ID"), std::string::npos);
  EXPECT_NE(help.find("  sync-down  bring the agent's changes home"), std::string::npos)
    << help;
}

// -- requests and output ----------------------------------------------------------

TEST(cli_requests, each_command_sends_its_op) {
  auto launch = request_for(*parse({"launch", "--agent", "codex", "--idle-timeout", "60",
                                    "--no-auto-destroy"}),
                            3);
  EXPECT_EQ(launch.get_int("id"), 3);
  EXPECT_EQ(launch.get_string("op"), "launch");
  auto& la = *launch.find("args");
  EXPECT_EQ(la.get_string("agent"), "codex");
  EXPECT_EQ(la.get_int("idle_timeout_s"), 60);
  EXPECT_FALSE(la.get_bool("auto_destroy", true));
  EXPECT_EQ(la.find("hard_timeout_s"), nullptr);
  EXPECT_EQ(request_for(*parse({"ls"}), 1).get_string("op"), "list");
  auto ext = request_for(*parse({"extend", "s-0123456789ab", "2h"}), 1);
  EXPECT_EQ(ext.find("args")->get_int("seconds"), 7200);
  auto logs = request_for(*parse({"logs", "s-0123456789ab", "-f"}), 1);
  EXPECT_TRUE(logs.find("args")->get_bool("follow"));
  auto ev = request_for(*parse({"events"}), 1);
  EXPECT_EQ(ev.find("args")->get_int("n"), 20);
  EXPECT_EQ(request_for(*parse({"destroy", "s-0123456789ab"}), 1).get_string("op"),
            "destroy");
  auto up = request_for(*parse({"sync-up", "s-0123456789ab"}), 4);
  EXPECT_EQ(up.dump(), R"({"id":4,"op":"sync_up","args":{"id":"s-0123456789ab"}})");
  auto down = request_for(*parse({"sync-down", "s-0123456789ab"}), 5);
  EXPECT_EQ(down.dump(),
            R"({"id":5,"op":"sync_down","args":{"id":"s-0123456789ab","mode":"apply"}})");
  auto branch = request_for(*parse({"sync-down", "s-0123456789ab", "--branch", "b1"}), 6);
  EXPECT_EQ(branch.find("args")->get_string("mode"), "branch");
  EXPECT_EQ(branch.find("args")->get_string("branch"), "b1");
  auto dry = request_for(*parse({"sync-down", "s-0123456789ab", "--dry-run"}), 7);
  EXPECT_EQ(dry.find("args")->get_string("mode"), "dry_run");
  EXPECT_EQ(dry.find("args")->find("branch"), nullptr);
}

json record(const std::string& id, const std::string& state, int64_t now) {
  session_record r;
  r.id = id;
  r.account = "local";
  r.provider = "local";
  session_state_from_string(state, r.state);
  r.agent_status = agent_status::running;
  r.agent_cmd = "claude";
  r.created_at = now - 125'000;
  r.idle_deadline = now + 800'000;
  r.hard_deadline = now + 28'740'000;
  r.last_activity = "output";
  r.last_activity_at = now - 30'000;
  return to_json(r);
}

TEST(cli_format, ls_table) {
  int64_t now = 1'800'000'000'000;
  auto sessions = json::array();
  sessions.push_back(record("s-aaaaaaaaaaaa", "running", now));
  auto done = record("s-bbbbbbbbbbbb", "destroyed", now);
  done.set("agent_status", "failed").set("exit_code", 2);
  sessions.push_back(done);
  auto off = record("s-cccccccccccc", "running", now);
  off.set("auto_destroy", false);
  sessions.push_back(off);
  auto text = format_ls(json::object().set("sessions", sessions), now);
  std::istringstream lines{text};
  std::string header, first, second, third;
  std::getline(lines, header);
  std::getline(lines, first);
  std::getline(lines, second);
  std::getline(lines, third);
  EXPECT_EQ(header.rfind("ID", 0), 0u);
  for (auto col : {"ACCOUNT", "STATE", "AGENT", "IDLE IN", "HARD IN", "AGE"})
    EXPECT_NE(header.find(col), std::string::npos) << col;
  EXPECT_EQ(first,
            "s-aaaaaaaaaaaa  local    running    running     13m20s   7h59m    2m05s");
  EXPECT_EQ(second,
            "s-bbbbbbbbbbbb  local    destroyed  failed (2)  -        -        2m05s");
  EXPECT_NE(third.find(" off "), std::string::npos);
  // Columns line up: every row's AGE starts where the header's does.
  EXPECT_EQ(header.rfind("AGE"), first.find("2m05s"));
  EXPECT_EQ(format_ls(json::object().set("sessions", json::array()), now).rfind("no sessions", 0),
            0u);
}

TEST(cli_format, show_names_the_next_timer_and_the_last_activity) {
  int64_t now = 1'800'000'000'000;
  auto view = json::object()
                .set("session", record("s-aaaaaaaaaaaa", "running", now))
                .set("next_timer", "idle")
                .set("next_timer_at", now + 800'000);
  auto text = format_show(view, now);
  EXPECT_NE(text.find("id:"), std::string::npos);
  EXPECT_NE(text.find("s-aaaaaaaaaaaa"), std::string::npos);
  EXPECT_NE(text.find("idle timeout in 13m20s"), std::string::npos) << text;
  EXPECT_NE(text.find("then destroy"), std::string::npos);
  EXPECT_NE(text.find("last activity:"), std::string::npos);
  EXPECT_NE(text.find("output, 2027-01-15 07:59:30Z (30s ago)"), std::string::npos) << text;
  EXPECT_NE(text.find("auto-destroy:"), std::string::npos);
  EXPECT_NE(text.find("hard deadline:"), std::string::npos);
}

TEST(cli_format, show_reports_the_sync_state) {
  int64_t now = 1'800'000'000'000;
  auto rec = record("s-aaaaaaaaaaaa", "running", now);
  auto never = format_show(json::object().set("session", rec), now);
  EXPECT_NE(never.find("synced up:      never\n"), std::string::npos) << never;
  EXPECT_NE(never.find("synced down:    never\n"), std::string::npos) << never;
  EXPECT_EQ(never.find("safety ref"), std::string::npos);
  rec.set("synced_up", "0123456789abcdef0123456789abcdef01234567");
  rec.set("synced_down", "fedcba9876543210fedcba9876543210fedcba98");
  rec.set("safety_ref", "refs/aloft/safety/s-aaaaaaaaaaaa");
  auto text = format_show(json::object().set("session", rec), now);
  EXPECT_NE(text.find("synced up:      0123456789ab\n"), std::string::npos) << text;
  EXPECT_NE(text.find("synced down:    fedcba987654\n"), std::string::npos) << text;
  EXPECT_NE(text.find("safety ref:     refs/aloft/safety/s-aaaaaaaaaaaa\n"), std::string::npos)
    << text;
  EXPECT_EQ(text.find("local changes"), std::string::npos); // not compared: not shown
  auto compared = json::object()
                    .set("session", rec)
                    .set("sync_state", json::object()
                                         .set("local_changed", true)
                                         .set("vm_changed", false)
                                         .set("local_note", "")
                                         .set("vm_note", ""));
  text = format_show(compared, now);
  EXPECT_NE(text.find("local changes:  yes, since the last sync up\n"), std::string::npos)
    << text;
  EXPECT_NE(text.find("agent changes:  none since the last sync\n"), std::string::npos) << text;
  compared.set("sync_state", json::object()
                               .set("local_changed", false)
                               .set("vm_changed", json{})
                               .set("vm_note", "the VM is not connected"));
  text = format_show(compared, now);
  EXPECT_NE(text.find("local changes:  none since the last sync up\n"), std::string::npos)
    << text;
  EXPECT_NE(text.find("agent changes:  unknown (the VM is not connected)\n"), std::string::npos)
    << text;
}

TEST(cli_format, bytes) {
  EXPECT_EQ(format_bytes(0), "0 bytes");
  EXPECT_EQ(format_bytes(1), "1 byte");
  EXPECT_EQ(format_bytes(1023), "1023 bytes");
  EXPECT_EQ(format_bytes(1024), "1.0 KiB");
  EXPECT_EQ(format_bytes(3'355'443), "3.2 MiB");
  EXPECT_EQ(format_bytes(18'245'222), "17.4 MiB");
  EXPECT_EQ(format_bytes(uint64_t{5} << 30), "5.0 GiB");
}

json strings(std::vector<std::string> v) {
  auto a = json::array();
  for (auto& s : v)
    a.push_back(s);
  return a;
}

json sync_up_result() {
  return json::object()
    .set("direction", "up")
    .set("commit", "0123456789abcdef0123456789abcdef01234567")
    .set("bytes", 1234)
    .set("files", 3)
    .set("notes", strings({"submodule vendor/lib is not synced"}));
}

TEST(cli_format, sync_up_result) {
  EXPECT_EQ(format_sync_up(sync_up_result()),
            "synced up 0123456789ab: 3 files, 1.2 KiB\n"
            "note: submodule vendor/lib is not synced\n");
  auto one = json::object().set("commit", "abc").set("files", 1).set("bytes", 10);
  EXPECT_EQ(format_sync_up(one), "synced up abc: 1 file, 10 bytes\n");
}

json sync_down_result(const std::string& mode) {
  auto changed = json::array();
  changed.push_back("src/main.c");
  changed.push_back("docs/new file.md");
  return json::object()
    .set("direction", "down")
    .set("commit", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")
    .set("base", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
    .set("ref", "refs/aloft/sessions/s-aaaaaaaaaaaa/down")
    .set("changed", changed)
    .set("conflicts", json::array())
    .set("diffstat", " src/main.c      | 2 +-\n docs/new file.md | 1 +\n 2 files changed\n")
    .set("mode", mode);
}

TEST(cli_format, sync_down_apply_lists_changes_and_conflicts) {
  auto r = sync_down_result("apply");
  auto conflicts = json::array();
  conflicts.push_back("src/app.c");
  conflicts.push_back("it's.txt");
  r.set("conflicts", conflicts);
  r.set("saved_ref", "refs/aloft/sessions/s-aaaaaaaaaaaa/local-1");
  EXPECT_EQ(format_sync_down(r),
            "synced down bbbbbbbbbbbb (base aaaaaaaaaaaa): 2 files changed\n"
            " src/main.c      | 2 +-\n"
            " docs/new file.md | 1 +\n"
            " 2 files changed\n"
            "changed:\n"
            "  src/main.c\n"
            "  docs/new file.md\n"
            "conflict: src/app.c was left as it was locally; the agent's version: "
            "git show refs/aloft/sessions/s-aaaaaaaaaaaa/down:src/app.c\n"
            "conflict: it's.txt was left as it was locally; the agent's version: "
            "git show 'refs/aloft/sessions/s-aaaaaaaaaaaa/down:it'\\''s.txt'\n"
            "your local state before the sync is saved as "
            "refs/aloft/sessions/s-aaaaaaaaaaaa/local-1\n"
            "2 conflicts: the local files were left as they were; merge the agent's "
            "versions by hand\n");
}

TEST(cli_format, sync_down_branch_dry_run_and_nothing) {
  auto branch = sync_down_result("branch").set("branch", "agent/fix");
  auto text = format_sync_down(branch);
  EXPECT_EQ(text.rfind("created branch agent/fix at bbbbbbbbbbbb (base aaaaaaaaaaaa) with the "
                       "agent's changes; your worktree was not touched\n",
                       0),
            0u)
    << text;
  EXPECT_NE(text.find("changes:\n  src/main.c\n"), std::string::npos);
  EXPECT_EQ(text.find("conflict"), std::string::npos);
  auto dry = format_sync_down(sync_down_result("dry_run"));
  EXPECT_EQ(dry.rfind("dry run: nothing was written; the agent's snapshot bbbbbbbbbbbb (base "
                      "aaaaaaaaaaaa) would change 2 files\n",
                      0),
            0u)
    << dry;
  EXPECT_NE(dry.find("would change:\n  src/main.c\n"), std::string::npos);
  auto none = sync_down_result("apply")
                .set("changed", json::array())
                .set("diffstat", "");
  EXPECT_EQ(format_sync_down(none),
            "synced down bbbbbbbbbbbb (base aaaaaaaaaaaa): 0 files changed\n"
            "no changes from the agent\n");
}

TEST(cli_format, sync_down_output_is_defanged) {
  auto r = sync_down_result("apply");
  r.set("changed", strings({"evil\x1b[2Jname"}));
  r.set("conflicts", strings({"x\ny"}));
  auto text = format_sync_down(r);
  EXPECT_EQ(text.find('\x1b'), std::string::npos) << text;
  EXPECT_NE(text.find("evil\\x1b[2Jname"), std::string::npos) << text;
  EXPECT_NE(text.find("conflict: x\\x0ay was left"), std::string::npos) << text;
}

// -- sync progress --------------------------------------------------------------------

json sync_event(const std::string& direction, const std::string& phase, uint64_t done,
                uint64_t total) {
  return json::object()
    .set("seq", 1)
    .set("session", "s-aaaaaaaaaaaa")
    .set("kind", "sync")
    .set("data", json::object()
                   .set("direction", direction)
                   .set("phase", phase)
                   .set("done", static_cast<long long>(done))
                   .set("total", static_cast<long long>(total))
                   .dump())
    .set("message", direction + ": " + phase);
}

sync_progress progress(const std::string& direction, const std::string& phase, uint64_t done,
                       uint64_t total) {
  sync_progress p;
  EXPECT_TRUE(read_sync_progress(sync_event(direction, phase, done, total), p));
  return p;
}

TEST(cli_progress, reads_sync_events_only) {
  auto p = progress("up", "send", 3'355'443, 18'245'222);
  EXPECT_EQ(p.direction, "up");
  EXPECT_EQ(p.phase, "send");
  EXPECT_EQ(p.done, 3'355'443u);
  EXPECT_EQ(p.total, 18'245'222u);
  EXPECT_EQ(p.message, "up: send");
  sync_progress q;
  EXPECT_FALSE(read_sync_progress(json::object().set("kind", "state"), q));
  // Unreadable data still counts as progress; its message is what shows.
  auto odd = json::object().set("kind", "sync").set("data", "{oops").set("message", "up: busy");
  ASSERT_TRUE(read_sync_progress(odd, q));
  EXPECT_EQ(q.phase, "");
  EXPECT_EQ(progress_line(q, 80, true), "up: busy");
  auto negative = sync_event("up", "send", 0, 0);
  negative.set("data", R"({"direction":"up","phase":"send","done":-5,"total":-1})");
  ASSERT_TRUE(read_sync_progress(negative, q));
  EXPECT_EQ(q.done, 0u);
  EXPECT_EQ(q.total, 0u);
}

TEST(cli_progress, lines_for_a_terminal_and_for_a_log) {
  auto p = progress("up", "send", 3'355'443, 18'245'222);
  EXPECT_EQ(progress_line(p, 80, true),
            "up: send [=====>                        ] 3.2 MiB / 17.4 MiB   18%");
  EXPECT_EQ(progress_line(p, 80, false), "up: send 3.2 MiB of 17.4 MiB (18%)");
  auto full = progress("down", "receive", 4096, 4096);
  EXPECT_EQ(progress_line(full, 80, true),
            "down: receive [==============================] 4.0 KiB / 4.0 KiB  100%");
  // Unknown total: no bar and no percentage, only what is known.
  EXPECT_EQ(progress_line(progress("up", "snapshot", 0, 0), 80, true), "up: snapshot");
  EXPECT_EQ(progress_line(progress("up", "snapshot", 2048, 0), 80, true),
            "up: snapshot 2.0 KiB");
  // A narrow terminal gets a shorter bar, then none, and never a wrapped line.
  auto narrow = progress_line(p, 50, true);
  EXPECT_LE(narrow.size(), 49u);
  EXPECT_NE(narrow.find("] 3.2 MiB / 17.4 MiB   18%"), std::string::npos) << narrow;
  EXPECT_EQ(progress_line(p, 40, true), "up: send 3.2 MiB / 17.4 MiB   18%");
  EXPECT_EQ(progress_line(p, 20, true).size(), 19u);
  // Words from the daemon cannot move the cursor.
  auto evil = progress("up\x1b[2J", "send", 1, 2);
  EXPECT_EQ(progress_line(evil, 80, false).find('\x1b'), std::string::npos);
}

TEST(cli_progress, a_terminal_redraws_one_line_in_place) {
  progress_view view{true, 80};
  EXPECT_EQ(view.finish(), ""); // nothing drawn, nothing to clear
  EXPECT_EQ(view.update(progress("up", "snapshot", 0, 0)), "\rup: snapshot\x1b[K");
  auto send = view.update(progress("up", "send", 1024, 4096));
  EXPECT_EQ(send.rfind("\rup: send [", 0), 0u) << send;
  EXPECT_EQ(send.substr(send.size() - 3), "\x1b[K");
  EXPECT_EQ(send.find('\n'), std::string::npos);
  // The same text again is not redrawn.
  EXPECT_EQ(view.update(progress("up", "send", 1024, 4096)), "");
  EXPECT_NE(view.update(progress("up", "send", 2048, 4096)), "");
  EXPECT_EQ(view.finish(), "\r\x1b[K");
  EXPECT_EQ(view.finish(), "");
}

TEST(cli_progress, plain_output_is_one_line_per_phase) {
  progress_view view{false};
  std::string out;
  out += view.update(progress("up", "snapshot", 0, 0));
  out += view.update(progress("up", "send", 1024, 4096));
  out += view.update(progress("up", "send", 2048, 4096));
  out += view.update(progress("up", "send", 4096, 4096));
  out += view.update(progress("up", "done", 4096, 4096));
  out += view.finish();
  EXPECT_EQ(out,
            "up: snapshot\n"
            "up: send 1.0 KiB of 4.0 KiB (25%)\n"
            "up: done 4.0 KiB of 4.0 KiB (100%)\n");
  EXPECT_EQ(out.find('\r'), std::string::npos);
}

TEST(cli_format, terminal_output_is_defanged) {
  auto ev = json::object()
              .set("at_ms", 1'800'000'000'000)
              .set("session", "s-aaaaaaaaaaaa")
              .set("kind", "error")
              .set("message", "bad\x1b]0;pwned\x07");
  auto line = format_event(ev);
  EXPECT_EQ(line.find('\x1b'), std::string::npos);
  EXPECT_NE(line.find("\\x1b"), std::string::npos);
  EXPECT_EQ(format_error("not_found", "no session s-1"),
            "aloft: no session s-1\n  (`aloft ls` lists the sessions this daemon knows)\n");
}

// -- attach -------------------------------------------------------------------------

json attach_result(const std::string& host, int port) {
  return json::object()
    .set("host", host)
    .set("port", port)
    .set("user", "agent")
    .set("client_key_path", "/home/u/.local/share/aloft/keys/s-1/id_ed25519")
    .set("host_public_key", "ssh-ed25519 AAAAkey")
    .set("command", "tmux attach -t aloft");
}

TEST(cli_attach, plan_pins_the_host_key_and_passes_only_paths) {
  auto plan = plan_attach(attach_result("10.0.0.5", 2222));
  ASSERT_TRUE(plan) << message_of(plan.error());
  EXPECT_EQ(plan->known_hosts_path, "/home/u/.local/share/aloft/keys/s-1/known_hosts");
  EXPECT_EQ(plan->known_hosts_line, "[10.0.0.5]:2222 ssh-ed25519 AAAAkey\n");
  std::vector<std::string> want = {
    "ssh", "-tt", "-i", "/home/u/.local/share/aloft/keys/s-1/id_ed25519", "-p", "2222",
    "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes", "-o",
    "UserKnownHostsFile=/home/u/.local/share/aloft/keys/s-1/known_hosts", "-o",
    "LogLevel=ERROR", "--", "agent@10.0.0.5", "tmux attach -t aloft"};
  EXPECT_EQ(plan->argv, want);
  EXPECT_EQ(plan_attach(attach_result("vm.example", 22))->known_hosts_line,
            "vm.example ssh-ed25519 AAAAkey\n");
}

TEST(cli_attach, plan_refuses_values_that_could_inject) {
  EXPECT_FALSE(plan_attach(attach_result("-oProxyCommand=sh", 22)));
  EXPECT_FALSE(plan_attach(attach_result("host with space", 22)));
  EXPECT_FALSE(plan_attach(attach_result("h", 0)));
  EXPECT_FALSE(plan_attach(attach_result("h", 70000)));
  EXPECT_FALSE(plan_attach(attach_result("h", 22).set("user", "-l")));
  EXPECT_FALSE(plan_attach(attach_result("h", 22).set("client_key_path", "rel/key")));
  EXPECT_FALSE(plan_attach(
    attach_result("h", 22).set("host_public_key", "ssh-ed25519 AAA\n* ssh-rsa BBB")));
  EXPECT_FALSE(plan_attach(attach_result("h", 22).set("host_public_key", "nokey")));
  EXPECT_FALSE(plan_attach(attach_result("h", 22).set("command", "")));
}

TEST(cli_attach, known_hosts_is_written_0600) {
  temp_dir dir;
  auto info = attach_result("127.0.0.1", 2222);
  info.set("client_key_path", dir.path() + "/id_ed25519");
  auto plan = plan_attach(info);
  ASSERT_TRUE(plan);
  ASSERT_FALSE(write_known_hosts(*plan));
  ASSERT_FALSE(write_known_hosts(*plan)); // replaced, not appended
  struct stat st;
  ASSERT_EQ(::stat(plan->known_hosts_path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::ifstream f{plan->known_hosts_path};
  std::string content{std::istreambuf_iterator<char>{f}, {}};
  EXPECT_EQ(content, "[127.0.0.1]:2222 ssh-ed25519 AAAAkey\n");
}

// -- whole commands against a daemon ----------------------------------------------

class cli_run_test : public ::testing::Test {
protected:
  temp_dir dir;
  fake_engine eng{dir.path()};
  running_daemon d{eng, dir.path() + "/aloft.sock"};

  struct outcome {
    int code;
    std::string out;
    std::string err;
  };

  outcome run(std::vector<std::string> args, client_options opts = {}) {
    args.push_back("--home");
    args.push_back(dir.path());
    auto parsed = parse_cli(args);
    std::ostringstream out, err;
    int rc = handle_help_and_usage(parsed, out, err);
    if (rc < 0)
      rc = run_client(*parsed, out, err, opts);
    return {rc, out.str(), err.str()};
  }
};

TEST_F(cli_run_test, ls_and_show_in_both_forms) {
  auto id = eng.add_session(session_state::running);
  auto ls = run({"ls"});
  EXPECT_EQ(ls.code, 0) << ls.err;
  EXPECT_NE(ls.out.find(id), std::string::npos);
  EXPECT_EQ(ls.out.rfind("ID ", 0), 0u);
  auto js = run({"ls", "--json"});
  EXPECT_EQ(js.code, 0);
  auto parsed = json::parse(js.out);
  ASSERT_TRUE(parsed) << js.out;
  EXPECT_EQ(parsed->find("sessions")->at(0).get_string("id"), id);
  auto show = run({"show", id});
  EXPECT_EQ(show.code, 0);
  EXPECT_NE(show.out.find("next timer:"), std::string::npos);
  auto show_json = json::parse(run({"show", id, "--json"}).out);
  ASSERT_TRUE(show_json);
  EXPECT_EQ(show_json->find("session")->get_string("id"), id);
}

TEST_F(cli_run_test, show_compares_the_worktrees_for_people_and_on_request_for_scripts) {
  auto id = eng.add_session(session_state::running);
  eng.set_sync_status(sync_status{0, 1, "", ""});
  auto human = run({"show", id});
  EXPECT_EQ(human.code, 0) << human.err;
  EXPECT_NE(human.out.find("agent changes:  yes, not synced down yet"), std::string::npos)
    << human.out;
  auto plain_json = json::parse(run({"show", id, "--json"}).out);
  ASSERT_TRUE(plain_json);
  EXPECT_EQ(plain_json->find("sync_state"), nullptr); // polling stays cheap
  auto with = json::parse(run({"show", id, "--json", "--changes"}).out);
  ASSERT_TRUE(with);
  ASSERT_NE(with->find("sync_state"), nullptr);
  EXPECT_TRUE(with->find("sync_state")->find("vm_changed")->as_bool(false));
  // A comparison that fails is unknown, and show still succeeds.
  eng.set_sync_status(make_error(errc::failed_precondition, "the session has no VM"));
  auto failed = run({"show", id});
  EXPECT_EQ(failed.code, 0) << failed.err;
  EXPECT_NE(failed.out.find("local changes:  unknown (the session has no VM)"),
            std::string::npos)
    << failed.out;
}

TEST_F(cli_run_test, errors_map_to_exit_codes) {
  auto gone = eng.add_session(session_state::destroyed);
  auto missing = run({"show", "s-000000000000"});
  EXPECT_EQ(missing.code, exit_codes::not_found);
  EXPECT_NE(missing.err.find("aloft ls"), std::string::npos);
  EXPECT_EQ(run({"stop", gone}).code, exit_codes::refused);
  EXPECT_EQ(run({"attach", gone}).code, exit_codes::refused);
  auto js = run({"destroy", gone, "--json"});
  EXPECT_EQ(js.code, exit_codes::refused);
  auto err = json::parse(js.out);
  ASSERT_TRUE(err) << js.out;
  EXPECT_EQ(err->find("error")->get_string("code"), "failed_precondition");
  EXPECT_EQ(run({"frob"}).code, exit_codes::usage);
}

TEST(cli_run, no_daemon_says_how_to_start_one) {
  temp_dir dir;
  std::ostringstream out, err;
  auto cmd = parse_cli({"ls", "--home", dir.path()});
  ASSERT_TRUE(cmd);
  EXPECT_EQ(run_client(*cmd, out, err), exit_codes::no_daemon);
  EXPECT_NE(err.str().find("aloft serve --home " + dir.path()), std::string::npos)
    << err.str();
}

TEST_F(cli_run_test, launch_sends_an_absolute_worktree) {
  auto r = run({"launch", "--agent", "codex", "--worktree", dir.path(), "--hard-timeout",
                "1h"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("launched s-"), std::string::npos);
  EXPECT_EQ(eng.last_launch().worktree, dir.path());
  EXPECT_EQ(eng.last_launch().hard_timeout_s, 3600);
  auto bad = run({"launch", "--agent", "codex", "--worktree", dir.path() + "/nope"});
  EXPECT_EQ(bad.code, exit_codes::usage);
  auto unknown = run({"launch", "--agent", "codex", "--account", "nope", "--worktree",
                      dir.path()});
  EXPECT_EQ(unknown.code, exit_codes::usage);
  EXPECT_NE(unknown.err.find("unknown account"), std::string::npos);
}

TEST_F(cli_run_test, logs_pages_through_a_large_file) {
  auto id = eng.add_session(session_state::running);
  std::string big;
  for (int i = 0; big.size() < 600 * 1024; ++i)
    big += "line " + std::to_string(i) + "\n";
  eng.append_output(id, big, false);
  auto r = run({"logs", id});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, big);
}

TEST_F(cli_run_test, logs_follow_prints_until_the_session_ends) {
  auto id = eng.add_session(session_state::running);
  eng.append_output(id, "before\n", false);
  // The stream is set up inside subscribe; publishing then is the earliest
  // moment, and ending the session there lets the command return.
  eng.on_next_subscribe([&] {
    eng.append_output(id, "during\n");
    eng.set_state(id, session_state::destroyed);
  });
  auto r = run({"logs", id, "-f"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "before\nduring\n");
  EXPECT_NE(r.err.find("destroyed"), std::string::npos);
}

TEST_F(cli_run_test, events_and_extend_and_stop) {
  auto id = eng.add_session(session_state::running);
  eng.set_state(id, session_state::running);
  auto ev = run({"events"});
  EXPECT_EQ(ev.code, 0);
  EXPECT_NE(ev.out.find(id), std::string::npos);
  EXPECT_NE(ev.out.find("state"), std::string::npos);
  auto ext = run({"extend", id, "30m"});
  EXPECT_EQ(ext.code, 0) << ext.err;
  EXPECT_NE(ext.out.find("hard deadline is now"), std::string::npos);
  EXPECT_EQ(run({"stop", id}).code, 0);
}

TEST_F(cli_run_test, sync_up_prints_progress_lines_and_the_result) {
  auto id = eng.add_session(session_state::running);
  auto r = run({"sync-up", id});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "synced up aaaaaaaaaaaa: 3 files, 1.2 KiB\n");
  EXPECT_EQ(r.err,
            "up: snapshot\n"
            "up: send 2.0 KiB of 4.0 KiB (50%)\n"
            "up: done 4.0 KiB of 4.0 KiB (100%)\n");
}

TEST_F(cli_run_test, sync_progress_on_a_terminal_is_a_bar_cleared_at_the_end) {
  auto id = eng.add_session(session_state::running);
  client_options opts;
  opts.progress_terminal = true;
  opts.width = 100;
  auto r = run({"sync-down", id}, opts);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err.find('\n'), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("\rdown: receive [===============>"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("\rdown: done"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.substr(r.err.size() - 4), "\r\x1b[K"); // the bar is gone
  EXPECT_EQ(r.out.rfind("synced down bbbbbbbbbbbb", 0), 0u) << r.out;
}

TEST_F(cli_run_test, sync_json_prints_only_the_result) {
  auto id = eng.add_session(session_state::running);
  auto r = run({"sync-down", id, "--branch", "agent/x", "--json"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err, ""); // no progress for scripts unless on a terminal
  auto j = json::parse(r.out);
  ASSERT_TRUE(j) << r.out;
  EXPECT_EQ(j->get_string("branch"), "agent/x");
  EXPECT_EQ(j->get_string("mode"), "branch");
  EXPECT_EQ(j->get_string("id"), id);
  ASSERT_EQ(eng.sync_down_requests().size(), 1u);
  EXPECT_EQ(eng.sync_down_requests()[0].branch, "agent/x");
  EXPECT_EQ(eng.sync_down_requests()[0].mode, sync_down_mode::branch);
}

TEST_F(cli_run_test, sync_down_with_conflicts_exits_0_and_says_so) {
  auto id = eng.add_session(session_state::running);
  sync_result res;
  res.direction = "down";
  res.commit = std::string(40, 'c');
  res.base = std::string(40, 'a');
  res.ref = "refs/aloft/sessions/" + id + "/down";
  res.changed = {"a.txt"};
  res.conflicts = {"b.txt", "c.txt"};
  res.saved_ref = "refs/aloft/sessions/" + id + "/local-1";
  eng.set_sync_down_result(res);
  auto r = run({"sync-down", id});
  EXPECT_EQ(r.code, exit_codes::ok) << r.err;
  EXPECT_NE(r.out.find("conflict: b.txt was left as it was locally; the agent's version: git "
                       "show refs/aloft/sessions/" + id + "/down:b.txt\n"),
            std::string::npos)
    << r.out;
  EXPECT_NE(r.out.find("\n2 conflicts: "), std::string::npos) << r.out;
  auto js = run({"sync-down", id, "--json"});
  EXPECT_EQ(js.code, exit_codes::ok);
  auto j = json::parse(js.out);
  ASSERT_TRUE(j) << js.out;
  EXPECT_EQ(j->find("conflicts")->size(), 2u);
  EXPECT_EQ(j->get_string("saved_ref"), "refs/aloft/sessions/" + id + "/local-1");
}

TEST_F(cli_run_test, sync_errors_map_to_exit_codes) {
  auto id = eng.add_session(session_state::running);
  EXPECT_EQ(run({"sync-up", "s-000000000000"}).code, exit_codes::not_found);
  eng.set_sync_error(make_error(errc::failed_precondition, "session is stopping"));
  auto refused = run({"sync-down", id, "--dry-run"});
  EXPECT_EQ(refused.code, exit_codes::refused);
  // The progress seen before the failure is kept; the error follows it.
  EXPECT_NE(refused.err.find("down: done"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("aloft: session is stopping"), std::string::npos) << refused.err;
  auto js = run({"sync-up", id, "--json"});
  EXPECT_EQ(js.code, exit_codes::refused);
  auto j = json::parse(js.out);
  ASSERT_TRUE(j) << js.out;
  EXPECT_EQ(j->find("error")->get_string("code"), "failed_precondition");
}

TEST_F(cli_run_test, attach_json_prints_the_plan_without_running_ssh) {
  auto id = eng.add_session(session_state::running);
  auto r = run({"attach", id, "--json"});
  EXPECT_EQ(r.code, 0) << r.err;
  auto j = json::parse(r.out);
  ASSERT_TRUE(j) << r.out;
  EXPECT_EQ(j->get_string("host"), "127.0.0.1");
  EXPECT_EQ(j->find("ssh_argv")->at(0).as_string(), "ssh");
  EXPECT_EQ(j->get_string("known_hosts_path"), dir.path() + "/known_hosts");
}

} // namespace
} // namespace aloft
