#include "engine/app/secret_input.hpp"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <termios.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "engine/base/error.hpp"

namespace aloft {
namespace {

// Both ends of a pipe, closed with the object.
struct pipe_pair {
  int read_end = -1;
  int write_end = -1;
  pipe_pair() {
    int fds[2];
    if (::pipe(fds) == 0) {
      read_end = fds[0];
      write_end = fds[1];
    }
  }
  ~pipe_pair() {
    close_write();
    if (read_end >= 0)
      ::close(read_end);
  }
  void write(const std::string& text) const {
    ASSERT_EQ(::write(write_end, text.data(), text.size()),
              static_cast<ssize_t>(text.size()));
  }
  void close_write() {
    if (write_end >= 0)
      ::close(write_end);
    write_end = -1;
  }
};

// A pseudo-terminal: the test types on `master`, read_secret reads `slave`.
struct pseudo_terminal {
  int master = -1;
  int slave = -1;
  pseudo_terminal() {
    master = ::posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || ::grantpt(master) != 0 || ::unlockpt(master) != 0)
      return;
    slave = ::open(::ptsname(master), O_RDWR | O_NOCTTY);
  }
  ~pseudo_terminal() {
    if (slave >= 0)
      ::close(slave);
    if (master >= 0)
      ::close(master);
  }
  bool echo_on() const {
    termios t;
    return ::tcgetattr(slave, &t) == 0 && (t.c_lflag & ECHO) != 0;
  }
  // Waits (bounded) until the reader has turned echo off: typing before
  // that would be flushed, and would be echoed.
  bool wait_for_echo_off() const {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (echo_on()) {
      if (std::chrono::steady_clock::now() > deadline)
        return false;
      std::this_thread::yield();
    }
    return true;
  }
  void type(const std::string& text) const {
    ASSERT_EQ(::write(master, text.data(), text.size()),
              static_cast<ssize_t>(text.size()));
  }
  // What the terminal showed (its output side), without waiting.
  std::string shown() const {
    std::string out;
    char buf[256];
    pollfd p{master, POLLIN, 0};
    while (::poll(&p, 1, 0) == 1 && (p.revents & POLLIN)) {
      auto n = ::read(master, buf, sizeof(buf));
      if (n <= 0)
        break;
      out.append(buf, static_cast<size_t>(n));
    }
    return out;
  }
};

TEST(read_secret, reads_one_line_per_call_from_a_pipe) {
  pipe_pair p;
  ASSERT_GE(p.read_end, 0);
  p.write("  tok-first \r\ntok-second\n\nlast-without-newline");
  p.close_write();
  std::ostringstream err;
  auto first = read_secret(p.read_end, "Token: ", err);
  ASSERT_TRUE(first) << describe(first.error());
  EXPECT_EQ(*first, "tok-first");
  auto second = read_secret(p.read_end, "Token: ", err);
  ASSERT_TRUE(second) << describe(second.error());
  EXPECT_EQ(*second, "tok-second");
  auto empty = read_secret(p.read_end, "Token: ", err);
  ASSERT_FALSE(empty);
  EXPECT_EQ(code_of(empty.error()), errc::invalid_argument);
  EXPECT_EQ(message_of(empty.error()),
            "empty token: paste it at the prompt or pipe it on stdin");
  auto last = read_secret(p.read_end, "Token: ", err);
  ASSERT_TRUE(last) << describe(last.error());
  EXPECT_EQ(*last, "last-without-newline");
  // No prompt when nobody is typing.
  EXPECT_EQ(err.str(), "");
}

TEST(read_secret, end_of_input_is_an_empty_token) {
  pipe_pair p;
  p.close_write();
  std::ostringstream err;
  auto got = read_secret(p.read_end, "Token: ", err);
  ASSERT_FALSE(got);
  EXPECT_EQ(code_of(got.error()), errc::invalid_argument);
}

TEST(read_secret, a_terminal_reads_with_echo_off_and_restores_it) {
  pseudo_terminal tty;
  ASSERT_GE(tty.slave, 0) << "no pseudo-terminal here";
  ASSERT_TRUE(tty.echo_on());
  std::ostringstream err;
  caf::expected<std::string> got = std::string{};
  std::thread reader{[&] { got = read_secret(tty.slave, "Fly token: ", err); }};
  bool quiet = tty.wait_for_echo_off();
  tty.type("fo1_typed-secret-value\n");
  reader.join();
  ASSERT_TRUE(quiet);
  ASSERT_TRUE(got) << describe(got.error());
  EXPECT_EQ(*got, "fo1_typed-secret-value");
  EXPECT_TRUE(tty.echo_on());
  EXPECT_EQ(tty.shown().find("typed-secret"), std::string::npos);
  EXPECT_EQ(err.str(), "Fly token: \n");
}

TEST(read_secret, a_terminal_is_restored_after_an_empty_answer) {
  pseudo_terminal tty;
  ASSERT_GE(tty.slave, 0) << "no pseudo-terminal here";
  std::ostringstream err;
  caf::expected<std::string> got = std::string{};
  std::thread reader{[&] { got = read_secret(tty.slave, "Token: ", err); }};
  bool quiet = tty.wait_for_echo_off();
  tty.type("   \n");
  reader.join();
  ASSERT_TRUE(quiet);
  ASSERT_FALSE(got);
  EXPECT_EQ(code_of(got.error()), errc::invalid_argument);
  EXPECT_TRUE(tty.echo_on());
}

std::atomic<int> test_handler_calls{0};
void test_handler(int) {
  test_handler_calls.fetch_add(1);
}

TEST(read_secret, a_signal_restores_the_terminal_and_reaches_the_previous_handler) {
  pseudo_terminal tty;
  ASSERT_GE(tty.slave, 0) << "no pseudo-terminal here";
  struct sigaction mine = {};
  mine.sa_handler = test_handler;
  sigemptyset(&mine.sa_mask);
  struct sigaction before;
  ASSERT_EQ(::sigaction(SIGINT, &mine, &before), 0);
  test_handler_calls = 0;

  std::ostringstream err;
  caf::expected<std::string> got = std::string{};
  std::thread reader{[&] { got = read_secret(tty.slave, "Token: ", err); }};
  bool quiet = tty.wait_for_echo_off();
  ::pthread_kill(reader.native_handle(), SIGINT);
  // If the signal came just before the reader entered read(), the read
  // waits for a line; the answer is cancelled either way.
  tty.type("\n");
  reader.join();

  struct sigaction after;
  ::sigaction(SIGINT, &before, &after);
  ASSERT_TRUE(quiet);
  ASSERT_FALSE(got);
  EXPECT_EQ(code_of(got.error()), errc::cancelled);
  EXPECT_EQ(test_handler_calls.load(), 1);
  EXPECT_TRUE(tty.echo_on());
  // The process's own handler is back in place.
  EXPECT_EQ(after.sa_handler, &test_handler);
}

} // namespace
} // namespace aloft
