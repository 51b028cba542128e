#include "engine/base/proc_table.hpp"

#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <map>
#include <sstream>
#include <utility>

#include "engine/base/files.hpp"

namespace aloft::proc {

namespace {

std::string path_of(pid_t pid, const char* leaf) {
  return "/proc/" + std::to_string(pid) + "/" + leaf;
}

} // namespace

std::optional<std::string> read(const std::string& path) {
  // Any failure means the process went away (ENOENT on open, ESRCH
  // mid-read): it is absent, not an error.
  auto text = files::read_file(path);
  if (!text)
    return std::nullopt;
  return std::move(*text);
}

std::optional<stat_fields> stat(pid_t pid) {
  auto text = read(path_of(pid, "stat"));
  if (!text)
    return std::nullopt;
  // The command name may contain spaces and parentheses; fields resume
  // after the last ')'.
  auto close = text->rfind(')');
  if (close == std::string::npos || close + 4 > text->size())
    return std::nullopt;
  std::istringstream rest{text->substr(close + 2)};
  stat_fields out;
  rest >> out.state >> out.ppid;
  // Fields 5 to 21 lie between ppid and starttime (field 22).
  std::string skip;
  for (int i = 5; i <= 21; ++i)
    rest >> skip;
  rest >> out.start_time;
  if (!rest)
    return std::nullopt;
  return out;
}

bool alive(pid_t pid) {
  if (pid <= 0)
    return false;
  if (::kill(pid, 0) != 0 && errno != EPERM)
    return false;
  auto st = stat(pid);
  return st && st->state != 'Z' && st->state != 'X';
}

std::string cmdline(pid_t pid) {
  auto text = read(path_of(pid, "cmdline"));
  if (!text)
    return {};
  for (auto& ch : *text)
    if (ch == '\0')
      ch = ' ';
  return *text;
}

std::vector<std::string> environ(pid_t pid) {
  std::vector<std::string> out;
  auto text = read(path_of(pid, "environ"));
  if (!text)
    return out;
  size_t pos = 0;
  while (pos < text->size()) {
    auto end = text->find('\0', pos);
    if (end == std::string::npos)
      end = text->size();
    out.emplace_back(*text, pos, end - pos);
    pos = end + 1;
  }
  return out;
}

std::string cwd(pid_t pid) {
  char buf[4096];
  auto link = path_of(pid, "cwd");
  auto n = ::readlink(link.c_str(), buf, sizeof(buf) - 1);
  return n > 0 ? std::string{buf, static_cast<size_t>(n)} : std::string{};
}

std::vector<pid_t> all_pids() {
  std::vector<pid_t> out;
  DIR* d = ::opendir("/proc");
  if (d == nullptr)
    return out;
  while (auto e = ::readdir(d)) {
    char* end = nullptr;
    auto v = std::strtol(e->d_name, &end, 10);
    if (end != e->d_name && *end == '\0' && v > 0)
      out.push_back(static_cast<pid_t>(v));
  }
  ::closedir(d);
  return out;
}

std::set<pid_t> self_and_ancestors() {
  std::set<pid_t> out;
  pid_t p = ::getpid();
  while (p > 1 && out.insert(p).second) {
    auto st = stat(p);
    if (!st)
      break;
    p = st->ppid;
  }
  return out;
}

std::set<pid_t> tree_of(pid_t root) {
  std::map<pid_t, pid_t> parent;
  for (auto pid : all_pids())
    if (auto st = stat(pid))
      parent[pid] = st->ppid;
  std::set<pid_t> tree{root};
  for (bool grew = true; grew;) {
    grew = false;
    for (auto& [pid, ppid] : parent)
      if (tree.count(ppid) && tree.insert(pid).second)
        grew = true;
  }
  return tree;
}

} // namespace aloft::proc
