// The command line of the `fly-emulator` program: its options and the
// faults it starts with.
//
//   fly-emulator [--port P] [--token T] [--org SLUG] [--region R]
//                [--sandboxes DIR] [--boot-delay-ms N] [--rate-limit]
//                [--fault-rate F --seed S] [--log]
//                [--fail OP:N:STATUS[:RETRY_AFTER_S]]...   N x STATUS on OP
//                [--fail-after OP:N:STATUS]...  the same, the call applied first
//                [--reset OP:N]...  [--reset-after OP:N]...
//                [--malformed OP:N]...
//                [--create-timeout N] [--capacity N[:STATUS]]
//                [--stuck-starting N] [--token-expires-after N]
//                [--empty-list N] [--taken-app NAME]...
//
// OP is an operation name (fly_ops()) or "any". The token may also come
// from the environment variable FLY_EMULATOR_TOKEN; one is required.
// Without --sandboxes, the program makes a temporary directory and removes
// it on exit.
//
// Pure; thread-safe.
#pragma once

#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "tests/emulators/fly/fly_emulator.hpp"

namespace aloft::test {

struct fly_emulator_cli {
  fly_emulator_options options;
  std::vector<fly_fault> faults;
  int create_timeouts = 0;
  int capacity_errors = 0;
  int capacity_status = 412;
  int stuck_launches = 0;
  int token_expires_after = -1; // -1: never
  int empty_lists = 0;
  std::vector<std::string> taken_apps;
  bool log = false;
  bool help = false;
  /// Whether --sandboxes was given.
  bool own_sandboxes_dir = false;
};

/// Parses `args` (without the program name); `env_token` is the value of
/// FLY_EMULATOR_TOKEN ("" when unset). Errors: `invalid_argument` naming
/// the flag.
caf::expected<fly_emulator_cli>
parse_fly_emulator_flags(const std::vector<std::string>& args,
                         const std::string& env_token);

/// The usage text.
std::string fly_emulator_usage();

} // namespace aloft::test
