// fly-emulator: the Fly Machines API emulator as a program, for running
// Aloft (or flyctl-like clients) against it by hand or from scripts.
// Flags: see fly_emulator_flags.hpp. Prints its base URL on one line, then
// serves until SIGINT or SIGTERM and destroys every machine's sandbox.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <mutex>

#include <gtest/gtest.h>

#include "engine/base/error.hpp"
#include "tests/emulators/fly/fly_emulator.hpp"
#include "tests/emulators/fly/fly_emulator_flags.hpp"

using namespace aloft;
using namespace aloft::test;

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  auto env_token = std::getenv("FLY_EMULATOR_TOKEN");
  auto cli = parse_fly_emulator_flags(args, env_token ? env_token : "");
  if (!cli) {
    std::cerr << "fly-emulator: " << message_of(cli.error()) << "\n"
              << fly_emulator_usage();
    return 2;
  }
  if (cli->help) {
    std::cout << fly_emulator_usage();
    return 0;
  }
  // The HTTP server reports a port it cannot bind as a test failure, for
  // tests; here stdout carries only the URL, and the error goes to stderr.
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  delete listeners.Release(listeners.default_result_printer());
  // Signals are taken by sigwait below: blocked before any thread starts,
  // so every thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  ::pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  std::string temp_dir;
  if (!cli->own_sandboxes_dir) {
    auto base = std::getenv("TMPDIR");
    std::string tmpl =
        std::string{base && *base ? base : "/tmp"} + "/fly-emulator-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      std::perror("fly-emulator: mkdtemp");
      return 1;
    }
    temp_dir = tmpl;
    cli->options.sandboxes_dir = temp_dir + "/sandboxes";
  }
  std::mutex log_mtx;
  if (cli->log)
    cli->options.log = [&log_mtx](const std::string& line) {
      std::lock_guard<std::mutex> guard{log_mtx};
      std::cerr << "fly-emulator: " << line << "\n";
    };
  int rc = 0;
  {
    fly_emulator emulator{cli->options};
    if (!emulator.ok()) {
      std::cerr << emulator.error() << "\n";
      rc = 1;
    } else {
      for (auto& f : cli->faults)
        emulator.inject(f);
      if (cli->create_timeouts > 0)
        emulator.inject_create_timeout(cli->create_timeouts);
      if (cli->capacity_errors > 0)
        emulator.inject_insufficient_capacity(cli->capacity_errors, cli->capacity_status);
      if (cli->stuck_launches > 0)
        emulator.stick_next_launches(cli->stuck_launches);
      if (cli->token_expires_after >= 0)
        emulator.expire_token_after(cli->token_expires_after);
      if (cli->empty_lists > 0)
        emulator.empty_next_lists(cli->empty_lists);
      for (auto& name : cli->taken_apps)
        emulator.reserve_app_name(name);
      std::cout << emulator.base_url() << std::endl;
      // The server records every request; a long run forgets them now and
      // then.
      timespec every{10, 0};
      for (;;) {
        int sig = ::sigtimedwait(&stop_signals, nullptr, &every);
        if (sig == SIGINT || sig == SIGTERM)
          break;
        emulator.clear_request_log();
      }
      if (cli->log)
        std::cerr << "fly-emulator: stopping; destroying " << emulator.live_machines()
                  << " machines\n";
    }
  }
  if (!temp_dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(temp_dir, ec);
  }
  return rc;
}
