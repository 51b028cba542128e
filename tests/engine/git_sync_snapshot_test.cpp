// Snapshots of a local worktree: what they hold, what they leave alone.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include <gtest/gtest.h>

#include "engine/base/error.hpp"
#include "engine/git_sync.hpp"
#include "tests/engine/git_sync_fixture.hpp"

namespace aloft::test {
namespace {

namespace fs = std::filesystem;

class git_sync_snapshot : public git_sync_fixture {};

// The files of `commit`, extracted with git archive.
worktree_state checkout_of(git_sync_fixture& f, const std::string& repo,
                           const std::string& commit, const std::string& into) {
  fs::create_directories(into);
  auto r = sh("git -C '" + repo + "' archive --format=tar " + commit + " | tar -x -C '"
              + into + "'");
  EXPECT_EQ(r.exit_code, 0) << r.error;
  return read_worktree(into);
}

TEST_F(git_sync_snapshot, holds_the_whole_worktree_and_leaves_the_user_state_alone) {
  make_repo(local, {{"tracked.txt", "one\n"},
                    {"staged.txt", "before\n"},
                    {"deleted.txt", "gone soon\n"},
                    {".gitignore", "*.log\nbuild/\n"}});
  write_file(local + "/staged.txt", "staged change\n");
  git(local, {"add", "staged.txt"});
  write_file(local + "/staged.txt", "staged change, then unstaged\n");
  write_file(local + "/tracked.txt", "unstaged change\n");
  ::unlink((local + "/deleted.txt").c_str());
  write_file(local + "/untracked.txt", "new\n");
  write_file(local + "/run.sh", "#!/bin/sh\necho hi\n", true);
  write_file(local + "/empty", "");
  write_file(local + "/blob.bin", std::string("\0\x01\xff\0binary", 10));
  write_file(local + "/a/b/c/d/e/f/g/h/deep.txt", "deep\n");
  write_file(local
                 + "/\xc3\xbcnicode/\xe3\x83\x95\xe3\x82\xa1\xe3\x82\xa4\xe3\x83\xab.txt",
             "unicode\n");
  write_file(local + "/name with spaces and 'quotes'", "q\n");
  ASSERT_EQ(::symlink("tracked.txt", (local + "/link").c_str()), 0);
  ASSERT_EQ(::symlink("a/b", (local + "/dirlink").c_str()), 0);
  write_file(local + "/debug.log", "ignored\n");
  write_file(local + "/build/out.o", "ignored too\n");

  auto index_before = read_file(local + "/.git/index");
  auto status_before =
      git(local, {"-c", "core.fsmonitor=false", "status", "--porcelain"});
  auto head_before = git(local, {"rev-parse", "HEAD"});
  auto branches_before = git(local, {"for-each-ref", "refs/heads"});
  auto expected = read_worktree(local);
  expected.erase("debug.log");
  expected.erase("build/out.o");

  auto snap = sync::snapshot_worktree(local, sync::up_ref(session), "aloft: test");
  ASSERT_TRUE(snap) << describe(snap.error());

  EXPECT_EQ(git(local, {"rev-parse", sync::up_ref(session)}), snap->commit);
  EXPECT_EQ(git(local, {"rev-parse", snap->commit + "^"}), head_before);
  EXPECT_EQ(git(local, {"rev-parse", snap->commit + "^{tree}"}), snap->tree);
  EXPECT_EQ(checkout_of(*this, local, snap->commit, tmp.path() + "/out"), expected);
  EXPECT_EQ(snap->stats.files, expected.size());
  ASSERT_FALSE(snap->stats.largest.empty());
  EXPECT_EQ(snap->stats.largest[0].first, "staged.txt");

  // The user's index, status, HEAD and branches are exactly as they were.
  EXPECT_EQ(read_file(local + "/.git/index"), index_before);
  EXPECT_EQ(git(local, {"-c", "core.fsmonitor=false", "status", "--porcelain"}),
            status_before);
  EXPECT_EQ(git(local, {"rev-parse", "HEAD"}), head_before);
  EXPECT_EQ(git(local, {"for-each-ref", "refs/heads"}), branches_before);
  // No temporary files left behind.
  for (auto& e : fs::directory_iterator(local + "/.git"))
    EXPECT_EQ(e.path().filename().string().rfind("aloft-", 0), std::string::npos)
        << e.path();
}

TEST_F(git_sync_snapshot, works_without_commits_and_without_an_identity) {
  fs::create_directories(local);
  git(local, {"init", "-q"});
  write_file(local + "/first.txt", "first\n");
  auto snap = sync::snapshot_worktree(local, "", "");
  ASSERT_TRUE(snap) << describe(snap.error());
  EXPECT_EQ(git(local, {"rev-list", "--parents", "-n1", snap->commit}), snap->commit)
      << "no parent";
  EXPECT_EQ(git(local, {"show", snap->commit + ":first.txt"}), "first");
  EXPECT_EQ(git(local, {"for-each-ref"}), "") << "no ref when none is asked for";
}

// A process killed mid-snapshot leaves its scratch directory in .git; the
// next snapshot removes it once nobody holds its lock and an hour has
// passed, and leaves alone those whose maker lives or too recent to judge.
TEST_F(git_sync_snapshot, a_killed_snapshots_leftovers_are_swept_by_the_next) {
  make_repo(local, {{"a.txt", "a\n"}});
  auto git_dir = local + "/.git/";
  auto abandoned = git_dir + "aloft-snapshot-aaaaaa";    // its maker was killed
  auto without_lock = git_dir + "aloft-snapshot-bbbbbb"; // an older Aloft's
  auto recent = git_dir + "aloft-snapshot-cccccc";       // abandoned, but just now
  auto held = git_dir + "aloft-snapshot-dddddd";         // its maker still works
  for (auto& d : {abandoned, without_lock, recent, held}) {
    fs::create_directories(d);
    write_file(d + "/index", "stale");
  }
  for (auto& d : {abandoned, recent, held})
    write_file(d + "/aloft.lock", "");
  int fd = ::open((held + "/aloft.lock").c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX), 0);
  auto two_hours_ago = fs::file_time_type::clock::now() - std::chrono::hours{2};
  for (auto& d : {abandoned, without_lock, held})
    fs::last_write_time(d, two_hours_ago);
  auto snap = sync::snapshot_worktree(local, "", "");
  ::close(fd);
  ASSERT_TRUE(snap) << describe(snap.error());
  EXPECT_FALSE(fs::exists(abandoned));
  EXPECT_FALSE(fs::exists(without_lock));
  EXPECT_TRUE(fs::exists(recent));
  EXPECT_TRUE(fs::exists(held));
  // Its own scratch directory is gone too.
  size_t left = 0;
  for (auto& e : fs::directory_iterator(git_dir))
    left += e.path().filename().string().rfind("aloft-snapshot-", 0) == 0;
  EXPECT_EQ(left, 2u);
}

TEST_F(git_sync_snapshot, takes_assume_unchanged_files_as_they_are) {
  make_repo(local, {{"a.txt", "a\n"}});
  git(local, {"update-index", "--assume-unchanged", "a.txt"});
  write_file(local + "/a.txt", "changed behind git's back\n");
  auto snap = sync::snapshot_worktree(local, "", "");
  ASSERT_TRUE(snap) << describe(snap.error());
  EXPECT_EQ(git(local, {"show", snap->commit + ":a.txt"}), "changed behind git's back");
  EXPECT_EQ(git(local, {"ls-files", "-v"}), "h a.txt") << "the user's flag stays";
}

TEST_F(git_sync_snapshot, sees_a_file_changed_right_after_the_index_was_written) {
  make_repo(local, {{"a.txt", "aaaa\n"}});
  git(local, {"status", "--porcelain"});  // refreshes the index
  write_file(local + "/a.txt", "bbbb\n"); // same size, likely the same second
  auto snap = sync::snapshot_worktree(local, "", "");
  ASSERT_TRUE(snap) << describe(snap.error());
  EXPECT_EQ(git(local, {"show", snap->commit + ":a.txt"}), "bbbb");
}

TEST_F(git_sync_snapshot, a_directory_that_is_not_a_repository_is_refused_clearly) {
  fs::create_directories(local);
  write_file(local + "/x", "x");
  std::vector<std::string> notes;
  auto top = sync::check_worktree(local, notes);
  ASSERT_FALSE(top);
  EXPECT_EQ(code_of(top.error()), errc::failed_precondition);
  auto msg = message_of(top.error());
  EXPECT_NE(msg.find("is not a git repository"), std::string::npos) << msg;
  EXPECT_NE(msg.find("git init"), std::string::npos) << msg;
  auto snap = sync::snapshot_worktree(local, "", "");
  ASSERT_FALSE(snap);
  EXPECT_EQ(code_of(snap.error()), errc::failed_precondition);

  auto missing = sync::check_worktree(tmp.path() + "/nowhere", notes);
  ASSERT_FALSE(missing);
  EXPECT_EQ(code_of(missing.error()), errc::failed_precondition);
}

TEST_F(git_sync_snapshot, submodules_and_nested_repositories_are_noted_and_left_out) {
  make_repo(local, {{"a.txt", "a\n"}});
  make_repo(tmp.path() + "/other", {{"o.txt", "o\n"}});
  auto sub_head = git(tmp.path() + "/other", {"rev-parse", "HEAD"});
  git(local,
      {"update-index", "--add", "--cacheinfo", "160000," + sub_head + ",libs/sub"});
  git(local, {"commit", "-q", "-m", "add a submodule"});
  make_repo(local + "/nested", {{"n.txt", "n\n"}}); // untracked, has its own .git

  std::vector<std::string> notes;
  auto top = sync::check_worktree(local + "/", notes);
  ASSERT_TRUE(top) << describe(top.error());
  EXPECT_EQ(fs::canonical(*top), fs::canonical(local));
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("libs/sub"), std::string::npos) << notes[0];
  EXPECT_NE(notes[0].find("not synced"), std::string::npos) << notes[0];

  auto snap = sync::snapshot_worktree(local, "", "");
  ASSERT_TRUE(snap) << describe(snap.error());
  auto tree = git(local, {"ls-tree", "-r", snap->commit});
  EXPECT_EQ(tree.find("160000"), std::string::npos) << tree;
  EXPECT_NE(tree.find("a.txt"), std::string::npos) << tree;
  // The snapshot says so itself (what a sync up reports), nested
  // repositories included, for the submodules it finds on disk (a clone
  // has at least an empty directory for each).
  fs::create_directories(local + "/libs/sub");
  snap = sync::snapshot_worktree(local, "", "");
  ASSERT_TRUE(snap) << describe(snap.error());
  EXPECT_EQ(fs::canonical(snap->top), fs::canonical(local));
  ASSERT_EQ(snap->notes.size(), 2u);
  EXPECT_NE(snap->notes[0].find("libs/sub"), std::string::npos) << snap->notes[0];
  EXPECT_NE(snap->notes[1].find("nested"), std::string::npos) << snap->notes[1];
  EXPECT_NE(snap->notes[1].find("not synced"), std::string::npos) << snap->notes[1];
}

TEST_F(git_sync_snapshot, the_upload_limit_names_the_largest_paths_and_the_setting) {
  make_repo(local, {{"small.txt", "s\n"}});
  write_file(local + "/data/huge.bin", std::string(300000, 'x'));
  write_file(local + "/data/big.bin", std::string(200000, 'y'));
  auto snap = sync::snapshot_worktree(local, "", "");
  ASSERT_TRUE(snap) << describe(snap.error());
  auto stats = sync::stats_of(local, snap->commit);
  ASSERT_TRUE(stats) << describe(stats.error());
  EXPECT_EQ(stats->files, 3u);
  EXPECT_EQ(stats->bytes, 500002u);
  sync::limits lim;
  EXPECT_FALSE(sync::check_upload_size(*stats, lim));
  lim.max_upload_bytes = 100000;
  auto err = sync::check_upload_size(*stats, lim);
  ASSERT_TRUE(err);
  EXPECT_EQ(code_of(err), errc::failed_precondition);
  auto msg = message_of(err);
  EXPECT_NE(msg.find("data/huge.bin"), std::string::npos) << msg;
  EXPECT_LT(msg.find("data/huge.bin"), msg.find("data/big.bin")) << msg;
  EXPECT_NE(msg.find("max_upload_bytes"), std::string::npos) << msg;
}

} // namespace
} // namespace aloft::test
