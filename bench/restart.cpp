// Restart: an engine with N live sessions is killed (SIGKILL: no clean
// shutdown, no final writes), and a new engine opens the same home.
//
// The first engine runs in a child process (`--child restart HOME N KIND
// TICK_S`), which launches the sessions, waits until all run, writes what
// its provider holds, says `ready`, and waits to be killed.
//
// - kind `fake`: the fake provider (no agent). The child writes its VMs to
//   HOME/vms.tsv; the parent puts them in a new fake provider (the cloud
//   kept them) and times its engine from open until every session actor is
//   live and has asked the provider for its VM (one `get` each).
// - kind `local`: the local provider and real agents (each prints a line
//   every TICK_S seconds) behind real sshd's, which outlive the killed
//   engine as VMs would. The parent waits until every agent has written
//   output no engine received, then times until that output streams in
//   over new SSH connections.
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

#include "bench/harness.hpp"
#include "bench/scenarios.hpp"
#include "engine/base/error.hpp"

namespace aloft::bench {

namespace {

// An agent that prints a line every `tick_s`.
std::string agent_ticking(const std::string& tick_s) {
  return "while :; do echo tick; sleep " + tick_s + "; done";
}

// Runs the child until it is ready, then kills it; whether it got there.
bool run_until_killed(report& out, const std::string& home, size_t n, const std::string& kind,
                      double tick_s = 1) {
  subprocess child{
    child_argv({"restart", home, std::to_string(n), kind, std::to_string(tick_s)})};
  std::string line;
  bool ready = false;
  while (child.ok() && child.read_line(line, 600))
    if (line == "ready") {
      ready = true;
      break;
    }
  child.stop(SIGKILL, 30);
  out.check(ready, "restart: the first engine (" + kind + ") did not get every session running");
  return ready;
}

std::vector<vm_info> read_vms(const std::string& path) {
  std::vector<vm_info> out;
  std::ifstream in{path};
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields{line};
    vm_info vm;
    int port = 0;
    if (std::getline(fields, vm.vm_id, '\t') && std::getline(fields, vm.installation_id, '\t')
        && std::getline(fields, vm.session_id, '\t')
        && std::getline(fields, vm.idempotency_key, '\t') && std::getline(fields, vm.host, '\t')
        && (fields >> port)) {
      vm.port = static_cast<uint16_t>(port);
      vm.status = vm_status::running;
      vm.user = "agent";
      vm.workdir = "/work";
      out.push_back(std::move(vm));
    }
  }
  return out;
}

void restart_fake(report& out, size_t n) {
  const std::string scenario = "restart";
  auto home = temp_home();
  if (!run_until_killed(out, home, n, "fake")) {
    remove_tree(home);
    return;
  }
  auto vms = read_vms(home + "/vms.tsv");
  out.check(vms.size() == n, "restart: the first engine's VMs were not all written");
  auto provider = std::make_shared<fake_provider>();
  for (auto& vm : vms)
    provider->add_vm(vm);

  auto t0 = clock_type::now();
  auto e = open_fake_engine(home, provider);
  auto open_s = seconds_since(t0);
  if (!e) {
    out.check(false, "restart: reopen: " + describe(e.error()));
    remove_tree(home);
    return;
  }
  // Polled often: the figure is about a second.
  bool asked = false;
  while (seconds_since(t0) < 120 && !(asked = provider->gets() >= n))
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  auto live_s = seconds_since(t0);
  out.check(asked, "restart: not every session asked its provider for its VM");
  out.check(wait_for([&] { return count_state(**e, session_state::running) == n; }, 60),
            "restart: not every session is running again: "
              + describe_states(**e, session_state::running));
  auto sessions = std::to_string(n);
  std::vector<target> within_1s;
  if (n >= 10'000)
    within_1s.push_back(at_most(1));
  out.add({scenario, "until every session is live and asked for its VM, " + sessions
                       + " sessions", live_s, "s", 0, within_1s});
  out.add({scenario, "of which opening the engine (WAL replay, scan, spawn)", open_s, "s"});
  out.add({scenario, "sessions live again per second", static_cast<double>(n) / live_s, "1/s"});
  e->reset();
  remove_tree(home);
}

void restart_local(report& out, size_t n, double tick_s) {
  const std::string scenario = "restart";
  auto home = temp_home();
  // Whatever goes wrong, no sandbox's sshd outlives the run.
  auto finish = [&] {
    destroy_leftover_sandboxes(out, home);
    remove_tree(home);
  };
  if (!run_until_killed(out, home, n, "local", tick_s)) {
    finish();
    return;
  }
  // Each agent writes a line while no engine runs, so each has output
  // waiting, sent as soon as its log stream reopens.
  std::this_thread::sleep_for(std::chrono::duration<double>(1.5 * tick_s));
  struct observed {
    std::mutex mtx;
    std::set<std::string> streaming;
    std::atomic<size_t> count{0};
  };
  auto obs = std::make_shared<observed>();
  engine_options opts;
  opts.home = home;
  auto t0 = clock_type::now();
  auto e = open_engine(opts);
  if (!e) {
    out.check(false, "restart: reopen (local): " + describe(e.error()));
    finish();
    return;
  }
  auto& eng = **e;
  // Subscribed before any session can have reconnected (a connection and
  // two exec channels take far longer than this call).
  auto sub = eng.subscribe([obs](const event& ev) {
    if (ev.kind != "output")
      return;
    std::lock_guard<std::mutex> guard{obs->mtx};
    if (obs->streaming.insert(ev.session).second)
      ++obs->count;
  });
  bool all = wait_for([&] { return obs->count.load() >= n; }, 300);
  auto reconnect_s = seconds_since(t0);
  eng.unsubscribe(sub);
  out.check(all, "restart: not every local session's agent streams again over SSH");
  auto sessions = std::to_string(n);
  out.add({scenario, "SSH: until every agent streams again, " + sessions + " local sessions",
           reconnect_s, "s"});
  out.add({scenario, "SSH: local sessions reconnected per second",
           static_cast<double>(n) / reconnect_s, "1/s"});
  // Every sandbox goes with its session, or its sshd would outlive the bench.
  out.check(destroy_all(eng, 300), "restart: not every local session was destroyed: "
                                      + describe_states(eng, session_state::destroyed));
  e->reset();
  out.check(destroy_leftover_sandboxes(out, home) == 0,
            "restart: destroyed sessions left sandboxes behind");
  remove_tree(home);
}

} // namespace

void restart(report& out, const restart_options& o) {
  restart_fake(out, o.sessions);
  if (o.ssh_sessions > 0)
    restart_local(out, o.ssh_sessions, o.agent_tick_s);
}

// --child restart HOME N fake|local TICK_S
int restart_child(const std::vector<std::string>& args) {
  if (args.size() != 5)
    return 2;
  auto home = args[1];
  auto n = static_cast<size_t>(std::atoll(args[2].c_str()));
  auto kind = args[3];
  auto fail = [](const std::string& why) {
    std::fprintf(stderr, "aloft-bench: restart child: %s\n", why.c_str());
    std::fflush(stderr);
    std::_Exit(1);
  };
  std::shared_ptr<fake_provider> provider;
  caf::expected<std::unique_ptr<engine>> e{caf::error{}};
  std::string worktree = home + "/worktree";
  ::mkdir(worktree.c_str(), 0755);
  if (kind == "fake") {
    provider = std::make_shared<fake_provider>();
    e = open_fake_engine(home, provider);
  } else {
    e = open_local_engine(home, n);
  }
  if (!e)
    fail("open engine: " + describe(e.error()));
  auto& eng = **e;
  auto f = launch_fleet(eng, n, 4, worktree, kind == "fake" ? "true" : agent_ticking(args[4]), 300);
  if (!f.all_running || f.failed > 0)
    fail("not every session reached running");
  if (provider) {
    std::ofstream o{home + "/vms.tsv"};
    for (auto& vm : provider->vms())
      o << vm.vm_id << '\t' << vm.installation_id << '\t' << vm.session_id << '\t'
        << vm.idempotency_key << '\t' << vm.host << '\t' << vm.port << '\n';
    o.close();
    if (!o)
      fail("write vms.tsv");
  }
  std::printf("ready\n");
  std::fflush(stdout);
  for (;;)
    ::pause(); // until killed
}

} // namespace aloft::bench
