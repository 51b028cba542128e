// Steady state: N live sessions (fake provider, no agent) with their
// watchdogs armed, first with a trickle of activity, then idle.
//
// Each size runs in a fresh process (`--child steady_state`), so its memory
// and threads are the engine's alone, not what earlier scenarios left in the
// heap. The child prints `key value` lines, then `done`:
//   rss0_kb, threads0      with the engine open and no session
//   rss_kb, threads        with every session live, after the idle window
//   running                sessions running
//   trickle_cpu, idle_cpu  CPU time over each window, in % of one core
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <map>
#include <thread>
#include <unistd.h>

#include "bench/harness.hpp"
#include "bench/scenarios.hpp"
#include "engine/base/error.hpp"

namespace aloft::bench {

namespace {

// The child's figures, or an empty map when it failed.
std::map<std::string, double> run_steady_child(report& out, size_t n, double trickle_s,
                                               double idle_s) {
  auto home = temp_home();
  subprocess child{child_argv({"steady_state", home, std::to_string(n),
                               std::to_string(trickle_s), std::to_string(idle_s)})};
  std::map<std::string, double> got;
  std::string line;
  bool done = false;
  while (child.ok() && child.read_line(line, 600)) {
    if (line == "done") {
      done = true;
      break;
    }
    auto sp = line.find(' ');
    if (sp != std::string::npos)
      got[line.substr(0, sp)] = std::atof(line.c_str() + sp + 1);
  }
  child.stop(SIGKILL, 30);
  remove_tree(home);
  out.check(done, "steady state: the child with " + std::to_string(n)
                    + " sessions did not finish");
  if (!done)
    got.clear();
  return got;
}

} // namespace

void steady_state(report& out, const steady_state_options& o) {
  const std::string scenario = "steady_state";
  auto few = run_steady_child(out, o.few_sessions, 0.1, 0.1);
  auto many = run_steady_child(out, o.sessions, o.trickle_s, o.idle_s);
  if (few.empty() || many.empty())
    return;
  auto n = static_cast<double>(o.sessions);
  out.check(many["running"] == n && few["running"] == static_cast<double>(o.few_sessions),
            "steady state: not every session reached running");
  out.check(many["rss_kb"] > many["rss0_kb"] && many["threads"] > 0,
            "steady state: no memory or threads measured");
  auto sessions = std::to_string(o.sessions);
  out.add({scenario, "engine memory per live session (RSS growth), " + sessions + " sessions",
           (many["rss_kb"] - many["rss0_kb"]) / n, "KiB", 0, {at_most(16)}});
  // Thread count independent of N: the same as with few sessions.
  out.add({scenario, "threads with " + sessions + " live sessions (baseline: "
                       + std::to_string(o.few_sessions) + ")",
           many["threads"], "", few["threads"], {ratio_at_most(1)}});
  out.add({scenario, "threads with the engine open and no session", many["threads0"], ""});
  out.add({scenario, "CPU with a trickle of activity (1 % of sessions/s)", many["trickle_cpu"],
           "% core"});
  out.add({scenario, "CPU while idle, " + sessions + " sessions", many["idle_cpu"], "% core",
           0, {at_most(2)}});
}

// --child steady_state HOME N TRICKLE_S IDLE_S
int steady_state_child(const std::vector<std::string>& args) {
  if (args.size() != 5)
    return 2;
  auto home = args[1];
  auto n = static_cast<size_t>(std::atoll(args[2].c_str()));
  auto trickle_s = std::atof(args[3].c_str());
  auto idle_s = std::atof(args[4].c_str());
  auto say = [](const char* key, double v) { std::printf("%s %.6f\n", key, v); };
  auto e = open_fake_engine(home, std::make_shared<fake_provider>());
  if (!e) {
    std::fprintf(stderr, "aloft-bench: steady state: open engine: %s\n",
                 describe(e.error()).c_str());
    return 1;
  }
  auto& eng = **e;
  // The engine's own start-up work settles before the zero point; then the
  // storm's last writes and events (as long as the idle window, up to 0.5 s).
  auto settle = std::chrono::duration<double>(std::min(0.5, idle_s));
  std::this_thread::sleep_for(settle);
  say("rss0_kb", static_cast<double>(proc_status("VmRSS:")));
  say("threads0", static_cast<double>(proc_status("Threads:")));
  auto f = launch_fleet(eng, n, 4, home, "true", 300);
  say("running", static_cast<double>(count_state(eng, session_state::running)));
  std::this_thread::sleep_for(settle);

  // A trickle: 1 % of the sessions report activity each second, in ten
  // steps a second.
  auto cpu0 = cpu_seconds();
  auto t0 = clock_type::now();
  size_t next = 0;
  auto per_step = std::max<size_t>(1, f.ids.size() / 1000);
  for (int step = 0; seconds_since(t0) < trickle_s && !f.ids.empty(); ++step) {
    for (size_t i = 0; i < per_step; ++i)
      eng.activity(f.ids[next++ % f.ids.size()], "bench");
    std::this_thread::sleep_until(t0 + std::chrono::milliseconds(100 * (step + 1)));
  }
  say("trickle_cpu", 100 * (cpu_seconds() - cpu0) / seconds_since(t0));

  cpu0 = cpu_seconds();
  t0 = clock_type::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(idle_s));
  say("idle_cpu", 100 * (cpu_seconds() - cpu0) / seconds_since(t0));
  say("rss_kb", static_cast<double>(proc_status("VmRSS:")));
  say("threads", static_cast<double>(proc_status("Threads:")));
  std::printf("done\n");
  std::fflush(stdout);
  // No clean shutdown: the parent has what it came for.
  std::_Exit(0);
}

} // namespace aloft::bench
