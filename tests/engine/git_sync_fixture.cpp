#include "tests/engine/git_sync_fixture.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <ostream>
#include <sstream>

#include "engine/base/error.hpp"

namespace aloft::test {

namespace fs = std::filesystem;

std::ostream& operator<<(std::ostream& os, const path_state& s) {
  if (s.symlink)
    return os << "symlink -> " << s.content;
  return os << (s.exec ? "exec " : "file ") << s.content.size() << " bytes";
}

worktree_state read_worktree(const std::string& dir) {
  worktree_state out;
  std::error_code ec;
  fs::recursive_directory_iterator it{dir, ec}, end;
  for (; it != end; it.increment(ec)) {
    auto rel = it->path().lexically_relative(dir).string();
    if (rel == ".git") {
      it.disable_recursion_pending();
      continue;
    }
    struct stat st;
    if (::lstat(it->path().c_str(), &st) != 0)
      continue;
    if (S_ISLNK(st.st_mode)) {
      path_state s;
      s.symlink = true;
      s.content = fs::read_symlink(it->path()).string();
      out[rel] = s;
    } else if (S_ISREG(st.st_mode)) {
      path_state s;
      s.exec = (st.st_mode & S_IXUSR) != 0;
      s.content = read_file(it->path().string());
      out[rel] = s;
    }
  }
  return out;
}

void write_file(const std::string& path, const std::string& content, bool exec) {
  fs::create_directories(fs::path{path}.parent_path());
  {
    std::ofstream out{path, std::ios::binary | std::ios::trunc};
    out << content;
  }
  ::chmod(path.c_str(), exec ? 0755 : 0644);
}

std::string read_file(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

process_result sh(const std::string& cmd, const std::string& input) {
  process_spec spec;
  spec.argv = {"/bin/sh", "-c", cmd};
  spec.input = input;
  auto r = run_process(spec);
  EXPECT_TRUE(r) << describe(r.error());
  return r ? *r : process_result{};
}

std::string random_bytes(size_t n, uint32_t seed) {
  std::string out(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (auto& c : out) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    c = static_cast<char>(x & 0xff);
  }
  return out;
}

git_sync_fixture::git_sync_fixture() {
  home = tmp.path() + "/home";
  local = tmp.path() + "/local";
  vm = tmp.path() + "/vm/work";
  fs::create_directories(home);
}

process_result git_sync_fixture::git_raw(const std::string& dir,
                                         const std::vector<std::string>& args,
                                         const std::string& input) {
  process_spec spec;
  spec.argv = {"git", "-C", dir};
  spec.argv.insert(spec.argv.end(), args.begin(), args.end());
  auto env = environment_without({"GIT_", "HOME=", "XDG_CONFIG_HOME="});
  for (auto e : {"GIT_CONFIG_NOSYSTEM=1", "GIT_AUTHOR_NAME=User",
                 "GIT_AUTHOR_EMAIL=user@example.com", "GIT_COMMITTER_NAME=User",
                 "GIT_COMMITTER_EMAIL=user@example.com"})
    env.emplace_back(e);
  env.push_back("HOME=" + home);
  env.push_back("XDG_CONFIG_HOME=" + home);
  spec.env = env;
  spec.input = input;
  auto r = run_process(spec);
  EXPECT_TRUE(r) << describe(r.error());
  return r ? *r : process_result{};
}

std::string git_sync_fixture::git(const std::string& dir,
                                  const std::vector<std::string>& args,
                                  const std::string& input) {
  auto r = git_raw(dir, args, input);
  std::string cmd;
  for (auto& a : args)
    cmd += " " + a;
  EXPECT_EQ(r.exit_code, 0) << "git" << cmd << ": " << r.error;
  while (!r.output.empty() && r.output.back() == '\n')
    r.output.pop_back();
  return r.output;
}

void git_sync_fixture::make_repo(const std::string& path,
                                 const std::map<std::string, std::string>& files) {
  fs::create_directories(path);
  git(path, {"-c", "init.defaultBranch=main", "init", "-q"});
  for (auto& [name, content] : files)
    write_file(path + "/" + name, content);
  git(path, {"add", "-A"});
  git(path, {"commit", "-q", "-m", "initial"});
}

sync::snapshot git_sync_fixture::sync_up(const std::string& base) {
  auto snap = sync::snapshot_worktree(local, sync::up_ref(session), "aloft: sync up");
  EXPECT_TRUE(snap) << describe(snap.error());
  if (!snap)
    return {};
  // As the sync actor runs them: one script, preparing (idempotent) and then
  // receiving the pack on stdin; the first one with its index.
  if (base.empty()) {
    auto pack = sync::make_indexed_pack(local, snap->commit);
    EXPECT_TRUE(pack) << describe(pack.error());
    if (!pack)
      return {};
    last_pack_bytes = pack->pack_bytes;
    auto r = sh(sync::vm_prepare_command(vm) + "\n"
                    + sync::vm_install_command(vm, snap->commit, *pack),
                pack->bytes);
    EXPECT_EQ(r.exit_code, 0) << r.error;
    return *snap;
  }
  auto pack = sync::make_pack(local, snap->commit, {base});
  EXPECT_TRUE(pack) << describe(pack.error());
  if (!pack)
    return {};
  last_pack_bytes = pack->size();
  auto r = sh(sync::vm_prepare_command(vm) + "\n"
                  + sync::vm_receive_command(vm, snap->commit, base),
              *pack);
  EXPECT_EQ(r.exit_code, 0) << r.error;
  return *snap;
}

caf::expected<std::string>
git_sync_fixture::sync_down_objects(const std::string& base, const sync::limits& lim,
                                    const std::string& scratch) {
  auto r = sh(sync::vm_snapshot_command(vm, base, scratch));
  if (r.exit_code != 0)
    return make_error(errc::failed_precondition, r.error);
  auto nl = r.output.find('\n');
  if (nl == std::string::npos)
    return make_error(errc::data_loss, "no header");
  std::string commit;
  uint64_t size = 0;
  if (auto err = sync::parse_snapshot_header(r.output.substr(0, nl + 1), commit, size))
    return err;
  std::string_view pack{r.output};
  pack.remove_prefix(nl + 1);
  EXPECT_EQ(pack.size(), size);
  last_pack_bytes = size;
  if (auto err = sync::receive_untrusted_pack(local, pack, commit, base, lim))
    return err;
  return commit;
}

uint64_t git_sync_fixture::object_count(const std::string& repo) {
  auto out = git(repo, {"count-objects", "-v"});
  uint64_t n = 0;
  std::istringstream in{out};
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("count: ", 0) == 0 || line.rfind("in-pack: ", 0) == 0)
      n += std::stoull(line.substr(line.find(' ') + 1));
  }
  return n;
}

} // namespace aloft::test
