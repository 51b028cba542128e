// End to end with the real `aloft` binary, the real daemon, RocksDB, sshd and
// tmux: a session survives `kill -9` of its daemon, its log continues with no
// loss and no duplicate, the idle timeout destroys the VM and nothing is left
// behind; `aloft attach` types into the agent's terminal; a corrupt record is
// quarantined while the others load.
#include <csignal>
#include <cstdio>
#include <fcntl.h>
#include <fstream>
#include <glob.h>
#include <poll.h>
#include <pty.h>
#include <sstream>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include <gtest/gtest.h>

#include "engine/app/engine_impl.hpp"
#include "engine/base/json.hpp"
#include "engine/session_record.hpp"
#include "persistence/store.hpp"
#include "providers/fake/fake_provider.hpp"
#include "tests/app/cli_driver.hpp"
#include "tests/support/local_vm.hpp"

namespace aloft {
namespace {

using namespace std::chrono_literals;

using test::aloft_bin;
using test::cli;
using test::eventually;
using test::reaper;
using test::start_daemon;
using test::stop_daemon;

std::string read_file(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json show(const std::string& home, const std::string& id) {
  auto j = json::parse(cli(home, {"--json", "show", id}));
  return j ? j->find("session") ? *j->find("session") : json{} : json{};
}

std::string state_of(const std::string& home, const std::string& id) {
  return show(home, id).get_string("state");
}

std::string vm_log(const std::string& home) {
  glob_t g;
  std::string out;
  if (::glob((home + "/sandboxes/*/aloft/agent.log").c_str(), 0, nullptr, &g) == 0) {
    if (g.gl_pathc > 0)
      out = read_file(g.gl_pathv[0]);
    ::globfree(&g);
  }
  return out;
}

std::string launch(const std::string& home, const std::string& agent, const std::string& wt,
                   const std::string& idle) {
  auto j = json::parse(cli(home, {"--json", "launch", "--agent", agent, "--worktree", wt,
                                  "--idle-timeout", idle}));
  EXPECT_TRUE(j);
  return j ? j->get_string("id") : std::string{};
}

TEST(end_to_end, kill_9_restart_resumes_the_log_then_idle_timeout_destroys) {
  test::temp_dir home;
  test::temp_dir wt;
  pid_t daemon = start_daemon(home.path());
  reaper cleanup{home.path(), &daemon};
  std::string expected;
  for (int i = 0; i < 16; ++i)
    expected += "line " + std::to_string(i) + "\n";
  auto id = launch(home.path(),
                   "i=0; while [ $i -lt 16 ]; do echo line $i; i=$((i+1)); sleep 0.4; done",
                   wt.path(), "3");
  ASSERT_FALSE(id.empty());
  auto local_log = home.path() + "/logs/" + id + ".log";
  ASSERT_TRUE(eventually(
    [&] { return read_file(local_log).find("line 2\n") != std::string::npos; }, 30s));
  EXPECT_EQ(state_of(home.path(), id), "running");

  stop_daemon(daemon, SIGKILL);
  daemon = -1;
  // The agent goes on without the engine.
  ASSERT_TRUE(eventually(
    [&] { return vm_log(home.path()).find("line 8\n") != std::string::npos; }, 30s));
  daemon = start_daemon(home.path());
  EXPECT_EQ(state_of(home.path(), id), "running");

  ASSERT_TRUE(eventually([&] { return state_of(home.path(), id) == "destroyed"; },
                               60s));
  auto rec = show(home.path(), id);
  EXPECT_EQ(rec.get_string("agent_status"), "exited");
  EXPECT_NE(rec.get_string("reason").find("idle timeout"), std::string::npos);
  EXPECT_EQ(read_file(local_log), expected) << "lines lost or repeated across the restart";
  EXPECT_TRUE(test::processes_matching(home.path() + "/sandboxes").empty())
    << "an sshd or agent of the sandbox is still running";
  glob_t g;
  EXPECT_NE(::glob((home.path() + "/sandboxes/*").c_str(), 0, nullptr, &g), 0)
    << "a sandbox directory remains";
  stop_daemon(daemon, SIGTERM);
  daemon = -1;
}

// A sync cut short by `kill -9` of the daemon is run again after the
// restart and gives the same result: the VM's checkout equals the worktree.
TEST(end_to_end, an_initial_sync_cut_by_kill_9_is_redone_after_restart) {
  test::temp_dir home;
  test::temp_dir wt;
  // Enough incompressible data that the VM side takes a moment.
  std::system(("cd '" + wt.path() + "' && git init -q && mkdir -p d && for i in 1 2 3 4 5 6; "
               "do head -c 4000000 /dev/urandom > d/blob$i; done && echo text > a.txt && "
               "git add -A && git -c user.name=t -c user.email=t@t commit -qm t")
                .c_str());
  pid_t daemon = start_daemon(home.path());
  reaper cleanup{home.path(), &daemon};
  auto id = launch(home.path(), "sleep 600", wt.path(), "600");
  ASSERT_FALSE(id.empty());
  // The VM side of the sync has begun once its repository exists.
  ASSERT_TRUE(eventually([&] {
    glob_t g;
    bool found = ::glob((home.path() + "/sandboxes/*/work/.git").c_str(), 0, nullptr, &g) == 0;
    if (found)
      ::globfree(&g);
    return found;
  }, 60s));
  stop_daemon(daemon, SIGKILL);
  daemon = start_daemon(home.path());
  ASSERT_TRUE(eventually([&] { return state_of(home.path(), id) == "running"; }, 60s))
    << show(home.path(), id).dump();
  auto rec = show(home.path(), id);
  EXPECT_FALSE(rec.get_string("synced_up").empty());
  auto workdir = rec.get_string("workdir");
  for (int i = 1; i <= 6; ++i) {
    auto name = "/d/blob" + std::to_string(i);
    EXPECT_EQ(read_file(workdir + name), read_file(wt.path() + name)) << name;
  }
  EXPECT_EQ(read_file(workdir + "/a.txt"), "text\n");
  cli(home.path(), {"destroy", id});
  EXPECT_TRUE(eventually([&] { return state_of(home.path(), id) == "destroyed"; }, 30s));
  stop_daemon(daemon, SIGTERM);
  daemon = -1;
}

// Reads from `fd` until `needle` shows up or the bound passes.
bool read_until(int fd, const std::string& needle, std::string& seen,
                std::chrono::milliseconds bound) {
  auto until = std::chrono::steady_clock::now() + bound;
  while (seen.find(needle) == std::string::npos) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      until - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      return false;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0)
      continue;
    char buf[4096];
    auto n = ::read(fd, buf, sizeof(buf));
    if (n <= 0)
      return false;
    seen.append(buf, static_cast<size_t>(n));
  }
  return true;
}

// `aloft attach ID` running in a pseudo-terminal of its own.
struct attached_terminal {
  pid_t pid = -1;
  int master = -1;
  std::string seen; // everything read from the terminal so far
};

attached_terminal attach_in_pty(const std::string& home, const std::string& id) {
  attached_terminal t;
  winsize ws{40, 120, 0, 0};
  t.pid = ::forkpty(&t.master, nullptr, nullptr, &ws);
  if (t.pid == 0) {
    ::execl(aloft_bin.c_str(), aloft_bin.c_str(), "--home", home.c_str(), "attach", id.c_str(),
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return t;
}

// Types `line` until the agent's answer to it shows on `t`.
bool type_until_answered(attached_terminal& t, const std::string& line) {
  return eventually([&] {
    auto typed = line + "\r";
    ::write(t.master, typed.data(), typed.size());
    return read_until(t.master, "got:" + line, t.seen, 1000ms);
  }, 30s);
}

// Detaches with tmux's prefix and `d`; whether the CLI ended.
bool detach(attached_terminal& t) {
  // tmux takes keys that arrive within a millisecond of each other for a
  // paste and runs no binding: send the prefix and the key apart, as a person
  // types them.
  read_until(t.master, "\x01never", t.seen, 300ms);
  ::write(t.master, "\x02", 1);
  read_until(t.master, "\x01never", t.seen, 300ms);
  ::write(t.master, "d", 1);
  int status = 0;
  // Keep draining the terminal: a client blocked on a full pty cannot exit.
  bool ended = eventually([&] {
    read_until(t.master, "\x01never", t.seen, 10ms);
    return ::waitpid(t.pid, &status, WNOHANG) == t.pid;
  }, 20s);
  ::close(t.master);
  return ended;
}

TEST(end_to_end, attach_types_into_the_agent_terminal_and_detach_leaves_it_running) {
  test::temp_dir home;
  test::temp_dir wt;
  pid_t daemon = start_daemon(home.path());
  reaper cleanup{home.path(), &daemon};
  auto id = launch(home.path(), "while read l; do echo got:$l; done", wt.path(), "600");
  ASSERT_TRUE(eventually([&] { return state_of(home.path(), id) == "running"; }, 30s));
  auto t = attach_in_pty(home.path(), id);
  ASSERT_GT(t.pid, 0);
  // Type only once tmux has drawn its status line: before that the local
  // terminal is still in cooked mode and would swallow the detach key.
  ASSERT_TRUE(read_until(t.master, "[aloft]", t.seen, 30s)) << t.seen;
  ASSERT_TRUE(type_until_answered(t, "ping")) << t.seen;
  // Detaching ends the CLI; the agent goes on.
  ASSERT_TRUE(detach(t)) << t.seen;
  auto rec = show(home.path(), id);
  EXPECT_EQ(rec.get_string("state"), "running");
  EXPECT_EQ(rec.get_string("agent_status"), "running");
  EXPECT_EQ(cli(home.path(), {"destroy", id}).empty(), false);
  ASSERT_TRUE(eventually([&] { return state_of(home.path(), id) == "destroyed"; },
                               30s));
  stop_daemon(daemon, SIGTERM);
  daemon = -1;
}

// Two terminals attached at once (a laptop and a desktop): both see what the
// agent prints, either can type, and one detaching leaves the other working.
TEST(end_to_end, two_terminals_attach_at_once_and_one_detaching_leaves_the_other) {
  test::temp_dir home;
  test::temp_dir wt;
  pid_t daemon = start_daemon(home.path());
  reaper cleanup{home.path(), &daemon};
  auto id = launch(home.path(), "while read l; do echo got:$l; done", wt.path(), "600");
  ASSERT_TRUE(eventually([&] { return state_of(home.path(), id) == "running"; }, 30s));
  auto laptop = attach_in_pty(home.path(), id);
  ASSERT_GT(laptop.pid, 0);
  ASSERT_TRUE(read_until(laptop.master, "[aloft]", laptop.seen, 30s)) << laptop.seen;
  auto desktop = attach_in_pty(home.path(), id);
  ASSERT_GT(desktop.pid, 0);
  ASSERT_TRUE(read_until(desktop.master, "[aloft]", desktop.seen, 30s)) << desktop.seen;
  // Typed on one, seen on both.
  ASSERT_TRUE(type_until_answered(laptop, "ping")) << laptop.seen;
  EXPECT_TRUE(read_until(desktop.master, "got:ping", desktop.seen, 10s)) << desktop.seen;
  ASSERT_TRUE(detach(laptop)) << laptop.seen;
  // The other terminal goes on.
  EXPECT_TRUE(type_until_answered(desktop, "pong")) << desktop.seen;
  ASSERT_TRUE(detach(desktop)) << desktop.seen;
  auto rec = show(home.path(), id);
  EXPECT_EQ(rec.get_string("agent_status"), "running");
  EXPECT_EQ(cli(home.path(), {"destroy", id}).empty(), false);
  ASSERT_TRUE(eventually([&] { return state_of(home.path(), id) == "destroyed"; }, 30s));
  stop_daemon(daemon, SIGTERM);
  daemon = -1;
}

TEST(end_to_end, a_corrupt_record_is_quarantined_and_the_others_load) {
  test::temp_dir home;
  session_record good;
  good.id = "s-00000000000a";
  good.account = "fake";
  good.state = session_state::destroyed;
  {
    auto db = open_rocksdb_store(home.path() + "/store");
    ASSERT_TRUE(db);
    ASSERT_FALSE((*db)->commit_and_wait({{family::sessions, good.id, encode_session_record(good)},
                                         {family::sessions, "s-00000000000b", "{not json"}}));
  }
  engine_options opts;
  opts.home = home.path();
  engine_overrides ov;
  account acct;
  acct.name = "fake";
  acct.provider = "fake";
  ov.accounts.emplace_back(acct, std::make_shared<fake_provider>());
  ov.no_agent = true;
  auto e = open_engine_with(opts, ov);
  ASSERT_TRUE(e);
  auto all = (*e)->list();
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].id, good.id);
  ASSERT_TRUE(eventually([&] {
    for (auto& ev : (*e)->events(100))
      if (ev.kind == "quarantine" && ev.session == "s-00000000000b")
        return true;
    return false;
  }, 10s));
  e->reset();
  auto db = open_rocksdb_store(home.path() + "/store");
  ASSERT_TRUE(db);
  EXPECT_TRUE((*db)->get(family::quarantine, "s-00000000000b"));
  EXPECT_FALSE((*db)->get(family::sessions, "s-00000000000b"));
}

} // namespace
} // namespace aloft
