// The resident shell: scripts run one after another over one channel, with
// their stdin, stdout, stderr and exit codes kept apart; a VM that answers
// out of turn or with nonsense fails every pending request, never the engine.
#include "engine/resident_shell.hpp"

#include <future>

#include <gtest/gtest.h>

#include "engine/ssh_transport.hpp"
#include "tests/support/local_vm.hpp"

namespace aloft {
namespace {

using namespace std::chrono_literals;

struct answer {
  caf::error err;
  int code = -1;
  std::string out, err_text;
};

std::future<answer> run(resident_shell& shell, std::string script, std::string input = {}) {
  auto p = std::make_shared<std::promise<answer>>();
  auto f = p->get_future();
  shell.run(std::move(script), std::move(input),
            [p](const caf::error& err, int code, std::string out, std::string err_text) {
              p->set_value({err, code, std::move(out), std::move(err_text)});
            });
  return f;
}

// A local VM and an open transport to it for each test.
class resident_shell_test : public ::testing::Test {
protected:
  void SetUp() override {
    auto vm = test::local_vm::start(root_.path());
    ASSERT_TRUE(vm) << describe(vm.error());
    vm_ = std::move(*vm);
    auto t = test::connect(loop_, vm_->endpoint());
    ASSERT_TRUE(t) << describe(t.error());
    transport_ = *t;
  }

  test::temp_dir root_;
  std::unique_ptr<test::local_vm> vm_;
  ssh_io_loop loop_;
  std::shared_ptr<transport> transport_;
};

TEST_F(resident_shell_test, runs_scripts_in_order_over_one_channel) {
  auto shell = resident_shell::start(transport_, 1 << 20);
  // Pipelined: all three are on the wire before the first answer.
  auto a = run(*shell, "echo one; echo oops >&2; exit 3");
  auto b = run(*shell, "cat; printf 'tail'", std::string("binary\0input\n", 13));
  auto c = run(*shell, "printf ''");
  auto ra = a.get(), rb = b.get(), rc = c.get();
  EXPECT_FALSE(ra.err);
  EXPECT_EQ(ra.code, 3);
  EXPECT_EQ(ra.out, "one\n");
  EXPECT_EQ(ra.err_text, "oops\n");
  EXPECT_EQ(rb.code, 0);
  EXPECT_EQ(rb.out, std::string("binary\0input\ntail", 17));
  EXPECT_EQ(rc.code, 0);
  EXPECT_EQ(rc.out, "");
  EXPECT_TRUE(shell->alive());
  // A large input and output keep the stream in step.
  std::string big(3 << 20, 'x');
  auto d = run(*shell, "wc -c", big).get();
  EXPECT_EQ(d.out, std::to_string(big.size()) + "\n");
  auto e = run(*shell, "echo still in step").get();
  EXPECT_EQ(e.out, "still in step\n");
}

TEST_F(resident_shell_test, input_a_script_leaves_unread_does_not_break_the_stream) {
  auto shell = resident_shell::start(transport_, 1 << 20);
  // Input goes to the script as it arrives; whatever it does not read must
  // still be consumed before the next request is parsed.
  std::string lines;
  for (int i = 0; i < 200000; ++i)
    lines += "line " + std::to_string(i) + "\n";
  std::string no_newline(1 << 16, 'y');
  auto a = run(*shell, "exit 4", lines);
  auto b = run(*shell, "head -n 2", lines);
  auto c = run(*shell, "true", no_newline);
  auto d = run(*shell, "head -c 3; echo", no_newline + "\n" + lines);
  auto e = run(*shell, "cat", "last");
  auto ra = a.get(), rb = b.get(), rc = c.get(), rd = d.get(), re = e.get();
  EXPECT_EQ(ra.code, 4);
  EXPECT_EQ(rb.out, "line 0\nline 1\n");
  EXPECT_EQ(rc.code, 0);
  EXPECT_EQ(rd.out, "yyy\n");
  EXPECT_EQ(re.out, "last");
  EXPECT_TRUE(shell->alive());
}

TEST_F(resident_shell_test, an_oversized_answer_fails_the_request_and_the_shell) {
  auto shell = resident_shell::start(transport_, 1000);
  auto a = run(*shell, "head -c 5000 /dev/zero").get();
  EXPECT_TRUE(a.err);
  EXPECT_FALSE(shell->alive());
  auto b = run(*shell, "echo late").get();
  EXPECT_TRUE(b.err) << "a dead shell must refuse work, not hang";
}

TEST_F(resident_shell_test, closing_fails_what_is_pending) {
  auto shell = resident_shell::start(transport_, 1 << 20);
  auto a = run(*shell, "sleep 30");
  shell->close();
  auto r = a.get();
  EXPECT_TRUE(r.err);
}

} // namespace
} // namespace aloft
