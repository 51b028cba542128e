// Provider client: the Fly provider (on the shared HTTP loop) against the
// Fly emulator, run as a child process on loopback.
//
// Mostly reads, since each created machine is a sandbox with its own sshd:
// `get` of machines that do not exist (404: the look a restarted engine
// takes at a VM that may be gone; distinct ids, so Fly's per-machine rate
// limit never delays one), `list` of the installation's machines (one
// request each once the app is known, as for every reconcile), with a fixed number of calls
// in flight; and a few creates. Once clean, once with the emulator failing a
// share of answers at random (429 with Retry-After: 1, 503, connection
// reset), which the loop retries; the clean run is the faulty one's
// baseline.
#include <condition_variable>
#include <csignal>
#include <ctime>
#include <mutex>
#include <unistd.h>

#include "bench/harness.hpp"
#include "bench/scenarios.hpp"
#include "engine/base/error.hpp"
#include "engine/executor.hpp"
#include "engine/keys.hpp"
#include "providers/fly/fly_provider.hpp"
#include "providers/http/http_loop.hpp"

namespace aloft::bench {

namespace {

constexpr const char* emulator_token = "bench-token";
constexpr const char* installation = "i-0123456789ab";

struct call_stats {
  double seconds = 0;
  std::vector<double> latency_ms;
  size_t failed = 0;
  bool finished = false;
};

// Makes `total` calls, `in_flight` at a time: `call(i, done)` starts call i,
// which ends with `done(ok)` on any thread.
call_stats drive(size_t total, size_t in_flight,
                 std::function<void(size_t, std::function<void(bool)>)> call) {
  struct state {
    std::mutex mtx;
    std::condition_variable cv;
    std::vector<double> latency_ms;
    size_t done = 0, failed = 0;
    std::atomic<size_t> next{0};
    std::function<void()> issue;
  };
  auto st = std::make_shared<state>();
  st->latency_ms.resize(total);
  st->issue = [st, total, call] {
    auto i = st->next++;
    if (i >= total)
      return;
    auto t0 = clock_type::now();
    call(i, [st, i, t0](bool ok) {
      st->latency_ms[i] = seconds_since(t0) * 1000;
      st->issue(); // before counting this one done: `issue` is cleared after the last
      std::lock_guard<std::mutex> guard{st->mtx};
      ++st->done;
      if (!ok)
        ++st->failed;
      st->cv.notify_all();
    });
  };
  auto t0 = clock_type::now();
  for (size_t k = 0; k < std::min(in_flight, total); ++k)
    st->issue();
  call_stats out;
  std::unique_lock<std::mutex> lock{st->mtx};
  out.finished = st->cv.wait_for(lock, std::chrono::seconds(300),
                                 [&] { return st->done == total; });
  out.seconds = seconds_since(t0);
  out.failed = st->failed + (total - st->done);
  out.latency_ms = st->latency_ms;
  if (out.finished)
    st->issue = nullptr; // breaks the cycle through `st`
  return out;
}

struct variant_result {
  bool ok = false;
  call_stats gets, lists, creates;
  uint64_t requests = 0, retries = 0;
};

variant_result run_variant(report& out, const std::string& emulator,
                           const provider_client_options& o, double fault_rate) {
  variant_result r;
  std::vector<std::string> argv{emulator, "--token", emulator_token, "--boot-delay-ms", "0"};
  if (fault_rate > 0) {
    argv.insert(argv.end(), {"--fault-rate", std::to_string(fault_rate), "--seed", "7"});
  }
  subprocess emu{argv};
  std::string url;
  if (!emu.ok() || !emu.read_line(url, 30) || url.rfind("http", 0) != 0) {
    out.check(false, "provider client: the Fly emulator did not start");
    return r;
  }
  auto dir = temp_home();
  auto keys = make_session_keys(dir + "/keys");
  if (!keys) {
    out.check(false, "provider client: keys: " + describe(keys.error()));
    remove_tree(dir);
    return r;
  }
  auto http = std::make_shared<http_loop>(http_loop_options{});
  auto pool = std::make_shared<thread_pool>(2);
  fly_provider_options fo;
  fo.api_url = url;
  fo.token = emulator_token;
  fo.account = "bench";
  fo.installation_id = installation;
  fo.http = http;
  fo.exec = pool;
  auto fly = make_fly_provider(fo);

  // A few creates at once; the app and its IPs come with the first.
  std::mutex mtx;
  std::vector<std::string> created;
  r.creates = drive(o.creates, o.creates, [&](size_t i, std::function<void(bool)> done) {
    vm_request req;
    req.installation_id = installation;
    req.session_id = "s-bench-" + std::to_string(i);
    req.idempotency_key = "k-bench-" + std::to_string(i);
    req.client_public_key = keys->client_public_key;
    req.host_private_key = keys->host_private_key;
    req.host_public_key = keys->host_public_key;
    req.hard_deadline_ms = (std::time(nullptr) + 3600) * 1000LL;
    fly->create(req, [&mtx, &created, done](caf::expected<vm_info> vm) {
      if (vm) {
        std::lock_guard<std::mutex> guard{mtx};
        created.push_back(vm->vm_id);
      }
      done(bool(vm));
    });
  });
  auto before = http->stats();
  r.gets = drive(o.calls, o.in_flight, [&](size_t i, std::function<void(bool)> done) {
    fly->get("absent-" + std::to_string(i), [done](caf::expected<vm_info> vm) {
      done(vm && vm->status == vm_status::gone);
    });
  });
  r.lists = drive(o.calls, o.in_flight, [&](size_t, std::function<void(bool)> done) {
    fly->list(installation, [done, n = o.creates](caf::expected<std::vector<vm_info>> vms) {
      done(vms && vms->size() <= n);
    });
  });
  auto after = http->stats();
  r.requests = after.requests - before.requests;
  r.retries = after.retries - before.retries;
  // Every machine goes, or its sshd would outlive the bench.
  std::vector<std::string> ids;
  {
    std::lock_guard<std::mutex> guard{mtx};
    ids = created;
  }
  auto gone = drive(ids.size(), ids.size(), [&](size_t i, std::function<void(bool)> done) {
    fly->destroy(ids[i], [done](caf::error err) { done(!err); });
  });
  http->shutdown();
  fly.reset();
  emu.stop(SIGTERM, 60); // destroys whatever sandbox is left
  remove_tree(dir);
  r.ok = r.creates.finished && r.gets.finished && r.lists.finished && gone.finished;
  return r;
}

} // namespace

void provider_client(report& out, const provider_client_options& o) {
  const std::string scenario = "provider_client";
  auto emulator = program_dir() + "/fly-emulator";
  if (::access(emulator.c_str(), X_OK) != 0) {
    out.check(false, "provider client: no Fly emulator at " + emulator);
    return;
  }
  auto clean = run_variant(out, emulator, o, 0);
  auto faulty = run_variant(out, emulator, o, o.fault_rate);
  out.check(clean.ok && faulty.ok, "provider client: calls did not finish");
  if (!clean.ok || !faulty.ok)
    return;
  out.check(clean.gets.failed == 0 && clean.lists.failed == 0 && clean.creates.failed == 0,
            "provider client: calls failed without faults");
  // A get and a list are one request each.
  out.check(clean.requests >= 2 * o.calls, "provider client: too few HTTP requests counted");
  char pct[32];
  std::snprintf(pct, sizeof(pct), "%g %%", o.fault_rate * 100);
  auto k = std::to_string(o.in_flight);
  auto add = [&](const std::string& name, double clean_v, double faulty_v,
                 const std::string& unit) {
    out.add({scenario, name, clean_v, unit});
    out.add({scenario, name + ", " + pct + " faults (baseline: none)", faulty_v, unit, clean_v});
  };
  auto rate = [&](const call_stats& s) {
    return static_cast<double>(s.latency_ms.size()) / s.seconds;
  };
  add("get (404): calls per second, " + k + " in flight", rate(clean.gets), rate(faulty.gets),
      "1/s");
  add("get (404): latency p50", quantile(clean.gets.latency_ms, 0.5),
      quantile(faulty.gets.latency_ms, 0.5), "ms");
  add("get (404): latency p99", quantile(clean.gets.latency_ms, 0.99),
      quantile(faulty.gets.latency_ms, 0.99), "ms");
  add("list (one request): calls per second, " + k + " in flight", rate(clean.lists),
      rate(faulty.lists), "1/s");
  add("list (one request): latency p50", quantile(clean.lists.latency_ms, 0.5),
      quantile(faulty.lists.latency_ms, 0.5), "ms");
  add("list (one request): latency p99", quantile(clean.lists.latency_ms, 0.99),
      quantile(faulty.lists.latency_ms, 0.99), "ms");
  out.add({scenario, "create (answered before boot), median of " + std::to_string(o.creates),
           quantile(clean.creates.latency_ms, 0.5), "ms"});
  out.add({scenario, std::string{"reads failed after retries, "} + pct + " faults",
           static_cast<double>(faulty.gets.failed + faulty.lists.failed), ""});
  out.add({scenario, std::string{"HTTP attempts retried, "} + pct + " faults",
           static_cast<double>(faulty.retries), ""});
}

} // namespace aloft::bench
