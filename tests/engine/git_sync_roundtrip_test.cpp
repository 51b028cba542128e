// Sync up without SSH: the VM commands run with /bin/sh in a second
// directory, fed the packs the engine would send through the transport.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <iostream>

#include <gtest/gtest.h>

#include "engine/base/error.hpp"
#include "engine/git_sync.hpp"
#include "tests/engine/git_sync_fixture.hpp"

namespace aloft::test {
namespace {

namespace fs = std::filesystem;

class git_sync_roundtrip : public git_sync_fixture {
protected:
  // A tree of a few MB: 300 incompressible files of 10 KB in 10 folders,
  // plus every kind of entry.
  void make_varied_repo() {
    std::map<std::string, std::string> files;
    for (int i = 0; i < 300; ++i)
      files["src/d" + std::to_string(i % 10) + "/f" + std::to_string(i) + ".dat"] =
          random_bytes(10 * 1024, static_cast<uint32_t>(i));
    files[".gitignore"] = "*.log\n";
    make_repo(local, files);
    write_file(local + "/run.sh", "#!/bin/sh\necho hi\n", true);
    write_file(local + "/empty", "");
    write_file(local + "/blob.bin", std::string("\0\x01\xff\0binary", 10));
    write_file(local + "/a/b/c/d/e/f/g/h/deep.txt", "deep\n");
    write_file(local + "/\xc3\xbcnicode/\xe3\x83\x95\xe3\x82\xa1\xe3\x82\xa4.txt", "u\n");
    write_file(local + "/it's \"quoted\" $(x).txt", "q\n");
    ASSERT_EQ(::symlink("run.sh", (local + "/link").c_str()), 0);
    ASSERT_EQ(::symlink("a/b/c", (local + "/dirlink").c_str()), 0);
    write_file(local + "/debug.log", "ignored\n");
    // Uncommitted work is in every snapshot; a later sync must not send it
    // again (each snapshot's parent is HEAD, not the previous snapshot).
    write_file(local + "/uncommitted.bin", random_bytes(512 * 1024, 7));
    write_file(local + "/src/d1/f1.dat", random_bytes(10 * 1024, 99));
  }

  worktree_state local_without_ignored() {
    auto s = read_worktree(local);
    s.erase("debug.log");
    return s;
  }
};

TEST_F(git_sync_roundtrip, the_vm_checkout_equals_the_worktree_and_increments_are_small) {
  make_varied_repo();
  auto up1 = sync_up("");
  ASSERT_FALSE(up1.commit.empty());
  auto initial_pack = last_pack_bytes;
  EXPECT_EQ(read_worktree(vm), local_without_ignored());
  EXPECT_EQ(git(vm, {"rev-parse", "refs/aloft/base"}), up1.commit);
  EXPECT_EQ(git(vm, {"rev-parse", "HEAD"}), up1.commit) << "history holds the snapshot";
  EXPECT_EQ(git(vm, {"status", "--porcelain"}), "");
  EXPECT_EQ(git(vm, {"config", "core.hooksPath"}), "/dev/null");

  // One file edited: the pack carries that file, not the tree.
  auto one = local + "/src/d3/f123.dat";
  auto content = read_file(one);
  content[5000] ^= 0x55;
  write_file(one, content);
  auto up2 = sync_up(up1.commit);
  ASSERT_FALSE(up2.commit.empty());
  auto incremental_pack = last_pack_bytes;
  EXPECT_LT(incremental_pack, 16u * 1024);
  EXPECT_EQ(read_worktree(vm), local_without_ignored());
  EXPECT_EQ(git(vm, {"rev-parse", "refs/aloft/base"}), up2.commit);
  EXPECT_EQ(git(vm, {"rev-parse", "HEAD"}), up2.commit);
  std::cout << "[ measure  ] tree " << up1.stats.bytes << " bytes in " << up1.stats.files
            << " files; initial pack " << initial_pack << " bytes; one-file pack "
            << incremental_pack << " bytes\n";

  // Deletions, renames and mode changes go up as well.
  ::unlink((local + "/empty").c_str());
  fs::rename(local + "/src/d0", local + "/src/moved");
  ::chmod((local + "/run.sh").c_str(), 0644);
  ::chmod((local + "/blob.bin").c_str(), 0755);
  auto up3 = sync_up(up2.commit);
  EXPECT_EQ(read_worktree(vm), local_without_ignored());
  EXPECT_LT(last_pack_bytes, 16u * 1024);

  // Running a sync again gives the same result.
  auto pack = sync::make_pack(local, up3.commit, {up2.commit});
  ASSERT_TRUE(pack);
  auto again = sh(sync::vm_receive_command(vm, up3.commit, up2.commit), *pack);
  EXPECT_EQ(again.exit_code, 0) << again.error;
  EXPECT_EQ(read_worktree(vm), local_without_ignored());
}

TEST_F(git_sync_roundtrip, the_first_sync_installs_the_pack_and_index_made_locally) {
  make_varied_repo();
  auto snap = sync::snapshot_worktree(local, sync::up_ref(session), "");
  ASSERT_TRUE(snap) << describe(snap.error());
  auto pack = sync::make_indexed_pack(local, snap->commit);
  ASSERT_TRUE(pack) << describe(pack.error());
  EXPECT_EQ(pack->name.size(), 45u);
  EXPECT_EQ(pack->bytes.compare(0, 4, "PACK"), 0);
  EXPECT_EQ(pack->bytes.size(), pack->pack_bytes + pack->index_bytes);
  auto install = sync::vm_prepare_command(vm) + "\n"
                 + sync::vm_install_command(vm, snap->commit, *pack);

  // Cut short (a connection lost mid-way): refused, and nothing half-written
  // stays in the VM's object store.
  auto cut = sh(install, pack->bytes.substr(0, pack->pack_bytes + 100));
  EXPECT_NE(cut.exit_code, 0);
  EXPECT_NE(cut.error.find("incomplete"), std::string::npos) << cut.error;
  EXPECT_EQ(sh("ls -A '" + vm + "/.git/objects/pack'").output, "");

  auto r = sh(install, pack->bytes);
  ASSERT_EQ(r.exit_code, 0) << r.error;
  EXPECT_EQ(read_worktree(vm), local_without_ignored());
  EXPECT_EQ(git(vm, {"rev-parse", "refs/aloft/base"}), snap->commit);
  EXPECT_EQ(git(vm, {"status", "--porcelain"}), "");
  // The index git wrote here serves the VM's git as if it had made it.
  EXPECT_EQ(git_raw(vm, {"fsck", "--no-dangling"}).exit_code, 0);
  EXPECT_EQ(sh("ls '" + vm + "/.git/objects/pack'").output,
            pack->name + ".idx\n" + pack->name + ".pack\n");

  // The next sync builds on it as on any other.
  write_file(local + "/src/d3/f123.dat", random_bytes(10 * 1024, 5));
  auto up2 = sync_up(snap->commit);
  ASSERT_FALSE(up2.commit.empty());
  EXPECT_EQ(read_worktree(vm), local_without_ignored());
}

TEST_F(git_sync_roundtrip, an_update_keeps_the_agents_changes_or_refuses_cleanly) {
  make_repo(local, {{"a.txt", "a\n"}, {"b.txt", "b\n"}});
  auto up1 = sync_up("");
  write_file(vm + "/a.txt", "agent's a\n");
  write_file(vm + "/agent-new.txt", "new\n");

  write_file(local + "/b.txt", "user's b\n");
  auto up2 = sync_up(up1.commit);
  EXPECT_EQ(read_file(vm + "/a.txt"), "agent's a\n");
  EXPECT_EQ(read_file(vm + "/b.txt"), "user's b\n");
  EXPECT_EQ(read_file(vm + "/agent-new.txt"), "new\n");

  // Both changed a.txt: the VM refuses and keeps everything as it was.
  write_file(local + "/a.txt", "user's a\n");
  write_file(local + "/b.txt", "user's b again\n");
  auto snap = sync::snapshot_worktree(local, sync::up_ref(session), "");
  ASSERT_TRUE(snap);
  auto pack = sync::make_pack(local, snap->commit, {up2.commit});
  ASSERT_TRUE(pack);
  auto before = read_worktree(vm);
  auto r = sh(sync::vm_receive_command(vm, snap->commit, up2.commit), *pack);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.error.find("conflicts with the agent's changes"), std::string::npos)
      << r.error;
  EXPECT_EQ(read_worktree(vm), before);
  EXPECT_EQ(git(vm, {"rev-parse", "refs/aloft/base"}), up2.commit);
}

TEST_F(git_sync_roundtrip, head_follows_the_sync_only_where_the_agent_left_it) {
  make_repo(local, {{"a.txt", "a\n"}, {"b.txt", "b\n"}});
  auto up1 = sync_up("");
  write_file(local + "/a.txt", "user's a\n");
  auto up2 = sync_up(up1.commit);
  EXPECT_EQ(git(vm, {"rev-parse", "HEAD"}), up2.commit);

  // The agent commits: HEAD is its own from then on, the base still moves.
  write_file(vm + "/b.txt", "agent's b\n");
  git(vm, {"commit", "-q", "-am", "agent"});
  auto agents = git(vm, {"rev-parse", "HEAD"});
  write_file(local + "/c.txt", "new\n");
  auto up3 = sync_up(up2.commit);
  EXPECT_EQ(git(vm, {"rev-parse", "HEAD"}), agents);
  EXPECT_EQ(git(vm, {"rev-parse", "refs/aloft/base"}), up3.commit);
  EXPECT_EQ(read_file(vm + "/c.txt"), "new\n");
  EXPECT_EQ(read_file(vm + "/b.txt"), "agent's b\n");

  // Hooks stay off even when the agent turned them back on.
  git(vm, {"config", "core.hooksPath", ".githooks"});
  write_file(local + "/c.txt", "newer\n");
  sync_up(up3.commit);
  EXPECT_EQ(git(vm, {"config", "core.hooksPath"}), "/dev/null");
}

TEST_F(git_sync_roundtrip, vm_commands_fail_clearly_on_a_missing_or_broken_worktree) {
  make_repo(local, {{"a.txt", "a\n"}});
  auto up1 = sync_up("");

  auto in_progress = vm + "/.git/MERGE_HEAD";
  write_file(in_progress, up1.commit + "\n");
  auto r = sh(sync::vm_snapshot_command(vm, up1.commit));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.error.find("middle of a merge"), std::string::npos) << r.error;
  EXPECT_TRUE(r.output.empty());
  ::unlink(in_progress.c_str());

  r = sh(sync::vm_snapshot_command(vm, std::string(40, 'e')));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.error.find("lacks the synced-up snapshot"), std::string::npos) << r.error;
  r = sh(sync::vm_receive_command(vm, up1.commit, std::string(40, 'e')), "PACK");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.error.find("lacks the synced-up snapshot"), std::string::npos) << r.error;
  auto empty = sync::make_pack(local, up1.commit, {up1.commit});
  ASSERT_TRUE(empty);
  r = sh(sync::vm_receive_command(vm, std::string(40, 'd'), up1.commit), *empty);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.error.find("did not hold commit"), std::string::npos) << r.error;
  r = sh(sync::vm_receive_command(vm, up1.commit, up1.commit, std::string(40, 'c')),
         *empty);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.error.find("lacks its snapshot"), std::string::npos) << r.error;

  ::unlink((vm + "/a.txt").c_str());
  r = sh(sync::vm_snapshot_command(vm, up1.commit));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.error.find("is empty"), std::string::npos) << r.error;
  EXPECT_TRUE(r.output.empty());

  write_file(vm + "/a.txt", "back\n");
  // A fresh checkout's background index refresh may still be writing.
  ASSERT_TRUE(test::wait_until([&] { return !fs::exists(vm + "/.git/aloft-refresh"); }, 10s));
  fs::remove_all(vm + "/.git");
  r = sh(sync::vm_snapshot_command(vm, up1.commit));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.error.find("not a git repository"), std::string::npos) << r.error;
  EXPECT_TRUE(r.output.empty());

  fs::remove_all(tmp.path() + "/vm");
  r = sh(sync::vm_snapshot_command(vm, up1.commit));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.error.find("is missing"), std::string::npos) << r.error;
  r = sh(sync::vm_receive_command(vm, up1.commit, ""), "PACK");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.error.find("is missing"), std::string::npos) << r.error;
}

TEST_F(git_sync_roundtrip, the_vm_snapshot_leaves_the_agents_index_and_branches_alone) {
  make_repo(local, {{"a.txt", "a\n"}});
  auto up1 = sync_up("");
  git(vm, {"checkout", "-q", "-b", "agent-work"});
  write_file(vm + "/a.txt", "staged by the agent\n");
  git(vm, {"add", "a.txt"});
  write_file(vm + "/a.txt", "then changed again\n");
  write_file(vm + "/new.txt", "untracked\n");
  make_repo(vm + "/cloned", {{"c.txt", "c\n"}}); // a nested repository
  auto index_before = read_file(vm + "/.git/index");
  auto refs_before = git(vm, {"for-each-ref", "refs/heads"});

  auto r = sh(sync::vm_snapshot_command(vm, up1.commit));
  ASSERT_EQ(r.exit_code, 0) << r.error;
  EXPECT_NE(r.error.find("cloned"), std::string::npos) << "nested repository noted";
  auto nl = r.output.find('\n');
  std::string commit;
  uint64_t size = 0;
  ASSERT_FALSE(sync::parse_snapshot_header(r.output.substr(0, nl), commit, size));
  EXPECT_EQ(size, r.output.size() - nl - 1);
  EXPECT_EQ(git(vm, {"rev-parse", commit + "^"}), up1.commit);
  EXPECT_EQ(git(vm, {"show", commit + ":a.txt"}), "then changed again");
  EXPECT_EQ(git(vm, {"show", commit + ":new.txt"}), "untracked");
  EXPECT_EQ(git(vm, {"ls-tree", commit, "cloned"}), "") << "no gitlink";
  EXPECT_EQ(read_file(vm + "/.git/index"), index_before);
  EXPECT_EQ(git(vm, {"for-each-ref", "refs/heads"}), refs_before);

  // A second snapshot of the same state is the same tree (and reuses the
  // index kept from the first).
  auto again = sh(sync::vm_snapshot_command(vm, up1.commit));
  ASSERT_EQ(again.exit_code, 0) << again.error;
  std::string commit2;
  ASSERT_FALSE(sync::parse_snapshot_header(
      again.output.substr(0, again.output.find('\n')), commit2, size));
  EXPECT_EQ(git(vm, {"rev-parse", commit2 + "^{tree}"}),
            git(vm, {"rev-parse", commit + "^{tree}"}));
}

TEST(git_sync_header, parses_strictly) {
  std::string commit;
  uint64_t n = 0;
  auto sha = std::string(40, 'a');
  EXPECT_FALSE(sync::parse_snapshot_header(sha + " 1234\n", commit, n));
  EXPECT_EQ(commit, sha);
  EXPECT_EQ(n, 1234u);
  EXPECT_FALSE(sync::parse_snapshot_header(sha + " 0", commit, n));
  EXPECT_EQ(n, 0u);
  for (const std::string& bad : std::vector<std::string>{
           sha + " ", sha + "  12", sha + " 12 ", sha + " -1", sha + " 0x10",
           sha + " 012", sha + " 99999999999999999999", std::string(39, 'a') + " 12",
           std::string(40, 'A') + " 12", std::string(40, 'g') + " 12", sha + "12", "",
           "\n", sha + " 12\n\n"}) {
    auto err = sync::parse_snapshot_header(bad, commit, n);
    EXPECT_TRUE(err) << bad;
    EXPECT_EQ(code_of(err), errc::data_loss) << bad;
  }
}

} // namespace
} // namespace aloft::test
