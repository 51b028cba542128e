// The process runner under git_sync: feeding, draining, exit codes.
#include "engine/process.hpp"

#include <gtest/gtest.h>

#include "engine/base/error.hpp"
#include "tests/support/local_vm.hpp"

namespace aloft {
namespace {

process_result run(std::vector<std::string> argv, std::string_view input = {}) {
  process_spec spec;
  spec.argv = std::move(argv);
  spec.input = input;
  auto r = run_process(spec);
  EXPECT_TRUE(r) << describe(r.error());
  return r ? *r : process_result{};
}

TEST(git_sync_process, feeds_and_drains_large_streams_at_once) {
  // Both directions far larger than a pipe buffer: a runner that wrote all
  // input before reading would deadlock here.
  std::string input(8 << 20, 'x');
  for (size_t i = 0; i < input.size(); i += 4096)
    input[i] = static_cast<char>('a' + (i / 4096) % 26);
  auto r = run({"cat"}, input);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.output, input);
}

TEST(git_sync_process, a_child_that_ignores_its_input_is_no_error) {
  std::string input(4 << 20, 'x');
  auto r = run({"true"}, input); // SIGPIPE here would end the test binary
  EXPECT_EQ(r.exit_code, 0);
}

TEST(git_sync_process, reports_exit_codes_signals_and_stderr) {
  auto r = run({"sh", "-c", "echo out; echo err >&2; exit 3"});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.output, "out\n");
  EXPECT_EQ(r.error, "err\n");
  r = run({"sh", "-c", "kill -TERM $$"});
  EXPECT_EQ(r.exit_code, 128 + 15);

  process_spec spec;
  spec.argv = {"sh", "-c", "head -c 100000 /dev/zero >&2"};
  spec.max_error_bytes = 1000;
  auto capped = run_process(spec);
  ASSERT_TRUE(capped);
  EXPECT_EQ(capped->error.size(), 1000u);
  EXPECT_EQ(capped->exit_code, 0);
}

TEST(git_sync_process, streams_output_and_stops_on_request) {
  process_spec spec;
  spec.argv = {"yes"};
  size_t seen = 0;
  spec.on_output = [&](std::string_view piece) {
    seen += piece.size();
    return seen < (1 << 20);
  };
  auto r = run_process(spec);
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_TRUE(r->stopped);
  EXPECT_EQ(r->exit_code, 128 + 9);
  EXPECT_GE(seen, 1u << 20);
  EXPECT_TRUE(r->output.empty());
}

TEST(git_sync_process, runs_with_the_given_environment_and_directory) {
  test::temp_dir tmp;
  process_spec spec;
  spec.argv = {"sh", "-c", "echo \"$ONLY_THIS-${HOME:-nohome}\"; pwd"};
  spec.env = std::vector<std::string>{"ONLY_THIS=yes"};
  spec.cwd = tmp.path();
  auto r = run_process(spec);
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_EQ(r->output, "yes-nohome\n" + tmp.path() + "\n");

  auto env = environment_without({"HOME=", "PATH"});
  for (auto& e : env) {
    EXPECT_NE(e.rfind("HOME=", 0), 0u) << e;
    EXPECT_NE(e.rfind("PATH", 0), 0u) << e;
  }
}

TEST(git_sync_process, a_missing_program_is_an_error_naming_it) {
  process_spec spec;
  spec.argv = {"aloft-no-such-program"};
  auto r = run_process(spec);
  ASSERT_FALSE(r);
  EXPECT_EQ(code_of(r.error()), errc::not_found);
  EXPECT_NE(message_of(r.error()).find("aloft-no-such-program"), std::string::npos);
  spec.argv = {};
  EXPECT_FALSE(run_process(spec));
}

} // namespace
} // namespace aloft
