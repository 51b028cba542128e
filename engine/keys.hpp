// Per-session SSH keys.
//
// For every session the engine makes a client key (to log in) and a host key
// (for the VM's sshd), both ed25519. The host key is injected at creation, so
// it is pinned from the first connect: there is no trust on first use. Keys
// live as files under the home's `keys/<session>/` (directory 0700, files
// 0600), never in the store.
//
// Blocking (file I/O, key generation): call from an executor.
#pragma once

#include <string>

#include <caf/expected.hpp>

namespace aloft {

struct session_keys {
  std::string dir;
  std::string client_key_path;   // dir/client (OpenSSH private key, 0600)
  std::string client_public_key; // "ssh-ed25519 AAAA... aloft"
  std::string host_key_path;     // dir/host
  std::string host_private_key;  // contents of dir/host
  std::string host_public_key;   // "ssh-ed25519 AAAA..."
};

/// Creates `dir` (0700) and both key pairs in it. Reuses pairs that already
/// exist, so a launch interrupted by a crash keeps its keys.
caf::expected<session_keys> make_session_keys(const std::string& dir);

/// Loads the keys written by `make_session_keys`. `not_found` if absent.
caf::expected<session_keys> load_session_keys(const std::string& dir);

/// Removes the key directory of a finished session.
void remove_session_keys(const std::string& dir);

} // namespace aloft
