// Local sessions: N sessions on the local provider, each a sandbox with a
// real sshd on loopback and an SSH transport in the engine, all live at once.
//
// The measurement runs in a fresh process (`--child local HOME N`): in the
// bench's own process, the allocator hands out memory that earlier scenarios
// and runs freed, and the RSS growth said nothing (1.3 KB to 190 KB per
// session over five runs). The child prints `key value` lines, then `done`:
//   threads0          before the engine opened
//   rss0_kb           with the engine open and no session
//   running_s         from the first launch until every session ran
//   rss_kb, threads   with every session live
//   check TEXT        a sanity check that failed, with its detail
//
// The sshd of a sandbox outlives its engine (as a cloud VM would), so the
// child destroys every session before it exits, also after a failed check;
// and should it die or hang first, the parent destroys whatever sandboxes
// are left in HOME.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <thread>
#include <unistd.h>

#include "bench/harness.hpp"
#include "bench/scenarios.hpp"
#include "engine/base/error.hpp"

namespace aloft::bench {


void local_sessions(report& out, const local_options& o) {
  const std::string scenario = "local";
  auto home = temp_home();
  std::map<std::string, double> got;
  bool done = false;
  {
    subprocess child{child_argv({"local", home, std::to_string(o.sessions)})};
    std::string line;
    // Bounded per line; the child's own waits are 300 s at most each.
    while (child.ok() && child.read_line(line, 600)) {
      if (line == "done") {
        done = true;
        break;
      }
      if (line.rfind("check ", 0) == 0) {
        out.check(false, line.substr(6));
        continue;
      }
      auto sp = line.find(' ');
      if (sp != std::string::npos)
        got[line.substr(0, sp)] = std::atof(line.c_str() + sp + 1);
    }
    child.stop(SIGKILL, 30);
  }
  out.check(done, "local: the child with " + std::to_string(o.sessions)
                    + " sessions did not finish");
  // After a child that finished, nothing may be left: it destroyed every
  // session itself.
  auto left = destroy_leftover_sandboxes(out, home);
  out.check(!done || left == 0, "local: the child left " + std::to_string(left)
                                  + " sandboxes behind (destroyed now)");
  remove_tree(home);
  if (!done || got.count("rss_kb") == 0)
    return;
  auto n = static_cast<double>(o.sessions);
  out.check(got["rss_kb"] > got["rss0_kb"] && got["threads"] > 0,
            "local: no memory or threads measured");
  out.add({scenario, "sessions to running per second (real sshd each)", n / got["running_s"],
           "1/s"});
  out.add({scenario, "live sessions", n, ""});
  out.add({scenario, "engine memory (RSS growth) per live session",
           (got["rss_kb"] - got["rss0_kb"]) * 1024.0 / n, "B"});
  out.add({scenario, "engine threads with all sessions live", got["threads"], ""});
  out.add({scenario, "threads before the engine opened", got["threads0"], ""});
}

// --child local HOME N
int local_child(const std::vector<std::string>& args) {
  if (args.size() != 3)
    return 2;
  auto home = args[1];
  auto n = static_cast<size_t>(std::atoll(args[2].c_str()));
  auto say = [](const char* key, double v) { std::printf("%s %.6f\n", key, v); };
  auto check = [](bool ok, const std::string& what) {
    if (!ok)
      std::printf("check %s\n", what.c_str());
    return ok;
  };
  auto finish = [](int status) {
    std::fflush(stdout);
    // No clean shutdown: no session is left, and the parent has its figures.
    std::_Exit(status);
  };
  say("threads0", static_cast<double>(proc_status("Threads:")));
  // Every session stays live until the end.
  auto e = open_local_engine(home, n);
  if (!e) {
    check(false, "local: open engine: " + describe(e.error()));
    finish(1);
  }
  auto& eng = **e;
  // The engine's own start-up work settles before the zero point: the figure
  // is what each session adds, not the engine's fixed cost spread over them.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  say("rss0_kb", static_cast<double>(proc_status("VmRSS:")));

  launch_request req;
  req.agent_cmd = "sleep 600";
  req.worktree = home;
  size_t launched = 0;
  std::string refused;
  auto t0 = clock_type::now();
  for (size_t i = 0; i < n; ++i) {
    auto rec = eng.launch(req);
    if (rec)
      ++launched;
    else if (refused.empty())
      refused = describe(rec.error());
  }
  check(launched == n, "local: " + std::to_string(n - launched) + " of " + std::to_string(n)
                         + " launches failed (" + refused + ")");
  bool all = launched == n
             && wait_for([&] { return count_state(eng, session_state::running) == n; }, 300);
  auto running_s = seconds_since(t0);
  if (check(all, "local: not every session reached running: "
                   + describe_states(eng, session_state::running))) {
    say("running_s", running_s);
    say("rss_kb", static_cast<double>(proc_status("VmRSS:")));
    say("threads", static_cast<double>(proc_status("Threads:")));
  }
  std::fflush(stdout);

  // Every sandbox goes with its session, or its sshd would outlive the bench;
  // also after a failed check.
  auto destroyed = destroy_all(eng, 300);
  check(destroyed, "local: not every session was destroyed: "
                     + describe_states(eng, session_state::destroyed));
  std::printf("done\n");
  finish(all && destroyed && launched == n ? 0 : 1);
  return 0;
}

} // namespace aloft::bench
