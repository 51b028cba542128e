// aloft-bench: Aloft's load harness.
//
// Each scenario runs the real engine (actors, RocksDB store) and reports its
// figures beside a baseline measured in the same run where one applies.
// `--quick` runs every scenario at a small size in seconds and checks that
// each produced sane figures (so the harness cannot rot); it does not judge
// timings.
//
//   aloft-bench [--quick] [--runs N] [--scenario NAME] [--json FILE]
//               [--provider-latency-ms MS]
//
// Every scenario but sync runs N times (default 5; 2 with --quick), and
// each figure is reported as the median of its runs with their spread.
// --provider-latency-ms adds a launch storm at that fake-provider latency
// (default 50; 5 with --quick).
//
// Environment: ALOFT_BENCH_TRACE=1 prints every sync event with its time;
// ALOFT_BENCH_SYNC_RUNS=N runs the sync scenario N times instead of 5.
//
// Scenarios: launch_storm, steady_state, restart, durability, local,
// provider_client, sync. The newer ones live in files of their own
// (scenarios.hpp); figures and their printing in report.hpp.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <sys/stat.h>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "bench/harness.hpp"
#include "bench/report.hpp"
#include "bench/scenarios.hpp"
#include "providers/fake/fake_provider.hpp"
#include "engine/app/engine_impl.hpp"
#include "engine/base/error.hpp"
#include "engine/base/json.hpp"
#include "persistence/store.hpp"

namespace aloft::bench {
namespace {

// The launch storm is in launch_storm.cpp.

// -- durability ------------------------------------------------------------------

void durability(report& out, size_t transitions, size_t writers) {
  auto home = temp_home();
  auto db = open_rocksdb_store(home + "/store");
  if (!db) {
    out.check(false, "open store: " + describe(db.error()));
    return;
  }
  std::string value(300, 'x'); // about a session record
  // Baseline: one synced write at a time from one thread.
  size_t baseline_n = std::max<size_t>(transitions / 10, 50);
  auto t0 = clock_type::now();
  for (size_t i = 0; i < baseline_n; ++i)
    (*db)->commit_and_wait({{family::sessions, "b" + std::to_string(i), value}});
  auto baseline = static_cast<double>(baseline_n) / seconds_since(t0);
  // Group commit: many sessions in flight at once.
  auto before = (*db)->stats();
  std::atomic<size_t> next{0};
  std::vector<std::thread> threads;
  t0 = clock_type::now();
  for (size_t w = 0; w < writers; ++w)
    threads.emplace_back([&] {
      size_t i;
      while ((i = next++) < transitions)
        (*db)->commit_and_wait({{family::sessions, "s" + std::to_string(i % 1000), value}});
    });
  for (auto& t : threads)
    t.join();
  auto rate = static_cast<double>(transitions) / seconds_since(t0);
  auto after = (*db)->stats();
  auto syncs = after.synced_writes - before.synced_writes;
  out.check(syncs > 0 && syncs < transitions, "durability: group commit shared no fsync");
  out.add({"durability", "durable transitions per second (group commit)", rate, "1/s",
           baseline, {at_least(20'000), ratio_at_least(10)}});
  out.add({"durability", "transitions per fsync",
           static_cast<double>(transitions) / static_cast<double>(std::max<uint64_t>(syncs, 1)),
           ""});
  db->reset();
  remove_tree(home);
}

// -- local provider ----------------------------------------------------------------

void local_sessions(report& out, size_t n) {
  auto home = temp_home();
  engine_options opts;
  opts.home = home;
  auto rss0 = proc_status("VmRSS:");
  auto threads0 = proc_status("Threads:");
  auto e = open_engine(opts);
  if (!e) {
    out.check(false, "open engine: " + describe(e.error()));
    return;
  }
  auto& eng = **e;
  // Every session stays live until the end: raise the account's cap.
  if (auto cap = eng.set_account("local", "max_concurrent_vms", std::to_string(n + 1), false);
      !cap) {
    out.check(false, "raise the local account's cap: " + describe(cap.error()));
    return;
  }
  launch_request req;
  req.agent_cmd = "sleep 600";
  req.worktree = home;
  auto t0 = clock_type::now();
  for (size_t i = 0; i < n; ++i)
    if (!eng.launch(req))
      out.check(false, "local: launch failed");
  bool all = wait_for([&] { return count_state(eng, session_state::running) == n; }, 300);
  auto running_s = seconds_since(t0);
  out.check(all, "local: not every session reached running: "
                   + describe_states(eng, session_state::running));
  out.add({"local", "sessions to running per second (real sshd each)",
           static_cast<double>(n) / running_s, "1/s"});
  out.add({"local", "live sessions", static_cast<double>(n), ""});
  out.add({"local", "engine memory (RSS growth) per live session",
           static_cast<double>(proc_status("VmRSS:") - rss0) * 1024.0 / static_cast<double>(n),
           "B"});
  out.add({"local", "engine threads with all sessions live",
           static_cast<double>(proc_status("Threads:")), ""});
  out.add({"local", "threads before the engine opened", static_cast<double>(threads0), ""});
  for (auto& r : eng.list())
    ignore_error(eng.destroy(r.id));
  bool gone = wait_for([&] { return count_state(eng, session_state::destroyed) == n; }, 300);
  out.check(gone, "local: not every session was destroyed: "
                    + describe_states(eng, session_state::destroyed));
  e->reset();
  remove_tree(home);
}

// -- sync --------------------------------------------------------------------------

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

int run_shell(const std::string& cmd) {
  return std::system(("sh -c '" + cmd + "' > /dev/null 2>&1").c_str());
}

// A tree of `files` files and about `bytes` bytes of text, committed and
// packed, as a clone leaves a repository. The commit is made with
// fast-import, straight into a pack: `git add` would leave loose objects for
// a gc to delete, and deleting many files here slows every file written for
// seconds afterwards (the first initial sync, never the baseline).
void generate_tree(const std::string& dir, size_t files, size_t bytes) {
  std::mt19937 rng{7};
  const char* words[] = {"int", "return", "value", "struct", "for", "while", "session",
                         "actor", "engine", "sync", "const", "auto", "std::string", "{", "}"};
  auto per_file = bytes / files;
  std::string stream, tree;
  for (size_t i = 0; i < files; ++i) {
    auto rel = "d" + std::to_string(i % 100) + "/f" + std::to_string(i) + ".txt";
    ::mkdir((dir + "/d" + std::to_string(i % 100)).c_str(), 0755);
    std::string text;
    text.reserve(per_file + 64);
    while (text.size() < per_file) {
      text += words[rng() % 15];
      text += (rng() % 8 == 0) ? '\n' : ' ';
      if (rng() % 64 == 0)
        text += std::to_string(rng());
    }
    std::ofstream{dir + "/" + rel} << text;
    stream += "blob\nmark :" + std::to_string(i + 1) + "\ndata " + std::to_string(text.size())
              + "\n" + text + "\n";
    tree += "M 100644 :" + std::to_string(i + 1) + " " + rel + "\n";
  }
  stream += "commit refs/heads/main\ncommitter b <b@b> 1700000000 +0000\ndata 4\ntree\n" + tree;
  run_shell("cd " + dir + " && git init -q -b main");
  auto import = ::popen(("cd " + dir + " && git fast-import --quiet").c_str(), "w");
  if (import) {
    std::fwrite(stream.data(), 1, stream.size(), import);
    ::pclose(import);
  }
  // The index from HEAD, with the files' stat data (hashing each once).
  run_shell("cd " + dir + " && git reset -q");
}

void sync_scenario(report& out, size_t files, size_t bytes, int runs) {
  auto home = temp_home();
  auto wt = home + "/worktree";
  ::mkdir(wt.c_str(), 0755);
  generate_tree(wt, files, bytes);
  engine_options opts;
  opts.home = home + "/aloft";
  auto e = open_engine(opts);
  if (!e) {
    out.check(false, "open engine: " + describe(e.error()));
    return;
  }
  auto& eng = **e;
  if (auto cap = eng.set_account("local", "max_concurrent_vms", std::to_string(runs + 1), false);
      !cap) {
    out.check(false, "raise the local account's cap: " + describe(cap.error()));
    return;
  }
  // ALOFT_BENCH_TRACE=1 prints every sync event with its time, to see
  // where a sync spends it.
  bool trace = std::getenv("ALOFT_BENCH_TRACE") != nullptr;
  // The initial sync alone, from its first event to its last, per session.
  std::mutex sync_mtx;
  std::map<std::string, std::pair<int64_t, int64_t>> first_sync;
  auto sub = eng.subscribe([&, trace](const event& ev) {
    if (ev.kind != "sync")
      return;
    if (trace)
      std::fprintf(stderr, "%lld %s\n", static_cast<long long>(ev.at_ms), ev.message.c_str());
    std::lock_guard<std::mutex> guard{sync_mtx};
    auto& span = first_sync[ev.session];
    if (span.second != 0)
      return; // only the first sync of a session
    if (span.first == 0)
      span.first = ev.at_ms;
    if (ev.message.rfind("up: synced up", 0) == 0)
      span.second = ev.at_ms;
  });
  std::vector<double> initial, tar_base, incremental, down;
  for (int run = 0; run < runs; ++run) {
    launch_request req;
    req.agent_cmd = "sleep 3600";
    req.worktree = wt;
    auto t0 = clock_type::now();
    auto rec = eng.launch(req);
    if (!rec) {
      out.check(false, "sync: launch failed");
      break;
    }
    session_record live;
    bool up = wait_for([&] {
      auto v = eng.show(rec->id);
      if (v && v->record.state == session_state::running) {
        live = v->record;
        return true;
      }
      return v && is_terminal(v->record.state);
    }, 300);
    initial.push_back(seconds_since(t0));
    out.check(up && !live.synced_up.empty(), "sync: the initial sync did not happen");
    if (!up || live.synced_up.empty())
      break;
    // Baseline: the same files through `tar c | ssh tar x` over the same sshd.
    auto key = opts.home + "/keys/" + live.id + "/client";
    auto target = live.workdir + "-tar";
    auto ssh = "ssh -i " + key + " -p " + std::to_string(live.port)
               + " -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
                 " -o LogLevel=ERROR " + live.user + "@127.0.0.1";
    t0 = clock_type::now();
    run_shell("tar c -C " + wt + " --exclude=.git . | " + ssh + " \"mkdir -p " + target
              + " && tar x -C " + target + "\"");
    tar_base.push_back(seconds_since(t0));
    // One changed file, on the open session.
    std::ofstream{wt + "/d0/f0.txt", std::ios::app} << "one more line " << run << "\n";
    t0 = clock_type::now();
    auto inc = eng.sync_up(live.id);
    incremental.push_back(seconds_since(t0));
    out.check(bool(inc), "sync: incremental sync up failed");
    // 100 files changed by the agent, brought down.
    for (int i = 0; i < 100; ++i)
      std::ofstream{live.workdir + "/d" + std::to_string(i % 100) + "/f" + std::to_string(i + 100)
                      + ".txt",
                    std::ios::app}
        << "agent edit " << run << "\n";
    t0 = clock_type::now();
    auto dn = eng.sync_down({live.id, sync_down_mode::apply, {}});
    down.push_back(seconds_since(t0));
    out.check(dn && dn->changed.size() >= 100, "sync: sync down of 100 files failed");
    run_shell("cd " + wt + " && git -c user.name=b -c user.email=b@b commit -qam next");
  }
  // Every VM lives until the end: removing a 200 MB sandbox between runs
  // would slow whatever writes files next (here, deleting many files makes
  // creating files slower for seconds afterwards), and that would be the
  // next initial sync, never the baseline.
  for (auto& r : eng.list())
    ignore_error(eng.destroy(r.id));
  // Every VM gone before the engine closes, or the bench would leave them.
  wait_for([&] {
    for (auto& r : eng.list())
      if (!is_terminal(r.state))
        return false;
    return true;
  }, 60);
  eng.unsubscribe(sub);
  std::vector<double> sync_only;
  {
    std::lock_guard<std::mutex> guard{sync_mtx};
    for (auto& [id, span] : first_sync)
      if (span.second > span.first)
        sync_only.push_back(static_cast<double>(span.second - span.first) / 1000.0);
  }
  out.add({"sync", "initial sync up (snapshot to checkout), median s", median(sync_only), "s",
           median(tar_base)});
  out.add({"sync", "launch to running with the initial sync, median s", median(initial), "s",
           median(tar_base)});
  out.add({"sync", "one-file incremental sync up, median ms", median(incremental) * 1000,
           "ms"});
  out.add({"sync", "sync down of 100 changed files, median ms", median(down) * 1000, "ms"});
  e->reset();
  remove_tree(home);
}

// Runs of the sync scenario: 5, or ALOFT_BENCH_SYNC_RUNS (for quicker looks).
int sync_runs() {
  auto v = std::getenv("ALOFT_BENCH_SYNC_RUNS");
  int n = v ? std::atoi(v) : 0;
  return n > 0 ? n : 5;
}

} // namespace
} // namespace aloft::bench

int main(int argc, char** argv) {
  using namespace aloft::bench;
  if (argc > 1 && std::string{argv[1]} == "--child")
    return run_child(std::vector<std::string>(argv + 2, argv + argc));
  bool quick = false;
  int runs = 0;
  double latency_ms = -1;
  std::string only, json_path;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick")
      quick = true;
    else if (a == "--scenario" && i + 1 < argc)
      only = argv[++i];
    else if (a == "--json" && i + 1 < argc)
      json_path = argv[++i];
    else if (a == "--runs" && i + 1 < argc && std::atoi(argv[i + 1]) > 0)
      runs = std::atoi(argv[++i]);
    else if (a == "--provider-latency-ms" && i + 1 < argc && std::atof(argv[i + 1]) >= 0)
      latency_ms = std::atof(argv[++i]);
    else {
      std::fprintf(stderr,
                   "usage: aloft-bench [--quick] [--runs N] [--scenario launch_storm|"
                   "steady_state|restart|durability|local|provider_client|sync]"
                   " [--json FILE] [--provider-latency-ms MS]\n");
      return 2;
    }
  }
  if (runs == 0)
    runs = quick ? 2 : 5;
  if (latency_ms < 0)
    latency_ms = quick ? 5 : 50;
  report r;
  r.quick = quick;
  auto want = [&](const char* name) { return only.empty() || only == name; };
  // Each run of a scenario, timed on stderr, so a long run shows progress.
  auto run_one = [&](const char* name, int run, const std::function<void()>& fn) {
    if (!want(name))
      return;
    auto t0 = clock_type::now();
    fn();
    std::fprintf(stderr, "aloft-bench: %s, run %d of %d: %.1f s\n", name, run + 1, runs,
                 seconds_since(t0));
  };
  for (int run = 0; run < runs; ++run) {
    run_one("launch_storm", run, [&] {
      launch_storm_options o;
      o.sessions = quick ? 200 : 10'000;
      launch_storm(r, o);
      if (latency_ms > 0) {
        // Smaller: the account's cap on provider calls in flight makes a
        // latency cost time in proportion to the sessions.
        o.sessions = quick ? 200 : 2'000;
        o.provider_latency_ms = latency_ms;
        launch_storm(r, o);
      }
    });
    run_one("steady_state", run, [&] {
      steady_state_options o;
      if (quick) {
        o.sessions = 200;
        o.few_sessions = 20;
        o.trickle_s = 0.3;
        o.idle_s = 0.5;
      }
      steady_state(r, o);
    });
    run_one("restart", run, [&] {
      restart_options o;
      o.sessions = quick ? 200 : 10'000;
      o.ssh_sessions = quick ? 2 : 100;
      o.agent_tick_s = quick ? 0.2 : 1;
      restart(r, o);
    });
    run_one("durability", run, [&] { durability(r, quick ? 2'000 : 40'000, 64); });
    run_one("local", run, [&] { local_sessions(r, quick ? 3 : 100); });
    run_one("provider_client", run, [&] {
      provider_client_options o;
      if (quick) {
        o.calls = 100;
        o.in_flight = 8;
        o.creates = 1;
      }
      provider_client(r, o);
    });
  }
  if (only.empty() || only == "sync")
    sync_scenario(r, quick ? 200 : 10'000, quick ? (2u << 20) : (100u << 20),
                  quick ? 1 : sync_runs());
  print(r, json_path);
  return r.sane ? 0 : 1;
}
