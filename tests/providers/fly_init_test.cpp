// The init Fly machines run, by a real `sh`: it ends the machine at the hard
// deadline, and a deadline the engine moved (aloft extend) wins over the
// one the machine was created with.
#include <chrono>
#include <ctime>
#include <fstream>

#include <gtest/gtest.h>

#include "engine/agent_script.hpp"
#include "engine/process.hpp"
#include "providers/fly/fly_provider.hpp"
#include "tests/support/local_vm.hpp"

namespace aloft {
namespace {

// Runs the init with `deadline` in its environment, for at most `bound_s`
// (coreutils `timeout`: 124 when it had to stop it).
int run_init(const std::string& workdir, int64_t deadline, int bound_s) {
  test::temp_dir dir;
  auto script = dir.path() + "/init.sh";
  std::ofstream{script} << fly_init_script();
  process_spec spec;
  spec.argv = {"timeout", std::to_string(bound_s), "/bin/sh", script};
  auto env = environment_without({"ALOFT_"});
  env.push_back("ALOFT_SKIP_SSHD=1");
  env.push_back("ALOFT_WORKDIR=" + workdir);
  env.push_back("ALOFT_HARD_DEADLINE=" + std::to_string(deadline));
  spec.env = env;
  auto r = run_process(spec);
  EXPECT_TRUE(r) << describe(r.error());
  return r ? r->exit_code : -1;
}

TEST(fly_init, a_passed_deadline_ends_the_machine) {
  test::temp_dir dir;
  EXPECT_EQ(run_init(dir.path() + "/work", std::time(nullptr) - 1, 5), 0);
}

TEST(fly_init, a_deadline_in_the_future_keeps_it_running) {
  test::temp_dir dir;
  EXPECT_EQ(run_init(dir.path() + "/work", std::time(nullptr) + 3600, 1), 124);
}

TEST(fly_init, the_deadline_the_engine_writes_wins) {
  test::temp_dir dir;
  auto work = dir.path() + "/work";
  auto past = std::time(nullptr) - 1;
  process_spec write_deadline;
  write_deadline.argv = {"/bin/sh", "-c", agent_deadline_command(work, past)};
  auto write = run_process(write_deadline);
  ASSERT_TRUE(write && write->exit_code == 0);
  // Created with a deadline an hour away, moved to now: it ends.
  EXPECT_EQ(run_init(work, std::time(nullptr) + 3600, 5), 0);
  // Created with a passed deadline, extended an hour: it goes on.
  process_spec extend;
  extend.argv = {"/bin/sh", "-c", agent_deadline_command(work, std::time(nullptr) + 3600)};
  auto later = run_process(extend);
  ASSERT_TRUE(later && later->exit_code == 0);
  EXPECT_EQ(run_init(work, past, 1), 124);
}

TEST(fly_init, app_names_are_valid_and_stable) {
  EXPECT_EQ(fly_app_name("aloft", "i-3f9a0c1d2e4b", "fly-work"), "aloft-3f9a0c1d2e4b-fly-work");
  EXPECT_EQ(fly_app_name("Al0ft", "i-3f9a0c1d2e4b", "x_y"), "al0ft-3f9a0c1d2e4b-x-y");
  auto long_name = fly_app_name(std::string(80, 'a'), "i-3f9a0c1d2e4b", "acct");
  EXPECT_LE(long_name.size(), 63u);
  EXPECT_NE(long_name.back(), '-');
}

} // namespace
} // namespace aloft
