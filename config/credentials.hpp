// Credential stores: where the secret half of an account lives.
//
// One interface over several stores. A secret is a small map of named
// values (Fly: `token`; Vercel: `token`; Modal: `token_id`, `token_secret`;
// agent secrets by their variable name), kept per account name. Secrets
// never pass through settings.json, the RocksDB store, logs, events or
// process arguments.
//
// - file: `<state dir>/credentials.json`, mode 0600, written atomically;
//   the default on headless Linux.
// - env: read-only, from environment variables (`ALOFT_SECRET_<ACCOUNT>_<KEY>`
//   with the names upper-cased and `-` as `_`); for CI and containers.
// - secret-service: the freedesktop Secret Service (GNOME Keyring, KWallet)
//   through libsecret, loaded at run time; unavailable when there is no
//   session bus or no libsecret.
// - keychain: the macOS Keychain, compiled only in builds for Apple.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <caf/expected.hpp>

namespace aloft {

using secret_map = std::map<std::string, std::string>;

class credential_store {
public:
  virtual ~credential_store() = default;

  /// "file", "env", "secret-service" or "keychain".
  virtual std::string kind() const = 0;

  /// Where the secrets are, for messages (a path, or a description).
  virtual std::string location() const = 0;

  virtual bool read_only() const = 0;

  /// The secrets of `account`; not_found when it has none.
  virtual caf::expected<secret_map> get(const std::string& account) = 0;

  /// Replaces the secrets of `account`. A read-only store answers
  /// failed_precondition saying where to put them instead.
  virtual caf::error put(const std::string& account, const secret_map& secrets) = 0;

  /// Removes the secrets of `account`; absent is not an error.
  virtual caf::error erase(const std::string& account) = 0;

  /// Accounts with secrets in this store.
  virtual std::vector<std::string> accounts() = 0;
};

/// The platform's default store kind: "keychain" on Apple, "secret-service"
/// on Linux when it is reachable now, else "file".
std::string default_credential_store_kind();

/// Opens the store of `kind` ("" for the default). `state_dir` holds the
/// file store. Errors: invalid_argument for an unknown kind (listing the
/// known ones), unavailable when the store cannot be reached here.
caf::expected<std::unique_ptr<credential_store>>
open_credential_store(const std::string& kind, const std::string& state_dir);

/// Masks a secret for display: a short prefix and its length, e.g.
/// `fo1_ab… (43 chars)`; short secrets show no prefix at all.
std::string mask_secret(const std::string& secret);

} // namespace aloft
