#pragma once

// The Linux process table, read from /proc. Every reader tolerates a
// process that exits while it is being read (open or read failing with
// ENOENT or ESRCH): that process is simply absent from the answer.

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace aloft::proc {

struct stat_fields {
  pid_t ppid = 0;
  char state = '?';
  uint64_t start_time = 0; // clock ticks after boot: tells a reused pid apart
};

/// Whole contents of a /proc file, or nullopt when it cannot be read.
std::optional<std::string> read(const std::string& path);

std::optional<stat_fields> stat(pid_t pid);

/// Alive and not a zombie (a zombie whose parent does not reap it still
/// answers kill(pid, 0)).
bool alive(pid_t pid);

/// The command line with NULs turned into spaces; empty when unreadable.
std::string cmdline(pid_t pid);

/// The environment as `KEY=value` entries; empty when unreadable.
std::vector<std::string> environ(pid_t pid);

std::string cwd(pid_t pid);

std::vector<pid_t> all_pids();

/// This process and its ancestors up to (not including) init.
std::set<pid_t> self_and_ancestors();

/// `root` and all its descendants, as the table stands now.
std::set<pid_t> tree_of(pid_t root);

} // namespace aloft::proc
