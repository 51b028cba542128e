// The agent's shell scripts run by a real `sh` in a temporary directory (the
// VM side without SSH): the secrets file handed to the agent, and the hard
// deadline written for an in-VM guard.
#include <sys/stat.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "engine/agent_script.hpp"
#include "engine/process.hpp"
#include "tests/support/local_vm.hpp"

namespace aloft {
namespace {

using namespace std::chrono_literals;

std::string slurp(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// Runs `script` with `sh -c`, `input` on stdin; returns the exit code.
int sh(const std::string& script, const std::string& input = {},
       std::vector<std::string> env = {}) {
  process_spec spec;
  spec.argv = {"/bin/sh", "-c", script};
  spec.input = input;
  if (!env.empty()) {
    auto all = environment_without({});
    all.insert(all.end(), env.begin(), env.end());
    spec.env = std::move(all);
  }
  auto r = run_process(spec);
  EXPECT_TRUE(r) << describe(r.error());
  return r ? r->exit_code : -1;
}

TEST(agent_script, the_agent_gets_its_secrets_and_the_file_is_gone_once_it_runs) {
  test::temp_dir dir;
  auto work = dir.path() + "/work";
  auto state = agent_state_dir(work);
  auto secret = std::string{"sk-ant-FAKE-'quoted' $value `x`"};
  ASSERT_EQ(sh(agent_env_command(work), agent_env_file({{"AGENT_KEY", secret}})), 0);
  struct stat st;
  ASSERT_EQ(::stat((state + "/agent.env").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // The agent writes what it got to a file (its log is the terminal's).
  ASSERT_EQ(sh(agent_launch_command(work), "printf %s \"$AGENT_KEY\" > got\n"), 0);
  ASSERT_TRUE(test::wait_until([&] { return exists(state + "/exit"); }, 10s));
  EXPECT_EQ(slurp(work + "/got"), secret) << "quoting kept the value byte for byte";
  EXPECT_FALSE(exists(state + "/agent.env")) << "the runner deletes it";
  sh(agent_stop_command(work));
}

// A reconnect hands the secrets again; an agent already started keeps what
// it got, and no file of them is left on the VM.
TEST(agent_script, secrets_handed_after_the_start_leave_no_file) {
  test::temp_dir dir;
  auto work = dir.path() + "/work";
  auto state = agent_state_dir(work);
  ASSERT_EQ(sh(agent_launch_command(work), "true\n"), 0);
  ASSERT_TRUE(test::wait_until([&] { return exists(state + "/exit"); }, 10s));
  ASSERT_EQ(sh(agent_env_command(work), agent_env_file({{"AGENT_KEY", "sk-ant-FAKE"}})), 0);
  EXPECT_FALSE(exists(state + "/agent.env"));
  EXPECT_FALSE(exists(state + "/agent.env.tmp"));
  sh(agent_stop_command(work));
}

TEST(agent_script, env_names_are_checked) {
  EXPECT_TRUE(is_env_name("ANTHROPIC_API_KEY"));
  EXPECT_TRUE(is_env_name("_x1"));
  EXPECT_FALSE(is_env_name(""));
  EXPECT_FALSE(is_env_name("1KEY"));
  EXPECT_FALSE(is_env_name("KEY;rm"));
  EXPECT_FALSE(is_env_name("A B"));
}

TEST(agent_script, the_deadline_lands_in_the_state_directory) {
  test::temp_dir dir;
  auto work = dir.path() + "/work";
  ASSERT_EQ(sh(agent_deadline_command(work, 1800000123)), 0);
  EXPECT_EQ(slurp(agent_state_dir(work) + "/deadline"), "1800000123\n");
  ASSERT_EQ(sh(agent_deadline_command(work, 1800000999)), 0);
  EXPECT_EQ(slurp(agent_state_dir(work) + "/deadline"), "1800000999\n");
}

} // namespace
} // namespace aloft
