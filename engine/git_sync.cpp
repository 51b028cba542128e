#include "engine/git_sync.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>

#include "engine/agent_script.hpp"
#include "engine/base/error.hpp"
#include "engine/process.hpp"

namespace aloft::sync {

namespace {

// -- small pure helpers --------------------------------------------------------

constexpr uint32_t mode_tree = 0040000;
constexpr uint32_t mode_file = 0100644;
constexpr uint32_t mode_exec = 0100755;
constexpr uint32_t mode_group_writable = 0100664; // accepted by git as a file
constexpr uint32_t mode_symlink = 0120000;
constexpr uint32_t mode_gitlink = 0160000;

// A symlink's target is a path; anything longer than PATH_MAX on common
// systems is not one.
constexpr uint64_t max_symlink_bytes = 4096;

const std::string zero_oid(40, '0');

bool is_hex_oid(std::string_view s) {
  return s.size() == 40 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

std::string trim_end(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' '))
    s.pop_back();
  return s;
}

// Paths from a VM go into messages shown on a terminal: no control bytes.
std::string printable(std::string_view s) {
  static const char* hex = "0123456789abcdef";
  std::string out = "'";
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f || c == '\\' || c == '\'') {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  out += "'";
  return out;
}

std::string format_bytes(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  size_t u = 0;
  while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  if (u == 0)
    std::snprintf(buf, sizeof(buf), "%llu B", static_cast<unsigned long long>(n));
  else
    std::snprintf(buf, sizeof(buf), "%.1f %s", v, units[u]);
  return buf;
}

std::vector<std::string> split_nul(std::string_view s) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < s.size()) {
    auto end = s.find('\0', pos);
    if (end == std::string_view::npos)
      end = s.size();
    out.emplace_back(s.substr(pos, end - pos));
    pos = end + 1;
  }
  return out;
}

std::vector<std::string> split_path(std::string_view path) {
  std::vector<std::string> out;
  size_t pos = 0;
  for (;;) {
    auto end = path.find('/', pos);
    if (end == std::string_view::npos) {
      out.emplace_back(path.substr(pos));
      return out;
    }
    out.emplace_back(path.substr(pos, end - pos));
    pos = end + 1;
  }
}

std::string join_path(const std::vector<std::string>& parts, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    if (i > 0)
      out += '/';
    out += parts[i];
  }
  return out;
}

std::string ascii_lower(std::string_view s) {
  std::string out{s};
  for (auto& c : out)
    if (c >= 'A' && c <= 'Z')
      c = static_cast<char>(c - 'A' + 'a');
  return out;
}

bool valid_session_id(const std::string& id) {
  if (id.empty() || id.size() > 128 || id[0] == '.' || id[0] == '-')
    return false;
  if (id.find("..") != std::string::npos)
    return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
           || c == '-' || c == '_' || c == '.';
  });
}

// -- git's own rules for names that alias `.git` ------------------------------
// Ported from git's path.c (is_ntfs_dotgit) and utf8.c (is_hfs_dotgit), so
// that we refuse exactly what git refuses on the platforms it protects.

// Decodes one UTF-8 code point; nullopt on malformed input.
std::optional<uint32_t> next_utf8(std::string_view s, size_t& i) {
  auto c = static_cast<unsigned char>(s[i]);
  int len = c < 0x80         ? 1
            : (c >> 5) == 6  ? 2
            : (c >> 4) == 14 ? 3
            : (c >> 3) == 30 ? 4
                             : 0;
  if (len == 0 || i + len > s.size())
    return std::nullopt;
  uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1f) : len == 3 ? (c & 0x0f) : (c & 0x07);
  for (int k = 1; k < len; ++k) {
    auto cc = static_cast<unsigned char>(s[i + k]);
    if ((cc & 0xc0) != 0x80)
      return std::nullopt;
    cp = (cp << 6) | (cc & 0x3f);
  }
  i += len;
  return cp;
}

bool hfs_ignorable(uint32_t cp) {
  return (cp >= 0x200c && cp <= 0x200f) || (cp >= 0x202a && cp <= 0x202e)
         || (cp >= 0x206a && cp <= 0x206f) || cp == 0xfeff;
}

// HFS+ ignores some code points when comparing names, so ".g\u200cit" opens
// ".git" on a Mac.
bool is_hfs_dotgit(std::string_view name) {
  const char* needle = ".git";
  size_t i = 0, k = 0;
  while (i < name.size()) {
    auto cp = next_utf8(name, i);
    if (!cp)
      return false;
    if (hfs_ignorable(*cp))
      continue;
    if (k == 4 || *cp > 127)
      return false;
    auto lower = *cp >= 'A' && *cp <= 'Z' ? *cp - 'A' + 'a' : *cp;
    if (lower != static_cast<uint32_t>(needle[k]))
      return false;
    ++k;
  }
  return k == 4;
}

// NTFS drops trailing dots and spaces, opens alternate data streams after a
// colon (".git::$INDEX_ALLOCATION") and has 8.3 short names ("git~1").
bool is_ntfs_dotgit(std::string_view name) {
  size_t i;
  auto lower = ascii_lower(name);
  if (lower.compare(0, 4, ".git") == 0)
    i = 4;
  else if (lower.compare(0, 5, "git~1") == 0)
    i = 5;
  else
    return false;
  for (; i < lower.size(); ++i) {
    char c = lower[i];
    if (c == ':' || c == '\\')
      return true;
    if (c != '.' && c != ' ')
      return false;
  }
  return true;
}

// Why a path component names git's own directory, or nullptr.
const char* dotgit_reason(std::string_view component) {
  if (component == ".git")
    return "a component is .git";
  if (ascii_lower(component) == ".git")
    return "a component is .git in another case";
  if (is_ntfs_dotgit(component))
    return "a component is an NTFS alias of .git (trailing dots or spaces, a stream, "
           "or the short name git~1)";
  if (is_hfs_dotgit(component))
    return "a component is an HFS+ alias of .git (ignorable characters)";
  // On NTFS a backslash separates components too.
  if (component.find('\\') != std::string_view::npos) {
    size_t pos = 0;
    for (;;) {
      auto end = component.find('\\', pos);
      auto piece = component.substr(pos, end == std::string_view::npos ? end : end - pos);
      if (ascii_lower(piece) == ".git" || is_ntfs_dotgit(piece))
        return "a backslash-separated component is .git (an NTFS alias)";
      if (end == std::string_view::npos)
        break;
      pos = end + 1;
    }
  }
  return nullptr;
}

caf::error refuse(const std::string& path, const std::string& rule) {
  return make_error(errc::permission_denied,
                    "refused " + printable(path) + " from the VM: " + rule);
}

// Follows the symlink at `link` through the other symlinks of the same tree
// (`links`: path -> target) and says why it leaves the worktree or enters
// .git; empty when it stays inside.
std::string symlink_escape(const std::string& link,
                           const std::map<std::string, std::string>& links) {
  auto parts = split_path(link);
  parts.pop_back();
  std::vector<std::string> at = parts;
  const auto& target = links.at(link);
  if (target.empty())
    return "a symlink with an empty target";
  if (target[0] == '/')
    return "a symlink to an absolute path (" + printable(target) + ")";
  std::deque<std::string> todo;
  for (auto& c : split_path(target))
    todo.push_back(c);
  int hops = 0;
  while (!todo.empty()) {
    auto c = std::move(todo.front());
    todo.pop_front();
    if (c.empty() || c == ".")
      continue;
    if (c == "..") {
      if (at.empty())
        return "a symlink pointing outside the worktree (" + printable(target) + ")";
      at.pop_back();
      continue;
    }
    if (dotgit_reason(c))
      return "a symlink pointing into .git (" + printable(target) + ")";
    at.push_back(c);
    auto it = links.find(join_path(at, at.size()));
    if (it == links.end())
      continue;
    if (++hops > 40)
      return "a symlink loop";
    if (it->second.empty() || it->second[0] == '/')
      return "a symlink pointing outside the worktree through " + printable(it->first);
    at.pop_back();
    auto next = split_path(it->second);
    todo.insert(todo.begin(), next.begin(), next.end());
  }
  return {};
}

// The rules of check_untrusted_entries, applied to the entries for which
// `selected` is true (all when null); the others only serve as context
// (symlinks that the selected ones might go through).
caf::error check_entries(const std::vector<tree_entry>& entries,
                         const std::map<std::string, std::string>& symlink_targets,
                         const limits& lim, const std::vector<bool>* selected) {
  if (entries.size() > lim.max_files)
    return make_error(errc::failed_precondition, "the VM's tree has more than "
                                                    + std::to_string(lim.max_files)
                                                    + " files (sync.max_files in settings.json)");
  std::set<std::string> links;
  std::map<std::string, std::string> links_folded; // folded -> as in the tree
  for (auto& e : entries)
    if (e.mode == mode_symlink) {
      links.insert(e.path);
      links_folded.emplace(ascii_lower(e.path), e.path);
    }
  uint64_t total = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    if (selected && !(*selected)[i])
      continue;
    auto& e = entries[i];
    if (auto err = check_untrusted_path(e.path))
      return err;
    switch (e.mode) {
    case mode_file:
    case mode_exec:
    case mode_group_writable:
    case mode_symlink:
      if (e.type != "blob")
        return refuse(e.path, "an entry of type " + e.type + " with a file mode");
      break;
    case mode_gitlink:
      return refuse(e.path, "a submodule (gitlink); submodules are not synced");
    default: {
      char buf[16];
      std::snprintf(buf, sizeof(buf), "%06o", e.mode);
      return refuse(e.path, std::string{"an entry of unknown mode "} + buf);
    }
    }
    if (e.size > lim.max_file_bytes)
      return make_error(errc::failed_precondition,
                        "refused " + printable(e.path)
                            + " from the VM: " + format_bytes(e.size)
                            + ", over the limit of " + format_bytes(lim.max_file_bytes)
                            + " (sync.max_file_bytes in settings.json)");
    total += e.size;
    if (total > lim.max_tree_bytes)
      return make_error(errc::failed_precondition, "the VM's tree is over "
                                                      + format_bytes(lim.max_tree_bytes)
                                                      + " (sync.max_tree_bytes in settings.json)");
    if (e.mode == mode_symlink) {
      auto it = symlink_targets.find(e.path);
      if (it == symlink_targets.end())
        return refuse(e.path, "a symlink whose target could not be read");
      auto why = symlink_escape(e.path, symlink_targets);
      if (!why.empty())
        return refuse(e.path, why);
      auto name = split_path(e.path).back();
      auto folded = ascii_lower(name);
      for (auto special : {".gitmodules", ".gitattributes", ".gitignore", ".mailmap"})
        if (folded == special)
          return refuse(e.path, "a symlink in place of a file git reads (" + name + ")");
    }
    // A path under a symlink of the same tree would be written through it
    // (git trees can hold a symlink and a directory of the same name). The
    // case-folded check covers case-insensitive file systems.
    if (!links.empty()) {
      auto parts = split_path(e.path);
      for (size_t n = 1; n < parts.size(); ++n) {
        auto prefix = join_path(parts, n);
        auto folded = links_folded.find(ascii_lower(prefix));
        if (links.count(prefix) || folded != links_folded.end())
          return refuse(e.path,
                        "a path under the symlink "
                            + printable(links.count(prefix) ? prefix : folded->second)
                            + " (a write through a symlink)");
      }
    }
  }
  return {};
}

} // namespace

// -- temporary directories and snapshots ----------------------------------------

// Types local_state (which the header names) is made of.
namespace detail {

// A directory made with mkdtemp, removed with its contents on every path
// but one: a process killed outright (kill -9, a power cut) leaves it, in
// the user's .git. So its maker holds a lock on a file in it for as long as
// it lives (the kernel lets go of the lock when the process dies, whatever
// its pid becomes later), and making one sweeps the leftovers of its kind
// whose lock nobody holds.
class scratch_dir {
public:
  static caf::expected<std::unique_ptr<scratch_dir>> make(const std::string& parent,
                                                          const std::string& prefix) {
    sweep(parent, prefix);
    std::string tmpl = parent + "/" + prefix + "XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr)
      return from_errno(errno, "cannot create a temporary directory in " + parent);
    std::unique_ptr<scratch_dir> dir{new scratch_dir(tmpl)};
    dir->lock_fd_ = ::open((tmpl + "/" + lock_name).c_str(),
                           O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (dir->lock_fd_ < 0 || ::flock(dir->lock_fd_, LOCK_EX | LOCK_NB) != 0)
      return from_errno(errno, "cannot lock the temporary directory " + tmpl);
    return dir;
  }

  // Removes `parent/<prefix>*` whose lock is free (its maker is gone) or
  // that has no lock file (an older Aloft's, or a maker killed before it
  // made one). Only those untouched for an hour: a lock on a shared file
  // system may not be seen from every machine; an hour of litter costs
  // nothing.
  static void sweep(const std::string& parent, const std::string& prefix) {
    std::error_code ec;
    auto now = std::filesystem::file_time_type::clock::now();
    for (auto it = std::filesystem::directory_iterator{parent, ec};
         !ec && it != std::filesystem::directory_iterator{}; it.increment(ec)) {
      auto name = it->path().filename().string();
      if (name.compare(0, prefix.size(), prefix) != 0 || !it->is_directory(ec))
        continue;
      auto age = now - it->last_write_time(ec);
      if (ec || age < std::chrono::hours{1}) {
        ec.clear();
        continue;
      }
      auto lock = it->path().string() + "/" + lock_name;
      int fd = ::open(lock.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
      bool gone = fd < 0 ? errno == ENOENT : ::flock(fd, LOCK_EX | LOCK_NB) == 0;
      if (gone)
        std::filesystem::remove_all(it->path(), ec);
      if (fd >= 0)
        ::close(fd);
      ec.clear();
    }
  }

  ~scratch_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
    if (lock_fd_ >= 0)
      ::close(lock_fd_);
  }
  scratch_dir(const scratch_dir&) = delete;
  scratch_dir& operator=(const scratch_dir&) = delete;
  const std::string& path() const { return path_; }

private:
  static constexpr const char* lock_name = "aloft.lock";

  explicit scratch_dir(std::string path) : path_(std::move(path)) {}
  std::string path_;
  int lock_fd_ = -1;
};

struct repo_paths {
  std::string top;     // the worktree's top level
  std::string git_dir; // this worktree's git directory
  std::string index;   // the user's index file
  std::string objects; // the object store (shared by linked worktrees)
  std::string head;    // HEAD's commit when asked for; empty when unborn
};

// A snapshot and the temporary index it was made with (its stat data fresh:
// an apply checks out from it).
struct snapshot_work {
  repo_paths paths;
  std::unique_ptr<scratch_dir> scratch;
  std::string index;
  std::string head; // empty for an unborn HEAD
  snapshot snap;
  std::vector<tree_entry> entries; // of the snapshot, sizes as on disk
};

} // namespace detail
using detail::repo_paths;
using detail::scratch_dir;
using detail::snapshot_work;

namespace {

// -- running git ------------------------------------------------------------------

struct git_env {
  std::string index_file; // GIT_INDEX_FILE: a temporary index
  std::string object_dir; // GIT_OBJECT_DIRECTORY: a quarantine
  std::string alternates; // GIT_ALTERNATE_OBJECT_DIRECTORIES
};

struct git_call {
  git_env env;
  std::vector<std::string> config; // "name=value" for this call only (-c)
  std::string_view input;
  std::vector<int> ok_codes{0};
  errc code = errc::internal; // the code of the error when git fails
  std::function<bool(std::string_view)> on_output;
};

// Nothing from the caller's environment steers git (GIT_DIR, GIT_INDEX_FILE
// and friends would redirect every call), the system config is skipped, no
// prompt can block, and commits get a fixed identity so that a machine with
// no git identity configured still works.
std::vector<std::string> git_environment(const git_env& e) {
  auto env = environment_without({"GIT_", "LC_ALL=", "LANGUAGE="});
  env.emplace_back("GIT_CONFIG_NOSYSTEM=1");
  env.emplace_back("GIT_TERMINAL_PROMPT=0");
  env.emplace_back("GIT_OPTIONAL_LOCKS=0");
  env.emplace_back("LC_ALL=C");
  env.emplace_back("GIT_AUTHOR_NAME=Aloft");
  env.emplace_back("GIT_AUTHOR_EMAIL=aloft@localhost");
  env.emplace_back("GIT_COMMITTER_NAME=Aloft");
  env.emplace_back("GIT_COMMITTER_EMAIL=aloft@localhost");
  if (!e.index_file.empty())
    env.emplace_back("GIT_INDEX_FILE=" + e.index_file);
  if (!e.object_dir.empty())
    env.emplace_back("GIT_OBJECT_DIRECTORY=" + e.object_dir);
  if (!e.alternates.empty())
    env.emplace_back("GIT_ALTERNATE_OBJECT_DIRECTORIES=" + e.alternates);
  return env;
}

// The one place where a failed git call becomes an error: "git <command>:
// <what git said>".
caf::error git_failure(const std::vector<std::string>& args, const process_result& r,
                       errc code) {
  auto said = trim_end(r.error);
  if (said.size() > 2000)
    said = said.substr(0, 2000) + "...";
  std::string msg = "git " + (args.empty() ? std::string{} : args[0]) + ": ";
  msg += said.empty() ? "exit code " + std::to_string(r.exit_code) : said;
  return make_error(code, std::move(msg));
}

caf::expected<process_result> run_git(const std::string& dir,
                                      const std::vector<std::string>& args,
                                      const git_call& call = {}) {
  process_spec spec;
  // Hooks and fsmonitor are programs named by config; sync never runs them.
  spec.argv = {"git", "-C", dir, "-c", "core.hooksPath=/dev/null", "-c",
               "core.fsmonitor=false", "-c", "core.splitIndex=false", "-c",
               "advice.addEmbeddedRepo=false", "-c", "gc.auto=0",
               // Parallel checkout (above git's 100-file threshold only).
               "-c", "checkout.workers=0"};
  for (auto& c : call.config) {
    spec.argv.emplace_back("-c");
    spec.argv.push_back(c);
  }
  spec.argv.insert(spec.argv.end(), args.begin(), args.end());
  spec.env = git_environment(call.env);
  spec.input = call.input;
  spec.on_output = call.on_output;
  auto r = run_process(spec);
  if (!r)
    return annotate(r.error(), "git " + (args.empty() ? std::string{} : args[0]));
  if (std::find(call.ok_codes.begin(), call.ok_codes.end(), r->exit_code)
      == call.ok_codes.end())
    return git_failure(args, *r, call.code);
  return r;
}

// Runs git and returns its stdout without the final newline.
caf::expected<std::string> git_text(const std::string& dir,
                                    const std::vector<std::string>& args,
                                    const git_call& call = {}) {
  auto r = run_git(dir, args, call);
  if (!r)
    return r.error();
  return trim_end(std::move(r->output));
}

// Where the repository of `worktree` keeps things, and with `with_head` the
// commit HEAD points at, in one `git rev-parse`.
caf::expected<repo_paths> locate_repo(const std::string& worktree,
                                      bool with_head = false) {
  struct stat st;
  if (::stat(worktree.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return make_error(errc::failed_precondition,
                      worktree + " is not a directory: nothing would be synced");
  git_call call;
  call.ok_codes = {0, 1, 128};
  std::vector<std::string> args{"rev-parse",           "--path-format=absolute",
                                "--show-toplevel",     "--absolute-git-dir",
                                "--git-path",          "index",
                                "--git-path",          "objects",
                                "--show-object-format"};
  if (with_head) {
    // Exits 1 (quietly, after the rest) when HEAD has no commit yet.
    for (auto a : {"-q", "--verify", "HEAD^{commit}"})
      args.emplace_back(a);
  }
  auto r = run_git(worktree, args, call);
  if (!r)
    return r.error();
  if (r->exit_code != 0 && (r->exit_code != 1 || !with_head)) {
    auto said = trim_end(r->error);
    if (said.find("not a git repository") != std::string::npos)
      return make_error(errc::failed_precondition,
                        worktree
                            + " is not a git repository: nothing would be synced; "
                              "run `git init` there (and commit or not) first");
    if (said.find("work tree") != std::string::npos)
      return make_error(errc::failed_precondition,
                        worktree + " is a bare repository: there is no worktree to sync");
    return git_failure({"rev-parse"}, *r, errc::failed_precondition);
  }
  std::vector<std::string> lines;
  std::istringstream in{r->output};
  for (std::string line; std::getline(in, line);)
    lines.push_back(line);
  if (lines.size() != (r->exit_code == 0 && with_head ? 6u : 5u))
    return make_error(errc::internal, "git rev-parse: unexpected output for " + worktree);
  if (lines[4] != "sha1")
    return make_error(errc::failed_precondition,
                      worktree + " uses " + lines[4]
                          + " object names; only SHA-1 repositories can be synced");
  repo_paths out{lines[0], lines[1], lines[2], lines[3], {}};
  if (lines.size() == 6) {
    if (!is_hex_oid(lines[5]))
      return make_error(errc::internal,
                        "git rev-parse: unexpected output for " + worktree);
    out.head = lines[5];
  }
  return out;
}

// `git ls-tree -r -z` of `commit`, streamed, stopping past `max_entries`.
// Sizes (`-l`) make git read every blob's header: about 20 us each for loose
// objects, so callers that need no sizes leave them out.
caf::expected<std::vector<tree_entry>> list_tree(const std::string& repo,
                                                 const std::string& commit,
                                                 const git_env& env, uint64_t max_entries,
                                                 bool with_sizes = true) {
  std::vector<tree_entry> entries;
  std::string pending;
  std::string parse_error;
  bool too_many = false;
  git_call call;
  call.env = env;
  call.on_output = [&](std::string_view piece) {
    pending.append(piece);
    size_t pos = 0;
    for (;;) {
      auto end = pending.find('\0', pos);
      if (end == std::string::npos)
        break;
      std::string_view rec{pending.data() + pos, end - pos};
      pos = end + 1;
      // "<mode> SP <type> SP <object> [SP+ <size>] TAB <path>"
      auto tab = rec.find('\t');
      if (tab == std::string_view::npos) {
        parse_error = "git ls-tree: unexpected output";
        return false;
      }
      std::istringstream fields{std::string{rec.substr(0, tab)}};
      std::string mode, size;
      tree_entry e;
      fields >> mode >> e.type >> e.object >> size;
      if (e.object.empty() || (with_sizes && size.empty())) {
        parse_error = "git ls-tree: unexpected output";
        return false;
      }
      e.mode = static_cast<uint32_t>(std::strtoul(mode.c_str(), nullptr, 8));
      e.size = size.empty() || size == "-" ? 0 : std::strtoull(size.c_str(), nullptr, 10);
      e.path = std::string{rec.substr(tab + 1)};
      entries.push_back(std::move(e));
      if (entries.size() > max_entries) {
        too_many = true;
        return false;
      }
    }
    pending.erase(0, pos);
    return true;
  };
  std::vector<std::string> args{"ls-tree", "-r", "-z", "--full-tree", commit};
  if (with_sizes)
    args.insert(args.begin() + 2, "-l");
  auto r = run_git(repo, args, call);
  if (too_many)
    return make_error(errc::failed_precondition,
                      "the tree of " + commit + " has more than "
                          + std::to_string(max_entries) + " files (sync.max_files in settings.json)");
  if (!parse_error.empty())
    return make_error(errc::internal, parse_error);
  if (!r)
    return r.error();
  return entries;
}

// Reads small blobs (symlink targets) in one `git cat-file --batch`.
caf::expected<std::map<std::string, std::string>>
read_blobs(const std::string& repo, const git_env& env,
           const std::vector<std::string>& oids) {
  std::map<std::string, std::string> out;
  if (oids.empty())
    return out;
  std::string input;
  for (auto& o : oids)
    input += o + "\n";
  git_call call;
  call.env = env;
  call.input = input;
  auto r = run_git(repo, {"cat-file", "--batch"}, call);
  if (!r)
    return r.error();
  const auto& s = r->output;
  size_t pos = 0;
  while (pos < s.size()) {
    auto nl = s.find('\n', pos);
    if (nl == std::string::npos)
      break;
    std::istringstream header{s.substr(pos, nl - pos)};
    std::string oid, type;
    uint64_t size = 0;
    header >> oid >> type >> size;
    if (type != "blob" || nl + 1 + size > s.size())
      return make_error(errc::data_loss, "git cat-file: object " + oid + " is " + type);
    out[oid] = s.substr(nl + 1, size);
    pos = nl + 1 + size + 1;
  }
  return out;
}

// The symlink targets of `entries` (path -> target), refusing oversize ones.
caf::expected<std::map<std::string, std::string>>
symlink_targets_of(const std::string& repo, const git_env& env,
                   const std::vector<tree_entry>& entries) {
  std::vector<std::string> oids;
  for (auto& e : entries)
    if (e.mode == mode_symlink) {
      if (e.size > max_symlink_bytes)
        return refuse(e.path, "a symlink target longer than 4096 bytes");
      oids.push_back(e.object);
    }
  auto blobs = read_blobs(repo, env, oids);
  if (!blobs)
    return blobs.error();
  std::map<std::string, std::string> targets;
  for (auto& e : entries)
    if (e.mode == mode_symlink)
      targets[e.path] = (*blobs)[e.object];
  return targets;
}

tree_stats stats_from(const std::vector<tree_entry>& entries) {
  tree_stats st;
  std::vector<std::pair<std::string, uint64_t>> sizes;
  for (auto& e : entries) {
    if (e.type != "blob")
      continue;
    ++st.files;
    st.bytes += e.size;
    sizes.emplace_back(e.path, e.size);
  }
  auto n = std::min<size_t>(10, sizes.size());
  std::partial_sort(sizes.begin(), sizes.begin() + n, sizes.end(), [](auto& a, auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  sizes.resize(n);
  st.largest = std::move(sizes);
  return st;
}

// Copies the user's index so the snapshot starts from its stat data (git
// then hashes only files that changed); the copy keeps the original's mtime
// so that git's racy-entry check judges it exactly as it judges the original.
caf::error copy_index(const std::string& from, const std::string& to) {
  int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0)
    return from_errno(errno, "cannot read the index " + from);
  struct stat st;
  if (::fstat(in, &st) != 0) {
    auto err = from_errno(errno, "cannot stat the index " + from);
    ::close(in);
    return err;
  }
  int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (out < 0) {
    auto err = from_errno(errno, "cannot create " + to);
    ::close(in);
    return err;
  }
  char buf[1 << 16];
  caf::error err;
  for (;;) {
    auto n = ::read(in, buf, sizeof(buf));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      err = from_errno(errno, "cannot read the index " + from);
      break;
    }
    if (n == 0)
      break;
    for (ssize_t done = 0; done < n;) {
      auto w = ::write(out, buf + done, static_cast<size_t>(n - done));
      if (w < 0 && errno == EINTR)
        continue;
      if (w < 0) {
        err = from_errno(errno, "cannot write " + to);
        break;
      }
      done += w;
    }
    if (err)
      break;
  }
  if (!err) {
    struct timespec times[2] = {st.st_atim, st.st_mtim};
    ::futimens(out, times);
  }
  ::close(in);
  ::close(out);
  return err;
}

// Appends the whole file at `path` to `out`.
caf::error append_file(const std::string& path, std::string& out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return from_errno(errno, "cannot read " + path);
  struct stat st;
  if (::fstat(fd, &st) == 0)
    out.reserve(out.size() + static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  caf::error err;
  for (;;) {
    auto n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      err = from_errno(errno, "cannot read " + path);
    if (n <= 0)
      break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return err;
}

// The entries of `git ls-files -s -v -z` output ("<tag> <mode> <object>
// <stage>\t<path>" each) into `entries`, and the paths of gitlinks into
// `gitlinks` ("\0"-terminated, for update-index -z). Returns whether an
// entry is marked "assume unchanged" (a lowercase tag).
caf::expected<bool> parse_staged(std::string_view out, std::vector<tree_entry>& entries,
                                 std::string& gitlinks) {
  bool assumed = false;
  size_t pos = 0;
  while (pos < out.size()) {
    auto end = out.find('\0', pos);
    if (end == std::string_view::npos)
      end = out.size();
    auto rec = out.substr(pos, end - pos);
    pos = end + 1;
    auto tab = rec.find('\t');
    // "H 100644 <40 hex> 0": the mode has 6 digits, the object 40.
    if (tab != 2 + 6 + 1 + 40 + 2 || rec[1] != ' ' || rec[8] != ' ' || rec[49] != ' ')
      return make_error(errc::internal, "git ls-files: unexpected output");
    if (rec[0] >= 'a' && rec[0] <= 'z')
      assumed = true;
    tree_entry e;
    for (char c : rec.substr(2, 6)) {
      if (c < '0' || c > '7')
        return make_error(errc::internal, "git ls-files: unexpected output");
      e.mode = e.mode * 8 + static_cast<uint32_t>(c - '0');
    }
    auto path = rec.substr(tab + 1);
    if (e.mode == mode_gitlink) {
      gitlinks.append(path);
      gitlinks += '\0';
      continue;
    }
    e.object = std::string{rec.substr(9, 40)};
    e.type = "blob";
    e.path = std::string{path};
    entries.push_back(std::move(e));
  }
  return assumed;
}

// Sets each entry's size from the file at its path under `top`; the indexes
// of the entries without a file of their kind there (not checked out: a
// sparse checkout) go to `unsized`.
void size_from_disk(const std::string& top, std::vector<tree_entry>& entries,
                    std::vector<size_t>& unsized) {
  int dir = ::open(top.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  for (size_t i = 0; i < entries.size(); ++i) {
    auto& e = entries[i];
    struct stat st;
    bool is_link = e.mode == mode_symlink;
    if (dir >= 0 && ::fstatat(dir, e.path.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0
        && (is_link ? S_ISLNK(st.st_mode) : S_ISREG(st.st_mode)))
      e.size = static_cast<uint64_t>(st.st_size);
    else
      unsized.push_back(i);
  }
  if (dir >= 0)
    ::close(dir);
}

caf::expected<snapshot_work> take_snapshot(const std::string& worktree,
                                           const std::string& ref,
                                           const std::string& message) {
  snapshot_work w;
  auto paths = locate_repo(worktree, true);
  if (!paths)
    return paths.error();
  w.paths = std::move(*paths);
  w.head = w.paths.head;
  const auto& top = w.paths.top;
  auto scratch = scratch_dir::make(w.paths.git_dir, "aloft-snapshot-");
  if (!scratch)
    return scratch.error();
  w.scratch = std::move(*scratch);
  w.index = w.scratch->path() + "/index";
  git_call in_temp;
  in_temp.env.index_file = w.index;

  // From a copy of the user's index, git hashes only the files that changed
  // since it was written; from HEAD it would hash every one.
  struct stat st;
  bool copied = false;
  if (::stat(w.paths.index.c_str(), &st) == 0) {
    if (auto err = copy_index(w.paths.index, w.index))
      return err;
    copied = true;
  }
  std::string gitlinks;
  for (;;) {
    if (!copied && !w.head.empty())
      if (auto r = run_git(top, {"read-tree", w.head}, in_temp); !r)
        return r.error();
    if (auto r = run_git(top, {"add", "-A"}, in_temp); !r)
      return r.error();
    auto staged = run_git(top, {"ls-files", "-s", "-v", "-z"}, in_temp);
    if (!staged)
      return staged.error();
    w.entries.clear();
    gitlinks.clear();
    auto assumed = parse_staged(staged->output, w.entries, gitlinks);
    if (!assumed)
      return assumed.error();
    if (!*assumed || !copied)
      break;
    // The user marked files "assume unchanged", which `git add` skips: take
    // them as they are on disk, starting over from HEAD.
    ::unlink(w.index.c_str());
    copied = false;
  }
  // Submodules and nested repositories are not synced: a gitlink in a
  // snapshot would only be an empty directory elsewhere.
  for (auto& p : split_nul(gitlinks))
    w.snap.notes.push_back("submodule or nested repository " + printable(p)
                           + ": not synced (its files stay local)");
  // The sizes come from the files themselves: asking git (ls-tree -l) would
  // read the header of every object, a cost that grows with the tree. They
  // are read while git writes the tree and the commit (which do not need
  // them; the entries are not touched meanwhile).
  auto sizing = std::async(std::launch::async, [&top, &entries = w.entries] {
    std::vector<size_t> unsized;
    size_from_disk(top, entries, unsized);
    return unsized;
  });
  if (!gitlinks.empty()) {
    git_call remove = in_temp;
    remove.input = gitlinks;
    if (auto r =
            run_git(top, {"update-index", "--force-remove", "-z", "--stdin"}, remove);
        !r)
      return r.error();
  }
  auto tree = git_text(top, {"write-tree"}, in_temp);
  if (!tree)
    return tree.error();
  std::vector<std::string> commit_args{"commit-tree", *tree, "-m",
                                       message.empty() ? "aloft: snapshot" : message};
  if (!w.head.empty()) {
    commit_args.push_back("-p");
    commit_args.push_back(w.head);
  }
  auto commit = git_text(top, commit_args);
  if (!commit)
    return commit.error();
  if (!ref.empty())
    if (auto r = run_git(top, {"update-ref", "-m", "aloft: snapshot", ref, *commit}); !r)
      return r.error();
  auto unsized = sizing.get();
  if (!unsized.empty()) {
    std::string oids;
    for (auto i : unsized)
      oids += w.entries[i].object + "\n";
    git_call check;
    check.input = oids;
    auto sizes = run_git(top, {"cat-file", "--batch-check=%(objectsize)"}, check);
    if (!sizes)
      return sizes.error();
    std::istringstream in{sizes->output};
    for (auto i : unsized)
      in >> w.entries[i].size;
  }
  w.snap.commit = *commit;
  w.snap.tree = *tree;
  w.snap.top = top;
  w.snap.stats = stats_from(w.entries);
  return w;
}

caf::error check_oid(const std::string& oid, const char* what) {
  if (!is_hex_oid(oid))
    return make_error(errc::invalid_argument,
                      std::string{what} + " is not a commit id: " + printable(oid));
  return {};
}

// One change between two trees from `git diff-tree -r -z --no-renames`.
struct tree_change {
  uint32_t old_mode = 0;
  uint32_t new_mode = 0; // 0 when deleted
  std::string old_oid;
  std::string new_oid;
  std::string path;
};

caf::expected<std::vector<tree_change>> diff_trees(const std::string& top,
                                                   const std::string& from,
                                                   const std::string& to,
                                                   const git_env& env = {}) {
  git_call call;
  call.env = env;
  call.code = errc::data_loss;
  auto r = run_git(top, {"diff-tree", "-r", "-z", "--no-renames", from, to}, call);
  if (!r)
    return r.error();
  auto recs = split_nul(r->output);
  std::vector<tree_change> out;
  for (size_t i = 0; i + 1 < recs.size(); i += 2) {
    // ":<old mode> <new mode> <old oid> <new oid> <status>"
    std::istringstream in{recs[i].substr(recs[i].empty() ? 0 : 1)};
    std::string om, nm, oo, no, status;
    in >> om >> nm >> oo >> no >> status;
    tree_change c;
    c.old_mode = static_cast<uint32_t>(std::strtoul(om.c_str(), nullptr, 8));
    c.new_mode = static_cast<uint32_t>(std::strtoul(nm.c_str(), nullptr, 8));
    c.old_oid = oo;
    c.new_oid = no;
    c.path = recs[i + 1];
    out.push_back(std::move(c));
  }
  return out;
}

bool is_under(const std::string& path, const std::string& dir) {
  return path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0
         && path[dir.size()] == '/';
}

// Whether `path` and some member of `set` are the same or one is inside the
// other.
bool related_to_any(const std::string& path, const std::set<std::string>& set) {
  if (set.count(path))
    return true;
  auto parts = split_path(path);
  for (size_t n = 1; n < parts.size(); ++n)
    if (set.count(join_path(parts, n)))
      return true;
  auto it = set.lower_bound(path + "/");
  return it != set.end() && is_under(*it, path);
}

// What in the local worktree would make writing `path` unsafe or lossy:
// a symlink or file standing where a directory must go (a write through a
// symlink), or a file git does not know about (ignored) in the way. Empty
// when the path can be written. `replaced` holds the paths this apply
// removes or replaces, which git clears before writing.
std::string local_obstacle(const std::string& top, const std::string& path,
                           const std::set<std::string>& ours_paths,
                           const std::set<std::string>& replaced) {
  auto parts = split_path(path);
  struct stat st;
  for (size_t n = 1; n < parts.size(); ++n) {
    auto prefix = join_path(parts, n);
    if (::lstat((top + "/" + prefix).c_str(), &st) != 0)
      return {};
    if (S_ISDIR(st.st_mode))
      continue;
    if (ours_paths.count(prefix) && replaced.count(prefix))
      return {};
    return S_ISLNK(st.st_mode) ? "local symlink " + printable(prefix) + " in the way"
                               : "local file " + printable(prefix) + " in the way";
  }
  if (::lstat((top + "/" + path).c_str(), &st) == 0 && !ours_paths.count(path))
    return "an ignored local file is in the way";
  return {};
}

caf::expected<std::string> next_local_ref(const std::string& top,
                                          const std::string& session) {
  auto prefix = "refs/aloft/sessions/" + session + "/";
  auto refs = git_text(top, {"for-each-ref", "--format=%(refname)", prefix});
  if (!refs)
    return refs.error();
  uint64_t next = 1;
  std::istringstream in{*refs};
  for (std::string line; std::getline(in, line);) {
    auto name = line.substr(std::min(line.size(), prefix.size()));
    if (name.compare(0, 6, "local-") != 0)
      continue;
    auto digits = name.substr(6);
    if (digits.empty() || digits.size() > 18
        || !std::all_of(digits.begin(), digits.end(), ::isdigit))
      continue;
    next = std::max<uint64_t>(next, std::stoull(digits) + 1);
  }
  return prefix + "local-" + std::to_string(next);
}

caf::error check_session(const std::string& session) {
  if (!valid_session_id(session))
    return make_error(errc::invalid_argument,
                      "not a session id usable in a ref name: " + printable(session));
  return {};
}

// The merge of `ours` and `theirs` (its merge base is `base`): the merged
// tree and every path touched by a conflict, including the other paths a
// conflict message names (a file/directory conflict moves a file aside to
// "path~<commit>", which alone would not say that "path" is in conflict).
struct merge_outcome {
  std::string tree;
  std::set<std::string> conflicts;
};

caf::expected<merge_outcome> merge_trees(const std::string& top, const std::string& ours,
                                         const std::string& theirs) {
  git_call call;
  call.ok_codes = {0, 1};
  auto r = run_git(
      top,
      {"merge-tree", "--write-tree", "--name-only", "--messages", "-z", ours, theirs},
      call);
  if (!r)
    return r.error();
  // "<tree>\0" then conflicted paths, each "\0"-terminated, then "\0" and the
  // messages: "<n>\0<path>\0...<path>\0<type>\0<message>\0" per record.
  const auto& s = r->output;
  merge_outcome out;
  auto end = s.find('\0');
  if (end == std::string::npos)
    return make_error(errc::internal, "git merge-tree: unexpected output");
  out.tree = s.substr(0, end);
  if (!is_hex_oid(out.tree))
    return make_error(errc::internal, "git merge-tree: unexpected output");
  size_t pos = end + 1;
  auto next = [&](std::string& field) {
    if (pos >= s.size())
      return false;
    auto e = s.find('\0', pos);
    if (e == std::string::npos)
      e = s.size();
    field = s.substr(pos, e - pos);
    pos = e + 1;
    return true;
  };
  std::string field;
  while (next(field) && !field.empty())
    out.conflicts.insert(field);
  while (next(field)) {
    auto n = std::strtoull(field.c_str(), nullptr, 10);
    std::vector<std::string> paths;
    for (uint64_t i = 0; i < n && next(field); ++i)
      paths.push_back(field);
    std::string type, message;
    if (!next(type) || !next(message))
      break;
    if (type.compare(0, 8, "CONFLICT") == 0)
      for (auto& p : paths)
        out.conflicts.insert(p);
  }
  if (r->exit_code == 1 && out.conflicts.empty())
    return make_error(errc::internal, "git merge-tree: conflicts without paths");
  return out;
}

std::string vm_preamble() {
  return "export GIT_AUTHOR_NAME=Aloft GIT_AUTHOR_EMAIL=aloft@localhost "
         "GIT_COMMITTER_NAME=Aloft GIT_COMMITTER_EMAIL=aloft@localhost "
         "GIT_TERMINAL_PROMPT=0 GIT_CONFIG_NOSYSTEM=1 LC_ALL=C\n"
         "unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE GIT_OBJECT_DIRECTORY "
         "GIT_ALTERNATE_OBJECT_DIRECTORIES GIT_COMMON_DIR GIT_NAMESPACE\n"
         "fail() { echo \"aloft: $*\" >&2; exit 3; }\n"
         "g0() { git -c core.hooksPath=/dev/null -c core.fsmonitor=false "
         "-c core.splitIndex=false -c advice.addEmbeddedRepo=false -c gc.auto=0 "
         "-c checkout.workers=0 \"$@\"; }\n"
         // A refresh of the index left running in the background by a
         // fresh checkout holds index.lock: git run meanwhile would fail.
         // Wait for it (at most 3 s; a marker left by a killed refresh is
         // then removed).
         "settle() { f=\"${W:-.}/.git/aloft-refresh\"; [ -f \"$f\" ] || return 0; i=0; "
         "while [ -f \"$f\" ] && [ $i -lt 300 ]; do sleep 0.01; i=$((i + 1)); done; "
         "rm -f \"$f\"; }\n"
         "g() { case $1 in update-ref|rev-parse|cat-file|show-ref|for-each-ref|config|"
         "hash-object|rev-list|pack-objects|index-pack|unpack-objects|commit-tree|mktree) ;; "
         "*) settle ;; esac; g0 \"$@\"; }\n";
}

} // namespace

// -- public ------------------------------------------------------------------------

std::string up_ref(const std::string& session) {
  return "refs/aloft/sessions/" + session + "/up";
}

std::string down_ref(const std::string& session) {
  return "refs/aloft/sessions/" + session + "/down";
}

std::string safety_ref(const std::string& session) {
  return "refs/aloft/safety/" + session;
}

caf::error check_untrusted_path(std::string_view path) {
  std::string p{path};
  if (path.empty())
    return refuse(p, "an empty path");
  if (path.front() == '/')
    return refuse(p, "an absolute path");
  for (auto& c : split_path(path)) {
    if (c.empty())
      return refuse(p, "an empty path component");
    if (c == "." || c == "..")
      return refuse(p, "a . or .. component");
    if (auto why = dotgit_reason(c))
      return refuse(p, why);
  }
  return {};
}

caf::error
check_untrusted_entries(const std::vector<tree_entry>& entries,
                        const std::map<std::string, std::string>& symlink_targets,
                        const limits& lim) {
  return check_entries(entries, symlink_targets, lim, nullptr);
}

caf::expected<std::string> check_worktree(const std::string& worktree,
                                          std::vector<std::string>& notes) {
  auto paths = locate_repo(worktree);
  if (!paths)
    return paths.error();
  auto staged = run_git(paths->top, {"ls-files", "-s", "-z"});
  if (!staged)
    return staged.error();
  for (auto& rec : split_nul(staged->output))
    if (rec.compare(0, 7, "160000 ") == 0) {
      auto tab = rec.find('\t');
      if (tab != std::string::npos)
        notes.push_back("submodule " + printable(rec.substr(tab + 1))
                        + ": not synced (its files stay local)");
    }
  return paths->top;
}

caf::expected<snapshot> snapshot_worktree(const std::string& worktree,
                                          const std::string& ref,
                                          const std::string& message) {
  auto w = take_snapshot(worktree, ref, message);
  if (!w) {
    // A worktree that cannot be synced is named in the error already.
    if (code_of(w.error()) == errc::failed_precondition)
      return w.error();
    return annotate(w.error(), "snapshot of " + worktree);
  }
  return std::move(w->snap);
}

caf::expected<tree_stats> stats_of(const std::string& repo, const std::string& commit) {
  auto entries = list_tree(repo, commit, {}, UINT64_MAX);
  if (!entries)
    return entries.error();
  return stats_from(*entries);
}

caf::expected<std::string> tree_of(const std::string& repo, const std::string& commit) {
  if (auto err = check_oid(commit, "tree of"))
    return err;
  return git_text(repo, {"rev-parse", "--verify", "-q", commit + "^{tree}"});
}

caf::error update_ref(const std::string& repo, const std::string& ref,
                      const std::string& commit) {
  if (auto err = check_oid(commit, "update ref"))
    return err;
  if (ref.compare(0, 5, "refs/") != 0)
    return make_error(errc::invalid_argument, "not a full ref name: " + printable(ref));
  if (auto r = run_git(repo, {"update-ref", "-m", "aloft", ref, commit}); !r)
    return annotate(r.error(), "update " + ref);
  return {};
}

caf::error check_upload_size(const tree_stats& stats, const limits& lim) {
  if (stats.bytes <= lim.max_upload_bytes)
    return {};
  std::string msg = "the worktree is " + format_bytes(stats.bytes) + " in "
                    + std::to_string(stats.files) + " files, over the upload limit of "
                    + format_bytes(lim.max_upload_bytes) + "; largest:";
  size_t shown = 0;
  for (auto& [path, size] : stats.largest) {
    if (shown++ == 5)
      break;
    msg += (shown > 1 ? ", " : " ") + printable(path) + " (" + format_bytes(size) + ")";
  }
  msg += ". Ignore what should not go (.gitignore) or raise sync.max_upload_bytes in settings.json";
  return make_error(errc::failed_precondition, std::move(msg));
}

caf::expected<std::string> make_pack(const std::string& repo, const std::string& want,
                                     const std::vector<std::string>& have) {
  if (auto err = check_oid(want, "make pack: want"))
    return err;
  std::string revs = want + "\n";
  for (auto& h : have) {
    if (auto err = check_oid(h, "make pack: have"))
      return err;
    revs += "^" + h + "\n";
  }
  // Fast zlib: on a LAN or loopback the pack is CPU-bound, and level 1 costs
  // well under a percent in size on source trees.
  std::vector<std::string> args{"pack-objects",        "--stdout",       "--revs", "-q",
                                "--delta-base-offset", "--compression=1"};
  // A first sync is mostly loose objects that have no delta yet; searching
  // for them costs seconds on 10,000 files and saves little. Deltas already
  // in the repository's packs are still reused. Later syncs are small and
  // gain most from deltas against what the VM has.
  if (have.empty()) {
    args.push_back("--window=0");
  } else {
    args.push_back("--thin");
    // Snapshots are siblings (each one's parent is HEAD), so a `have` is
    // usually not an ancestor of `want`, and git would only subtract the
    // trees of the common ancestors: every uncommitted change would travel
    // again. --shallow makes git subtract (and delta against) the trees of
    // every `have` itself.
    args.push_back("--shallow");
  }
  git_call call;
  call.input = revs;
  auto r = run_git(repo, args, call);
  if (!r)
    return r.error();
  return std::move(r->output);
}

caf::expected<indexed_pack> make_indexed_pack(const std::string& repo,
                                              const std::string& want) {
  if (auto err = check_oid(want, "make pack: want"))
    return err;
  auto paths = locate_repo(repo);
  if (!paths)
    return paths.error();
  auto scratch = scratch_dir::make(paths->git_dir, "aloft-pack-");
  if (!scratch)
    return scratch.error();
  // As make_pack for a first sync (level 1, no delta search), but into
  // files: git writes the index from what it packed, hashing nothing again.
  // The files are read once and removed: flushing them to disk first would
  // only wait for the disk.
  git_call call;
  call.config = {"core.fsync=none"};
  std::string revs = want + "\n";
  call.input = revs;
  auto sum = git_text(paths->top,
                      {"pack-objects", "--revs", "-q", "--delta-base-offset",
                       "--compression=1", "--window=0", (*scratch)->path() + "/pack"},
                      call);
  if (!sum)
    return sum.error();
  if (!is_hex_oid(*sum))
    return make_error(errc::internal, "git pack-objects: unexpected output");
  indexed_pack out;
  out.name = "pack-" + *sum;
  auto base = (*scratch)->path() + "/" + out.name;
  if (auto err = append_file(base + ".pack", out.bytes))
    return err;
  out.pack_bytes = out.bytes.size();
  if (auto err = append_file(base + ".idx", out.bytes))
    return err;
  out.index_bytes = out.bytes.size() - out.pack_bytes;
  return out;
}

namespace {

// The parents named by a commit object's text.
std::vector<std::string> parents_of(const std::string& body) {
  std::vector<std::string> parents;
  std::istringstream lines{body};
  for (std::string line; std::getline(lines, line) && !line.empty();)
    if (line.compare(0, 7, "parent ") == 0)
      parents.push_back(line.substr(7));
  return parents;
}

// The checks of receive_untrusted_pack in a located repository; `known_parents`, when
// set, are the commit's parents as already read.
caf::error validate_tree(const repo_paths& paths, const std::string& commit,
                         const std::string& object_dir, const limits& lim,
                         const std::vector<std::string>* known_parents) {
  const auto& repo = paths.top;
  git_env env;
  if (!object_dir.empty()) {
    env.object_dir = object_dir;
    env.alternates = paths.objects;
  }
  git_call call;
  call.env = env;
  call.code = errc::data_loss;
  // What the VM left as it was in the repository's own parent commit (the
  // synced-up snapshot) came from the user and is only context: a user may
  // well have a symlink to /opt. The rules and limits judge what the VM
  // added or changed: the paths this finds (all when the parent is not the
  // repository's own). Read while the whole tree is listed.
  using changed_paths = std::optional<std::set<std::string>>;
  auto changed_job =
      std::async(std::launch::async, [&]() -> caf::expected<changed_paths> {
        std::vector<std::string> parents;
        if (known_parents) {
          parents = *known_parents;
        } else {
          auto body = git_text(repo, {"cat-file", "commit", commit}, call);
          if (!body)
            return annotate(body.error(),
                            "the VM's snapshot " + commit + " is not a readable commit");
          parents = parents_of(*body);
        }
        if (parents.size() != 1 || !is_hex_oid(parents[0]))
          return changed_paths{};
        git_call in_repo;
        in_repo.ok_codes = {0, 1, 128};
        auto local = run_git(repo, {"cat-file", "-e", parents[0] + "^{commit}"}, in_repo);
        if (!local)
          return local.error();
        if (local->exit_code != 0)
          return changed_paths{};
        auto changes = diff_trees(repo, parents[0], commit, env);
        if (!changes)
          return changes.error();
        std::set<std::string> out;
        for (auto& c : *changes)
          if (c.new_mode != 0)
            out.insert(c.path);
        return changed_paths{std::move(out)};
      });
  auto entries = list_tree(repo, commit, env, lim.max_files, false);
  auto changed = changed_job.get();
  if (!changed)
    return changed.error();
  if (!entries)
    return entries.error();

  std::vector<bool> selected(entries->size());
  std::set<std::string> new_blobs;
  for (size_t i = 0; i < entries->size(); ++i) {
    auto& e = (*entries)[i];
    selected[i] = !*changed || (*changed)->count(e.path) > 0;
    if (selected[i] && e.type == "blob")
      new_blobs.insert(e.object);
  }
  // Sizes of the new blobs only (each read once, however often the tree
  // names it).
  if (!new_blobs.empty()) {
    std::string oids;
    for (auto& o : new_blobs)
      oids += o + "\n";
    git_call check = call;
    check.input = oids;
    auto r =
        run_git(repo, {"cat-file", "--batch-check=%(objectname) %(objectsize)"}, check);
    if (!r)
      return r.error();
    std::map<std::string, uint64_t> sizes;
    std::istringstream in{r->output};
    for (std::string oid, size; in >> oid >> size;) {
      if (size == "missing")
        return make_error(errc::data_loss, "the VM's snapshot lacks object " + oid);
      sizes[oid] = std::strtoull(size.c_str(), nullptr, 10);
    }
    for (size_t i = 0; i < entries->size(); ++i)
      if (selected[i] && (*entries)[i].type == "blob")
        (*entries)[i].size = sizes[(*entries)[i].object];
  }
  auto targets = symlink_targets_of(repo, env, *entries);
  if (!targets)
    return targets.error();
  return check_entries(*entries, *targets, lim, &selected);
}

} // namespace

caf::error receive_untrusted_pack(const std::string& repo, std::string_view pack,
                                  const std::string& commit, const std::string& base,
                                  const limits& lim) {
  if (pack.size() > lim.max_download_bytes)
    return make_error(
        errc::failed_precondition,
        "the VM's pack is " + format_bytes(pack.size()) + ", over the download limit of "
            + format_bytes(lim.max_download_bytes) + " (sync.max_download_bytes in settings.json)");
  if (auto err = check_oid(commit, "receive: commit"))
    return err;
  if (!base.empty())
    if (auto err = check_oid(base, "receive: base"))
      return err;
  auto paths = locate_repo(repo);
  if (!paths)
    return paths.error();
  // Like git's receive-pack: objects land in a quarantine next to the store
  // (same file system, so moving them in is a rename) and are visible to
  // nothing else until checked.
  auto quarantine = scratch_dir::make(paths->objects, "aloft-incoming-");
  if (!quarantine)
    return quarantine.error();
  const auto& q = (*quarantine)->path();
  if (::mkdir((q + "/pack").c_str(), 0755) != 0)
    return from_errno(errno, "cannot create " + q + "/pack");
  git_call call;
  call.env.object_dir = q;
  call.env.alternates = paths->objects;
  call.input = pack;
  call.code = errc::data_loss;
  // The bases a thin pack lacks are appended to it compressed: at level 1,
  // not zlib's default, as in every pack sync makes.
  call.config = {"core.compression=1"};
  auto indexed = run_git(paths->top,
                         {"index-pack", "--stdin", "--fix-thin",
                          "--max-input-size=" + std::to_string(lim.max_download_bytes)},
                         call);
  if (!indexed)
    return annotate(indexed.error(), "the VM's pack");
  call.input = {};
  call.config.clear();
  auto body = git_text(paths->top, {"cat-file", "commit", commit}, call);
  if (!body)
    return annotate(body.error(), "the VM's pack lacks its snapshot " + commit);
  auto parents = parents_of(*body);
  if (!base.empty() && (parents.size() != 1 || parents[0] != base))
    return make_error(errc::data_loss, "the VM's snapshot " + commit
                                           + " is not a child of the synced-up snapshot "
                                           + base);
  if (auto err = validate_tree(*paths, commit, q, lim, &parents))
    return err;
  // Packs first, each index last: git finds a pack through its index, so a
  // pack is never visible half-moved.
  std::error_code ec;
  std::vector<std::string> packs, others;
  for (auto& entry : std::filesystem::directory_iterator(q + "/pack", ec)) {
    auto name = entry.path().filename().string();
    auto ext = entry.path().extension().string();
    (ext == ".idx" ? others : packs).push_back(name);
  }
  if (ec)
    return make_error(errc::internal, "cannot list " + q + "/pack: " + ec.message());
  std::sort(packs.begin(), packs.end());
  for (auto* list : {&packs, &others})
    for (auto& name : *list) {
      auto from = q + "/pack/" + name;
      auto to = paths->objects + "/pack/" + name;
      struct stat st;
      if (::stat(to.c_str(), &st) == 0)
        continue; // the same content, already there (the name is its hash)
      if (::rename(from.c_str(), to.c_str()) != 0)
        return from_errno(errno, "cannot move " + from + " into the repository");
    }
  return {};
}

class local_state {
public:
  snapshot_work work;
  std::string saved_ref;   // where the apply saves it: local-<n>
  std::string merge_input; // its tree with `base` as the parent
};

caf::expected<std::shared_ptr<const local_state>>
capture_local_state(const std::string& worktree, const std::string& session,
                    const std::string& base) {
  if (auto err = check_session(session))
    return err;
  if (auto err = check_oid(base, "apply: base"))
    return err;
  auto out = std::make_shared<local_state>();
  auto work = take_snapshot(worktree, "",
                            "aloft: local state before applying session " + session);
  if (!work)
    return annotate(work.error(), "save the local state");
  out->work = std::move(*work);
  const auto& top = out->work.paths.top;
  auto saved = next_local_ref(top, session);
  if (!saved)
    return saved.error();
  out->saved_ref = std::move(*saved);
  // Ours with `base` as its parent, so that merge-tree (git 2.39 has no
  // --merge-base) takes `base` as the merge base even when HEAD moved or the
  // local state is older or newer than the synced-up one.
  auto input = git_text(top, {"commit-tree", out->work.snap.tree, "-p", base, "-m",
                              "aloft: local state for merging session " + session});
  if (!input)
    return input.error();
  out->merge_input = std::move(*input);
  return std::shared_ptr<const local_state>{std::move(out)};
}

const snapshot& snapshot_of(const local_state& state) {
  return state.work.snap;
}

caf::expected<apply_result> apply_down(const std::string& worktree,
                                       const std::string& session,
                                       const std::string& base, const std::string& theirs,
                                       apply_mode mode, const std::string& branch_name,
                                       std::shared_ptr<const local_state> ours) {
  if (auto err = check_session(session))
    return err;
  if (auto err = check_oid(base, "apply: base"))
    return err;
  if (auto err = check_oid(theirs, "apply: theirs"))
    return err;
  repo_paths paths;
  if (ours) {
    paths = ours->work.paths;
  } else {
    auto located = locate_repo(worktree);
    if (!located)
      return located.error();
    paths = std::move(*located);
  }
  const auto& top = paths.top;
  // The ancestry check and the diffstat only read: they run while the merge
  // is worked out, and are waited for before anything is written.
  auto checked = std::async(std::launch::async, [&]() -> caf::expected<std::string> {
    git_call is_ancestor;
    is_ancestor.ok_codes = {0, 1};
    auto anc = run_git(top, {"merge-base", "--is-ancestor", base, theirs}, is_ancestor);
    if (!anc)
      return anc.error();
    if (anc->exit_code != 0)
      return make_error(errc::failed_precondition,
                        "the VM's snapshot " + theirs
                            + " does not descend from the synced-up snapshot " + base);
    return git_text(top, {"diff", "--stat", "--no-color", "--no-ext-diff",
                          "--no-textconv", base, theirs});
  });
  std::optional<caf::expected<std::string>> checked_result;
  auto wait_checked = [&]() -> caf::expected<std::string>& {
    if (!checked_result)
      checked_result = checked.get();
    return *checked_result;
  };
  // A failure of the checks explains any other.
  auto failed = [&](caf::error err) -> caf::error {
    auto& c = wait_checked();
    return c ? std::move(err) : c.error();
  };
  apply_result result;
  if (mode == apply_mode::dry_run || mode == apply_mode::branch) {
    auto& stat = wait_checked();
    if (!stat)
      return stat.error();
    result.diffstat = *stat;
    auto names = run_git(
        top, {"diff-tree", "-r", "-z", "--name-only", "--no-renames", base, theirs});
    if (!names)
      return names.error();
    for (auto& p : split_nul(names->output))
      if (!p.empty())
        result.changed.push_back(p);
  }
  if (mode == apply_mode::dry_run)
    return result;

  if (mode == apply_mode::branch) {
    if (branch_name.empty() || branch_name[0] == '-')
      return make_error(errc::invalid_argument,
                        "not a branch name: " + printable(branch_name));
    auto ref = "refs/heads/" + branch_name;
    git_call check;
    check.ok_codes = {0, 1, 128};
    auto valid = run_git(top, {"check-ref-format", ref}, check);
    if (!valid)
      return valid.error();
    if (valid->exit_code != 0)
      return make_error(errc::invalid_argument,
                        "not a valid branch name: " + printable(branch_name));
    auto exists = run_git(top, {"rev-parse", "-q", "--verify", ref}, check);
    if (!exists)
      return exists.error();
    if (exists->exit_code == 0)
      return make_error(errc::already_exists,
                        "branch " + branch_name + " already exists; choose another name");
    if (auto r = run_git(
            top, {"update-ref", "-m", "aloft: sync down", down_ref(session), theirs});
        !r)
      return r.error();
    auto commit = git_text(top, {"commit-tree", theirs + "^{tree}", "-p", base, "-m",
                                 "aloft: changes of session " + session});
    if (!commit)
      return commit.error();
    // The empty old value makes git refuse if the branch appeared meanwhile.
    git_call create;
    create.code = errc::already_exists;
    if (auto r = run_git(
            top,
            {"update-ref", "-m", "aloft: branch of session " + session, ref, *commit, ""},
            create);
        !r)
      return r.error();
    result.branch = branch_name;
    return result;
  }

  // apply: the local state, taken now unless the caller took it already.
  if (!ours) {
    auto taken = capture_local_state(top, session, base);
    if (!taken)
      return failed(taken.error());
    ours = std::move(*taken);
  }
  const auto& work = ours->work;
  const auto& ours_tree = work.snap.tree;
  auto merged = merge_trees(top, ours->merge_input, theirs);
  if (!merged)
    return failed(merged.error());
  auto changes = diff_trees(top, ours_tree, merged->tree);
  if (!changes)
    return failed(changes.error());

  // Sort the changes into those written and those left as they are locally.
  std::set<std::string> ours_paths;
  for (auto& e : work.entries)
    ours_paths.insert(e.path);
  std::set<std::string> skipped = merged->conflicts;
  std::set<std::string> replaced;
  for (auto& c : *changes)
    if (c.old_mode != 0)
      replaced.insert(c.path);
  for (auto& c : *changes) {
    if (c.new_mode == 0 || related_to_any(c.path, skipped))
      continue;
    if (!local_obstacle(top, c.path, ours_paths, replaced).empty())
      skipped.insert(c.path);
  }
  // A change inside (or around) a path left alone cannot be written either.
  std::vector<const tree_change*> accepted;
  for (bool grew = true; grew;) {
    grew = false;
    accepted.clear();
    for (auto& c : *changes) {
      if (skipped.count(c.path))
        continue;
      if (related_to_any(c.path, skipped)) {
        skipped.insert(c.path);
        grew = true;
        continue;
      }
      accepted.push_back(&c);
    }
  }
  for (auto& p : skipped)
    result.conflicts.push_back(p);

  // The result, ours plus the accepted changes, entry by entry.
  std::map<std::string, std::pair<uint32_t, std::string>> result_map;
  for (auto& e : work.entries)
    result_map.emplace(e.path, std::make_pair(e.mode, e.object));
  std::set<std::string> written;
  for (auto* c : accepted) {
    if (c->new_mode == 0) {
      result_map.erase(c->path);
    } else {
      result_map[c->path] = std::make_pair(c->new_mode, c->new_oid);
      written.insert(c->path);
    }
  }

  // Everything written comes from the VM: check it again as untrusted, in
  // the context of the tree it lands in.
  if (!written.empty()) {
    std::vector<tree_entry> entries;
    std::vector<bool> selected;
    entries.reserve(result_map.size());
    for (auto& [path, what] : result_map) {
      tree_entry e;
      e.mode = what.first;
      e.type = e.mode == mode_gitlink ? "commit" : "blob";
      e.object = what.second;
      e.path = path;
      selected.push_back(written.count(path) > 0);
      entries.push_back(std::move(e));
    }
    auto targets = symlink_targets_of(top, {}, entries);
    if (!targets)
      return failed(targets.error());
    // Without sizes: the limits were applied when the objects came in.
    limits unbounded;
    unbounded.max_files = UINT64_MAX;
    unbounded.max_file_bytes = UINT64_MAX;
    unbounded.max_tree_bytes = UINT64_MAX;
    if (auto err = check_entries(entries, *targets, unbounded, &selected))
      return failed(std::move(err));
  }

  // The result's tree: the merge's own when every change is taken, else
  // built in a temporary index.
  std::string result_tree = merged->tree;
  if (!skipped.empty()) {
    auto scratch = scratch_dir::make(paths.git_dir, "aloft-apply-");
    if (!scratch)
      return failed(scratch.error());
    git_call in_result;
    in_result.env.index_file = (*scratch)->path() + "/index";
    if (auto r = run_git(top, {"read-tree", ours_tree}, in_result); !r)
      return failed(r.error());
    std::string info;
    for (auto* c : accepted)
      if (c->new_mode == 0)
        info += "0 " + zero_oid + "\t" + c->path + '\0';
    for (auto* c : accepted)
      if (c->new_mode != 0) {
        char mode[16];
        std::snprintf(mode, sizeof(mode), "%o", c->new_mode);
        info += std::string{mode} + " " + c->new_oid + "\t" + c->path + '\0';
      }
    if (!info.empty()) {
      git_call update = in_result;
      update.input = info;
      if (auto r = run_git(top, {"update-index", "-z", "--index-info"}, update); !r)
        return failed(r.error());
    }
    auto tree = git_text(top, {"write-tree"}, in_result);
    if (!tree)
      return failed(tree.error());
    result_tree = *tree;
  }

  auto& stat = wait_checked();
  if (!stat)
    return stat.error();
  result.diffstat = *stat;
  // Save the local state before anything is written (a new ref: git refuses
  // if it appeared meanwhile) and keep the VM's snapshot, in one transaction.
  git_call refs;
  refs.code = errc::aborted;
  std::string updates = "create " + ours->saved_ref + " " + work.snap.commit + "\n"
                        + "update " + down_ref(session) + " " + theirs + "\n";
  refs.input = updates;
  if (auto r = run_git(top, {"update-ref", "-m", "aloft: sync down", "--stdin"}, refs);
      !r)
    return annotate(r.error(), "save the local state");
  result.saved_ref = ours->saved_ref;

  // Write: a two-tree read-tree from the snapshot's own index (which matches
  // the worktree) to the result. Git updates only the paths that differ,
  // refuses to overwrite what changed since the snapshot or what it does not
  // track, and removes a symlink or file standing in a new directory's way
  // rather than writing through it. The user's index is never read or
  // written.
  if (result_tree != ours_tree) {
    git_call checkout;
    checkout.env.index_file = work.index;
    checkout.code = errc::aborted;
    if (auto r =
            run_git(top, {"read-tree", "-m", "-u", ours_tree, result_tree}, checkout);
        !r)
      return annotate(r.error(), "the worktree changed during the apply; nothing was "
                                 "written and the local state is saved under "
                                     + ours->saved_ref + "; sync down again");
  }
  for (auto* c : accepted)
    result.changed.push_back(c->path);
  std::sort(result.changed.begin(), result.changed.end());
  return result;
}

// -- VM commands -----------------------------------------------------------------

std::string vm_prepare_command(const std::string& workdir) {
  std::ostringstream cmd;
  cmd << "W=" << shell_quote(workdir) << "\n"
      << vm_preamble()
      << "mkdir -p \"$W\" || fail \"cannot create the VM worktree $W\"\n"
         "cd \"$W\" || fail \"cannot enter the VM worktree $W\"\n"
         "if [ ! -d .git ]; then g -c init.defaultBranch=main init -q || fail \"git init "
         "failed in $W\"; fi\n"
         // Read by the shell (no process) when it is set already.
         "h=\n"
         "while read -r l; do [ \"$l\" = 'hooksPath = /dev/null' ] && h=1; done < "
         ".git/config\n"
         "[ -n \"$h\" ] || g config core.hooksPath /dev/null || fail \"git config failed "
         "in $W\"\n";
  return cmd.str();
}

namespace {

// `why`, which fails naming the commit ($B, $N or $C) missing from the VM's
// repository, if one is: what a failure may come from is looked at after
// it, not before every sync. (An incremental pack is thin: its deltas need
// the base's objects.)
std::string vm_why() {
  return "why() {\n"
         "  [ -z \"$B\" ] || g cat-file -e \"$B^{commit}\" 2> /dev/null || fail \"the VM "
         "repository lacks the synced-up snapshot $B; sync up from scratch\"\n"
         "  [ -z \"$N\" ] || g cat-file -e \"$N^{commit}\" 2> /dev/null || fail \"the VM "
         "repository lacks its snapshot $N\"\n"
         "  g cat-file -e \"$C^{commit}\" 2> /dev/null || fail \"the pack did not hold "
         "commit $C\"\n"
         "}\n";
}

// Checks out $C into an empty worktree, then records it as the VM's base.
std::string vm_fresh_checkout() {
  // One checkout worker per core (the preamble's checkout.workers=0), not
  // more: each worker reads the blobs it writes on its own, and a blob
  // stored as a delta costs it the whole chain of bases, which the other
  // workers compute again. Measured on 2 cores with a cloned tree of 10,000
  // files whose blobs are deltas: 0.68-0.86 s with two workers, 1.02-1.16 s
  // with four, in alternate runs of the bench.
  return "  g checkout -q -f --detach \"$C\" || { why; fail \"git checkout failed in "
         "$W\"; }\n"
         // Files written in the same second as the index are "racily clean"
         // and git re-reads every one of them until the index is written
         // again later: rewrite it as soon as that second has passed (50 ms
         // after, for file systems whose clocks lag), in the background, so
         // that the next sync is unlikely to pay for the whole tree. (Where
         // `date` has no nanoseconds, a second later.) The marker that
         // makes later scripts wait for it (settle) is set before it is
         // started, so no git that takes the index's lock can start while
         // it may run; commands that do not touch the index never wait.
         "  : > \"$W/.git/aloft-refresh\"\n"
         "  ( n=$(date +%N 2> /dev/null); case $n in ''|*[!0-9]*) w=1 ;; *) "
         "n=${n#\"${n%%[!0]*}\"}; r=$((1050000000 - ${n:-0})); "
         "w=$((r / 1000000000)).$(printf %09d $((r % 1000000000))) ;; esac; "
         "sleep \"$w\"; g0 update-index -q --refresh; rm -f \"$W/.git/aloft-refresh\" ) "
         "> /dev/null 2>&1 < /dev/null &\n";
}

} // namespace

std::string vm_receive_command(const std::string& workdir, const std::string& commit,
                               const std::string& base, const std::string& vm_now) {
  std::ostringstream cmd;
  cmd << "W=" << shell_quote(workdir) << "; C=" << shell_quote(commit)
      << "; B=" << shell_quote(base) << "; N=" << shell_quote(vm_now) << "\n"
      << vm_preamble()
      << "cd \"$W\" 2> /dev/null || fail \"the VM worktree $W is missing\"\n"
         "[ -d .git ] || fail \"the VM worktree $W is not a git repository\"\n"
      << vm_why()
      << "g index-pack --stdin --fix-thin > /dev/null || { why; fail \"git index-pack "
         "failed\"; }\n"
         "if [ -z \"$B\" ]; then\n"
      << vm_fresh_checkout()
      << "else\n"
         // A two-tree merge keeps the agent's own changes and refuses, before
         // writing anything, when they touch what changed upstream.
         // After a sync down the worktree matches the VM's own snapshot N,
         // not B: start the two-tree merge from N, so the agent's changes
         // that came home are not taken for untracked files in the way.
         "  F=\"$B\"\n"
         "  if [ -n \"$N\" ] && [ \"$N\" != \"$B\" ]; then\n"
         "    g read-tree \"$N\" || { why; fail \"git read-tree failed\"; }\n"
         "    F=\"$N\"\n"
         "  fi\n"
         "  g read-tree -m -u \"$F\" \"$C\" || { why; fail \"the new snapshot conflicts "
         "with the agent's changes on the VM; nothing was changed there\"; }\n"
         // HEAD follows when the agent left it at the base (one transaction
         // with the base ref, or the base ref alone when HEAD moved).
         "  printf 'update HEAD %s %s\\nupdate refs/aloft/base %s\\n' "
         "\"$C\" \"$B\" \"$C\" | g update-ref -m 'aloft: sync up' --stdin 2> /dev/null "
         "&& exit 0\n"
         "fi\n"
         "g update-ref -m 'aloft: sync up' refs/aloft/base \"$C\" || fail \"git "
         "update-ref failed\"\n";
  return cmd.str();
}

std::string vm_install_command(const std::string& workdir, const std::string& commit,
                               const indexed_pack& pack) {
  std::ostringstream cmd;
  cmd << "W=" << shell_quote(workdir) << "; C=" << shell_quote(commit)
      << "; B=; N=; K=" << shell_quote(pack.name) << "; PB=" << pack.pack_bytes
      << "; IB=" << pack.index_bytes << "\n"
      << vm_preamble() << vm_why()
      << "cd \"$W\" 2> /dev/null || fail \"the VM worktree $W is missing\"\n"
         "[ -d .git ] || fail \"the VM worktree $W is not a git repository\"\n"
         "P=.git/objects/pack\n"
         "mkdir -p \"$P\" || fail \"cannot create $W/$P\"\n"
         "trap 'rm -f \"$P/tmp_aloft_$$.pack\" \"$P/tmp_aloft_$$.idx\"' EXIT\n"
         // Written whole before either is visible, the index last: git
         // finds a pack through its index.
         "head -c \"$PB\" > \"$P/tmp_aloft_$$.pack\" && head -c \"$IB\" > "
         "\"$P/tmp_aloft_$$.idx\" || fail \"cannot write the pack into $W/$P\"\n"
         "[ \"$(wc -c < \"$P/tmp_aloft_$$.pack\")\" -eq \"$PB\" ] && [ \"$(wc -c < "
         "\"$P/tmp_aloft_$$.idx\")\" -eq \"$IB\" ] || fail \"the pack arrived "
         "incomplete\"\n"
         "mv -f \"$P/tmp_aloft_$$.pack\" \"$P/$K.pack\" && mv -f \"$P/tmp_aloft_$$.idx\" "
         "\"$P/$K.idx\" || fail \"cannot install the pack in $W/$P\"\n"
      << vm_fresh_checkout()
      << "g update-ref -m 'aloft: sync up' refs/aloft/base \"$C\" || fail \"git "
         "update-ref failed\"\n";
  return cmd.str();
}

namespace {

// The shared start of the VM snapshot and the VM status: checks the VM's
// worktree and writes its tree into `$t` with a temporary index (the
// agent's own index untouched). New objects go to a temporary object
// directory $O in `scratch` when one can be made there and takes them (each
// loose object is a file, and in memory files cost next to nothing), else
// into the repository; $O is empty then.
std::string vm_tree_script(const std::string& workdir, const std::string& base,
                           const std::string& scratch) {
  std::ostringstream cmd;
  cmd << "W=" << shell_quote(workdir) << "; B=" << shell_quote(base)
      << "; S=" << shell_quote(scratch) << "\n"
      << vm_preamble()
      << "[ -d \"$W\" ] || fail \"the VM worktree $W is missing\"\n"
         "cd \"$W\" || fail \"cannot enter the VM worktree $W\"\n"
         "[ -d .git ] || fail \"the VM worktree $W is not a git repository any more\"\n"
         // Looked at when git fails, not before every snapshot.
         "why() {\n"
         "  g rev-parse --git-dir > /dev/null 2>&1 || fail \"the VM worktree $W is not a "
         "git repository any more\"\n"
         "  g cat-file -e \"$B^{commit}\" 2> /dev/null || fail \"the VM repository lacks "
         "the synced-up snapshot $B\"\n"
         "}\n"
         "for s in rebase-merge rebase-apply MERGE_HEAD CHERRY_PICK_HEAD REVERT_HEAD; "
         "do\n"
         "  [ -e \".git/$s\" ] && fail \"the VM repository is in the middle of a merge, "
         "rebase or cherry-pick (.git/$s); finish or abort it on the VM first\"\n"
         "done\n"
         "e=1\n"
         "for f in * .[!.]* ..?*; do\n"
         "  [ \"$f\" = .git ] && continue\n"
         "  if [ -e \"$f\" ] || [ -h \"$f\" ]; then e=; break; fi\n"
         "done\n"
         "[ -z \"$e\" ] || fail \"the VM worktree $W is empty (nothing but .git); "
         "nothing to bring back\"\n"
         "mkdir -p .git/aloft || { why; fail \"cannot write to $W/.git\"; }\n"
         "T=$(mktemp -d \"$PWD/.git/aloft/snapshot.XXXXXX\") || fail \"cannot create a "
         "temporary directory in $W/.git/aloft\"\n"
         "O=\n"
         "[ -z \"$S\" ] || O=$(mktemp -d \"$S/aloft-objects.XXXXXX\" 2> /dev/null) "
         "|| O=\n"
         "trap 'rm -rf \"$T\"; [ -z \"$O\" ] || rm -rf \"$O\"' EXIT\n"
         "export GIT_INDEX_FILE=\"$T/index\"\n"
         "start() {\n"
         // The index of the previous snapshot (or the agent's own) keeps stat
         // data, so git hashes only the files that changed since.
         "  rm -f \"$T/index\"\n"
         "  if [ -f .git/aloft/index ]; then cp -p .git/aloft/index \"$T/index\" || fail "
         "\"cannot copy an index\"\n"
         "  elif [ -f .git/index ] && ! GIT_INDEX_FILE=.git/index g ls-files -v "
         "| grep -q '^[a-z]'; then\n"
         "    cp -p .git/index \"$T/index\" || fail \"cannot copy an index\"\n"
         "  fi\n"
         "  g read-tree -i -m \"$B\" || { why; fail \"git read-tree failed\"; }\n"
         "}\n"
         "objects() {\n"
         "  if [ -n \"$O\" ]; then\n"
         "    export GIT_OBJECT_DIRECTORY=\"$O\" GIT_ALTERNATE_OBJECT_DIRECTORIES=\"$PWD/"
         ".git/objects\"\n"
         "  else\n"
         "    unset GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES\n"
         "  fi\n"
         "}\n"
         "snap() {\n"
         // In memory, no one file may take more than 64 MiB (or 128, where
         // the shell counts in KiB): past that, writes fail (rather than
         // the signal killing git) and the snapshot starts again into the
         // repository.
         "  if [ -n \"$O\" ]; then\n"
         "    (trap '' XFSZ; ulimit -f 131072 2> /dev/null; g add -A)\n"
         "  else\n"
         "    g add -A\n"
         "  fi || { echo \"aloft: git add failed\" >&2; return 1; }\n"
         // Submodules and nested repositories (gitlinks) are not synced; the
         // base never has any.
         "  g diff-index --cached \"$B\" | sed -n 's/^:[0-7]* 160000 [0-9a-f]* [0-9a-f]* "
         "[A-Z]\t//p' > \"$T/links\" || { echo \"aloft: git diff-index failed\" >&2; "
         "return 1; }\n"
         "  if [ -s \"$T/links\" ]; then\n"
         "    g update-index --force-remove --stdin < \"$T/links\" "
         "|| { echo \"aloft: git update-index failed\" >&2; return 1; }\n"
         "  fi\n"
         // Every object the index names is there (git add made the new
         // ones): not looking each one up again saves a lookup per file.
         "  t=$(g write-tree --missing-ok) || { echo \"aloft: git write-tree failed\" "
         ">&2; return 1; }\n"
         "}\n"
         "start\n"
         "objects\n"
         "if ! snap; then\n"
         // The scratch place is full, most likely: again, into the repository.
         "  [ -n \"$O\" ] || fail \"the snapshot failed\"\n"
         "  rm -rf \"$O\"\n"
         "  O=\n"
         "  objects\n"
         "  start\n"
         "  snap || fail \"the snapshot failed\"\n"
         "fi\n"
         "if [ -s \"$T/links\" ]; then\n"
         "  echo \"aloft: not synced (nested repositories): $(tr '\\n' ' ' < "
         "\"$T/links\")\" >&2\n"
         "fi\n";
  return cmd.str();
}

} // namespace

std::string vm_tree_command(const std::string& workdir, const std::string& base,
                            const std::string& scratch) {
  // The snapshot's index and objects are not kept: a status look must not
  // change what the next snapshot starts from.
  return vm_tree_script(workdir, base, scratch) + "echo \"$t\"\n";
}

std::string vm_snapshot_command(const std::string& workdir, const std::string& base,
                                const std::string& scratch) {
  std::ostringstream cmd;
  cmd << vm_tree_script(workdir, base, scratch)
      << "c=$(g commit-tree -p \"$B\" -m 'aloft: snapshot of the VM worktree' \"$t\") || "
         "fail \"git commit-tree failed\"\n"
         "if [ -n \"$O\" ]; then\n"
         // Kept in the repository as one pack (the next sync up may start
         // from this snapshot), which is also what is sent while it is
         // small: deltas against the base need a search that costs more
         // than the bytes they save then.
         "  unset GIT_OBJECT_DIRECTORY\n"
         "  export GIT_ALTERNATE_OBJECT_DIRECTORIES=\"$O\"\n"
         // Not flushed to disk: a VM that crashes takes its session with it,
         // and the engine keeps what it was sent.
         "  h=$(printf '%s\\n^%s\\n' \"$c\" \"$B\" | g -c core.fsync=none pack-objects "
         "--revs -q --window=0 --compression=1 .git/objects/pack/pack) || fail \"git "
         "pack-objects failed\"\n"
         "  P=.git/objects/pack/pack-$h.pack\n"
         "  n=$(wc -c < \"$P\") || fail \"cannot size the pack\"\n"
         "fi\n"
         "if [ -z \"$O\" ] || [ \"$n\" -gt 1048576 ]; then\n"
         // A thin pack: deltas against what the engine has. A small window
         // finds the base's version of a changed file at a fraction of the
         // default's cost.
         "  P=\"$T/pack\"\n"
         "  printf '%s\\n^%s\\n' \"$c\" \"$B\" | g pack-objects --stdout --revs --thin "
         "--window=2 -q --compression=1 > \"$P\" || fail \"git pack-objects failed\"\n"
         "  n=$(wc -c < \"$P\") || fail \"cannot size the pack\"\n"
         "fi\n"
         "g update-ref refs/aloft/snapshot \"$c\" || fail \"git update-ref failed\"\n"
         "mv -f \"$T/index\" .git/aloft/index || fail \"cannot keep the index\"\n"
         "printf '%s %s\\n' \"$c\" $n\n"
         "cat \"$P\"\n";
  return cmd.str();
}

caf::error parse_snapshot_header(const std::string& line, std::string& commit,
                                 uint64_t& pack_bytes) {
  std::string_view s{line};
  if (!s.empty() && s.back() == '\n')
    s.remove_suffix(1);
  auto bad = [&] {
    return make_error(errc::data_loss, "the VM's snapshot header is malformed: "
                                           + printable(s.substr(0, 100)));
  };
  if (s.size() < 42 || s[40] != ' ' || !is_hex_oid(s.substr(0, 40)))
    return bad();
  auto digits = s.substr(41);
  if (digits.empty() || digits.size() > 13
      || !std::all_of(digits.begin(), digits.end(),
                      [](char c) { return c >= '0' && c <= '9'; })
      || (digits.size() > 1 && digits[0] == '0'))
    return bad();
  uint64_t n = 0;
  for (char c : digits)
    n = n * 10 + static_cast<uint64_t>(c - '0');
  commit = std::string{s.substr(0, 40)};
  pack_bytes = n;
  return {};
}

} // namespace aloft::sync
