// `aloft serve`: opens the engine for a home and runs the daemon on that
// home's socket until SIGINT or SIGTERM.
//
// Kept apart from cli.hpp because it is the one command that calls
// `open_engine`: the rest of the command line (and its tests) links without
// the real engine. Runs on the calling thread; installs process-wide signal
// handlers for its duration.
#pragma once

#include <iosfwd>

#include "engine/app/cli.hpp"

namespace aloft {

/// Serves until stopped by a signal; returns the exit code. Prints one line
/// saying where the socket is (JSON with --json), and errors for a person.
int run_serve(const cli_command& cmd, std::ostream& out, std::ostream& err);

} // namespace aloft
