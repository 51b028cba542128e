// Whole sessions on the Fly emulator through the engine: an account added
// and validated against the emulated API, a launch whose agent runs over
// real SSH on the emulated machine, its work synced down, the machine
// destroyed; and a soak of concurrent sessions under injected faults that
// must leave no machine leaked or doubled.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "engine/app/engine_impl.hpp"
#include "engine/base/error.hpp"
#include "engine/executor.hpp"
#include "providers/fly/fly_provider.hpp"
#include "providers/http/http_loop.hpp"
#include "tests/emulators/fly/fly_emulator.hpp"
#include "tests/support/local_vm.hpp"

namespace aloft {
namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

const std::string token = "fo1_FAKE_EMULATOR_TOKEN_0123456789";

std::string slurp(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

test::fly_emulator_options emulator_options(const std::string& dir) {
  test::fly_emulator_options eo;
  eo.sandboxes_dir = dir;
  eo.token = token;
  eo.boot_delay = 20ms;
  eo.wait_second = 100ms;
  return eo;
}

TEST(fly_session, a_session_runs_its_agent_on_a_machine_and_its_work_comes_home) {
  test::temp_dir tmp;
  test::fly_emulator emu{emulator_options(tmp.path() + "/emulator")};
  ASSERT_TRUE(emu.ok()) << emu.error();
  auto home = tmp.path() + "/home";
  auto wt = tmp.path() + "/wt";
  ASSERT_EQ(std::system(("mkdir -p '" + wt + "' && cd '" + wt
                         + "' && git init -q && echo base > a.txt && git add -A && git -c "
                           "user.name=t -c user.email=t@t commit -qm base")
                          .c_str()),
            0);
  ::mkdir(home.c_str(), 0700);
  std::ofstream{home + "/settings.json"} << R"({"version": 1, "credential_store": "file"})";
  engine_options opts;
  opts.home = home;
  auto e = open_engine(opts);
  ASSERT_TRUE(e) << describe(e.error());
  auto& eng = **e;
  account a;
  a.name = "fly-emu";
  a.provider = "fly";
  a.options["api_url"] = emu.base_url();
  a.guards.idle_timeout_s = 600;
  auto added = eng.add_account(a, {{"token", token}});
  ASSERT_TRUE(added) << describe(added.error());
  EXPECT_TRUE(added->can_launch);

  launch_request req;
  req.account = "fly-emu";
  req.agent_cmd = "echo from-the-agent > agent.txt; echo hello-from-fly; sleep 600";
  req.worktree = wt;
  auto rec = eng.launch(req);
  ASSERT_TRUE(rec) << describe(rec.error());
  auto id = rec->id;
  ASSERT_TRUE(test::wait_until(
    [&] {
      auto v = eng.show(id);
      return v && (v->record.state == session_state::running || is_terminal(v->record.state));
    },
    60s));
  auto v = eng.show(id);
  ASSERT_TRUE(v);
  ASSERT_EQ(v->record.state, session_state::running) << v->record.reason;
  // The agent runs in the machine's sandbox, never in the host's /root/work.
  EXPECT_EQ(v->record.workdir.rfind(tmp.path() + "/emulator/", 0), 0u) << v->record.workdir;
  auto log = eng.log_path(id);
  ASSERT_TRUE(log);
  ASSERT_TRUE(test::wait_until(
    [&] { return slurp(*log).find("hello-from-fly") != std::string::npos; }, 30s));
  // The agent saw the synced worktree and its work comes back.
  sync_down_request down;
  down.id = id;
  auto r = eng.sync_down(down);
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_EQ(slurp(wt + "/agent.txt"), "from-the-agent\n");
  EXPECT_EQ(slurp(wt + "/a.txt"), "base\n");

  ASSERT_FALSE(eng.destroy(id));
  ASSERT_TRUE(test::wait_until(
    [&] {
      auto s = eng.show(id);
      return s && s->record.state == session_state::destroyed;
    },
    60s));
  EXPECT_EQ(emu.live_machines(), 0u);
  e->reset();
}

// Fifty sessions launched at once while a tenth of the API calls fail
// (503, 429 with Retry-After, resets): every session ends running or failed
// with a reason, and afterwards no machine is left that no session owns and
// no session has two.
TEST(fly_session, a_soak_under_faults_leaks_and_doubles_nothing) {
  constexpr int sessions = 50;
  test::temp_dir tmp;
  auto eo = emulator_options(tmp.path() + "/emulator");
  test::fly_emulator emu{eo};
  ASSERT_TRUE(emu.ok()) << emu.error();
  auto http = std::make_shared<http_loop>();
  auto pool = std::make_shared<thread_pool>(4);
  fly_provider_options fo;
  fo.api_url = emu.base_url();
  fo.token = token;
  fo.account = "fly-soak";
  fo.http = http;
  fo.exec = pool;
  fo.boot_timeout = 60s;
  fo.ssh_poll_interval = 50ms;
  // Fly allows one create a second per app; the emulator does not limit it
  // here, so the soak is not paced by it (the bench measures the pace).
  fo.mutation_rate_per_s = 100;
  fo.mutation_burst = 50;
  auto home = tmp.path() + "/home";
  engine_options opts;
  opts.home = home;
  account a;
  a.name = "fly-soak";
  a.provider = "fly";
  a.max_concurrent_vms = sessions;
  auto t0 = steady::now();
  std::map<std::string, std::string> machine_of; // session -> vm
  {
    // The provider's app name needs the installation id: open once to learn it.
    engine_overrides probe;
    probe.accounts.emplace_back(a, nullptr);
    probe.no_agent = true;
    auto e0 = open_engine_with(opts, probe);
    ASSERT_TRUE(e0) << describe(e0.error());
    fo.installation_id = (*e0)->installation_id();
  }
  auto client = make_fly_provider(fo);
  emu.set_fault_rate(0.10, 7);
  {
    engine_overrides ov;
    ov.accounts.emplace_back(a, client);
    ov.no_agent = true;
    ov.retry_delay_ms = 200;
    auto e = open_engine_with(opts, ov);
    ASSERT_TRUE(e) << describe(e.error());
    auto& eng = **e;
    std::vector<std::string> ids;
    for (int i = 0; i < sessions; ++i) {
      launch_request req;
      req.account = "fly-soak";
      req.agent_cmd = "true";
      req.worktree = tmp.path();
      auto rec = eng.launch(req);
      ASSERT_TRUE(rec) << describe(rec.error());
      ids.push_back(rec->id);
    }
    ASSERT_TRUE(test::wait_until(
      [&] {
        for (auto& rec : eng.list())
          if (rec.state != session_state::running && rec.state != session_state::failed
              && rec.state != session_state::destroyed)
            return false;
        return true;
      },
      240s))
      << "sessions still on their way after 240 s";
    int running = 0, failed = 0;
    for (auto& rec : eng.list()) {
      if (rec.state == session_state::running) {
        ++running;
        machine_of[rec.id] = rec.vm_id;
      } else {
        ++failed;
        EXPECT_FALSE(rec.reason.empty()) << rec.id << " failed without a reason";
        std::printf("[ measure ] fly soak: %s %s: %s\n", rec.id.c_str(),
                    to_string(rec.state), rec.reason.c_str());
      }
    }
    auto secs = std::chrono::duration<double>(steady::now() - t0).count();
    auto st = emu.stats();
    auto hs = http->stats();
    std::printf("[ measure ] fly soak: %d sessions, %d running, %d failed, %d faults "
                "injected, %llu requests (%llu retries), %.1f s, %.0f requests/s\n",
                sessions, running, failed, st.faults_total,
                static_cast<unsigned long long>(hs.requests),
                static_cast<unsigned long long>(hs.retries), secs, hs.requests / secs);
    EXPECT_GT(st.faults_total, 0);
    EXPECT_GE(running, sessions / 2) << "most sessions get through 10 % faults";
    // Retries stay bounded: at most the policy's attempts per call.
    EXPECT_LE(hs.retries, hs.requests);
    emu.set_fault_rate(0, 7);
  }
  // A restarted engine reconciles: machines of failed sessions go.
  {
    engine_overrides ov;
    ov.accounts.emplace_back(a, client);
    ov.no_agent = true;
    auto e = open_engine_with(opts, ov);
    ASSERT_TRUE(e) << describe(e.error());
    ASSERT_TRUE(test::wait_until([&] { return emu.live_machines() == machine_of.size(); },
                                 60s))
      << emu.live_machines() << " machines for " << machine_of.size() << " running sessions";
    // Each running session's machine exists, and only those.
    for (auto& [session, vm] : machine_of)
      EXPECT_EQ(emu.machine_state(fly_app_name("aloft", fo.installation_id, "fly-soak"), vm),
                "started")
        << session;
    e->reset();
  }
  http->shutdown();
}

} // namespace
} // namespace aloft
