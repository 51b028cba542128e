// Sync end to end through the real engine: the local provider's real sshd,
// the real `git` on both sides, RocksDB. The "agent" is `sleep`; the test
// plays the agent by editing the VM's worktree directly (a local VM is a
// directory on this machine).
#include <cstdio>
#include <cstdlib>
#include <dirent.h>
#include <fstream>
#include <map>
#include <sstream>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

#include <gtest/gtest.h>

#include "engine/app/api.hpp"
#include "engine/base/error.hpp"
#include "tests/support/local_vm.hpp"

namespace aloft {
namespace {

using namespace std::chrono_literals;

std::string sh(const std::string& cmd) {
  std::string out;
  auto p = ::popen(cmd.c_str(), "r");
  if (!p)
    return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0)
    out.append(buf, n);
  ::pclose(p);
  return out;
}

void write_file(const std::string& path, const std::string& data) {
  std::ofstream out{path, std::ios::binary | std::ios::trunc};
  out << data;
}

std::string read_file(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Path -> "mode:content" (symlinks: "link:target"), skipping .git.
void walk(const std::string& root, const std::string& rel,
          std::map<std::string, std::string>& out) {
  auto dir = ::opendir((root + "/" + rel).c_str());
  if (!dir)
    return;
  while (auto e = ::readdir(dir)) {
    std::string name = e->d_name;
    if (name == "." || name == ".." || (rel.empty() && name == ".git"))
      continue;
    auto r = rel.empty() ? name : rel + "/" + name;
    auto full = root + "/" + r;
    struct stat st;
    ::lstat(full.c_str(), &st);
    if (S_ISLNK(st.st_mode)) {
      char buf[4096];
      auto n = ::readlink(full.c_str(), buf, sizeof(buf));
      out[r] = "link:" + std::string(buf, n > 0 ? static_cast<size_t>(n) : 0);
    } else if (S_ISDIR(st.st_mode)) {
      walk(root, r, out);
    } else {
      out[r] = std::string((st.st_mode & 0100) ? "x:" : "f:") + read_file(full);
    }
  }
  ::closedir(dir);
}

std::map<std::string, std::string> tree_of(const std::string& root) {
  std::map<std::string, std::string> out;
  walk(root, "", out);
  return out;
}

class sync_e2e : public ::testing::Test {
protected:
  void SetUp() override {
    wt_ = home_.path() + "/worktree";
    ::mkdir(wt_.c_str(), 0755);
    git("init -q");
    ::mkdir((wt_ + "/src").c_str(), 0755);
    ::mkdir((wt_ + "/a").c_str(), 0755);
    ::mkdir((wt_ + "/a/b").c_str(), 0755);
    ::mkdir((wt_ + "/a/b/c").c_str(), 0755);
    write_file(wt_ + "/README.md", "# project\n");
    write_file(wt_ + "/src/main.c", "int main() {\n  return 0;\n}\n");
    write_file(wt_ + "/run.sh", "#!/bin/sh\necho run\n");
    ::chmod((wt_ + "/run.sh").c_str(), 0755);
    write_file(wt_ + "/empty", "");
    write_file(wt_ + "/blob.bin", std::string("\0\1\2\xff\xfe binary", 12));
    write_file(wt_ + "/a/b/c/deep.txt", "deep\n");
    write_file(wt_ + "/caf\xc3\xa9 \xe2\x98\x83.txt", "unicode\n");
    ::symlink("src/main.c", (wt_ + "/link").c_str());
    write_file(wt_ + "/.gitignore", "*.log\n");
    git("add -A");
    git("-c user.name=t -c user.email=t@t commit -qm initial");
    // Uncommitted work: staged, unstaged, untracked; and an ignored file.
    write_file(wt_ + "/staged.txt", "staged\n");
    git("add staged.txt");
    write_file(wt_ + "/README.md", "# project\n\nunstaged edit\n");
    write_file(wt_ + "/untracked.txt", "untracked\n");
    write_file(wt_ + "/build.log", "ignored\n");

    engine_options opts;
    opts.home = home_.path() + "/aloft";
    auto e = open_engine(opts);
    ASSERT_TRUE(e) << describe(e.error());
    engine_ = std::move(*e);
  }

  void TearDown() override {
    if (engine_) {
      for (auto& r : engine_->list())
        if (r.state == session_state::running)
          ignore_error(engine_->destroy(r.id));
      test::wait_until([&] {
        for (auto& r : engine_->list())
          if (!is_terminal(r.state))
            return false;
        return true;
      }, 30s);
      engine_.reset();
    }
    for (auto pid : test::processes_matching(home_.path()))
      ::kill(pid, SIGKILL);
  }

  std::string git(const std::string& args) {
    return sh("git -C '" + wt_ + "' " + args + " 2>&1");
  }

  session_record launch(int64_t idle_s = 600) {
    launch_request req;
    req.agent_cmd = "sleep 600";
    req.worktree = wt_;
    req.idle_timeout_s = idle_s;
    auto rec = engine_->launch(req);
    EXPECT_TRUE(rec) << describe(rec.error());
    if (!rec)
      return {};
    session_record out;
    EXPECT_TRUE(test::wait_until([&] {
      auto v = engine_->show(rec->id);
      if (v && v->record.state == session_state::running) {
        out = v->record;
        return true;
      }
      return v && is_terminal(v->record.state);
    }, 60s));
    EXPECT_EQ(out.state, session_state::running) << engine_->show(rec->id)->record.reason;
    return out;
  }

  test::temp_dir home_;
  std::string wt_;
  std::unique_ptr<engine> engine_;
};

TEST_F(sync_e2e, initial_sync_checks_out_the_worktree_byte_for_byte) {
  auto before_status = git("status --porcelain");
  auto before_index = read_file(wt_ + "/.git/index");
  auto rec = launch();
  ASSERT_FALSE(rec.synced_up.empty());
  auto local = tree_of(wt_);
  local.erase("build.log"); // ignored: not synced
  auto vm = tree_of(rec.workdir);
  EXPECT_EQ(vm, local);
  EXPECT_EQ(vm.count("build.log"), 0u);
  EXPECT_EQ(git("status --porcelain"), before_status) << "the user's worktree changed";
  EXPECT_EQ(read_file(wt_ + "/.git/index"), before_index) << "the user's index changed";
  EXPECT_EQ(git("rev-parse refs/aloft/sessions/" + rec.id + "/up").substr(0, 40),
            rec.synced_up);
}

TEST_F(sync_e2e, incremental_sync_up_sends_only_what_changed) {
  auto rec = launch();
  write_file(wt_ + "/src/main.c", "int main() {\n  return 1;\n}\n");
  auto r = engine_->sync_up(rec.id);
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_LT(r->bytes, 4096u) << "one edited file must not resend the tree";
  EXPECT_GT(r->bytes, 0u);
  EXPECT_EQ(read_file(rec.workdir + "/src/main.c"), "int main() {\n  return 1;\n}\n");
}

TEST_F(sync_e2e, sync_down_applies_the_agents_changes_and_keeps_local_edits) {
  auto rec = launch();
  auto vm = rec.workdir;
  // The agent adds, modifies, deletes, renames and changes a mode.
  write_file(vm + "/new.txt", "added by the agent\n");
  write_file(vm + "/src/main.c", "int main() {\n  return 42;\n}\n");
  ::unlink((vm + "/empty").c_str());
  ::rename((vm + "/a/b/c/deep.txt").c_str(), (vm + "/a/moved.txt").c_str());
  ::chmod((vm + "/README.md").c_str(), 0755);
  // Meanwhile the user edits another file locally.
  write_file(wt_ + "/untracked.txt", "edited locally\n");

  sync_down_request dry{rec.id, sync_down_mode::dry_run, {}};
  auto d = engine_->sync_down(dry);
  ASSERT_TRUE(d) << describe(d.error());
  EXPECT_NE(d->diffstat.find("main.c"), std::string::npos) << d->diffstat;
  EXPECT_FALSE(::access((wt_ + "/new.txt").c_str(), F_OK) == 0) << "dry run wrote";

  auto r = engine_->sync_down({rec.id, sync_down_mode::apply, {}});
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_TRUE(r->conflicts.empty());
  EXPECT_EQ(read_file(wt_ + "/new.txt"), "added by the agent\n");
  EXPECT_EQ(read_file(wt_ + "/src/main.c"), "int main() {\n  return 42;\n}\n");
  EXPECT_NE(::access((wt_ + "/empty").c_str(), F_OK), 0);
  EXPECT_EQ(read_file(wt_ + "/a/moved.txt"), "deep\n");
  EXPECT_NE(::access((wt_ + "/a/b/c/deep.txt").c_str(), F_OK), 0);
  struct stat st;
  ::stat((wt_ + "/README.md").c_str(), &st);
  EXPECT_TRUE(st.st_mode & 0100) << "mode change not applied";
  EXPECT_EQ(read_file(wt_ + "/untracked.txt"), "edited locally\n") << "a local edit was lost";
  ASSERT_FALSE(r->saved_ref.empty());
  EXPECT_NE(git("show " + r->saved_ref + ":untracked.txt"), "") << "local state not saved";
  // The listing (the registry's snapshot) sees the new snapshot at once.
  EXPECT_EQ(engine_->show(rec.id)->record.synced_down, r->commit);
}

TEST_F(sync_e2e, a_conflict_is_listed_and_both_versions_are_kept) {
  auto rec = launch();
  write_file(rec.workdir + "/src/main.c", "int main() {\n  return 7; /* agent */\n}\n");
  write_file(wt_ + "/src/main.c", "int main() {\n  return 8; /* me */\n}\n");
  auto r = engine_->sync_down({rec.id, sync_down_mode::apply, {}});
  ASSERT_TRUE(r) << describe(r.error());
  ASSERT_EQ(r->conflicts, std::vector<std::string>{"src/main.c"});
  EXPECT_EQ(read_file(wt_ + "/src/main.c"), "int main() {\n  return 8; /* me */\n}\n");
  EXPECT_EQ(git("show " + r->ref + ":src/main.c"),
            "int main() {\n  return 7; /* agent */\n}\n");
}

TEST_F(sync_e2e, sync_down_to_a_branch_leaves_the_worktree_alone) {
  auto rec = launch();
  write_file(rec.workdir + "/feature.txt", "feature\n");
  auto before = tree_of(wt_);
  auto r = engine_->sync_down({rec.id, sync_down_mode::branch, "agent-work"});
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_EQ(tree_of(wt_), before);
  EXPECT_EQ(git("show agent-work:feature.txt"), "feature\n");
  EXPECT_NE(git("log -1 --format=%s agent-work").find(rec.id), std::string::npos);
  // A later sync up must not revert the agent's work on the VM: the local
  // worktree never received it.
  write_file(wt_ + "/mine.txt", "mine\n");
  auto up = engine_->sync_up(rec.id);
  ASSERT_TRUE(up) << describe(up.error());
  EXPECT_EQ(read_file(rec.workdir + "/feature.txt"), "feature\n");
  EXPECT_EQ(read_file(rec.workdir + "/mine.txt"), "mine\n");
}

TEST_F(sync_e2e, a_vm_whose_repository_is_gone_is_an_error_and_nothing_local_changes) {
  auto rec = launch();
  sh("rm -rf '" + rec.workdir + "/.git'");
  auto before = tree_of(wt_);
  auto r = engine_->sync_down({rec.id, sync_down_mode::apply, {}});
  ASSERT_FALSE(r);
  EXPECT_EQ(code_of(r.error()), errc::failed_precondition) << describe(r.error());
  EXPECT_EQ(tree_of(wt_), before);
  sh("rm -rf '" + rec.workdir + "'");
  auto r2 = engine_->sync_down({rec.id, sync_down_mode::apply, {}});
  ASSERT_FALSE(r2);
  EXPECT_EQ(tree_of(wt_), before);
}

TEST_F(sync_e2e, idle_destroy_saves_the_agents_work_to_the_safety_ref_first) {
  auto rec = launch(/*idle_s=*/2);
  write_file(rec.workdir + "/saved.txt", "work before the timeout\n");
  session_record last;
  ASSERT_TRUE(test::wait_until([&] {
    auto v = engine_->show(rec.id);
    last = v ? v->record : session_record{};
    return v && v->record.state == session_state::destroyed;
  }, 60s));
  EXPECT_EQ(last.safety_ref, "refs/aloft/safety/" + rec.id);
  EXPECT_NE(last.reason.find("refs/aloft/safety/" + rec.id), std::string::npos) << last.reason;
  EXPECT_EQ(git("show refs/aloft/safety/" + rec.id + ":saved.txt"),
            "work before the timeout\n");
  EXPECT_FALSE(::access((wt_ + "/saved.txt").c_str(), F_OK) == 0)
    << "a safety sync must never write the worktree";
}

// A sync run again (say after a disconnect cut the first short) lands in the
// same state: nothing is applied twice, nothing is lost.
TEST_F(sync_e2e, running_a_sync_again_gives_the_same_result) {
  auto rec = launch();
  write_file(rec.workdir + "/agent.txt", "from the agent\n");
  auto first = engine_->sync_down({rec.id, sync_down_mode::apply, {}});
  ASSERT_TRUE(first) << describe(first.error());
  auto after_first = tree_of(wt_);
  auto second = engine_->sync_down({rec.id, sync_down_mode::apply, {}});
  ASSERT_TRUE(second) << describe(second.error());
  EXPECT_TRUE(second->conflicts.empty());
  EXPECT_EQ(tree_of(wt_), after_first);
  EXPECT_EQ(read_file(wt_ + "/agent.txt"), "from the agent\n");
  write_file(wt_ + "/local.txt", "local\n");
  ASSERT_TRUE(engine_->sync_up(rec.id));
  auto vm_after_first = tree_of(rec.workdir);
  auto again = engine_->sync_up(rec.id);
  ASSERT_TRUE(again) << describe(again.error());
  EXPECT_EQ(tree_of(rec.workdir), vm_after_first);
  EXPECT_EQ(read_file(rec.workdir + "/local.txt"), "local\n");
}

TEST_F(sync_e2e, sync_state_tells_which_side_moved) {
  auto rec = launch();
  auto st = engine_->sync_state(rec.id);
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_EQ(st->local_changed, 0) << st->local_note;
  EXPECT_EQ(st->vm_changed, 0) << st->vm_note;
  write_file(wt_ + "/src/main.c", "changed locally\n");
  write_file(rec.workdir + "/agent.txt", "changed on the VM\n");
  st = engine_->sync_state(rec.id);
  ASSERT_TRUE(st);
  EXPECT_EQ(st->local_changed, 1) << st->local_note;
  EXPECT_EQ(st->vm_changed, 1) << st->vm_note;
  ASSERT_TRUE(engine_->sync_down({rec.id, sync_down_mode::apply, {}}));
  st = engine_->sync_state(rec.id);
  ASSERT_TRUE(st);
  EXPECT_EQ(st->vm_changed, 0) << st->vm_note;
}

// The bounds come from settings.json's `sync`, and a reload changes them for
// the next sync.
TEST_F(sync_e2e, sync_bounds_come_from_the_settings_and_a_reload_changes_them) {
  auto settings = home_.path() + "/aloft/settings.json";
  write_file(settings, R"({"sync": {"max_upload_bytes": 100}})");
  auto report = engine_->reload();
  ASSERT_TRUE(report.problems.empty());
  launch_request req;
  req.agent_cmd = "sleep 600";
  req.worktree = wt_;
  auto rec = engine_->launch(req);
  ASSERT_TRUE(rec) << describe(rec.error());
  session_record failed;
  ASSERT_TRUE(test::wait_until([&] {
    auto v = engine_->show(rec->id);
    failed = v ? v->record : session_record{};
    return v && is_terminal(v->record.state);
  }, 60s));
  EXPECT_EQ(failed.state, session_state::failed);
  EXPECT_NE(failed.reason.find("over the upload limit of 100 B"), std::string::npos)
    << failed.reason;
  EXPECT_NE(failed.reason.find("sync.max_upload_bytes"), std::string::npos) << failed.reason;

  // Room to go up, none for a big file coming down.
  write_file(settings, R"({"sync": {"max_file_bytes": 1000}})");
  report = engine_->reload();
  ASSERT_TRUE(report.problems.empty());
  auto live = launch();
  ASSERT_EQ(live.state, session_state::running);
  write_file(live.workdir + "/big.txt", std::string(5000, 'x'));
  auto before = tree_of(wt_);
  auto down = engine_->sync_down({live.id, sync_down_mode::apply, {}});
  ASSERT_FALSE(down);
  EXPECT_NE(describe(down.error()).find("big.txt"), std::string::npos)
    << describe(down.error());
  EXPECT_NE(describe(down.error()).find("sync.max_file_bytes"), std::string::npos)
    << describe(down.error());
  EXPECT_EQ(tree_of(wt_), before);

  // A typo keeps the bound as it was, and says so.
  write_file(settings, R"({"sync": {"max_file_bytes": "lots"}})");
  report = engine_->reload();
  ASSERT_EQ(report.problems.size(), 2u);
  EXPECT_NE(report.problems[0].find("sync.max_file_bytes: expected an integer"),
            std::string::npos)
    << report.problems[0];
  EXPECT_NE(report.problems[1].find("sync bounds are kept"), std::string::npos)
    << report.problems[1];
  down = engine_->sync_down({live.id, sync_down_mode::apply, {}});
  ASSERT_FALSE(down);
  EXPECT_NE(describe(down.error()).find("sync.max_file_bytes"), std::string::npos)
    << describe(down.error());
  EXPECT_EQ(tree_of(wt_), before);

  // So does a syntax error elsewhere, which stops the parse before `sync`.
  write_file(settings, R"({"accounts": [,], "sync": {"max_file_bytes": 100000}})");
  report = engine_->reload();
  ASSERT_FALSE(report.problems.empty());
  EXPECT_NE(report.problems.back().find("sync bounds are kept"), std::string::npos)
    << report.problems.back();
  down = engine_->sync_down({live.id, sync_down_mode::apply, {}});
  ASSERT_FALSE(down);
  EXPECT_NE(describe(down.error()).find("sync.max_file_bytes"), std::string::npos)
    << describe(down.error());
  EXPECT_EQ(tree_of(wt_), before);
}

} // namespace
} // namespace aloft
