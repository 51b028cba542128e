// Runs a helper program (git, a shell in tests) without a shell and collects
// its output.
//
// Why: the engine drives the `git` command for sync; spawning it directly
// (no shell, explicit argv and environment) means no quoting bugs and no
// surprise from the caller's environment. Stdin is fed from memory while
// stdout and stderr are drained, so neither side can block the other on a
// full pipe. A child's non-zero exit is a result, not an error: callers turn
// it into one with their own context.
//
// Concurrency: `run_process` blocks the calling thread until the child exits
// (never call it from an actor); it is safe to call from several threads at
// once. It never raises SIGPIPE in the caller.
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <caf/expected.hpp>

namespace aloft {

struct process_spec {
  /// argv[0] is looked up in PATH.
  std::vector<std::string> argv;
  /// The child's whole environment as "NAME=value"; nullopt inherits ours.
  std::optional<std::vector<std::string>> env;
  /// The child's working directory; empty keeps ours.
  std::string cwd;
  /// Written to the child's stdin, which is then closed (EOF). A child that
  /// exits without reading all of it is not an error.
  std::string_view input;
  /// When set, receives stdout piece by piece instead of `output`; returning
  /// false kills the child (SIGKILL) and sets `stopped`.
  std::function<bool(std::string_view)> on_output;
  /// At most this much of stderr is kept.
  size_t max_error_bytes = 64 * 1024;
};

struct process_result {
  /// The exit status, or 128 + the signal number when a signal ended it.
  int exit_code = 0;
  std::string output; // stdout, unless `on_output` took it
  std::string error;  // the beginning of stderr
  bool stopped = false;
};

/// Runs `spec.argv` to completion. Errors only when the child cannot be
/// started or waited for (errno converted, naming the program).
caf::expected<process_result> run_process(const process_spec& spec);

/// In a child between fork and exec: every signal back to its default
/// disposition and none blocked, as a fresh process starts (a daemon that
/// inherited our ignored SIGPIPE or blocked signals would misbehave).
/// Async-signal-safe.
void reset_signals_in_child();

/// This process's environment minus the variables whose names start with one
/// of `prefixes`, as "NAME=value" strings.
std::vector<std::string> environment_without(const std::vector<std::string>& prefixes);

} // namespace aloft
