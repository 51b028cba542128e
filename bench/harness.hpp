// What every bench scenario uses: time, this process's resources, scratch
// homes, waiting for a condition, and child processes running a part of a
// scenario in a fresh process (so its memory is its own, and so it can be
// killed without a clean shutdown).
//
// A child is this program run again as `aloft-bench --child NAME ARGS...`;
// it talks to its parent in lines on its stdout. Its stderr is the parent's.
//
// Not thread-safe unless said otherwise.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <string>
#include <sys/types.h>
#include <vector>

#include "bench/report.hpp"
#include "engine/app/api.hpp"
#include "providers/fake/fake_provider.hpp"

namespace aloft::bench {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0);

/// A field of /proc/self/status in its unit (kB for memory), or -1.
long proc_status(const char* key);

/// User plus system CPU time this process used so far, in seconds.
double cpu_seconds();

/// A new empty directory under /tmp; removed with `remove_tree`.
std::string temp_home();
void remove_tree(const std::string& dir);

/// Waits until `pred` holds or `limit_s` passes, looking every 5 ms;
/// returns whether it held.
bool wait_for(const std::function<bool()>& pred, double limit_s);

/// Sessions in state `s` (one `list` call: not for hot loops).
size_t count_state(engine& e, session_state s);

/// How many sessions are in each state, and the reason of one that is not
/// in `expected` ("running 198, failed 2 (s-..: VM did not become
/// reachable)"): what a failed check says.
std::string describe_states(engine& e, session_state expected);

/// An engine in `home` whose one account ("bench", the default) uses
/// `client` with no cap in the way, and that runs no agent.
caf::expected<std::unique_ptr<engine>> open_fake_engine(const std::string& home,
                                                       std::shared_ptr<fake_provider> client);

/// An engine in `home` with the built-in `local` account (a real sshd per
/// session), its cap raised to `sessions` so none is refused.
caf::expected<std::unique_ptr<engine>> open_local_engine(const std::string& home,
                                                        size_t sessions);

/// Destroys every session of `e` and waits up to `limit_s` for all of them
/// to end (an sshd outlives its engine: a bench must leave none); whether
/// they did.
bool destroy_all(engine& e, double limit_s);

/// Sessions launched by `launch_fleet`.
struct fleet {
  std::vector<std::string> ids;
  size_t failed = 0;        // launches refused
  bool all_running = false; // every launched session reached running in time
  double launch_s = 0;      // until every launch call returned
  double running_s = 0;     // until every session was running
};

/// Launches `n` sessions with `agent_cmd` from `clients` threads and waits
/// up to `limit_s` for all of them to run.
fleet launch_fleet(engine& e, size_t n, size_t clients, const std::string& worktree,
                   const std::string& agent_cmd, double limit_s);

/// Destroys every local sandbox left under the engine home `home` (its
/// sshd, agent and whatever else runs in it: an sshd outlives its engine)
/// through the local provider; how many there were. A failure to destroy
/// one fails a check.
size_t destroy_leftover_sandboxes(report& out, const std::string& home);

/// The directory holding this program (and the other build outputs).
std::string program_dir();

/// A program run with `argv` (argv[0] is its path), its stdout read line by
/// line; its stderr is ours.
class subprocess {
public:
  /// Starts the program; `ok()` says whether it started.
  explicit subprocess(const std::vector<std::string>& argv);
  /// Kills the program (SIGKILL) if it still runs, and reaps it.
  ~subprocess();
  subprocess(const subprocess&) = delete;
  subprocess& operator=(const subprocess&) = delete;

  bool ok() const { return pid_ > 0; }
  /// The next line the program wrote (without its newline); false at the
  /// end of its output or after `limit_s`.
  bool read_line(std::string& line, double limit_s);
  /// Sends `sig`, then waits up to `limit_s` for the program to exit (then
  /// SIGKILL); its exit status, or -1 when it did not exit normally.
  int stop(int sig, double limit_s);

private:
  pid_t pid_ = -1;
  int out_fd_ = -1;
  std::string buf_;
};

/// The argv that runs this program as `--child args...`.
std::vector<std::string> child_argv(const std::vector<std::string>& args);

/// The entry point of `aloft-bench --child NAME ARGS...`: runs that part of
/// a scenario; its exit status.
int run_child(const std::vector<std::string>& args);

} // namespace aloft::bench
