// settings.json: the non-secret half of every account, and agent profiles.
//
// The file is what people edit by hand, so every error says where it is
// (file, JSON path, line), what was expected and what was found. Unknown
// keys are reported, never silently ignored. A value that looks like a
// secret (a known token prefix, or a field named like a secret) is refused
// with a message saying where secrets go instead: the credential store.
//
// Loading is forgiving per account: one account that does not validate is
// reported and left out while the others load (the daemon's reload keeps
// working accounts). Saving is atomic: temporary file, fsync, rename, fsync
// of the directory, so a crash mid-write leaves the old file whole.
#pragma once

#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "config/account.hpp"
#include "engine/base/json.hpp"

namespace aloft {

/// A command to run as the agent, and what it needs.
struct agent_profile {
  std::string name;
  std::string command;
  /// Names of secrets handed to the agent in its environment (for example
  /// `ANTHROPIC_API_KEY`); the values live in the credential store.
  std::vector<std::string> secrets;
  /// The image (Fly, Modal) or runtime (Vercel) the agent needs; empty for
  /// the provider's default.
  std::string image;
};

struct settings {
  /// Accounts in file order. The built-in `local` account is not listed
  /// unless the file overrides it (for example its guards).
  std::vector<account> accounts;
  /// The account `launch` uses without `--account`; empty: the first
  /// enabled account, else `local`.
  std::string default_account;
  std::vector<agent_profile> profiles;
  /// Which credential store holds the secrets: "file", "env",
  /// "secret-service", "keychain"; empty: the platform's default.
  std::string credential_store;
};

/// One problem found in a settings file.
struct settings_problem {
  std::string file;
  std::string path; // JSON path, e.g. `accounts[1].guards.idle_timeout_s`
  int line = 0;     // 1-based; 0 when unknown
  std::string message; // what was expected and what was found

  /// `file:line: path: message`.
  std::string describe() const;
};

struct settings_load {
  settings value;
  /// Problems found; an account with a problem is left out of `value`.
  /// A problem outside `accounts` (syntax, a bad top-level key) leaves
  /// `value` at its defaults except for the parts that did validate.
  std::vector<settings_problem> problems;
};

/// Parses the text of a settings file named `file` (for messages).
settings_load parse_settings(std::string_view text, const std::string& file);

/// Reads `path`; a missing file is empty settings, not a problem.
settings_load load_settings(const std::string& path);

/// Checks one account on its own (name, provider, options for that
/// provider, guards, secret-looking values). Errors are invalid_argument
/// naming the field.
caf::error validate_account(const account& a);

/// The provider options an account of `provider` accepts, with defaults
/// applied (e.g. Fly's `api_url`, `ip_mode`); an unknown option is an
/// invalid_argument error naming it and listing the known ones.
caf::error apply_option(account& a, const std::string& key, const std::string& value);

/// Sets a guard or cap by name (`idle_timeout_s`, `hard_timeout_s`,
/// `auto_destroy_on_idle`, `max_concurrent_vms`) or a provider option.
caf::error set_account_field(account& a, const std::string& key, const std::string& value);

json to_json(const settings& s);

/// Writes `s` to `path` atomically (mode 0600; the directory is created).
caf::error save_settings(const std::string& path, const settings& s);

} // namespace aloft
