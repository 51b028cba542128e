// Launch storm: N sessions launched at once by many clients, through the
// whole actor graph with every transition durably persisted, against the
// in-process fake provider (optionally answering with a latency) and no
// agent.
#include <atomic>
#include <cmath>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "bench/harness.hpp"
#include "bench/scenarios.hpp"
#include "engine/app/engine_impl.hpp" // store_stats_of
#include "engine/base/error.hpp"
#include "providers/fake/fake_provider.hpp"

namespace aloft::bench {

void launch_storm(report& out, const launch_storm_options& o) {
  const std::string scenario = "launch_storm";
  auto n = o.sessions;
  // Figures at a provider latency are named for it and judged by no target
  // (the targets are for zero latency).
  bool zero_latency = o.provider_latency_ms <= 0;
  std::string at;
  if (!zero_latency) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), " (provider latency %g ms, %zu sessions)",
                  o.provider_latency_ms, n);
    at = buf;
  }
  auto targets = [&](std::vector<target> t) {
    return zero_latency ? t : std::vector<target>{};
  };
  auto home = temp_home();
  fake_provider_options po;
  po.latency = std::chrono::microseconds{std::llround(o.provider_latency_ms * 1000)};
  auto provider = std::make_shared<fake_provider>(po);
  auto e = open_fake_engine(home, provider);
  if (!e) {
    out.check(false, "open engine: " + describe(e.error()));
    remove_tree(home);
    return;
  }
  auto& eng = **e;

  // When each session was seen pending and running, as the events are
  // published (a subscriber runs on the registry's thread: record, return).
  struct seen {
    clock_type::time_point pending, running;
  };
  struct observed {
    std::mutex mtx;
    std::unordered_map<std::string, seen> times;
    std::atomic<size_t> running{0};
  };
  // Shared with the subscriber, which may still run after `unsubscribe`
  // (both are messages to the registry).
  auto obs = std::make_shared<observed>();
  obs->times.reserve(n);
  auto sub = eng.subscribe([obs](const event& ev) {
    if (ev.kind != "state" || (ev.state != "pending" && ev.state != "running"))
      return;
    auto now = clock_type::now();
    bool is_running = ev.state == "running";
    {
      std::lock_guard<std::mutex> guard{obs->mtx};
      auto& t = obs->times[ev.session];
      (is_running ? t.running : t.pending) = now;
    }
    if (is_running)
      ++obs->running;
  });

  auto stats0 = store_stats_of(eng);
  auto cpu0 = cpu_seconds();
  auto t0 = clock_type::now();
  std::atomic<size_t> next{0}, failed{0};
  std::vector<std::thread> threads;
  for (size_t c = 0; c < o.clients; ++c)
    threads.emplace_back([&] {
      launch_request req;
      req.agent_cmd = "true";
      req.worktree = home;
      while (next++ < n)
        if (!eng.launch(req))
          ++failed;
    });
  for (auto& t : threads)
    t.join();
  auto launched_s = seconds_since(t0);
  bool all = wait_for([&] { return obs->running.load() >= n; }, 120);
  auto running_s = seconds_since(t0);
  auto cpu_s = cpu_seconds() - cpu0;
  auto stats1 = store_stats_of(eng);
  eng.unsubscribe(sub);

  out.check(failed == 0, "launch storm: launches failed");
  out.check(all && count_state(eng, session_state::running) == n,
            "launch storm: not every session reached running: "
              + describe_states(eng, session_state::running));
  std::vector<double> latency_ms;
  {
    std::lock_guard<std::mutex> guard{obs->mtx};
    for (auto& [id, t] : obs->times)
      if (t.pending.time_since_epoch().count() != 0 && t.running.time_since_epoch().count() != 0)
        latency_ms.push_back(
          std::chrono::duration<double, std::milli>(t.running - t.pending).count());
  }
  out.check(latency_ms.size() == n, "launch storm: a session's pending or running event is missing");
  auto fsyncs = stats1.synced_writes - stats0.synced_writes;
  auto batches = stats1.batches - stats0.batches;
  out.check(fsyncs > 0 && batches >= n, "launch storm: the store counted no commits");
  out.check(provider->creates() == n, "launch storm: the provider did not create every VM");
  auto per_s = [&](double s) { return static_cast<double>(n) / s; };
  out.add({scenario, "sessions launched (durably pending) per second" + at, per_s(launched_s),
           "1/s"});
  out.add({scenario, "sessions to running per second" + at, per_s(running_s), "1/s", 0,
           targets({at_least(5'000)})});
  out.add({scenario, "pending -> running latency, p50" + at, quantile(latency_ms, 0.5), "ms"});
  out.add({scenario, "pending -> running latency, p99" + at, quantile(latency_ms, 0.99), "ms"});
  out.add({scenario, "fsyncs per launch" + at,
           static_cast<double>(fsyncs) / static_cast<double>(n), "", 0, targets({below(1)})});
  out.add({scenario, "store batches per fsync" + at,
           static_cast<double>(batches) / static_cast<double>(std::max<uint64_t>(fsyncs, 1)),
           ""});
  out.add({scenario, "CPU per launch (all threads)" + at, cpu_s * 1e6 / static_cast<double>(n),
           "us"});
  e->reset();
  remove_tree(home);
}

} // namespace aloft::bench
