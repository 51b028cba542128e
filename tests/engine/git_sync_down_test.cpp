// Sync down: the VM's snapshot comes back through a pack and is applied,
// branched or previewed; nothing local is ever lost.
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

class git_sync_down : public git_sync_fixture {
protected:
  void SetUp() override {
    make_repo(local, {{"keep.txt", "keep\n"},
                      {"edit.txt", "line 1\nline 2\nline 3\nline 4\nline 5\nline 6\n"},
                      {"remove.txt", "remove me\n"},
                      {"old/name.txt", "a file that moves\nwith some lines\nof text\n"},
                      {"tool.sh", "#!/bin/sh\n"},
                      {".gitignore", "*.log\n"}});
    write_file(local + "/uncommitted.txt", "not committed, synced anyway\n");
    base = sync_up("").commit;
    ASSERT_FALSE(base.empty());
  }

  // The agent's usual work on the VM.
  void agent_edits() {
    write_file(vm + "/added/new.txt", "added by the agent\n");
    write_file(vm + "/edit.txt",
               "line 1\nline 2 by the agent\nline 3\nline 4\nline 5\nline 6\n");
    ::unlink((vm + "/remove.txt").c_str());
    fs::create_directories(vm + "/new");
    fs::rename(vm + "/old/name.txt", vm + "/new/name.txt");
    ::chmod((vm + "/tool.sh").c_str(), 0755);
    ASSERT_EQ(::symlink("keep.txt", (vm + "/link-to-keep").c_str()), 0);
  }

  // The checks every apply must pass: the saved ref holds the state before,
  // the user's index, HEAD and branches are untouched.
  struct user_state {
    std::string index, head, branches;
  };
  user_state user_state_now() {
    return {read_file(local + "/.git/index"), git(local, {"rev-parse", "HEAD"}),
            git(local, {"for-each-ref", "refs/heads"})};
  }
  void expect_user_state(const user_state& before) {
    auto now = user_state_now();
    EXPECT_EQ(now.index, before.index) << "the user's index changed";
    EXPECT_EQ(now.head, before.head);
    EXPECT_EQ(now.branches, before.branches);
  }
  worktree_state tree_of(const std::string& commit) {
    auto dir = tmp.path() + "/extract-" + commit.substr(0, 8);
    fs::create_directories(dir);
    auto r = sh("git -C '" + local + "' archive --format=tar " + commit + " | tar -x -C '"
                + dir + "'");
    EXPECT_EQ(r.exit_code, 0) << r.error;
    return read_worktree(dir);
  }
  worktree_state without_ignored(worktree_state s) {
    for (auto it = s.begin(); it != s.end();)
      it = it->first.size() > 4 && it->first.substr(it->first.size() - 4) == ".log"
               ? s.erase(it)
               : std::next(it);
    return s;
  }

  std::string base;
};

TEST_F(git_sync_down, apply_brings_every_kind_of_change) {
  agent_edits();
  auto theirs = sync_down_objects(base);
  ASSERT_TRUE(theirs) << describe(theirs.error());
  auto before = read_worktree(local);
  auto state = user_state_now();

  auto r = sync::apply_down(local, session, base, *theirs, sync::apply_mode::apply, "");
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_TRUE(r->conflicts.empty());
  EXPECT_EQ(read_worktree(local), without_ignored(read_worktree(vm)));
  EXPECT_EQ(r->saved_ref, "refs/aloft/sessions/" + session + "/local-1");
  EXPECT_EQ(tree_of(r->saved_ref), before) << "the saved ref holds the state before";
  EXPECT_EQ(git(local, {"rev-parse", sync::down_ref(session)}), *theirs);
  std::vector<std::string> expected{"added/new.txt", "edit.txt",     "link-to-keep",
                                    "new/name.txt",  "old/name.txt", "remove.txt",
                                    "tool.sh"};
  EXPECT_EQ(r->changed, expected);
  EXPECT_NE(r->diffstat.find("edit.txt"), std::string::npos) << r->diffstat;
  expect_user_state(state);
  EXPECT_FALSE(fs::exists(local + "/old")) << "emptied directory removed";

  // Applying the same snapshot again changes nothing and saves local-2.
  auto again =
      sync::apply_down(local, session, base, *theirs, sync::apply_mode::apply, "");
  ASSERT_TRUE(again) << describe(again.error());
  EXPECT_EQ(again->saved_ref, "refs/aloft/sessions/" + session + "/local-2");
  EXPECT_TRUE(again->changed.empty());
  EXPECT_EQ(read_worktree(local), without_ignored(read_worktree(vm)));
}

TEST_F(git_sync_down, the_local_state_can_be_taken_before_the_vms_snapshot_arrives) {
  // As the sync actor does: the local side is captured while the VM
  // snapshots (here, before the agent even edits).
  write_file(local + "/keep.txt", "keep, edited by the user\n");
  auto before = read_worktree(local);
  auto state = user_state_now();
  auto ours = sync::capture_local_state(local, session, base);
  ASSERT_TRUE(ours) << describe(ours.error());
  EXPECT_EQ(git(local, {"for-each-ref", "refs/aloft/sessions/" + session + "/local-1"}),
            "")
      << "nothing is stored before the apply";
  agent_edits();
  auto theirs = sync_down_objects(base);
  ASSERT_TRUE(theirs) << describe(theirs.error());

  auto r =
      sync::apply_down(local, session, base, *theirs, sync::apply_mode::apply, "", *ours);
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_TRUE(r->conflicts.empty());
  EXPECT_EQ(r->saved_ref, "refs/aloft/sessions/" + session + "/local-1");
  EXPECT_EQ(tree_of(r->saved_ref), before);
  EXPECT_EQ(git(local, {"rev-parse", sync::down_ref(session)}), *theirs);
  EXPECT_EQ(read_file(local + "/keep.txt"), "keep, edited by the user\n");
  EXPECT_EQ(read_file(local + "/added/new.txt"), "added by the agent\n");
  EXPECT_EQ(r->changed.size(), 7u);
  expect_user_state(state);
}

TEST_F(git_sync_down, a_file_changed_after_the_local_state_was_taken_aborts_the_apply) {
  write_file(vm + "/edit.txt", "the agent's edit\n");
  write_file(vm + "/added.txt", "added by the agent\n");
  auto theirs = sync_down_objects(base);
  ASSERT_TRUE(theirs) << describe(theirs.error());
  auto ours = sync::capture_local_state(local, session, base);
  ASSERT_TRUE(ours) << describe(ours.error());
  // The user saves the file the agent changed, after the capture.
  write_file(local + "/edit.txt", "the user's edit, a moment later\n");
  auto before = read_worktree(local);

  auto r =
      sync::apply_down(local, session, base, *theirs, sync::apply_mode::apply, "", *ours);
  ASSERT_FALSE(r);
  EXPECT_EQ(code_of(r.error()), errc::aborted) << describe(r.error());
  EXPECT_NE(message_of(r.error()).find("local-1"), std::string::npos)
      << describe(r.error());
  EXPECT_EQ(read_worktree(local), before) << "nothing written";
  // Applying again takes the worktree as it is now.
  auto again =
      sync::apply_down(local, session, base, *theirs, sync::apply_mode::apply, "");
  ASSERT_TRUE(again) << describe(again.error());
  EXPECT_EQ(again->conflicts, std::vector<std::string>{"edit.txt"});
  EXPECT_EQ(read_file(local + "/edit.txt"), "the user's edit, a moment later\n");
  EXPECT_EQ(read_file(local + "/added.txt"), "added by the agent\n");
}

TEST_F(git_sync_down, the_vm_keeps_its_snapshots_objects_wherever_they_waited) {
  auto loose = [&] {
    auto out = git(vm, {"count-objects"}); // "<n> objects, <k> kilobytes"
    return std::stoul(out);
  };
  auto loose_before = loose();
  agent_edits();
  // In memory (/dev/shm here): the objects reach the VM's repository as one
  // pack, never as loose files.
  auto in_memory = sync_down_objects(base);
  ASSERT_TRUE(in_memory) << describe(in_memory.error());
  EXPECT_EQ(loose(), loose_before);
  EXPECT_EQ(git(vm, {"rev-parse", "refs/aloft/snapshot"}), *in_memory);
  EXPECT_EQ(git_raw(vm, {"fsck", "--no-dangling"}).exit_code, 0);

  // Nowhere to put them but the repository.
  write_file(vm + "/edit.txt", "edited again\n");
  auto in_repo = sync_down_objects(base, {}, "");
  ASSERT_TRUE(in_repo) << describe(in_repo.error());
  EXPECT_GT(loose(), loose_before);
  EXPECT_EQ(git(local, {"show", *in_repo + ":edit.txt"}), "edited again");

  // A scratch place that takes no objects (here: paths too long for them):
  // the snapshot starts again into the repository, and leaves nothing there.
  auto scratch = tmp.path() + "/scratch";
  while (scratch.size() < 4035)
    scratch += "/" + std::string(std::min<size_t>(200, 4035 - scratch.size() - 1), 's');
  fs::create_directories(scratch);
  write_file(vm + "/edit.txt", "edited a third time\n");
  auto retried = sync_down_objects(base, {}, scratch);
  ASSERT_TRUE(retried) << describe(retried.error());
  EXPECT_EQ(git(local, {"show", *retried + ":edit.txt"}), "edited a third time");
  EXPECT_TRUE(fs::is_empty(scratch));

  // A file too big to wait in memory (over 64 MiB as an object): the
  // snapshot starts again into the repository.
  auto memory = tmp.path() + "/memory";
  fs::create_directories(memory);
  write_file(vm + "/huge.bin", random_bytes(65 << 20, 12));
  auto loose_now = loose();
  auto huge = sync_down_objects(base, {}, memory);
  ASSERT_TRUE(huge) << describe(huge.error());
  EXPECT_GT(loose(), loose_now) << "written into the repository";
  EXPECT_TRUE(fs::is_empty(memory));
  EXPECT_EQ(git(local, {"cat-file", "-s", *huge + ":huge.bin"}),
            std::to_string(65 << 20));
  ::unlink((vm + "/huge.bin").c_str());

  // A big change goes as deltas against the base.
  write_file(local + "/big.bin", random_bytes(3 << 20, 11));
  auto up = sync_up(base).commit;
  auto content = read_file(vm + "/big.bin");
  content[1000] ^= 1;
  write_file(vm + "/big.bin", content);
  auto changed = sync_down_objects(up);
  ASSERT_TRUE(changed) << describe(changed.error());
  EXPECT_LT(last_pack_bytes, 64u * 1024) << "a thin pack";
  EXPECT_EQ(git_raw(vm, {"fsck", "--no-dangling"}).exit_code, 0);
}

TEST_F(git_sync_down, apply_merges_with_concurrent_local_edits) {
  agent_edits();
  auto theirs = sync_down_objects(base);
  ASSERT_TRUE(theirs) << describe(theirs.error());
  // Meanwhile, locally: another line of the same file, another file, a new
  // file, an ignored file, and a commit on the user's branch.
  write_file(local + "/edit.txt",
             "line 1\nline 2\nline 3\nline 4\nline 5\nline 6 by the user\n");
  write_file(local + "/keep.txt", "keep, edited by the user\n");
  git(local, {"commit", "-q", "-am", "user commit"});
  write_file(local + "/user-new.txt", "the user's new file\n");
  write_file(local + "/debug.log", "ignored\n");
  write_file(local + "/old/name.txt",
             "a file that moves\nwith some lines\nof text, edited by the user\n");
  auto before = read_worktree(local);
  auto state = user_state_now();

  auto r = sync::apply_down(local, session, base, *theirs, sync::apply_mode::apply, "");
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_TRUE(r->conflicts.empty()) << r->conflicts.size() << " " << r->conflicts[0];
  EXPECT_EQ(read_file(local + "/edit.txt"),
            "line 1\nline 2 by the agent\nline 3\nline 4\nline 5\nline 6 by the user\n");
  EXPECT_EQ(read_file(local + "/keep.txt"), "keep, edited by the user\n");
  EXPECT_EQ(read_file(local + "/user-new.txt"), "the user's new file\n");
  EXPECT_EQ(read_file(local + "/debug.log"), "ignored\n");
  EXPECT_EQ(read_file(local + "/added/new.txt"), "added by the agent\n");
  EXPECT_FALSE(fs::exists(local + "/remove.txt"));
  EXPECT_FALSE(fs::exists(local + "/old/name.txt"));
  EXPECT_EQ(read_file(local + "/new/name.txt"),
            "a file that moves\nwith some lines\nof text, edited by the user\n")
      << "the rename carries the user's edit";
  struct stat st;
  ASSERT_EQ(::stat((local + "/tool.sh").c_str(), &st), 0);
  EXPECT_TRUE(st.st_mode & S_IXUSR);
  EXPECT_EQ(fs::read_symlink(local + "/link-to-keep"), "keep.txt");
  auto saved = tree_of(r->saved_ref);
  before.erase("debug.log");
  EXPECT_EQ(saved, before);
  expect_user_state(state);
}

TEST_F(git_sync_down, a_conflict_is_listed_and_both_versions_kept) {
  write_file(vm + "/edit.txt",
             "line 1\nline 2 by the agent\nline 3\nline 4\nline 5\nline 6\n");
  write_file(vm + "/keep.txt", "keep, by the agent\n");
  write_file(vm + "/agent-only.txt", "agent\n");
  auto theirs = sync_down_objects(base);
  ASSERT_TRUE(theirs) << describe(theirs.error());
  auto users = "line 1\nline 2 by the user\nline 3\nline 4\nline 5\nline 6\n";
  write_file(local + "/edit.txt", users);
  ::unlink((local + "/keep.txt").c_str()); // modify/delete
  auto before = read_worktree(local);

  auto r = sync::apply_down(local, session, base, *theirs, sync::apply_mode::apply, "");
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_EQ(r->conflicts, (std::vector<std::string>{"edit.txt", "keep.txt"}));
  EXPECT_EQ(r->changed, (std::vector<std::string>{"agent-only.txt"}));
  EXPECT_EQ(read_file(local + "/edit.txt"), users) << "left as it was locally";
  EXPECT_FALSE(fs::exists(local + "/keep.txt")) << "left deleted";
  EXPECT_EQ(read_file(local + "/agent-only.txt"), "agent\n");
  // The agent's versions are reachable.
  EXPECT_EQ(git(local, {"show", sync::down_ref(session) + ":edit.txt"}),
            "line 1\nline 2 by the agent\nline 3\nline 4\nline 5\nline 6");
  EXPECT_EQ(git(local, {"show", sync::down_ref(session) + ":keep.txt"}),
            "keep, by the agent");
  auto saved = tree_of(r->saved_ref);
  EXPECT_EQ(saved, before);
}

TEST_F(git_sync_down, file_and_directory_in_each_others_way_are_conflicts) {
  // The agent turns keep.txt into a directory; the user edits it.
  ::unlink((vm + "/keep.txt").c_str());
  write_file(vm + "/keep.txt/inside.txt", "inside\n");
  auto theirs = sync_down_objects(base);
  ASSERT_TRUE(theirs) << describe(theirs.error());
  write_file(local + "/keep.txt", "keep, edited by the user\n");

  auto r = sync::apply_down(local, session, base, *theirs, sync::apply_mode::apply, "");
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_FALSE(r->conflicts.empty());
  EXPECT_EQ(read_file(local + "/keep.txt"), "keep, edited by the user\n");
  for (auto& e : fs::directory_iterator(local))
    EXPECT_EQ(e.path().filename().string().find('~'), std::string::npos) << e.path();
}

TEST_F(git_sync_down, local_obstacles_are_left_alone_and_listed) {
  // The agent adds a file that exists locally but is ignored there, and a
  // file inside a directory that is a symlink locally (ignored too).
  write_file(vm + "/notes.txt", "the agent's notes\n");
  write_file(vm + "/out/result.txt", "result\n");
  write_file(vm + "/fine.txt", "fine\n");
  auto theirs = sync_down_objects(base);
  ASSERT_TRUE(theirs) << describe(theirs.error());
  write_file(local + "/.git/info/exclude", "notes.txt\nout\n");
  write_file(local + "/notes.txt", "the user's notes\n");
  fs::create_directories(tmp.path() + "/elsewhere");
  ASSERT_EQ(::symlink((tmp.path() + "/elsewhere").c_str(), (local + "/out").c_str()), 0);

  auto r = sync::apply_down(local, session, base, *theirs, sync::apply_mode::apply, "");
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_EQ(r->conflicts, (std::vector<std::string>{"notes.txt", "out/result.txt"}));
  EXPECT_EQ(r->changed, (std::vector<std::string>{"fine.txt"}));
  EXPECT_FALSE(fs::exists(tmp.path() + "/elsewhere/result.txt"))
      << "nothing written through the symlink";
  EXPECT_EQ(read_file(local + "/notes.txt"), "the user's notes\n");
  EXPECT_EQ(read_file(local + "/fine.txt"), "fine\n");
}

TEST_F(git_sync_down, branch_mode_makes_a_branch_and_touches_no_file) {
  agent_edits();
  auto theirs = sync_down_objects(base);
  ASSERT_TRUE(theirs) << describe(theirs.error());
  auto before = read_worktree(local);
  auto index = read_file(local + "/.git/index");
  auto head = git(local, {"symbolic-ref", "HEAD"});

  auto r = sync::apply_down(local, session, base, *theirs, sync::apply_mode::branch,
                            "agent/work");
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_EQ(r->branch, "agent/work");
  EXPECT_EQ(git(local, {"rev-parse", "agent/work^{tree}"}),
            git(local, {"rev-parse", *theirs + "^{tree}"}));
  EXPECT_EQ(git(local, {"rev-parse", "agent/work^"}), base);
  EXPECT_NE(git(local, {"log", "-1", "--format=%s", "agent/work"}).find(session),
            std::string::npos);
  EXPECT_EQ(read_worktree(local), before);
  EXPECT_EQ(read_file(local + "/.git/index"), index);
  EXPECT_EQ(git(local, {"symbolic-ref", "HEAD"}), head);
  EXPECT_FALSE(r->changed.empty());

  auto again = sync::apply_down(local, session, base, *theirs, sync::apply_mode::branch,
                                "agent/work");
  ASSERT_FALSE(again);
  EXPECT_EQ(code_of(again.error()), errc::already_exists);
  auto bad = sync::apply_down(local, session, base, *theirs, sync::apply_mode::branch,
                              "bad..name");
  ASSERT_FALSE(bad);
  EXPECT_EQ(code_of(bad.error()), errc::invalid_argument);
}

TEST_F(git_sync_down, dry_run_writes_nothing) {
  agent_edits();
  auto theirs = sync_down_objects(base);
  ASSERT_TRUE(theirs) << describe(theirs.error());
  auto before = read_worktree(local);
  auto refs = git(local, {"for-each-ref"});
  auto r = sync::apply_down(local, session, base, *theirs, sync::apply_mode::dry_run, "");
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_NE(r->diffstat.find("files changed"), std::string::npos) << r->diffstat;
  EXPECT_NE(std::find(r->changed.begin(), r->changed.end(), "remove.txt"),
            r->changed.end());
  EXPECT_TRUE(r->saved_ref.empty());
  EXPECT_EQ(read_worktree(local), before);
  EXPECT_EQ(git(local, {"for-each-ref"}), refs);
}

TEST_F(git_sync_down, a_snapshot_not_on_top_of_the_base_is_refused) {
  write_file(vm + "/keep.txt", "changed\n");
  auto theirs = sync_down_objects(base);
  ASSERT_TRUE(theirs) << describe(theirs.error());
  auto head = git(local, {"rev-parse", "HEAD"});
  auto r = sync::apply_down(local, session, *theirs, head, sync::apply_mode::apply, "");
  ASSERT_FALSE(r);
  EXPECT_EQ(code_of(r.error()), errc::failed_precondition);
  auto bad_session =
      sync::apply_down(local, "../x", base, *theirs, sync::apply_mode::apply, "");
  ASSERT_FALSE(bad_session);
  EXPECT_EQ(code_of(bad_session.error()), errc::invalid_argument);
}

TEST_F(git_sync_down, the_users_own_symlinks_out_of_the_tree_do_not_block_a_sync) {
  // The user's repository has a symlink to an absolute path; the VM keeps it
  // and changes something else.
  ASSERT_EQ(::symlink("/opt/shared", (local + "/shared").c_str()), 0);
  auto up = sync_up(base).commit;
  write_file(vm + "/keep.txt", "changed by the agent\n");
  auto theirs = sync_down_objects(up);
  ASSERT_TRUE(theirs) << describe(theirs.error());
  auto r = sync::apply_down(local, session, up, *theirs, sync::apply_mode::apply, "");
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_EQ(read_file(local + "/keep.txt"), "changed by the agent\n");
  EXPECT_EQ(fs::read_symlink(local + "/shared"), "/opt/shared");

  // A new path through it, or a new symlink like it, is still refused.
  ASSERT_EQ(::symlink("shared/x", (vm + "/through").c_str()), 0);
  auto refused = sync_down_objects(up);
  ASSERT_FALSE(refused);
  EXPECT_NE(message_of(refused.error()).find("'through'"), std::string::npos)
      << describe(refused.error());
}

TEST_F(git_sync_down, a_broken_vm_worktree_changes_nothing_locally) {
  auto before = read_worktree(local);
  auto refs = git(local, {"for-each-ref"});
  // A fresh checkout's background index refresh may still be writing.
  ASSERT_TRUE(test::wait_until([&] { return !fs::exists(vm + "/.git/aloft-refresh"); }, 10s));
  fs::remove_all(vm + "/.git");
  auto r = sync_down_objects(base);
  ASSERT_FALSE(r);
  EXPECT_NE(message_of(r.error()).find("not a git repository"), std::string::npos);
  fs::remove_all(vm);
  r = sync_down_objects(base);
  ASSERT_FALSE(r);
  EXPECT_NE(message_of(r.error()).find("missing"), std::string::npos);
  EXPECT_EQ(read_worktree(local), before);
  EXPECT_EQ(git(local, {"for-each-ref"}), refs);
}

} // namespace
} // namespace aloft::test
