#include "engine/home.hpp"

#include <cerrno>
#include <cstdlib>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/base/error.hpp"

namespace aloft {

namespace {

std::string env_or(const char* name, const std::string& fallback) {
  auto v = std::getenv(name);
  return v && *v ? std::string{v} : fallback;
}

caf::error make_dirs(const std::string& path) {
  std::string partial;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    partial = path.substr(0, pos);
    if (partial.empty())
      continue;
    if (::mkdir(partial.c_str(), 0700) != 0 && errno != EEXIST)
      return from_errno(errno, "cannot create directory " + partial);
  }
  return {};
}

} // namespace

home_layout resolve_home(const std::string& explicit_home) {
  auto root = explicit_home.empty() ? env_or("ALOFT_HOME", "") : explicit_home;
  home_layout h;
  if (!root.empty()) {
    h.data_dir = h.config_dir = h.runtime_dir = root;
    return h;
  }
  auto home = env_or("HOME", "/root");
  h.data_dir = env_or("XDG_DATA_HOME", home + "/.local/share") + "/aloft";
  h.config_dir = env_or("XDG_CONFIG_HOME", home + "/.config") + "/aloft";
  h.runtime_dir = env_or("XDG_RUNTIME_DIR", h.data_dir) + "/aloft";
  if (h.runtime_dir == h.data_dir + "/aloft")
    h.runtime_dir = h.data_dir + "/run";
  return h;
}

caf::error create_home(const home_layout& home) {
  for (auto& dir : {home.data_dir, home.config_dir, home.runtime_dir,
                    home.data_dir + "/keys", home.data_dir + "/logs",
                    home.sandboxes_dir()})
    if (auto err = make_dirs(dir))
      return err;
  // The local provider's sshd runs with StrictModes: the home must not be
  // writable by others.
  ::chmod(home.data_dir.c_str(), 0700);
  return {};
}

} // namespace aloft
