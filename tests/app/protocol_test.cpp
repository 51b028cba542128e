// The dispatcher: every op, and every kind of bad input a client can send.
#include "engine/app/protocol.hpp"

#include <fstream>

#include <gtest/gtest.h>

#include "engine/base/error.hpp"
#include "tests/app/fake_engine.hpp"

namespace aloft {
namespace {

using testing::fake_engine;
using testing::temp_dir;

class protocol_test : public ::testing::Test {
protected:
  temp_dir dir;
  fake_engine eng{dir.path()};

  json call(const std::string& op, json args = json::object(), json id = json{7}) {
    auto req = json::object();
    req.set("id", id).set("op", op).set("args", std::move(args));
    return handle_request(eng, req);
  }

  json line(std::string_view text) { return handle_request_line(eng, text); }

  static std::string code(const json& reply) {
    auto e = reply.find("error");
    return e ? e->get_string("code") : "";
  }
  static std::string message(const json& reply) {
    auto e = reply.find("error");
    return e ? e->get_string("message") : "";
  }
  static const json& result(const json& reply) {
    static const json none;
    auto r = reply.find("result");
    return r ? *r : none;
  }
};

// -- envelope --------------------------------------------------------------------

TEST_F(protocol_test, hello_reports_protocol_version_and_ops) {
  auto r = call("hello");
  ASSERT_TRUE(r.get_bool("ok")) << r.dump();
  EXPECT_EQ(r.get_int("id"), 7);
  EXPECT_EQ(result(r).get_int("protocol"), protocol_version);
  EXPECT_EQ(result(r).get_string("server"), "aloft");
  EXPECT_EQ(result(r).get_string("installation_id"), "i-0123456789abcdef");
  EXPECT_GE(result(r).find("ops")->size(), 12u);
  auto v = call("version");
  EXPECT_EQ(result(v).get_int("protocol"), protocol_version);
  EXPECT_EQ(protocol_version, 3);
  auto ops = result(r).find("ops");
  bool up = false, down = false, add = false, reload = false;
  for (auto& op : ops->items()) {
    up = up || op.as_string() == "sync_up";
    down = down || op.as_string() == "sync_down";
    add = add || op.as_string() == "account_add";
    reload = reload || op.as_string() == "reload";
  }
  EXPECT_TRUE(up && down && add && reload) << ops->dump();
}

TEST_F(protocol_test, string_ids_are_echoed_and_missing_id_is_null) {
  EXPECT_EQ(call("hello", json::object(), json{"abc"}).get_string("id"), "abc");
  auto r = line(R"({"op":"hello"})");
  EXPECT_TRUE(r.get_bool("ok"));
  ASSERT_NE(r.find("id"), nullptr);
  EXPECT_TRUE(r.find("id")->is_null());
}

TEST_F(protocol_test, malformed_json_is_an_error_reply) {
  auto r = line("{\"id\":1,\"op\":");
  EXPECT_FALSE(r.get_bool("ok"));
  EXPECT_EQ(code(r), "invalid_argument");
  EXPECT_NE(message(r).find("not valid JSON"), std::string::npos);
  EXPECT_TRUE(r.find("id")->is_null());
  EXPECT_EQ(code(line("")), "invalid_argument");
  EXPECT_EQ(code(line("\xff\xfe")), "invalid_argument");
}

TEST_F(protocol_test, oversized_line_is_refused_before_parsing) {
  std::string big = R"({"id":1,"op":"hello","args":{"client":")";
  big += std::string(max_request_bytes, 'x');
  big += "\"}}";
  auto r = line(big);
  EXPECT_EQ(code(r), "invalid_argument");
  EXPECT_NE(message(r).find("longer than the limit"), std::string::npos);
}

TEST_F(protocol_test, envelope_errors_name_the_member) {
  EXPECT_NE(message(line("[1,2]")).find("must be a JSON object"), std::string::npos);
  EXPECT_NE(message(line(R"({"id":1})")).find("op is required"), std::string::npos);
  EXPECT_NE(message(line(R"({"id":1,"op":5})")).find("op: expected a string"),
            std::string::npos);
  EXPECT_NE(message(line(R"({"id":1,"op":"list","args":[]})")).find("args: expected an object"),
            std::string::npos);
  auto bad_id = line(R"({"id":{"x":1},"op":"list"})");
  EXPECT_NE(message(bad_id).find("id: expected an integer or a string"), std::string::npos);
  EXPECT_TRUE(bad_id.find("id")->is_null());
  auto extra = line(R"({"id":3,"op":"list","argz":{}})");
  EXPECT_NE(message(extra).find("unknown request member \"argz\""), std::string::npos);
  EXPECT_EQ(extra.get_int("id"), 3); // the id was readable, so it comes back
}

TEST_F(protocol_test, unknown_op_is_unimplemented_and_lists_known_ops) {
  auto r = call("frobnicate");
  EXPECT_EQ(code(r), "unimplemented");
  EXPECT_NE(message(r).find("\"frobnicate\""), std::string::npos);
  EXPECT_NE(message(r).find("launch"), std::string::npos);
  EXPECT_EQ(r.get_int("id"), 7);
}

TEST_F(protocol_test, unknown_arguments_are_refused_by_name) {
  auto r = call("list", json::object().set("verbose", true));
  EXPECT_EQ(code(r), "invalid_argument");
  EXPECT_NE(message(r).find("unknown argument \"verbose\""), std::string::npos);
  auto s = call("show", json::object().set("id", "s-abc").set("idd", "x"));
  EXPECT_NE(message(s).find("expected: id"), std::string::npos);
}

TEST_F(protocol_test, null_args_mean_no_args) {
  auto r = line(R"({"id":1,"op":"list","args":null})");
  EXPECT_TRUE(r.get_bool("ok")) << r.dump();
}

// -- launch ------------------------------------------------------------------------

TEST_F(protocol_test, launch_passes_every_field_to_the_engine) {
  auto r = call("launch", json::object()
                            .set("account", "team")
                            .set("agent", "claude -p 'fix it'")
                            .set("worktree", "/home/dev/project")
                            .set("idle_timeout_s", 120)
                            .set("hard_timeout_s", 3600)
                            .set("auto_destroy", false));
  ASSERT_TRUE(r.get_bool("ok")) << r.dump();
  EXPECT_EQ(result(r).get_string("account"), "team");
  EXPECT_EQ(result(r).get_string("state"), "pending");
  auto req = eng.last_launch();
  EXPECT_EQ(req.account, "team");
  EXPECT_EQ(req.agent_cmd, "claude -p 'fix it'");
  EXPECT_EQ(req.worktree, "/home/dev/project");
  EXPECT_EQ(req.idle_timeout_s, 120);
  EXPECT_EQ(req.hard_timeout_s, 3600);
  EXPECT_EQ(req.auto_destroy, 0);
}

TEST_F(protocol_test, launch_defaults_leave_the_guards_to_the_account) {
  auto r = call("launch", json::object().set("agent", "codex"));
  ASSERT_TRUE(r.get_bool("ok")) << r.dump();
  auto req = eng.last_launch();
  EXPECT_EQ(req.account, "");
  EXPECT_EQ(req.idle_timeout_s, -1);
  EXPECT_EQ(req.hard_timeout_s, -1);
  EXPECT_EQ(req.auto_destroy, -1);
}

TEST_F(protocol_test, launch_rejects_bad_arguments_naming_the_field) {
  struct bad_case {
    json args;
    std::string expect;
  };
  std::vector<bad_case> cases = {
    {json::object(), "args.agent is required"},
    {json::object().set("agent", 5), "args.agent: expected a non-empty string, got an integer"},
    {json::object().set("agent", ""), "args.agent: expected a non-empty string"},
    {json::object().set("agent", std::string(20000, 'a')), "args.agent: expected at most"},
    {json::object().set("agent", std::string("a\0b", 3)), "control characters"},
    {json::object().set("agent", "x").set("account", "a\x1b[2J"), "control characters"},
    {json::object().set("agent", "x").set("idle_timeout_s", "90"), "args.idle_timeout_s: expected an integer"},
    {json::object().set("agent", "x").set("idle_timeout_s", 0), "got 0"},
    {json::object().set("agent", "x").set("hard_timeout_s", -5), "got -5"},
    {json::object().set("agent", "x").set("hard_timeout_s", 1.5), "a non-integral number"},
    {json::object().set("agent", "x").set("auto_destroy", "no"), "args.auto_destroy: expected true or false"},
    {json::object().set("agent", "x").set("worktree", "relative/path"), "expected an absolute path"},
    {json::object().set("agent", "x").set("color", true), "unknown argument \"color\""},
  };
  for (auto& c : cases) {
    auto r = call("launch", c.args);
    auto shown = c.args.dump().substr(0, 120);
    EXPECT_EQ(code(r), "invalid_argument") << shown;
    EXPECT_NE(message(r).find(c.expect), std::string::npos)
      << shown << " -> " << message(r).substr(0, 200);
  }
}

TEST_F(protocol_test, launch_errors_from_the_engine_pass_through) {
  auto r = call("launch", json::object().set("agent", "x").set("account", "nope"));
  EXPECT_EQ(code(r), "invalid_argument");
  EXPECT_NE(message(r).find("unknown account"), std::string::npos);
}

// -- sessions ------------------------------------------------------------------------

TEST_F(protocol_test, list_returns_sessions_newest_first) {
  auto a = eng.add_session(session_state::running);
  auto b = eng.add_session(session_state::destroyed);
  auto r = call("list");
  ASSERT_TRUE(r.get_bool("ok"));
  auto& sessions = *result(r).find("sessions");
  ASSERT_EQ(sessions.size(), 2u);
  EXPECT_EQ(sessions.at(0).get_string("id"), b);
  EXPECT_EQ(sessions.at(1).get_string("id"), a);
  EXPECT_EQ(sessions.at(1).get_string("state"), "running");
}

TEST_F(protocol_test, show_returns_record_and_next_timer) {
  auto id = eng.add_session(session_state::running);
  auto r = call("show", json::object().set("id", id));
  ASSERT_TRUE(r.get_bool("ok")) << r.dump();
  EXPECT_EQ(result(r).find("session")->get_string("id"), id);
  EXPECT_EQ(result(r).get_string("next_timer"), "idle");
  EXPECT_EQ(result(r).get_int("next_timer_at"), eng.now_ms + 600'000);
}

TEST_F(protocol_test, session_ids_are_checked_before_the_engine_sees_them) {
  for (auto op : {"show", "stop", "destroy", "attach", "log_path", "activity", "sync_up",
                  "sync_down", "sync_state"}) {
    auto missing = call(op);
    EXPECT_EQ(code(missing), "invalid_argument") << op;
    EXPECT_NE(message(missing).find("args.id is required"), std::string::npos) << op;
    for (auto bad : {json{"../../etc/passwd"}, json{"s-XYZ"}, json{42}, json{""},
                     json{"s-" + std::string(60, 'a')}}) {
      auto r = call(op, json::object().set("id", bad));
      EXPECT_EQ(code(r), "invalid_argument") << op << " " << bad.dump();
      EXPECT_NE(message(r).find("expected a session id"), std::string::npos);
    }
    auto unknown = call(op, json::object().set("id", "s-000000000000"));
    EXPECT_EQ(code(unknown), "not_found") << op;
  }
}

TEST_F(protocol_test, stop_and_destroy_report_the_state_they_refuse_in) {
  auto live = eng.add_session(session_state::running);
  auto gone = eng.add_session(session_state::destroyed);
  EXPECT_TRUE(call("stop", json::object().set("id", live)).get_bool("ok"));
  EXPECT_EQ(result(call("destroy", json::object().set("id", live))).get_string("id"), live);
  EXPECT_EQ(code(call("stop", json::object().set("id", gone))), "failed_precondition");
  EXPECT_EQ(code(call("destroy", json::object().set("id", gone))), "failed_precondition");
}

TEST_F(protocol_test, extend_checks_seconds) {
  auto id = eng.add_session(session_state::running);
  auto r = call("extend", json::object().set("id", id).set("seconds", 3600));
  ASSERT_TRUE(r.get_bool("ok")) << r.dump();
  EXPECT_EQ(result(r).get_int("hard_deadline"), eng.now_ms + 8 * 3600'000LL);
  EXPECT_NE(message(call("extend", json::object().set("id", id))).find("args.seconds is required"),
            std::string::npos);
  for (auto bad : {json{0}, json{-1}, json{"1h"}, json{1e300}, json{400LL * 24 * 3600}})
    EXPECT_EQ(code(call("extend", json::object().set("id", id).set("seconds", bad))),
              "invalid_argument")
      << bad.dump();
}

TEST_F(protocol_test, attach_returns_the_endpoint_without_secrets) {
  auto id = eng.add_session(session_state::running);
  auto r = call("attach", json::object().set("id", id));
  ASSERT_TRUE(r.get_bool("ok")) << r.dump();
  auto& a = result(r);
  EXPECT_EQ(a.get_string("host"), "127.0.0.1");
  EXPECT_EQ(a.get_int("port"), 2222);
  EXPECT_EQ(a.get_string("user"), "agent");
  EXPECT_EQ(a.get_string("client_key_path"), dir.path() + "/id_ed25519");
  EXPECT_EQ(a.get_string("host_public_key").rfind("ssh-ed25519 ", 0), 0u);
  EXPECT_EQ(a.get_string("command"), "tmux attach -t aloft");
  auto booting = eng.add_session(session_state::booting);
  EXPECT_EQ(code(call("attach", json::object().set("id", booting))), "failed_precondition");
}

TEST_F(protocol_test, activity_reaches_the_engine_with_its_source) {
  auto id = eng.add_session(session_state::running);
  EXPECT_TRUE(call("activity", json::object().set("id", id)).get_bool("ok"));
  EXPECT_TRUE(
    call("activity", json::object().set("id", id).set("source", "ui")).get_bool("ok"));
  auto acts = eng.activities();
  ASSERT_EQ(acts.size(), 2u);
  EXPECT_EQ(acts[0].second, "attach");
  EXPECT_EQ(acts[1].second, "ui");
  EXPECT_EQ(code(call("activity", json::object().set("id", id).set("source", 3))),
            "invalid_argument");
}

TEST_F(protocol_test, log_path_names_the_file) {
  auto id = eng.add_session(session_state::running);
  auto r = call("log_path", json::object().set("id", id));
  EXPECT_EQ(result(r).get_string("path"), dir.path() + "/" + id + ".log");
}

// -- logs and events ----------------------------------------------------------------

TEST_F(protocol_test, logs_pages_through_the_file) {
  auto id = eng.add_session(session_state::running);
  auto empty = call("logs", json::object().set("id", id));
  ASSERT_TRUE(empty.get_bool("ok")) << empty.dump();
  EXPECT_EQ(result(empty).get_string("data"), "");
  EXPECT_TRUE(result(empty).get_bool("eof"));

  eng.append_output(id, "hello world\n", false);
  auto first = call("logs", json::object().set("id", id).set("max_bytes", 5));
  EXPECT_EQ(result(first).get_string("data"), "hello");
  EXPECT_EQ(result(first).get_int("next_offset"), 5);
  EXPECT_EQ(result(first).get_int("size"), 12);
  EXPECT_FALSE(result(first).get_bool("eof"));
  auto rest = call("logs", json::object().set("id", id).set("offset", 5));
  EXPECT_EQ(result(rest).get_string("data"), " world\n");
  EXPECT_TRUE(result(rest).get_bool("eof"));
  auto past = call("logs", json::object().set("id", id).set("offset", 100));
  EXPECT_EQ(result(past).get_string("data"), "");
  EXPECT_TRUE(result(past).get_bool("eof"));
}

TEST_F(protocol_test, logs_rejects_bad_arguments_and_refuses_follow) {
  auto id = eng.add_session(session_state::running);
  EXPECT_EQ(code(call("logs", json::object().set("id", id).set("offset", -1))),
            "invalid_argument");
  EXPECT_EQ(code(call("logs", json::object().set("id", id).set("max_bytes", 0))),
            "invalid_argument");
  EXPECT_EQ(code(call("logs", json::object().set("id", id).set("follow", "yes"))),
            "invalid_argument");
  EXPECT_EQ(code(call("logs", json::object().set("id", id).set("follow", true))),
            "unimplemented");
}

TEST_F(protocol_test, events_returns_the_journal_filtered) {
  auto a = eng.add_session(session_state::running);
  auto b = eng.add_session(session_state::running);
  eng.set_state(a, session_state::stopping);
  eng.set_state(b, session_state::stopping);
  eng.append_output(a, "out");
  auto all = call("events");
  ASSERT_TRUE(all.get_bool("ok")) << all.dump();
  EXPECT_EQ(result(all).find("events")->size(), 2u); // output is not journaled
  auto last = call("events", json::object().set("n", 1));
  ASSERT_EQ(result(last).find("events")->size(), 1u);
  EXPECT_EQ(result(last).find("events")->at(0).get_string("session"), b);
  auto only_a = call("events", json::object().set("session", a));
  ASSERT_EQ(result(only_a).find("events")->size(), 1u);
  EXPECT_EQ(code(call("events", json::object().set("n", -1))), "invalid_argument");
  EXPECT_EQ(code(call("events", json::object().set("n", max_events + 1))),
            "invalid_argument");
  EXPECT_EQ(code(call("events", json::object().set("session", "nope"))),
            "invalid_argument");
  EXPECT_EQ(code(call("events", json::object().set("follow", true))), "unimplemented");
}

// -- sync ---------------------------------------------------------------------------

TEST_F(protocol_test, sync_up_returns_the_result_with_the_session_id) {
  auto id = eng.add_session(session_state::running);
  auto r = call("sync_up", json::object().set("id", id));
  ASSERT_TRUE(r.get_bool("ok")) << r.dump();
  auto& res = result(r);
  EXPECT_EQ(res.get_string("id"), id);
  EXPECT_EQ(res.get_string("direction"), "up");
  EXPECT_EQ(res.get_string("commit"), std::string(40, 'a'));
  EXPECT_EQ(res.get_int("files"), 3);
  EXPECT_EQ(res.get_int("bytes"), 1234);
  // Every field is present, so clients need no defaults.
  for (auto key : {"base", "ref", "changed", "conflicts", "notes", "saved_ref", "branch",
                   "diffstat"})
    EXPECT_NE(res.find(key), nullptr) << key;
  EXPECT_TRUE(res.find("changed")->is_array());
}

TEST_F(protocol_test, sync_up_rejects_bad_arguments) {
  EXPECT_NE(message(call("sync_up")).find("sync_up: args.id is required"), std::string::npos);
  EXPECT_NE(message(call("sync_up", json::object().set("id", 7))).find("expected a session id"),
            std::string::npos);
  auto extra = call("sync_up", json::object().set("id", "s-000000000000").set("mode", "apply"));
  EXPECT_EQ(code(extra), "invalid_argument");
  EXPECT_NE(message(extra).find("unknown argument \"mode\""), std::string::npos);
}

TEST_F(protocol_test, sync_down_passes_each_mode_to_the_engine) {
  auto id = eng.add_session(session_state::running);
  auto apply = call("sync_down", json::object().set("id", id));
  ASSERT_TRUE(apply.get_bool("ok")) << apply.dump();
  EXPECT_EQ(result(apply).get_string("mode"), "apply");
  EXPECT_EQ(result(apply).get_string("id"), id);
  EXPECT_EQ(result(apply).get_string("direction"), "down");
  EXPECT_EQ(result(apply).find("changed")->at(0).as_string(), "src/main.c");
  auto branch = call("sync_down",
                     json::object().set("id", id).set("mode", "branch").set("branch", "agent/fix-1"));
  ASSERT_TRUE(branch.get_bool("ok")) << branch.dump();
  EXPECT_EQ(result(branch).get_string("branch"), "agent/fix-1");
  EXPECT_EQ(result(branch).get_string("mode"), "branch");
  auto dry = call("sync_down", json::object().set("id", id).set("mode", "dry_run"));
  ASSERT_TRUE(dry.get_bool("ok")) << dry.dump();
  EXPECT_EQ(result(dry).get_string("mode"), "dry_run");
  auto explicit_apply = call("sync_down", json::object().set("id", id).set("mode", "apply"));
  ASSERT_TRUE(explicit_apply.get_bool("ok"));
  auto reqs = eng.sync_down_requests();
  ASSERT_EQ(reqs.size(), 4u);
  EXPECT_EQ(reqs[0].mode, sync_down_mode::apply);
  EXPECT_EQ(reqs[1].mode, sync_down_mode::branch);
  EXPECT_EQ(reqs[1].branch, "agent/fix-1");
  EXPECT_EQ(reqs[2].mode, sync_down_mode::dry_run);
  EXPECT_EQ(reqs[2].branch, "");
  EXPECT_EQ(reqs[3].mode, sync_down_mode::apply);
}

TEST_F(protocol_test, sync_down_rejects_bad_arguments_naming_the_rule) {
  auto id = eng.add_session(session_state::running);
  auto with = [&](json args) { return args.set("id", id); };
  auto branch = [&](json name) {
    return json::object().set("id", id).set("mode", "branch").set("branch", std::move(name));
  };
  struct bad_case {
    json args;
    std::string expect;
  };
  std::vector<bad_case> cases = {
    {with(json::object().set("mode", "merge")),
     "args.mode: expected \"apply\", \"branch\" or \"dry_run\", got \"merge\""},
    {with(json::object().set("mode", 1)), "args.mode: expected \"apply\""},
    {with(json::object().set("mode", "")), "args.mode: expected"},
    {with(json::object().set("mode", "branch")),
     "args.branch is required with mode \"branch\""},
    {with(json::object().set("branch", "x")), "args.branch is taken only with mode \"branch\""},
    {with(json::object().set("mode", "dry_run").set("branch", "x")),
     "args.branch is taken only with mode"},
    {with(json::object().set("mode", "apply").set("branch", "x")),
     "args.branch is taken only with mode"},
    {branch(json{5}), "args.branch: expected a branch name (a string), got an integer"},
    {branch(json{nullptr}), "args.branch: expected a branch name"},
    {branch(json{""}), "args.branch must not be empty"},
    {branch(json{std::string(256, 'b')}), "args.branch must be at most 255 bytes"},
    {branch(json{"-f"}), "args.branch must not start with '-'"},
    {branch(json{"--force"}), "args.branch must not start with '-'"},
    {branch(json{"a..b"}), "must not contain \"..\""},
    {branch(json{"..b"}), "must not contain \"..\""},
    {branch(json{"my branch"}), "must not contain spaces"},
    {branch(json{"a\tb"}), "must not contain control characters"},
    {branch(json{"a\nb"}), "must not contain control characters"},
    {branch(json{"a\x7f"}), "must not contain control characters"},
    {branch(json{"a~1"}), "must not contain '~'"},
    {branch(json{"a^"}), "must not contain '^'"},
    {branch(json{"a:b"}), "must not contain ':'"},
    {branch(json{"a?"}), "must not contain '?'"},
    {branch(json{"a*"}), "must not contain '*'"},
    {branch(json{"a[b"}), "must not contain '['"},
    {branch(json{"a\\b"}), "must not contain '\\'"},
    {branch(json{"topic.lock"}), "must not end with \".lock\""},
    {branch(json{"a.lock/b"}), "must not have a part that ends with \".lock\""},
    {branch(json{"topic/"}), "must not end with '/'"},
    {branch(json{"/topic"}), "must not start with '/'"},
    {branch(json{"a//b"}), "must not contain \"//\""},
    {branch(json{"topic."}), "must not end with '.'"},
    {branch(json{".hidden"}), "must not have a part that starts with '.'"},
    {branch(json{"a/.b"}), "must not have a part that starts with '.'"},
    {branch(json{"a@{1}"}), "must not contain \"@{\""},
    {branch(json{"@"}), "must not be \"@\""},
    {branch(json{"HEAD"}), "must not be \"HEAD\""},
    {branch(json{"bad\xff"}), "must be valid UTF-8"},
    {with(json::object().set("force", true)), "unknown argument \"force\""},
  };
  for (auto& c : cases) {
    auto r = call("sync_down", c.args);
    EXPECT_EQ(code(r), "invalid_argument") << c.args.dump();
    EXPECT_NE(message(r).find(c.expect), std::string::npos)
      << c.args.dump() << " -> " << message(r);
    EXPECT_EQ(message(r).rfind("sync_down: ", 0), 0u) << message(r);
  }
  EXPECT_TRUE(eng.sync_down_requests().empty()); // none reached the engine
}

TEST_F(protocol_test, branch_names_git_accepts_pass) {
  for (auto name : {"agent-work", "feature/fix-1", "a.b", "fix_1", "v1.2.3", "caf\xc3\xa9",
                    "a/b/c", "lock", "x.locked", "@x", "head"})
    EXPECT_FALSE(check_branch_name(name)) << name << ": "
                                          << message_of(check_branch_name(name));
  auto err = check_branch_name("a..b");
  EXPECT_EQ(code_of(err), errc::invalid_argument);
  EXPECT_EQ(message_of(err), "the branch name \"a..b\" must not contain \"..\"");
}

TEST_F(protocol_test, sync_errors_from_the_engine_pass_through) {
  auto id = eng.add_session(session_state::running);
  eng.set_sync_error(make_error(errc::failed_precondition, "the VM is not running"));
  auto up = call("sync_up", json::object().set("id", id));
  EXPECT_EQ(code(up), "failed_precondition");
  EXPECT_EQ(message(up), "the VM is not running");
  EXPECT_EQ(code(call("sync_down", json::object().set("id", id))), "failed_precondition");
}

TEST_F(protocol_test, sync_state_says_which_side_changed_or_why_it_cannot) {
  auto id = eng.add_session(session_state::running);
  eng.set_sync_status(sync_status{1, -1, "", "the VM is not connected"});
  auto r = call("sync_state", json::object().set("id", id));
  ASSERT_TRUE(r.get_bool("ok")) << r.dump();
  EXPECT_EQ(result(r).dump(),
            R"({"local_changed":true,"vm_changed":null,"local_note":"",)"
            R"("vm_note":"the VM is not connected","id":")" + id + "\"}");
  eng.set_sync_status(sync_status{0, 1, "", ""});
  auto both = result(call("sync_state", json::object().set("id", id)));
  EXPECT_FALSE(both.find("local_changed")->as_bool(true));
  EXPECT_TRUE(both.find("vm_changed")->as_bool(false));
  EXPECT_EQ(code(call("sync_state", json::object().set("id", "s-000000000000"))), "not_found");
  auto extra = call("sync_state", json::object().set("id", id).set("deep", true));
  EXPECT_NE(message(extra).find("sync_state: unknown argument \"deep\""), std::string::npos);
  eng.set_sync_status(make_error(errc::unimplemented, "this engine cannot compare"));
  EXPECT_EQ(code(call("sync_state", json::object().set("id", id))), "unimplemented");
}

TEST_F(protocol_test, only_syncs_are_long_ops) {
  EXPECT_TRUE(is_long_op("sync_up"));
  EXPECT_TRUE(is_long_op("sync_down"));
  EXPECT_TRUE(is_long_op("sync_state"));
  EXPECT_EQ(pace_of("sync_up"), op_pace::minutes);
  EXPECT_EQ(pace_of("sync_down"), op_pace::minutes);
  EXPECT_EQ(pace_of("sync_state"), op_pace::seconds);
  for (auto op : {"hello", "list", "show", "logs", "events", "launch", "nope", ""}) {
    EXPECT_FALSE(is_long_op(op)) << op;
    EXPECT_EQ(pace_of(op), op_pace::immediate) << op;
  }
  request req;
  req.op = "sync_down";
  req.args = json::object().set("id", "s-000000000000").set("mode", "sideways");
  EXPECT_EQ(code_of(check_long_op_args(req)), errc::invalid_argument);
  req.args = json::object().set("id", "s-000000000000");
  EXPECT_FALSE(check_long_op_args(req));
  req.op = "sync_up";
  EXPECT_FALSE(check_long_op_args(req));
  req.op = "sync_state";
  EXPECT_FALSE(check_long_op_args(req));
  req.args = json::object();
  EXPECT_EQ(message_of(check_long_op_args(req)),
            "sync_state: args.id is required (a session id like s-3f9a0c1d2e4b)");
  req.op = "list";
  EXPECT_EQ(code_of(check_long_op_args(req)), errc::unimplemented);
}

TEST(event_filter, output_only_when_asked_and_session_filter) {
  events_args a;
  event out;
  out.kind = "output";
  out.session = "s-1";
  event st;
  st.kind = "state";
  st.session = "s-2";
  EXPECT_FALSE(event_matches(a, out));
  EXPECT_TRUE(event_matches(a, st));
  a.include_output = true;
  a.session = "s-1";
  EXPECT_TRUE(event_matches(a, out));
  EXPECT_FALSE(event_matches(a, st));
}

// -- UTF-8 and log chunks --------------------------------------------------------------

TEST(utf8, invalid_bytes_become_replacement_characters) {
  EXPECT_EQ(to_valid_utf8("plain"), "plain");
  EXPECT_EQ(to_valid_utf8("caf\xc3\xa9"), "caf\xc3\xa9");
  EXPECT_EQ(to_valid_utf8("a\xff" "b"), "a\xef\xbf\xbd" "b");
  EXPECT_EQ(to_valid_utf8("\xc3"), "\xef\xbf\xbd");             // truncated
  EXPECT_EQ(to_valid_utf8("\xc0\xaf"), "\xef\xbf\xbd\xef\xbf\xbd"); // overlong
  EXPECT_EQ(to_valid_utf8("\xed\xa0\x80"), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
}

TEST(utf8, encoded_lines_always_parse) {
  auto j = json::object().set("data", std::string("bin\xff\xfe\x01\n", 7));
  auto line = encode_line(j);
  ASSERT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1);
  auto back = json::parse(std::string_view{line}.substr(0, line.size() - 1));
  ASSERT_TRUE(back) << line;
  EXPECT_EQ(back->get_string("data"), "bin\xef\xbf\xbd\xef\xbf\xbd\x01\n");
}

TEST(log_chunks, chunks_end_on_character_boundaries) {
  temp_dir dir;
  auto path = dir.path() + "/log";
  {
    std::ofstream f{path, std::ios::binary};
    f << "ab\xe2\x82\xac" "cd"; // "ab€cd": the euro sign is 3 bytes
  }
  auto c = read_log_chunk(path, 0, 3);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->data, "ab");
  EXPECT_EQ(c->next_offset, 2u);
  auto d = read_log_chunk(path, 2, 3);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->data, "\xe2\x82\xac");
  auto tiny = read_log_chunk(path, 2, 1); // cannot hold a character: sent as is
  ASSERT_TRUE(tiny);
  EXPECT_EQ(tiny->data.size(), 1u);
  auto missing = read_log_chunk(dir.path() + "/none", 0, 10);
  ASSERT_TRUE(missing);
  EXPECT_TRUE(missing->eof);
  EXPECT_EQ(missing->size, 0u);
}

} // namespace
} // namespace aloft
