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

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <caf/expected.hpp>

#include "config/account.hpp"
#include "config/sync_settings.hpp"
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

bool operator==(const agent_profile& x, const agent_profile& y);
inline bool operator!=(const agent_profile& x, const agent_profile& y) {
  return !(x == y);
}

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
  sync_settings sync;
};

bool operator==(const settings& x, const settings& y);
inline bool operator!=(const settings& x, const settings& y) {
  return !(x == y);
}

/// One problem found in a settings file.
struct settings_problem {
  std::string file;
  std::string path; // JSON path, e.g. `accounts[1].guards.idle_timeout_s`
  int line = 0;     // 1-based; 0 when unknown
  std::string message; // what was expected and what was found

  /// `file:line: path: message`; the line is left out when unknown, the
  /// path when the problem is about the whole file (a syntax error at the
  /// top level, an unreadable file).
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
/// `hard_warning_s`, `auto_destroy_on_idle`, `max_concurrent_vms`),
/// `enabled`, or a provider option, from a value as typed on the command
/// line ("900", "true"). Errors are invalid_argument naming the key and
/// what was expected; `a` is unchanged on error.
caf::error set_account_field(account& a, const std::string& key, const std::string& value);

/// Fills in the default of every option of `a`'s provider that `a` does
/// not set (Fly's `api_url`, `org`, ...). Does nothing for an unknown provider.
void apply_option_defaults(account& a);

/// The option names an account of `provider` accepts, sorted; empty for an
/// unknown provider.
std::vector<std::string> known_options(const std::string& provider);

/// Whether a key is named like a secret (`token`, `api_key`, ... anywhere in
/// it, case-insensitively).
bool named_like_secret(std::string_view key);

/// Whether `value` looks like a secret: it, or a word in it, begins with a
/// known token prefix (Fly `fo1_`, Anthropic `sk-ant-`, GitHub `ghp_`, ...).
bool looks_like_secret(std::string_view value);

/// Checks a whole settings value as `save_settings` writes it: every account
/// (as `validate_account`), unique account and profile names, profiles,
/// `default_account` and `credential_store`. Errors are invalid_argument
/// naming the JSON path, e.g. `accounts[1].options.ip_mode: expected ...`.
caf::error validate_settings(const settings& s);

/// The file's JSON: version, default_account and credential_store when set,
/// accounts, profiles, and the sync bounds that are not at their defaults. `parse_settings` of its text gives `s` back (with
/// option defaults applied).
json to_json(const settings& s);

/// Writes `s` to `path` atomically (mode 0600; the directory is created
/// with mode 0700) with `files::write_file_atomically`: `path.tmp-<pid>-...`,
/// fsync, rename over `path`, fsync of the directory. Errors:
/// invalid_argument when `s` does not validate (nothing is written);
/// otherwise the failing step, naming the path and the errno text. A crash
/// at any point leaves the old file whole.
caf::error save_settings(const std::string& path, const settings& s);

/// As above; `before_rename`, when set, is called after the temporary file
/// is written and synced and before it is renamed over `path`. A seam for
/// tests that kill the process at that point.
caf::error save_settings(const std::string& path, const settings& s,
                         const std::function<void()>& before_rename);

} // namespace aloft
