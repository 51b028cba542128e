// Where Aloft keeps its files.
//
// With `ALOFT_HOME` (or `--home`) set, everything lives under that one
// directory: store, settings.json, socket, keys, logs and the local
// provider's sandboxes. Otherwise the XDG data, config and runtime
// directories are used. The root directories are created 0700.
#pragma once

#include <string>

#include <caf/expected.hpp>

namespace aloft {

struct home_layout {
  std::string data_dir;    // store/, keys/, logs/, sandboxes/
  std::string config_dir;  // settings.json
  std::string runtime_dir; // aloft.sock

  std::string store_dir() const { return data_dir + "/store"; }
  std::string keys_dir(const std::string& session) const {
    return data_dir + "/keys/" + session;
  }
  std::string log_path(const std::string& session) const {
    return data_dir + "/logs/" + session + ".log";
  }
  std::string sandboxes_dir() const { return data_dir + "/sandboxes"; }
  std::string settings_path() const { return config_dir + "/settings.json"; }
  std::string socket_path() const { return runtime_dir + "/aloft.sock"; }
};

/// Resolves the layout: `explicit_home` if not empty, else `$ALOFT_HOME`,
/// else the XDG directories (with their documented fallbacks under $HOME).
home_layout resolve_home(const std::string& explicit_home);

/// Creates the layout's directories (0700). Errors name the directory.
caf::error create_home(const home_layout& home);

} // namespace aloft
