// Accounts end to end, with the real `aloft` binary and daemon: two accounts
// of one provider side by side, each session honouring its own account's
// guards, the cap on live VMs, guards re-armed on live sessions, removal
// refused while sessions live; and the secrets audit: a canary token added
// through `account add` appears nowhere but in the credential store.
#include <dirent.h>
#include <glob.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "config/settings.hpp"
#include "engine/base/json.hpp"
#include "engine/base/proc_table.hpp"
#include "persistence/store.hpp"
#include "tests/app/cli_driver.hpp"
#include "tests/support/http_server.hpp"
#include "tests/support/local_vm.hpp"

namespace aloft {
namespace {

using namespace std::chrono_literals;
using test::cli;
using test::cli_with_input;
using test::eventually;

std::string slurp(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json show(const std::string& home, const std::string& id) {
  auto j = json::parse(cli(home, {"--json", "show", id}));
  return j && j->find("session") ? *j->find("session") : json{};
}

std::string launch_on(const std::string& home, const std::string& account,
                      const std::string& wt, int* rc = nullptr) {
  auto out = cli(home, {"--json", "launch", "--account", account, "--agent", "sleep 600",
                        "--worktree", wt},
                 rc);
  auto j = json::parse(out);
  return j ? j->get_string("id") : std::string{};
}

TEST(accounts_e2e, two_accounts_of_one_provider_each_session_honours_its_own_guards) {
  test::temp_dir home;
  test::temp_dir wt;
  pid_t daemon = test::start_daemon(home.path());
  test::reaper cleanup{home.path(), &daemon};
  int rc = -1;
  cli(home.path(), {"account", "add", "quick", "--provider", "local", "--idle-timeout", "2s"},
      &rc);
  ASSERT_EQ(rc, 0);
  cli(home.path(), {"account", "add", "patient", "--provider", "local", "--idle-timeout",
                    "10m", "--max-vms", "1"},
      &rc);
  ASSERT_EQ(rc, 0);

  auto quick = launch_on(home.path(), "quick", wt.path());
  auto patient = launch_on(home.path(), "patient", wt.path());
  ASSERT_FALSE(quick.empty());
  ASSERT_FALSE(patient.empty());
  EXPECT_EQ(show(home.path(), quick).get_int("idle_timeout_ms"), 2000);
  EXPECT_EQ(show(home.path(), patient).get_int("idle_timeout_ms"), 600000);
  EXPECT_EQ(show(home.path(), patient).get_string("account"), "patient");

  // patient allows one live VM.
  std::string err;
  cli_with_input(home.path(), {"launch", "--account", "patient", "--agent", "true",
                               "--worktree", wt.path()},
                 {}, &rc, &err);
  EXPECT_NE(rc, 0);
  EXPECT_NE(err.find("max_concurrent_vms"), std::string::npos) << err;

  // quick's idle guard destroys its VM; patient's keeps running.
  ASSERT_TRUE(eventually([&] {
    return show(home.path(), quick).get_string("state") == "destroyed";
  }, 60s));
  EXPECT_NE(show(home.path(), quick).get_string("reason").find("idle timeout"),
            std::string::npos);
  EXPECT_EQ(show(home.path(), patient).get_string("state"), "running");

  // Removing an account with a live session is refused, and says how.
  cli_with_input(home.path(), {"account", "rm", "patient"}, {}, &rc, &err);
  EXPECT_EQ(rc, 5) << err;
  EXPECT_NE(err.find("--force"), std::string::npos) << err;

  // New guards reach the live session only when asked to.
  cli(home.path(), {"account", "set", "patient", "idle_timeout_s", "900"}, &rc);
  ASSERT_EQ(rc, 0);
  EXPECT_EQ(show(home.path(), patient).get_int("idle_timeout_ms"), 600000);
  auto out = cli(home.path(), {"--json", "account", "set", "patient", "idle_timeout_s", "2",
                               "--apply-to-running"},
                 &rc);
  ASSERT_EQ(rc, 0) << out;
  auto set = json::parse(out);
  ASSERT_TRUE(set);
  EXPECT_EQ(set->get_int("rearmed_sessions"), 1);
  ASSERT_TRUE(eventually([&] {
    return show(home.path(), patient).get_string("state") == "destroyed";
  }, 60s));

  // Each account kept its VMs apart; nothing is left running.
  EXPECT_TRUE(test::processes_matching(home.path() + "/sandboxes").empty());
  cli(home.path(), {"account", "rm", "patient"}, &rc);
  EXPECT_EQ(rc, 0);
  auto ls = json::parse(cli(home.path(), {"--json", "account", "ls"}));
  ASSERT_TRUE(ls);
  std::vector<std::string> names;
  for (auto& a : ls->find("accounts")->items())
    names.push_back(a.get_string("name"));
  EXPECT_EQ(names, (std::vector<std::string>{"local", "quick"}));
  test::stop_daemon(daemon, SIGTERM);
  daemon = -1;
}

// -- secrets audit ----------------------------------------------------------------

// The one path matching `pattern`, or "".
std::string glob_one(const std::string& pattern) {
  glob_t g;
  std::string out;
  if (::glob(pattern.c_str(), 0, nullptr, &g) == 0) {
    if (g.gl_pathc > 0)
      out = g.gl_pathv[0];
    ::globfree(&g);
  }
  return out;
}

// Every regular file under `dir` whose bytes contain `needle`.
std::vector<std::string> files_containing(const std::string& dir, const std::string& needle) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_symlink(ec) || !it->is_regular_file(ec))
      continue;
    if (slurp(it->path().string()).find(needle) != std::string::npos)
      out.push_back(it->path().string());
  }
  return out;
}

// Processes started for this home (sshd, shells, the agent's tmux) and the
// daemon: their command lines and environments.
std::vector<std::string> processes_showing(const std::string& home, pid_t daemon,
                                           const std::string& needle,
                                           const std::set<pid_t>& agent = {}) {
  std::vector<std::string> out;
  auto pids = test::processes_matching(home);
  pids.push_back(daemon);
  for (auto pid : pids) {
    if (agent.count(pid) != 0)
      continue;
    if (proc::cmdline(pid).find(needle) != std::string::npos)
      out.push_back(std::to_string(pid) + " cmdline");
    for (auto& e : proc::environ(pid))
      if (e.find(needle) != std::string::npos)
        out.push_back(std::to_string(pid) + " environ");
  }
  return out;
}

TEST(accounts_e2e, a_canary_token_appears_only_in_the_credential_store) {
  // Obviously fake tokens, shaped like the real ones.
  const std::string canary = "fo1_CANARY_AUDIT_TOKEN_0123456789abcdef";
  const std::string agent_canary = "sk-ant-CANARY-AGENT-KEY-0123456789";
  test::temp_dir home;
  test::temp_dir wt;
  test::http_server fly;
  std::atomic<bool> echo_token{false};
  fly.route("GET", "/v1/tokens/current", [&](const test::http_request_seen& req) {
    if (echo_token)
      // A hostile or careless API that repeats the token in its error.
      return test::http_reply::json(401, "{\"error\":\"token " + canary + " is expired\"}");
    if (req.header("Authorization") != "Bearer " + canary)
      return test::http_reply::json(401, "{\"error\":\"unauthorized\"}");
    return test::http_reply::json(200, "{\"tokens\":[{\"org_slug\":\"personal\"}]}");
  });
  // The file store, whatever the desktop offers: the audit reads the file.
  std::ofstream{home.path() + "/settings.json"} << R"({"version": 1, "credential_store": "file"})";
  auto log = home.path() + "/daemon.log";
  pid_t daemon = test::start_daemon(home.path(), log);
  test::reaper cleanup{home.path(), &daemon};
  std::vector<std::string> outputs; // everything the CLI printed
  auto run = [&](std::vector<std::string> args, const std::string& input = {}) {
    int rc = -1;
    std::string err;
    outputs.push_back(cli_with_input(home.path(), std::move(args), input, &rc, &err));
    outputs.push_back(err);
    return rc;
  };

  // A wrong token is refused and stores nothing.
  EXPECT_NE(run({"account", "add", "fly-a", "--provider", "fly", "--api-url", fly.base_url()},
                "fo1_WRONG_TOKEN_000000000000\n"),
            0);
  EXPECT_NE(outputs.back().find("refused"), std::string::npos) << outputs.back();
  EXPECT_EQ(slurp(home.path() + "/settings.json").find("fly-a"), std::string::npos);

  ASSERT_EQ(run({"account", "add", "fly-a", "--provider", "fly", "--api-url", fly.base_url()},
                canary + "\n"),
            0)
    << outputs.back();
  ASSERT_EQ(run({"account", "add", "dev", "--provider", "local", "--idle-timeout", "3s",
                 "--secret", "ANTHROPIC_API_KEY"},
                agent_canary + "\n"),
            0)
    << outputs.back();
  EXPECT_EQ(run({"account", "ls"}), 0);
  EXPECT_EQ(run({"--json", "account", "ls"}), 0);
  // A profile (written by hand, as people do) hands the agent its key.
  {
    auto path = home.path() + "/settings.json";
    auto load = load_settings(path);
    ASSERT_TRUE(load.problems.empty());
    agent_profile p;
    p.name = "checker";
    // The agent proves it has the key without printing it: its length.
    p.command = "echo key-length-${#ANTHROPIC_API_KEY}; sleep 600";
    p.secrets = {"ANTHROPIC_API_KEY"};
    load.value.profiles.push_back(p);
    ASSERT_FALSE(save_settings(path, load.value));
  }
  EXPECT_EQ(run({"account", "validate", "fly-a"}), 0);
  echo_token = true;
  EXPECT_NE(run({"account", "validate", "fly-a"}), 0);
  EXPECT_NE(outputs.back().find("[redacted]"), std::string::npos) << outputs.back();

  EXPECT_EQ(run({"reload"}), 0);

  // A full session on the account, its agent holding the secret.
  int rc = -1;
  auto out = cli(home.path(), {"--json", "launch", "--account", "dev", "--profile", "checker",
                               "--worktree", wt.path()},
                 &rc);
  ASSERT_EQ(rc, 0) << out;
  auto launched = json::parse(out);
  ASSERT_TRUE(launched);
  auto id = launched->get_string("id");
  auto local_log = home.path() + "/logs/" + id + ".log";
  auto expected_line = "key-length-" + std::to_string(agent_canary.size());
  ASSERT_TRUE(eventually([&] { return slurp(local_log).find(expected_line) != std::string::npos; },
                         30s))
    << slurp(local_log);
  // The agent's own processes hold the key in their environment (the scan
  // would see it); every other process of the engine's does not.
  auto runner = std::atoi(slurp(glob_one(home.path() + "/sandboxes-dev/*/aloft/pid")).c_str());
  ASSERT_GT(runner, 0);
  auto agent_tree = proc::tree_of(runner);
  agent_tree.erase(runner);
  bool agent_has_it = false;
  for (auto pid : agent_tree)
    for (auto& e : proc::environ(pid))
      agent_has_it = agent_has_it || e == "ANTHROPIC_API_KEY=" + agent_canary;
  EXPECT_TRUE(agent_has_it);
  for (auto& needle : {canary, agent_canary})
    EXPECT_EQ(processes_showing(home.path(), daemon, needle, agent_tree),
              std::vector<std::string>{})
      << "a process shows " << needle;
  EXPECT_TRUE(glob_one(home.path() + "/sandboxes-dev/*/aloft/agent.env").empty())
    << "the agent's environment file stays on the VM";
  EXPECT_EQ(run({"destroy", id}), 0);
  ASSERT_TRUE(eventually(
    [&] { return show(home.path(), id).get_string("state") == "destroyed"; }, 60s));
  EXPECT_EQ(run({"--json", "events", "-n", "10000"}), 0);
  EXPECT_EQ(run({"--json", "show", id}), 0);
  EXPECT_EQ(run({"reload"}), 0);
  // SIGHUP reloads too, and what it logs is clean.
  ::kill(daemon, SIGHUP);
  ASSERT_TRUE(eventually([&] { return slurp(log).find("reloaded settings") != std::string::npos; },
                         10s));
  test::stop_daemon(daemon, SIGTERM);
  daemon = -1;

  auto store = home.path() + "/credentials.json";
  for (auto& needle : {canary, agent_canary}) {
    for (auto& text : outputs)
      EXPECT_EQ(text.find(needle), std::string::npos) << "the CLI printed " << needle;
    // The credential store holds it: the scan would find it anywhere else.
    EXPECT_EQ(files_containing(home.path(), needle), std::vector<std::string>{store})
      << needle;
  }
  // Whatever RocksDB compressed, read back through the store.
  auto db = open_rocksdb_store(home.path() + "/store");
  ASSERT_TRUE(db) << describe(db.error());
  for (auto f : {family::meta, family::sessions, family::accounts, family::sync_jobs,
                 family::events, family::quarantine})
    (*db)->scan(f, [&](const std::string& k, const std::string& v) {
      for (auto& needle : {canary, agent_canary}) {
        EXPECT_EQ(k.find(needle), std::string::npos) << to_string(f);
        EXPECT_EQ(v.find(needle), std::string::npos) << to_string(f) << " " << k;
      }
    });
  struct stat st;
  ASSERT_EQ(::stat(store.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

} // namespace
} // namespace aloft
