// The shell commands Aloft runs on a VM to start, watch and stop the agent.
//
// The agent runs detached (its own session; inside tmux where the VM has it)
// with its output appended to a log file, so it outlives any connection of
// the engine's. Everything lives in the VM's state directory next to the
// worktree:
//   agent.sh  the agent command          run.sh   the runner
//   agent.env the agent's secrets (0600), read and deleted by the runner
//   deadline  the hard deadline for an in-VM guard (epoch seconds)
//   agent.log the agent's output          pid      the runner's pid (= SID)
//   exit      the exit code, once done    started  launch happened
//   tmux.sock the tmux server of the agent's terminal
//
// A status loop prints one line per interval that the engine parses with
// `parse_agent_probe`; the loop is the engine's own polling and reads the
// agent's activity without causing any. Pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace aloft {

/// Quotes `s` for a POSIX shell.
std::string shell_quote(const std::string& s);

/// The state directory that goes with a VM worktree: `<parent>/aloft`.
std::string agent_state_dir(const std::string& workdir);

/// Starts the agent unless it already started (idempotent, so a launch
/// retried after a crash does not start it twice). Reads the agent command
/// from stdin.
std::string agent_launch_command(const std::string& workdir);

/// Records the session's hard deadline (epoch seconds) in the state
/// directory's `deadline` file, where an in-VM guard (Fly's init) reads it.
std::string agent_deadline_command(const std::string& workdir, int64_t deadline_s);

/// Writes the agent's environment file (0600) from stdin, before the launch;
/// the runner exports it into the agent's environment and deletes it, so
/// the secrets live only in the agent's processes. Once the agent has
/// started it writes nothing (and still succeeds).
std::string agent_env_command(const std::string& workdir);

/// The environment file's text: `export NAME='value'` lines.
/// REQUIRES: every name satisfies `is_env_name`.
std::string agent_env_file(const std::vector<std::pair<std::string, std::string>>& vars);

/// Whether `name` can be an environment variable's name for a shell.
bool is_env_name(const std::string& name);

/// Streams the log from byte `offset` on, forever (`tail -F`).
std::string agent_tail_command(const std::string& workdir, uint64_t offset);

/// Prints a status line every `interval_s` seconds until the agent exited.
std::string agent_status_command(const std::string& workdir, int interval_s);

/// Ends the agent's whole session and records exit code 143 if none.
std::string agent_stop_command(const std::string& workdir);

/// Attaches to the agent's tmux session (for `aloft attach`).
std::string agent_attach_command(const std::string& workdir);

/// One status line: "S <exit|-> <log size> <terminal activity s> <cpu ticks>".
struct agent_probe {
  std::optional<int> exit_code;
  uint64_t log_size = 0;
  int64_t terminal_activity = 0; // tmux session_activity, epoch seconds
  uint64_t cpu_ticks = 0;        // CPU time of the agent's session
};

/// Parses a status line; nullopt for anything malformed (VM output is
/// untrusted).
std::optional<agent_probe> parse_agent_probe(const std::string& line);

} // namespace aloft
