// Driving the real `aloft` binary from end-to-end tests: run a CLI command
// (optionally feeding its stdin), start and stop a daemon for a home, and
// reap whatever a test leaves running under it.
//
// Header-only: it needs ALOFT_BINARY_DIR, which only the test suites define.
#pragma once

#include <csignal>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "tests/support/local_vm.hpp"

namespace aloft::test {

using namespace std::chrono_literals;

inline const std::string aloft_bin = std::string{ALOFT_BINARY_DIR} + "/aloft";

// Polls a condition on real processes every 50 ms until it holds or the bound
// passes (each poll may spawn the CLI, so not every millisecond).
inline bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds bound) {
  auto until = std::chrono::steady_clock::now() + bound;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until)
      return false;
    std::this_thread::sleep_for(50ms);
  }
  return true;
}

// Runs `aloft --home H args...` to completion with `input` on its stdin;
// returns its stdout (and its stderr in `err_out`).
inline std::string cli_with_input(const std::string& home, std::vector<std::string> args,
                                  const std::string& input, int* rc = nullptr,
                                  std::string* err_out = nullptr) {
  int out[2], err[2], in[2];
  EXPECT_EQ(::pipe(out), 0);
  EXPECT_EQ(::pipe(err), 0);
  EXPECT_EQ(::pipe(in), 0);
  auto pid = ::fork();
  if (pid == 0) {
    ::dup2(in[0], 0);
    ::dup2(out[1], 1);
    ::dup2(err[1], 2);
    for (int fd : {out[0], out[1], err[0], err[1], in[0], in[1]})
      ::close(fd);
    std::vector<std::string> all = {aloft_bin, "--home", home};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(aloft_bin.c_str(), argv.data());
    ::_exit(127);
  }
  ::close(in[0]);
  ::close(out[1]);
  ::close(err[1]);
  // Small inputs fit the pipe's buffer: write all, then close.
  if (!input.empty()) {
    auto n = ::write(in[1], input.data(), input.size());
    (void) n;
  }
  ::close(in[1]);
  auto drain = [](int fd) {
    std::string text;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof(buf))) > 0)
      text.append(buf, static_cast<size_t>(n));
    ::close(fd);
    return text;
  };
  std::string errors;
  std::thread err_reader{[&] { errors = drain(err[0]); }};
  auto text = drain(out[0]);
  err_reader.join();
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (rc)
    *rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (err_out)
    *err_out = errors;
  return text;
}

inline std::string cli(const std::string& home, std::vector<std::string> args,
                       int* rc = nullptr) {
  return cli_with_input(home, std::move(args), {}, rc);
}

// Starts `aloft serve` for `home`, its stdout and stderr to `log_path` (or
// nowhere); returns once the CLI gets an answer.
inline pid_t start_daemon(const std::string& home, const std::string& log_path = {}) {
  auto pid = ::fork();
  if (pid == 0) {
    int fd = log_path.empty() ? ::open("/dev/null", O_WRONLY)
                              : ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::execl(aloft_bin.c_str(), aloft_bin.c_str(), "serve", "--home", home.c_str(),
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  EXPECT_TRUE(eventually([&] {
    int rc = -1;
    cli(home, {"ls"}, &rc);
    return rc == 0;
  }, 20s)) << "daemon did not answer";
  return pid;
}

inline void stop_daemon(pid_t pid, int sig) {
  ::kill(pid, sig);
  int status;
  ::waitpid(pid, &status, 0);
}

// Whatever a test leaves running under its home (a daemon after a failed
// assertion, a sandbox's sshd and agent) is ended when the test ends.
struct reaper {
  std::string home;
  pid_t* daemon;
  ~reaper() {
    if (*daemon > 0) {
      ::kill(*daemon, SIGKILL);
      ::waitpid(*daemon, nullptr, 0);
    }
    for (auto pid : processes_matching(home))
      ::kill(pid, SIGKILL);
  }
};

} // namespace aloft::test
