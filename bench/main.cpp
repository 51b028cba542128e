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
// provider_client, sync. Most live in files of their own (scenarios.hpp);
// figures and their printing in report.hpp.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "bench/harness.hpp"
#include "bench/report.hpp"
#include "bench/scenarios.hpp"
#include "engine/base/error.hpp"
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
    run_one("local", run, [&] {
      local_options o;
      o.sessions = quick ? 3 : 100;
      local_sessions(r, o);
    });
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
  if (want("sync")) {
    sync_options o;
    if (quick) {
      o.files = 200;
      o.bytes = 2u << 20;
      o.runs = 1;
    } else {
      o.runs = sync_runs();
    }
    auto t0 = clock_type::now();
    sync_scenario(r, o);
    std::fprintf(stderr, "aloft-bench: sync, %d runs: %.1f s\n", o.runs, seconds_since(t0));
  }
  print(r, json_path);
  return r.sane ? 0 : 1;
}
