// Shared setup of the git_sync suites: a user's repository and a "VM"
// directory on the same machine, the VM commands run with `/bin/sh -c`
// (what the transport would do, without SSH), and helpers that read a
// worktree byte for byte.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "engine/git_sync.hpp"
#include "engine/process.hpp"
#include "tests/support/local_vm.hpp"

namespace aloft::test {

/// What a worktree holds at a path: a file (content, executable bit) or a
/// symlink (target).
struct path_state {
  bool symlink = false;
  bool exec = false;
  std::string content;
  bool operator==(const path_state& o) const {
    return symlink == o.symlink && exec == o.exec && content == o.content;
  }
};

using worktree_state = std::map<std::string, path_state>;

std::ostream& operator<<(std::ostream& os, const path_state& s);

/// Every file and symlink under `dir`, without the top-level .git.
worktree_state read_worktree(const std::string& dir);

void write_file(const std::string& path, const std::string& content, bool exec = false);
std::string read_file(const std::string& path);

/// Runs `sh -c cmd` with `input` on stdin.
process_result sh(const std::string& cmd, const std::string& input = {});

/// A binary string of `n` pseudo-random bytes (deterministic for a seed).
std::string random_bytes(size_t n, uint32_t seed);

class git_sync_fixture : public ::testing::Test {
protected:
  git_sync_fixture();

  /// Runs git in `dir` with a fixed identity and no user config; fails the
  /// test on a non-zero exit and returns stdout without the final newline.
  std::string git(const std::string& dir, const std::vector<std::string>& args,
                  const std::string& input = {});
  /// Like git() but returns the whole result, whatever the exit code.
  process_result git_raw(const std::string& dir, const std::vector<std::string>& args,
                         const std::string& input = {});

  /// A fresh repository at `path` with one commit of `files`.
  void make_repo(const std::string& path,
                 const std::map<std::string, std::string>& files);

  /// Syncs the local worktree up to the VM (initial when `base` is empty)
  /// and returns the new up snapshot.
  sync::snapshot sync_up(const std::string& base);

  /// Runs vm_snapshot_command against `base` and receives the result into
  /// the local repository; returns the VM's commit, or the error.
  caf::expected<std::string>
  sync_down_objects(const std::string& base, const sync::limits& lim = {},
                    const std::string& scratch = sync::vm_object_scratch);

  /// Objects in the local repository (loose and packed).
  uint64_t object_count(const std::string& repo);

  temp_dir tmp;
  std::string home;  // HOME for the tests' own git calls
  std::string local; // the user's worktree
  std::string vm;    // the VM's worktree
  std::string session = "s-test1";
  uint64_t last_pack_bytes = 0;
};

} // namespace aloft::test
