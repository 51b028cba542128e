// Credential stores: where the secret half of an account lives.
//
// One interface over several stores. A secret is a small map of named
// values (Fly: `token`; Vercel: `token`; Modal: `token_id`, `token_secret`;
// agent secrets by their variable name), kept per account name. Secrets
// never pass through settings.json, the RocksDB store, logs, events or
// process arguments, and never appear in an error message. Every value a
// store returns or stores is registered for redaction (engine/base/redact).
//
// - file: `<state dir>/credentials.json`, mode 0600, written atomically;
//   the default on headless Linux. Layout (version 1, the only one):
//   `{"<account>": {"<key>": "<value>", ...}, ...}`. A file that group or
//   others may access is refused until it is `chmod 600`.
// - env: read-only, from environment variables (`ALOFT_SECRET_<ACCOUNT>_<KEY>`
//   with the names upper-cased and `-` as `_`); for CI and containers.
//   Environment names lose case, so this store returns keys lower-cased
//   (`find_secret` matches either spelling). `accounts()` takes the first
//   `_`-separated word after the prefix as the account, so it lists an
//   account named `fly-prod` as `fly`; `get("fly-prod")` is exact.
// - secret-service: the freedesktop Secret Service (GNOME Keyring, KWallet)
//   through libsecret, loaded at run time; unavailable when there is no
//   libsecret, no session bus answering at DBUS_SESSION_BUS_ADDRESS, or
//   nothing on it that owns or can start org.freedesktop.secrets. One item
//   per account, attributes {application: "aloft", account: NAME}, the
//   secrets as a JSON object. A store outlives a restart of the service
//   (it reconnects), not of the session bus: GLib keeps a process's first
//   session bus connection, so a new bus needs a new process.
// - keychain: the macOS Keychain, compiled only in builds for Apple. One
//   generic password per account (service "aloft"), the secrets as JSON.
//
// Thread-safe: a store may be used from several threads. The file store
// serialises its writers (a mutex, and a lock on the directory against other
// processes) and re-reads the file on every call. The secret-service and
// keychain calls block (and may show an unlock prompt): call them off the
// actor scheduler.
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

/// The store kinds this build knows, in the order messages list them.
std::vector<std::string> credential_store_kinds();

/// The platform's default store kind: "keychain" on Apple, "secret-service"
/// on Linux when it is reachable now (see above; this asks the session bus),
/// else "file".
std::string default_credential_store_kind();

/// Opens the store of `kind` ("" for the default). `state_dir` holds the
/// file store. Errors: invalid_argument for an unknown kind (listing the
/// known ones), unavailable when the store cannot be reached here.
caf::expected<std::unique_ptr<credential_store>>
open_credential_store(const std::string& kind, const std::string& state_dir);

/// Masks a secret for display: a short prefix and its length, e.g.
/// `fo1_ab…(43 chars)`; a secret shorter than 16 characters shows no prefix
/// at all (`…(9 chars)`).
std::string mask_secret(const std::string& secret);

/// The environment variable the env store reads for `key` of `account`:
/// `ALOFT_SECRET_<ACCOUNT>_<KEY>`, upper-cased, `-` as `_`.
std::string secret_env_variable(const std::string& account, const std::string& key);

/// The value of `key` in `secrets`: an exact match, else the one whose
/// environment spelling (upper-cased, `-` as `_`) is the same; nullptr when
/// there is none. Lets callers read the env store's lower-cased keys.
const std::string* find_secret(const secret_map& secrets, const std::string& key);

} // namespace aloft
