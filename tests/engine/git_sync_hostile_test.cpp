// A hostile VM: trees crafted object by object on the "VM" are packed and
// received like a real sync down. Each must be refused with an error naming
// the path and the rule, and the local object store must not gain anything.
#include <filesystem>

#include <gtest/gtest.h>

#include "engine/base/error.hpp"
#include "engine/git_sync.hpp"
#include "tests/engine/git_sync_fixture.hpp"

namespace aloft::test {
namespace {

namespace fs = std::filesystem;

struct raw_entry {
  std::string mode; // "100644", "40000", "120000", "160000"
  std::string name;
  std::string oid;
};

std::string hex_to_bin(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

class git_sync_hostile : public git_sync_fixture {
protected:
  void SetUp() override {
    make_repo(local, {{"a.txt", "a\n"}});
    base = sync_up("").commit;
    ASSERT_FALSE(base.empty());
  }

  std::string blob(const std::string& content) {
    return git(vm, {"hash-object", "-w", "--stdin"}, content);
  }
  // Any tree at all, including what git itself would never write.
  std::string tree(const std::vector<raw_entry>& entries) {
    std::string body;
    for (auto& e : entries)
      body += e.mode + " " + e.name + '\0' + hex_to_bin(e.oid);
    return git(vm, {"hash-object", "-t", "tree", "-w", "--literally", "--stdin"}, body);
  }
  std::string commit_of(const std::string& t, const std::string& parent) {
    std::vector<std::string> args{"commit-tree", t, "-m", "hostile"};
    if (!parent.empty()) {
      args.push_back("-p");
      args.push_back(parent);
    }
    return git(vm, args);
  }
  std::string pack_of(const std::string& commit) {
    auto r = git_raw(vm, {"pack-objects", "--stdout", "--revs", "--thin", "-q"},
                     commit + "\n^" + base + "\n");
    EXPECT_EQ(r.exit_code, 0) << r.error;
    return r.output;
  }

  // Receives a commit of `root` (parent: the base) and expects a refusal
  // that mentions each of `needles`, leaving the local store as it was.
  void expect_refused(const std::string& root, const std::vector<std::string>& needles,
                      const sync::limits& lim = {}, errc code = errc::permission_denied) {
    auto c = commit_of(root, base);
    auto pack = pack_of(c);
    auto objects_before = object_count(local);
    auto err = sync::receive_untrusted_pack(local, pack, c, base, lim);
    ASSERT_TRUE(err) << "accepted a hostile tree";
    EXPECT_EQ(code_of(err), code) << describe(err);
    auto msg = message_of(err);
    for (auto& n : needles)
      EXPECT_NE(msg.find(n), std::string::npos) << "no '" << n << "' in: " << msg;
    EXPECT_EQ(object_count(local), objects_before);
    EXPECT_NE(git_raw(local, {"cat-file", "-e", c}).exit_code, 0) << "the commit got in";
    for (auto& e : fs::directory_iterator(local + "/.git/objects"))
      EXPECT_EQ(e.path().filename().string().rfind("aloft-incoming-", 0), std::string::npos)
          << "quarantine left behind: " << e.path();
  }

  std::string file() { return blob("x\n"); }
  std::string dir_with(const std::string& name, const std::string& oid,
                       const std::string& mode = "100644") {
    return tree({{mode, name, oid}});
  }

  std::string base;
};

TEST_F(git_sync_hostile, a_valid_snapshot_is_received_and_its_quarantine_removed) {
  auto root =
      tree({{"100644", "a.txt", file()}, {"40000", "d", dir_with("e.txt", file())}});
  auto c = commit_of(root, base);
  auto err = sync::receive_untrusted_pack(local, pack_of(c), c, base, {});
  EXPECT_FALSE(err) << describe(err);
  EXPECT_EQ(git_raw(local, {"cat-file", "-e", c}).exit_code, 0);
  EXPECT_EQ(git(local, {"show", c + ":d/e.txt"}), "x");
  for (auto& e : fs::directory_iterator(local + "/.git/objects"))
    EXPECT_EQ(e.path().filename().string().rfind("aloft-incoming-", 0), std::string::npos);
  // Receiving it again is harmless.
  EXPECT_FALSE(sync::receive_untrusted_pack(local, pack_of(c), c, base, {}));
}

TEST_F(git_sync_hostile, dot_dot_components) {
  expect_refused(tree({{"40000", "..", dir_with("x", file())}}), {"'../x'", ". or .."});
  expect_refused(tree({{"100644", "a/../../x", file()}}), {"a/../../x", ". or .."});
  expect_refused(tree({{"40000", "a", dir_with(".", file())}}), {"'a/.'", ". or .."});
}

// Empty names ("a//b") cannot travel: git refuses to pack such a tree. The
// rule is tested on paths in git_sync_paths.

TEST_F(git_sync_hostile, dot_git_and_its_aliases) {
  auto hook = dir_with("config", file());
  expect_refused(tree({{"40000", ".git", hook}}), {".git/config", "is .git"});
  expect_refused(tree({{"40000", ".GIT", hook}}), {".GIT/config", "another case"});
  expect_refused(tree({{"40000", ".git.", hook}}), {".git./config", "NTFS"});
  expect_refused(tree({{"40000", ".git ", hook}}), {".git /config", "NTFS"});
  expect_refused(tree({{"40000", "git~1", hook}}), {"git~1/config", "NTFS"});
  expect_refused(tree({{"40000", "GIT~1", hook}}), {"GIT~1/config", "NTFS"});
  expect_refused(tree({{"100644", ".git::$INDEX_ALLOCATION", file()}}),
                 {".git::$INDEX_ALLOCATION", "NTFS"});
  expect_refused(tree({{"40000", ".g\xe2\x80\x8cit", hook}}), {"config", "HFS+"});
  expect_refused(tree({{"40000", "\xef\xbb\xbf.GIT", hook}}), {"config", "HFS+"});
  expect_refused(
      tree({{"40000", "sub",
             tree({{"40000", ".git",
                    tree({{"40000", "hooks",
                           dir_with("post-checkout", file(), "100755")}})}})}}),
      {"sub/.git/hooks/post-checkout", "is .git"});
}

TEST_F(git_sync_hostile, gitlinks) {
  expect_refused(tree({{"100644", "a.txt", file()}, {"160000", "mod", base}}),
                 {"'mod'", "gitlink"});
}

TEST_F(git_sync_hostile, symlinks_leaving_the_worktree_or_entering_git) {
  expect_refused(tree({{"120000", "passwd", blob("/etc/passwd")}}),
                 {"'passwd'", "absolute"});
  expect_refused(tree({{"40000", "d", dir_with("up", blob("../../etc"), "120000")}}),
                 {"'d/up'", "outside the worktree"});
  // Each link alone stays inside; followed through each other they leave.
  expect_refused(tree({{"120000", "a", blob("b/..")}, {"120000", "b", blob("..")}}),
                 {"outside the worktree"});
  expect_refused(tree({{"120000", "cfg", blob("sub/../.git/config")}}),
                 {"'cfg'", "into .git"});
  expect_refused(tree({{"120000", ".gitattributes", blob("a.txt")}}),
                 {"'.gitattributes'", "symlink in place"});
}

TEST_F(git_sync_hostile, files_under_a_symlinked_directory) {
  auto inside = dir_with("x", file());
  expect_refused(tree({{"120000", "d", blob("elsewhere")}, {"40000", "d", inside}}),
                 {"'d/x'", "under the symlink 'd'"});
  expect_refused(tree({{"120000", "D", blob("elsewhere")}, {"40000", "d", inside}}),
                 {"'d/x'", "under the symlink 'D'"});
}

TEST_F(git_sync_hostile, sizes_over_the_limits) {
  sync::limits lim;
  lim.max_file_bytes = 1000;
  expect_refused(tree({{"100644", "big.bin", blob(std::string(2000, 'b'))}}),
                 {"'big.bin'", "max_file_bytes"}, lim, errc::failed_precondition);

  lim = {};
  lim.max_files = 5;
  std::vector<raw_entry> many;
  for (int i = 0; i < 10; ++i)
    many.push_back({"100644", "f" + std::to_string(i), file()});
  expect_refused(tree(many), {"max_files"}, lim, errc::failed_precondition);

  // A tree that names itself over and over: 10,000 paths from a few objects.
  auto t0 = tree({{"100644", "f", file()}});
  std::vector<raw_entry> level;
  for (int i = 0; i < 100; ++i)
    level.push_back({"40000", "d" + std::to_string(100 + i), t0});
  auto t1 = tree(level);
  for (auto& e : level)
    e.oid = t1;
  lim = {};
  lim.max_files = 1000;
  expect_refused(tree(level), {"more than 1000"}, lim, errc::failed_precondition);
  lim = {};
  lim.max_tree_bytes = 1000;
  expect_refused(tree(level), {"max_tree_bytes"}, lim, errc::failed_precondition);
}

TEST_F(git_sync_hostile, packs_that_are_too_big_broken_or_off_base) {
  auto root = tree({{"100644", "a.txt", file()}});
  auto c = commit_of(root, base);
  auto pack = pack_of(c);
  auto before = object_count(local);

  sync::limits lim;
  lim.max_download_bytes = pack.size() - 1;
  auto err = sync::receive_untrusted_pack(local, pack, c, base, lim);
  EXPECT_EQ(code_of(err), errc::failed_precondition);
  EXPECT_NE(message_of(err).find("max_download_bytes"), std::string::npos);

  auto broken = pack;
  broken[broken.size() / 2] ^= 0x5a;
  err = sync::receive_untrusted_pack(local, broken, c, base, {});
  EXPECT_TRUE(err);
  EXPECT_EQ(code_of(err), errc::data_loss) << describe(err);

  err = sync::receive_untrusted_pack(local, pack, std::string(40, 'a'), base, {});
  EXPECT_TRUE(err) << "a pack without the announced commit";

  auto orphan = commit_of(root, "");
  auto r = git_raw(vm, {"pack-objects", "--stdout", "--revs", "-q"}, orphan + "\n");
  err = sync::receive_untrusted_pack(local, r.output, orphan, base, {});
  EXPECT_TRUE(err);
  EXPECT_NE(message_of(err).find("not a child"), std::string::npos) << describe(err);

  err = sync::receive_untrusted_pack(local, pack, "HEAD", base, {});
  EXPECT_EQ(code_of(err), errc::invalid_argument);
  EXPECT_EQ(object_count(local), before);
}

TEST(git_sync_paths, the_path_rules) {
  for (std::string ok :
       {"a", "a/b/c.txt", ".gitignore", ".gitx", "x.git", "git~10",
        "\xc3\xbcnicode/\xe3\x83\x95.txt", "a b/c d", "...", ".git~1", "g.it", "a\\b"})
    EXPECT_FALSE(sync::check_untrusted_path(ok)) << ok;
  struct bad {
    std::string path, rule;
  };
  for (auto& b : std::vector<bad>{{"", "empty path"},
                                  {"/etc/passwd", "absolute"},
                                  {"a//b", "empty path component"},
                                  {"a/", "empty path component"},
                                  {"./a", ". or .."},
                                  {"a/../b", ". or .."},
                                  {"..", ". or .."},
                                  {".git", "is .git"},
                                  {"x/.Git/y", "another case"},
                                  {".git..", "NTFS"},
                                  {".git. . ", "NTFS"},
                                  {"git~1:stream", "NTFS"},
                                  {"a\\.git\\config", "backslash"},
                                  {".\xe2\x80\x8eg\xe2\x80\x8fi\xe2\x81\xaft", "HFS+"}}) {
    auto err = sync::check_untrusted_path(b.path);
    ASSERT_TRUE(err) << b.path;
    EXPECT_EQ(code_of(err), errc::permission_denied);
    EXPECT_NE(message_of(err).find(b.rule), std::string::npos) << message_of(err);
  }
  // Control bytes never reach a terminal.
  auto err = sync::check_untrusted_path("\x1b[31m/..");
  EXPECT_NE(message_of(err).find("\\x1b"), std::string::npos) << message_of(err);
  EXPECT_EQ(message_of(err).find('\x1b'), std::string::npos);
}

TEST(git_sync_paths, the_entry_rules) {
  auto entry = [](uint32_t mode, std::string path, uint64_t size = 1) {
    sync::tree_entry e;
    e.mode = mode;
    e.type = mode == 0160000 ? "commit" : "blob";
    e.object = std::string(40, '1');
    e.size = size;
    e.path = std::move(path);
    return e;
  };
  sync::limits lim;
  EXPECT_FALSE(sync::check_untrusted_entries({entry(0100644, "a"), entry(0100755, "b"),
                                              entry(0100664, "c"), entry(0120000, "l")},
                                             {{"l", "a"}}, lim));
  auto err = sync::check_untrusted_entries({entry(0100600, "odd")}, {}, lim);
  EXPECT_NE(message_of(err).find("unknown mode 100600"), std::string::npos)
      << message_of(err);
  err = sync::check_untrusted_entries({entry(0120000, "l")}, {}, lim);
  EXPECT_NE(message_of(err).find("could not be read"), std::string::npos);
  err = sync::check_untrusted_entries({entry(0120000, "l")}, {{"l", ""}}, lim);
  EXPECT_NE(message_of(err).find("empty target"), std::string::npos);
  err = sync::check_untrusted_entries({entry(0120000, "l")}, {{"l", "l/x"}}, lim);
  EXPECT_NE(message_of(err).find("loop"), std::string::npos) << message_of(err);
  err = sync::check_untrusted_entries({entry(0120000, "a/b/l")}, {{"a/b/l", "../../x"}},
                                      lim);
  EXPECT_FALSE(err) << "../../x from a/b stays at the top";
  err = sync::check_untrusted_entries({entry(0120000, "a/b/l")},
                                      {{"a/b/l", "../../../x"}}, lim);
  EXPECT_NE(message_of(err).find("outside"), std::string::npos);
}

} // namespace
} // namespace aloft::test
