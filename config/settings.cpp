#include "config/settings.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>
#include <utility>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/base/error.hpp"
#include "engine/base/files.hpp"
#include "engine/base/text.hpp"

namespace aloft {

namespace {

constexpr size_t npos = std::string_view::npos;

// Where a refused secret goes instead; every refusal ends with it.
constexpr std::string_view secrets_go_elsewhere =
    "secrets do not belong in settings.json: store them in the credential store with "
    "`aloft account add`, which reads them from a prompt or stdin";

// -- small text helpers -----------------------------------------------------

std::string quoted(std::string_view s) {
  std::string out;
  append_json_string(out, s);
  return out;
}

/// `"a", "b" or "c"`.
std::string one_of_text(const std::vector<std::string_view>& words) {
  std::string out;
  for (size_t i = 0; i < words.size(); ++i) {
    if (i > 0)
      out += i + 1 == words.size() ? " or " : ", ";
    out += quoted(words[i]);
  }
  return out;
}

std::string join(const std::vector<std::string>& words) {
  std::string out;
  for (auto& w : words) {
    if (!out.empty())
      out += ", ";
    out += w;
  }
  return out;
}

bool is_lower_alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

bool is_alnum(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0;
}

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

/// The path of member `key` of the value at `parent`: `parent.key`, or
/// `parent["odd key"]` when the key is not a plain word.
std::string member_path(const std::string& parent, std::string_view key) {
  bool plain = !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
    return is_alnum(c) || c == '_' || c == '-';
  });
  if (!plain)
    return parent + "[" + quoted(key) + "]";
  if (parent.empty())
    return std::string{key};
  return parent + "." + std::string{key};
}

std::string element_path(const std::string& parent, size_t i) {
  return parent + "[" + std::to_string(i) + "]";
}

/// What a value is, for "found ..." (never the text of a secret).
std::string describe_found(const json& v);

// -- secrets ------------------------------------------------------------------

struct token_match {
  std::string_view kind;   // "a Fly token"
  std::string_view prefix; // "fo1_"
  bool at_start = true;    // false: a later word of the value
};

bool all_chars(std::string_view s, bool (*ok)(char)) {
  return std::all_of(s.begin(), s.end(), ok);
}

/// The token `word` begins with, if any. The prefixes that also begin
/// ordinary names (`ak-`, `as-`, `sk-`, `AKIA`, `vercel_`) need the token's
/// shape after them, so that `as-east` or `vercel_team` is not a secret.
std::optional<token_match> token_at_start(std::string_view word) {
  struct rule {
    std::string_view prefix;
    std::string_view kind;
    size_t min_rest;       // characters after the prefix
    bool (*rest_ok)(char); // nullptr: anything
  };
  static const rule rules[] = {
      {"fo1_", "a Fly token", 0, nullptr},
      {"fm1r_", "a Fly token", 0, nullptr},
      {"fm1a_", "a Fly token", 0, nullptr},
      {"fm2_", "a Fly token", 0, nullptr},
      {"FlyV1 ", "a Fly token", 0, nullptr},
      {"vercel_", "a Vercel token", 16, [](char c) { return is_alnum(c); }},
      {"sk-ant-", "an Anthropic API key", 0, nullptr},
      {"ghp_", "a GitHub token", 0, nullptr},
      {"gho_", "a GitHub token", 0, nullptr},
      {"github_pat_", "a GitHub token", 0, nullptr},
      {"ak-", "a Modal token id", 16, [](char c) { return is_alnum(c); }},
      {"as-", "a Modal token secret", 16, [](char c) { return is_alnum(c); }},
      {"sk-", "an OpenAI API key", 20,
       [](char c) { return is_alnum(c) || c == '_' || c == '-'; }},
      {"AKIA", "an AWS access key id", 12,
       [](char c) { return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }},
  };
  for (auto& r : rules) {
    if (!starts_with(word, r.prefix))
      continue;
    auto rest = word.substr(r.prefix.size());
    if (r.rest_ok) {
      // The token ends at the first character it cannot contain.
      size_t n = 0;
      while (n < rest.size() && r.rest_ok(rest[n]))
        ++n;
      if (n < r.min_rest)
        continue;
    }
    return token_match{r.kind, r.prefix, true};
  }
  return std::nullopt;
}

/// A token at the start of `value` or at the start of a later word (after
/// whitespace, `=` or a quote), as in `agent --key=sk-ant-...`.
std::optional<token_match> find_token(std::string_view value) {
  for (size_t i = 0; i < value.size(); ++i) {
    if (i > 0) {
      char before = value[i - 1];
      if (!(std::isspace(static_cast<unsigned char>(before)) || before == '='
            || before == '"' || before == '\''))
        continue;
    }
    if (auto m = token_at_start(value.substr(i))) {
      m->at_start = i == 0;
      return m;
    }
  }
  return std::nullopt;
}

std::string token_message(const token_match& m) {
  std::string out = m.at_start ? "looks like " : "contains what looks like ";
  out += m.kind;
  out += m.at_start ? " (it begins with " : " (a word beginning with ";
  out += quoted(m.prefix);
  out += "); ";
  out += secrets_go_elsewhere;
  return out;
}

/// Whether an object key must be refused: named like a secret, or a
/// secret itself pasted where a key goes.
bool secret_key(std::string_view key) {
  return named_like_secret(key) || find_token(key);
}

/// `key` for messages and paths; a key that is itself a token is hidden.
std::string shown_key(std::string_view key) {
  return find_token(key) ? "(a secret)" : std::string{key};
}

std::string secret_key_message(std::string_view key) {
  if (auto m = find_token(key))
    return "the key " + token_message(*m);
  return "the key " + quoted(key) + " is named like a secret; "
         + std::string{secrets_go_elsewhere};
}

// -- field rules, shared by the file reader and the CLI setters ---------------

bool valid_name(std::string_view s) {
  if (s.empty() || s.size() > 40 || !is_lower_alnum(s[0]))
    return false;
  return all_chars(s, [](char c) { return is_lower_alnum(c) || c == '_' || c == '-'; });
}

constexpr std::string_view name_expectation =
    "a name of 1 to 40 characters from a-z, 0-9, '_' and '-', starting with a letter "
    "or digit";

bool valid_env_name(std::string_view s) {
  if (s.empty() || !((s[0] >= 'A' && s[0] <= 'Z') || s[0] == '_'))
    return false;
  return all_chars(s, [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  });
}

const std::vector<std::string_view> provider_names = {"local", "fly", "modal", "vercel"};
const std::vector<std::string_view> credential_store_kinds = {
    "file", "env", "secret-service", "keychain"};

/// A rule for an integer field; the upper bounds keep deadline arithmetic
/// far from overflow.
struct int_rule {
  std::string_view key;
  int64_t min;
  int64_t max;
};

constexpr int64_t ten_years_s = int64_t{10} * 365 * 24 * 3600;

const int_rule idle_timeout_rule{"idle_timeout_s", 1, ten_years_s};
const int_rule hard_timeout_rule{"hard_timeout_s", 1, ten_years_s};
const int_rule hard_warning_rule{"hard_warning_s", 0, ten_years_s};
const int_rule max_vms_rule{"max_concurrent_vms", 1, 100000};

// The sync bounds, in bytes or files; a petabyte is past any sane bound.
constexpr int64_t sync_bound_max = int64_t{1} << 50;
struct sync_rule {
  int_rule rule;
  uint64_t sync_settings::*field;
};
const sync_rule sync_rules[] = {
    {{"max_upload_bytes", 1, sync_bound_max}, &sync_settings::max_upload_bytes},
    {{"max_download_bytes", 1, sync_bound_max}, &sync_settings::max_download_bytes},
    {{"max_file_bytes", 1, sync_bound_max}, &sync_settings::max_file_bytes},
    {{"max_files", 1, sync_bound_max}, &sync_settings::max_files},
    {{"max_tree_bytes", 1, sync_bound_max}, &sync_settings::max_tree_bytes},
};

/// "an integer >= 1", or the upper bound when `x` is above it.
std::string int_expectation(const int_rule& r, std::optional<int64_t> x = std::nullopt) {
  if (x && *x > r.max)
    return "an integer <= " + std::to_string(r.max);
  return "an integer >= " + std::to_string(r.min);
}

bool int_ok(const int_rule& r, int64_t x) {
  return x >= r.min && x <= r.max;
}

/// Parses a decimal integer as the CLI passes it ("900", "-1").
std::optional<int64_t> parse_int(const std::string& s) {
  size_t i = !s.empty() && s[0] == '-' ? 1 : 0;
  // 18 digits cannot overflow; anything longer is out of every range here.
  if (i == s.size() || s.size() - i > 18)
    return std::nullopt;
  int64_t x = 0;
  for (; i < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9')
      return std::nullopt;
    x = x * 10 + (s[i] - '0');
  }
  return s[0] == '-' ? -x : x;
}

// Provider options. A check returns "" when the value is fine, else what
// was expected.
using option_check = std::string (*)(std::string_view value);

struct option_rule {
  std::string_view key;
  std::string_view fallback;             // the default; empty: none
  std::vector<std::string_view> allowed; // non-empty: one of these
  option_check check = nullptr;
};

struct provider_rule {
  std::string_view name;
  std::vector<option_rule> options; // sorted by key
};

std::string check_url(std::string_view v) {
  std::string_view rest;
  if (starts_with(v, "https://"))
    rest = v.substr(8);
  else if (starts_with(v, "http://"))
    rest = v.substr(7);
  bool ok = !rest.empty() && rest[0] != '/'
            && all_chars(v, [](char c) { return c > ' ' && c != 0x7f; });
  return ok ? "" : "an http:// or https:// URL";
}

std::string check_org(std::string_view v) {
  bool ok = !v.empty() && v.size() <= 63 && is_alnum(v[0])
            && all_chars(v, [](char c) { return is_alnum(c) || c == '_' || c == '-'; });
  return ok ? "" : "an organization slug (letters, digits, '_' and '-')";
}

std::string check_app_prefix(std::string_view v) {
  bool ok = !v.empty() && v.size() <= 30 && is_lower_alnum(v[0])
            && all_chars(v, [](char c) { return is_lower_alnum(c) || c == '-'; });
  return ok ? ""
            : "1 to 30 characters from a-z, 0-9 and '-', starting with a letter or digit";
}

std::string check_id(std::string_view v) {
  bool ok = !v.empty() && v.size() <= 100 && all_chars(v, [](char c) {
    return is_alnum(c) || c == '_' || c == '-' || c == '.';
  });
  return ok ? "" : "a name or id (letters, digits, '_', '-' and '.')";
}

std::string check_image(std::string_view v) {
  bool ok = !v.empty() && v.size() <= 256
            && all_chars(v, [](char c) { return c > ' ' && c != 0x7f; });
  return ok ? "" : "an image reference (e.g. debian:bookworm-slim), without spaces";
}

// Fly sizes memory in steps of 256 MB.
std::string check_memory_mb(std::string_view v) {
  bool digits = !v.empty() && v.size() <= 6 && all_chars(v, [](char c) {
    return c >= '0' && c <= '9';
  });
  auto mb = digits ? std::stoi(std::string{v}) : 0;
  bool ok = mb >= 256 && mb <= 131072 && mb % 256 == 0;
  return ok ? "" : "a number of MB from 256 to 131072, a multiple of 256";
}

std::string check_abs_path(std::string_view v) {
  bool ok = !v.empty() && v[0] == '/' && v.find('\0') == npos;
  return ok ? "" : "an absolute path";
}

const std::vector<provider_rule>& provider_rules() {
  static const std::vector<provider_rule> rules = {
      {"fly",
       {{"api_url", "https://api.machines.dev", {}, check_url},
        {"app_prefix", "aloft", {}, check_app_prefix},
        {"cpus", "2", {"1", "2", "4", "8", "16"}, nullptr},
        {"image", "docker.io/library/debian:bookworm-slim", {}, check_image},
        {"ip_mode", "ipv6", {"ipv6", "ipv6+ipv4"}, nullptr},
        {"memory_mb", "2048", {}, check_memory_mb},
        {"org", "personal", {}, check_org}}},
      {"local", {{"sandboxes_dir", "", {}, check_abs_path}}},
      {"modal",
       {{"api_url", "https://api.modal.com", {}, check_url},
        {"app_name", "aloft", {}, check_id},
        {"environment", "main", {}, check_id}}},
      {"vercel",
       {{"api_url", "https://vercel.com/api", {}, check_url},
        {"project", "", {}, check_id},
        {"runtime", "node24", {"node24", "node22", "python3.13"}, nullptr},
        {"team", "", {}, check_id},
        {"vcpus", "2", {"1", "2", "4", "8"}, nullptr}}},
  };
  return rules;
}

const provider_rule* find_provider(std::string_view name) {
  for (auto& p : provider_rules())
    if (p.name == name)
      return &p;
  return nullptr;
}

const option_rule* find_option(const provider_rule& p, std::string_view key) {
  for (auto& o : p.options)
    if (o.key == key)
      return &o;
  return nullptr;
}

std::vector<std::string> option_names(const provider_rule& p) {
  std::vector<std::string> out;
  for (auto& o : p.options)
    out.emplace_back(o.key);
  return out;
}

/// "" when `value` is a valid `rule` option, else what was expected.
std::string option_expectation(const option_rule& rule, std::string_view value) {
  if (!rule.allowed.empty()) {
    if (std::find(rule.allowed.begin(), rule.allowed.end(), value) != rule.allowed.end())
      return "";
    return "one of " + one_of_text(rule.allowed);
  }
  return rule.check ? rule.check(value) : "";
}

std::string unknown_option_message(std::string_view key, const provider_rule& p) {
  auto names = option_names(p);
  return "unknown option " + quoted(key) + " for provider " + quoted(p.name)
         + "; known options: " + (names.empty() ? std::string{"none"} : join(names));
}

std::string unknown_provider_message(const std::string& found) {
  return "expected one of " + one_of_text(provider_names) + ", found " + found;
}

/// A problem with a field of a value, the field named by a path relative
/// to the value (`options.ip_mode`).
struct field_problem {
  std::string path;
  std::string message;
};

/// `found "x"` for a string given on the command line or held in a struct;
/// a secret is never echoed.
std::string found_string(std::string_view s) {
  if (find_token(s))
    return "a value that looks like a secret";
  if (s.size() > 60)
    return quoted(s.substr(0, 57)) + "...";
  return quoted(s);
}

/// Checks a plain string field for secrets; returns whether it is clean.
bool check_no_token(std::string_view value, const std::string& path,
                    std::vector<field_problem>& out) {
  if (auto m = find_token(value)) {
    out.push_back({path, token_message(*m)});
    return false;
  }
  return true;
}

/// Every problem with account `a` as a value. `skip` names fields already
/// reported by the caller.
std::vector<field_problem> check_account(const account& a,
                                         const std::set<std::string>& skip = {}) {
  std::vector<field_problem> out;
  auto wanted = [&](const std::string& field) { return skip.count(field) == 0; };
  if (wanted("name") && check_no_token(a.name, "name", out) && !valid_name(a.name))
    out.push_back({"name", "expected " + std::string{name_expectation} + ", found "
                               + found_string(a.name)});
  const provider_rule* provider = nullptr;
  if (wanted("provider") && check_no_token(a.provider, "provider", out)) {
    provider = find_provider(a.provider);
    if (!provider)
      out.push_back({"provider", unknown_provider_message(found_string(a.provider))});
  }
  if (wanted("name") && wanted("provider") && a.name == "local" && provider
      && a.provider != "local")
    out.push_back({"provider", "the account named \"local\" is the built-in local "
                               "account; expected \"local\", found "
                                   + found_string(a.provider)});
  for (auto& [key, value] : a.options) {
    auto path = member_path("options", shown_key(key));
    if (!wanted(path))
      continue;
    const option_rule* rule = provider ? find_option(*provider, key) : nullptr;
    if (!rule && secret_key(key)) {
      out.push_back({path, secret_key_message(key)});
      continue;
    }
    if (!check_no_token(value, path, out))
      continue;
    if (!provider)
      continue; // the provider problem is reported already
    if (!rule) {
      out.push_back({path, unknown_option_message(key, *provider)});
      continue;
    }
    if (auto e = option_expectation(*rule, value); !e.empty())
      out.push_back({path, "expected " + e + ", found " + found_string(value)});
  }
  auto check_int = [&](const int_rule& r, int64_t x, const std::string& path) {
    if (wanted(path) && !int_ok(r, x))
      out.push_back(
          {path, "expected " + int_expectation(r, x) + ", found " + std::to_string(x)});
  };
  check_int(idle_timeout_rule, a.guards.idle_timeout_s, "guards.idle_timeout_s");
  check_int(hard_timeout_rule, a.guards.hard_timeout_s, "guards.hard_timeout_s");
  check_int(hard_warning_rule, a.guards.hard_warning_s, "guards.hard_warning_s");
  check_int(max_vms_rule, a.max_concurrent_vms, "max_concurrent_vms");
  return out;
}

std::vector<field_problem> check_profile(const agent_profile& p,
                                         const std::set<std::string>& skip = {}) {
  std::vector<field_problem> out;
  auto wanted = [&](const std::string& field) { return skip.count(field) == 0; };
  if (wanted("name") && check_no_token(p.name, "name", out) && !valid_name(p.name))
    out.push_back({"name", "expected " + std::string{name_expectation} + ", found "
                               + found_string(p.name)});
  if (wanted("command") && check_no_token(p.command, "command", out) && p.command.empty())
    out.push_back({"command", "expected the command that runs the agent, found \"\""});
  for (size_t i = 0; i < p.secrets.size(); ++i) {
    auto path = element_path("secrets", i);
    if (!wanted(path) || !check_no_token(p.secrets[i], path, out))
      continue;
    if (!valid_env_name(p.secrets[i]))
      out.push_back({path, "expected the name of a secret as an environment variable "
                           "([A-Z_][A-Z0-9_]*), found "
                               + found_string(p.secrets[i])});
  }
  if (wanted("image"))
    check_no_token(p.image, "image", out);
  return out;
}

std::optional<std::string> credential_store_problem(const std::string& kind) {
  if (kind.empty()
      || std::find(credential_store_kinds.begin(), credential_store_kinds.end(), kind)
             != credential_store_kinds.end())
    return std::nullopt;
  return "expected one of " + one_of_text(credential_store_kinds) + ", found "
         + found_string(kind);
}

std::string default_account_message(const std::string& found,
                                    const std::vector<std::string>& names) {
  std::string out =
      "expected the name of an account in this file or \"local\", found " + found;
  out += names.empty() ? "; the file has no accounts" : "; accounts: " + join(names);
  return out;
}

std::string describe_found(const json& v) {
  switch (v.type()) {
  case json::kind::null:
    return "null";
  case json::kind::boolean:
    return v.as_bool() ? "true" : "false";
  case json::kind::integer:
    return "the integer " + std::to_string(v.as_int());
  case json::kind::real: {
    char buf[40];
    double x = v.as_double();
    if (std::isfinite(x) && x == std::floor(x) && std::fabs(x) < 1e15)
      std::snprintf(buf, sizeof(buf), "%.1f", x);
    else
      std::snprintf(buf, sizeof(buf), "%g", x);
    return std::string{"the number "} + buf;
  }
  case json::kind::string:
    if (find_token(v.as_string()))
      return "a string that looks like a secret";
    return "the string " + found_string(v.as_string());
  case json::kind::array:
    return "an array";
  case json::kind::object:
    return "an object";
  }
  return "a value";
}

// -- the locator ----------------------------------------------------------------

/// Scans the raw text of a JSON document and records where the value (and,
/// for an object member, the key) of every path begins, duplicate keys, and
/// the first syntax error. simdjson says whether a document is valid but
/// not where anything is; this gives problems their line numbers.
class json_locator {
public:
  struct duplicate {
    std::string key;
    size_t offset;
  };

  explicit json_locator(std::string_view text) : text_(text) {
    for (size_t i = 0; i < text_.size(); ++i)
      if (text_[i] == '\n')
        newlines_.push_back(i);
    skip_space();
    if (value({}, 0)) {
      skip_space();
      if (pos_ < text_.size())
        fail({}, "expected the end of the file after the top-level value");
    }
  }

  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  const std::string& error_path() const { return error_path_; }
  int error_line() const { return ok() ? 0 : line_at(error_offset_); }

  /// 1-based line of byte `offset`; 0 for npos.
  int line_at(size_t offset) const {
    if (offset == npos)
      return 0;
    auto it = std::lower_bound(newlines_.begin(), newlines_.end(), offset);
    return 1 + static_cast<int>(it - newlines_.begin());
  }

  /// Line of the value at `path`; 0 when unknown.
  int value_line(const std::string& path) const {
    auto it = where_.find(path);
    return it == where_.end() ? 0 : line_at(it->second.value);
  }

  /// Line of the key of the member at `path` (its value's for elements).
  int key_line(const std::string& path) const {
    auto it = where_.find(path);
    if (it == where_.end())
      return 0;
    return line_at(it->second.key != npos ? it->second.key : it->second.value);
  }

  /// Keys given more than once in the object at `path`, at their repeats.
  const std::vector<duplicate>& duplicates_in(const std::string& path) const {
    static const std::vector<duplicate> none;
    auto it = duplicates_.find(path);
    return it == duplicates_.end() ? none : it->second;
  }

private:
  struct location {
    size_t key = npos;
    size_t value = npos;
  };

  static constexpr int max_depth = 1024; // simdjson's default

  void skip_space() {
    while (pos_ < text_.size()
           && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n'
               || text_[pos_] == '\r'))
      ++pos_;
  }

  bool at(char c) const { return pos_ < text_.size() && text_[pos_] == c; }

  std::string found_here() const {
    if (pos_ >= text_.size())
      return "the end of the file";
    auto c = static_cast<unsigned char>(text_[pos_]);
    if (c == '\n' || c == '\r')
      return "a line break";
    if (c < 0x20)
      return "a control character";
    if (c >= 0x80)
      return "a non-ASCII character";
    auto word_char = [](char x) {
      return is_alnum(x) || x == '_' || x == '.' || x == '+' || x == '-';
    };
    if (word_char(text_[pos_])) {
      size_t end = pos_;
      while (end < text_.size() && end - pos_ < 24 && word_char(text_[end]))
        ++end;
      return "'" + std::string{text_.substr(pos_, end - pos_)} + "'";
    }
    return std::string{"'"} + static_cast<char>(c) + "'";
  }

  /// Records the first syntax error at the current position; returns false.
  bool fail(const std::string& path, const std::string& expected) {
    return fail_plain(path, expected + ", found " + found_here());
  }

  bool fail_plain(const std::string& path, std::string message) {
    if (error_.empty()) {
      error_ = std::move(message);
      error_path_ = path;
      error_offset_ = pos_;
    }
    return false;
  }

  bool value(const std::string& path, int depth) {
    where_[path].value = pos_;
    if (pos_ >= text_.size())
      return fail(path, "expected a value");
    switch (text_[pos_]) {
    case '{':
      return object(path, depth + 1);
    case '[':
      return array(path, depth + 1);
    case '"':
      return string(path, nullptr);
    case 't':
      return word(path, "true");
    case 'f':
      return word(path, "false");
    case 'n':
      return word(path, "null");
    default:
      if (text_[pos_] == '-' || (text_[pos_] >= '0' && text_[pos_] <= '9'))
        return number(path);
      return fail(path, "expected a value (a string in double quotes, a number, an "
                        "object, an array, true, false or null)");
    }
  }

  bool object(const std::string& path, int depth) {
    if (depth > max_depth)
      return fail(path,
                  "expected at most " + std::to_string(max_depth) + " levels of nesting");
    ++pos_; // '{'
    skip_space();
    if (at('}')) {
      ++pos_;
      return true;
    }
    std::set<std::string> seen;
    for (bool first = true;; first = false) {
      if (!at('"')) {
        if (!first && at('}'))
          return fail(path, "expected a key in double quotes after ','; JSON allows "
                            "no comma before '}'");
        return fail(path, first ? "expected a key in double quotes or '}'"
                                : "expected a key in double quotes after ','");
      }
      size_t key_offset = pos_;
      std::string key;
      if (!string(path, &key))
        return false;
      auto child = member_path(path, key);
      if (!seen.insert(key).second)
        duplicates_[path].push_back({key, key_offset});
      where_[child].key = key_offset;
      skip_space();
      if (!at(':'))
        return fail(path, "expected ':' after the key " + quoted(key));
      ++pos_;
      skip_space();
      if (!value(child, depth))
        return false;
      skip_space();
      if (at('}')) {
        ++pos_;
        return true;
      }
      if (!at(','))
        return fail(path, "expected ',' or '}' after the value of " + quoted(key));
      ++pos_;
      skip_space();
    }
  }

  bool array(const std::string& path, int depth) {
    if (depth > max_depth)
      return fail(path,
                  "expected at most " + std::to_string(max_depth) + " levels of nesting");
    ++pos_; // '['
    skip_space();
    if (at(']')) {
      ++pos_;
      return true;
    }
    for (size_t i = 0;; ++i) {
      if (i > 0 && at(']'))
        return fail(path, "expected a value after ','; JSON allows no comma before ']'");
      if (!value(element_path(path, i), depth))
        return false;
      skip_space();
      if (at(']')) {
        ++pos_;
        return true;
      }
      if (!at(','))
        return fail(path, "expected ',' or ']' after an element of the array");
      ++pos_;
      skip_space();
    }
  }

  bool hex4(const std::string& path, uint32_t& out) {
    out = 0;
    for (int i = 0; i < 4; ++i, ++pos_) {
      int h = pos_ < text_.size() ? hex_value(text_[pos_]) : -1;
      if (h < 0)
        return fail(path, "expected four hex digits after \\u");
      out = out * 16 + static_cast<uint32_t>(h);
    }
    return true;
  }

  static void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  /// Length of the valid UTF-8 sequence at `pos_`, or 0.
  size_t utf8_length() const {
    auto byte = [&](size_t i) {
      return pos_ + i < text_.size() ? static_cast<unsigned char>(text_[pos_ + i]) : 0;
    };
    auto cont = [&](size_t i) { return (byte(i) & 0xC0) == 0x80; };
    unsigned char b = byte(0);
    if (b >= 0xC2 && b <= 0xDF)
      return cont(1) ? 2 : 0;
    if (b >= 0xE0 && b <= 0xEF) {
      unsigned char b1 = byte(1);
      if ((b == 0xE0 && b1 < 0xA0) || (b == 0xED && b1 > 0x9F))
        return 0; // overlong, or a surrogate
      return cont(1) && cont(2) ? 3 : 0;
    }
    if (b >= 0xF0 && b <= 0xF4) {
      unsigned char b1 = byte(1);
      if ((b == 0xF0 && b1 < 0x90) || (b == 0xF4 && b1 > 0x8F))
        return 0; // overlong, or above U+10FFFF
      return cont(1) && cont(2) && cont(3) ? 4 : 0;
    }
    return 0;
  }

  /// A string at `pos_`; its decoded text goes to `out` when set.
  bool string(const std::string& path, std::string* out) {
    size_t open = pos_;
    ++pos_; // '"'
    for (;;) {
      if (pos_ >= text_.size()) {
        pos_ = open; // the line where the string began is the useful one
        return fail_plain(path, "a string begins here and is never closed");
      }
      auto c = static_cast<unsigned char>(text_[pos_]);
      if (c == '"') {
        ++pos_;
        return true;
      }
      if (c < 0x20)
        return fail(path, "expected a closing '\"' (a string cannot contain a line "
                          "break or control character; write \\n or \\t)");
      if (c >= 0x80) {
        size_t n = utf8_length();
        if (n == 0)
          return fail(path, "expected text in UTF-8 inside the string");
        if (out)
          out->append(text_.substr(pos_, n));
        pos_ += n;
        continue;
      }
      if (c != '\\') {
        if (out)
          *out += static_cast<char>(c);
        ++pos_;
        continue;
      }
      ++pos_; // '\'
      char e = pos_ < text_.size() ? text_[pos_] : '\0';
      static const std::string_view simple = "\"\\/bfnrt";
      static const std::string_view meaning = "\"\\/\b\f\n\r\t";
      if (auto k = simple.find(e); e != '\0' && k != npos) {
        if (out)
          *out += meaning[k];
        ++pos_;
        continue;
      }
      if (e != 'u')
        return fail(path, "expected an escape (\\\" \\\\ \\/ \\b \\f \\n \\r \\t or "
                          "\\uXXXX) after '\\'");
      ++pos_;
      uint32_t cp = 0;
      if (!hex4(path, cp))
        return false;
      if (cp >= 0xD800 && cp <= 0xDBFF && pos_ + 1 < text_.size() && text_[pos_] == '\\'
          && text_[pos_ + 1] == 'u') {
        pos_ += 2;
        uint32_t low = 0;
        if (!hex4(path, low))
          return false;
        if (low >= 0xDC00 && low <= 0xDFFF)
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        else
          return fail_plain(path, "a \\u escape of a high surrogate must be followed "
                                  "by one of a low surrogate");
      } else if (cp >= 0xD800 && cp <= 0xDFFF) {
        return fail_plain(path, "a \\u escape of a surrogate must be one of a pair");
      }
      if (out)
        append_utf8(*out, cp);
    }
  }

  bool digits(const std::string& path, const char* after) {
    if (pos_ >= text_.size() || text_[pos_] < '0' || text_[pos_] > '9')
      return fail(path, std::string{"expected a digit "} + after);
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9')
      ++pos_;
    return true;
  }

  bool number(const std::string& path) {
    size_t start = pos_;
    bool integral = true;
    if (at('-'))
      ++pos_;
    if (at('0'))
      ++pos_;
    else if (!digits(path, "in the number"))
      return false;
    if (at('.')) {
      integral = false;
      ++pos_;
      if (!digits(path, "after '.'"))
        return false;
    }
    if (at('e') || at('E')) {
      integral = false;
      ++pos_;
      if (at('+') || at('-'))
        ++pos_;
      if (!digits(path, "in the exponent"))
        return false;
    }
    // simdjson refuses integers beyond 64 bits and numbers beyond a double.
    std::string literal{text_.substr(start, pos_ - start)};
    errno = 0;
    bool fits = true;
    if (integral && literal[0] == '-')
      fits = (std::strtoll(literal.c_str(), nullptr, 10), errno != ERANGE);
    else if (integral)
      fits = (std::strtoull(literal.c_str(), nullptr, 10), errno != ERANGE);
    else
      fits = std::isfinite(std::strtod(literal.c_str(), nullptr));
    if (!fits) {
      pos_ = start;
      return fail_plain(path, "the number " + literal + " is too large");
    }
    return true;
  }

  bool word(const std::string& path, std::string_view w) {
    size_t end = pos_;
    while (end < text_.size() && is_alnum(text_[end]))
      ++end;
    if (text_.substr(pos_, end - pos_) != w)
      return fail(path, "expected a value (a string in double quotes, a number, an "
                        "object, an array, true, false or null)");
    pos_ = end;
    return true;
  }

  std::string_view text_;
  size_t pos_ = 0;
  std::vector<size_t> newlines_;
  std::unordered_map<std::string, location> where_;
  std::unordered_map<std::string, std::vector<duplicate>> duplicates_;
  std::string error_;
  std::string error_path_;
  size_t error_offset_ = npos;
};

// -- the reader -------------------------------------------------------------------

const std::vector<std::string> top_level_keys = {
    "accounts", "credential_store", "default_account", "profiles", "sync", "version"};
// The names of sync_rules, sorted as check_keys lists them.
const std::vector<std::string> sync_keys = [] {
  std::vector<std::string> names;
  for (auto& r : sync_rules)
    names.emplace_back(r.rule.key);
  std::sort(names.begin(), names.end());
  return names;
}();
const std::vector<std::string> account_keys = {"enabled", "guards",  "max_concurrent_vms",
                                               "name",    "options", "provider"};
const std::vector<std::string> guard_keys = {"auto_destroy_on_idle", "hard_timeout_s",
                                             "hard_warning_s", "idle_timeout_s",
                                             "max_concurrent_vms"};
const std::vector<std::string> profile_keys = {"command", "image", "name", "secrets"};

/// Turns the parsed document into settings, reporting every problem with
/// its file, path and line.
class settings_reader {
public:
  settings_reader(std::string_view text, const std::string& file)
      : text_(text), file_(file), where_(text) {}

  settings_load read() {
    auto parsed = json::parse(text_);
    if (!parsed) {
      // simdjson names the kind of error but not where; the locator does.
      if (!where_.ok())
        report_at(where_.error_path(), where_.error_line(),
                  "syntax error: " + where_.error());
      else
        report_at({}, 0, "syntax error: " + message_of(parsed.error()));
      return std::move(out_);
    }
    const json& root = *parsed;
    if (!root.is_object()) {
      report({}, "expected an object at the top level, found " + describe_found(root));
      return std::move(out_);
    }
    check_keys(root, {}, top_level_keys, "key", "");
    read_version(root);
    read_credential_store(root);
    read_sync(root);
    read_accounts(root);
    read_profiles(root);
    read_default_account(root);
    // In file order, as a person fixes them; a problem without a line last.
    std::stable_sort(out_.problems.begin(), out_.problems.end(),
                     [](const settings_problem& x, const settings_problem& y) {
                       auto key = [](int line) { return line > 0 ? line : INT_MAX; };
                       return key(x.line) < key(y.line);
                     });
    return std::move(out_);
  }

private:
  enum class at { value, key };

  void report_at(const std::string& path, int line, std::string message) {
    out_.problems.push_back(settings_problem{file_, path, line, std::move(message)});
  }

  void report(const std::string& path, std::string message, at where = at::value) {
    report_at(path, where == at::key ? where_.key_line(path) : where_.value_line(path),
              std::move(message));
  }

  /// Reports a problem with the key `key` of the object at `parent`, on
  /// the key's line; a key that is a secret is not repeated.
  void report_key(const std::string& parent, const std::string& key, int line,
                  std::string message) {
    report_at(member_path(parent, shown_key(key)), line, std::move(message));
  }

  void report_all(const std::string& base, const std::vector<field_problem>& problems) {
    for (auto& p : problems)
      report(base + "." + p.path, p.message);
  }

  /// Reports secret-named, unknown and repeated keys of the object `j` at
  /// `path`. The known keys are left to the caller.
  void check_keys(const json& j, const std::string& path,
                  const std::vector<std::string>& known, const std::string& noun,
                  const std::string& context) {
    for (size_t i = 0; i < j.keys().size(); ++i) {
      auto& key = j.keys()[i];
      if (std::find(known.begin(), known.end(), key) != known.end())
        continue;
      auto child = member_path(path, key);
      int line = where_.key_line(child);
      if (secret_key(key)) {
        report_key(path, key, line, secret_key_message(key));
        continue;
      }
      report_key(path, key, line,
                 "unknown " + noun + " " + quoted(key) + context + "; known " + noun
                     + "s: " + (known.empty() ? std::string{"none"} : join(known)));
      scan_for_secrets(j.items()[i], child);
    }
    for (auto& d : where_.duplicates_in(path))
      report_key(path, d.key, where_.line_at(d.offset),
                 "the key " + quoted(shown_key(d.key))
                     + " is given more than once; JSON keeps only the last, so remove "
                       "the others");
  }

  /// Reports secrets anywhere inside a value nobody reads (an unknown key's).
  void scan_for_secrets(const json& v, const std::string& path) {
    if (v.is_string()) {
      if (auto m = find_token(v.as_string()))
        report(path, token_message(*m));
    } else if (v.is_array()) {
      for (size_t i = 0; i < v.size(); ++i)
        scan_for_secrets(v.at(i), element_path(path, i));
    } else if (v.is_object()) {
      for (size_t i = 0; i < v.keys().size(); ++i) {
        auto& key = v.keys()[i];
        auto child = member_path(path, key);
        if (secret_key(key))
          report_key(path, key, where_.key_line(child), secret_key_message(key));
        else
          scan_for_secrets(v.items()[i], child);
      }
    }
  }

  /// The string at `path`, or nullopt after reporting what it is instead.
  /// A string that looks like a secret is reported here, never echoed.
  std::optional<std::string> read_string(const json& v, const std::string& path,
                                         const std::string& expected = "a string") {
    if (!v.is_string()) {
      report(path, "expected " + expected + ", found " + describe_found(v));
      return std::nullopt;
    }
    if (auto m = find_token(v.as_string())) {
      report(path, token_message(*m));
      return std::nullopt;
    }
    return v.as_string();
  }

  std::optional<int64_t> read_int(const json& v, const std::string& path,
                                  const int_rule& rule) {
    if (!v.is_integer()) {
      report(path, "expected " + int_expectation(rule) + ", found " + describe_found(v));
      return std::nullopt;
    }
    auto x = v.as_int();
    if (!int_ok(rule, x)) {
      report(path,
             "expected " + int_expectation(rule, x) + ", found " + describe_found(v));
      return std::nullopt;
    }
    return x;
  }

  std::optional<bool> read_bool(const json& v, const std::string& path) {
    if (!v.is_bool()) {
      report(path, "expected true or false, found " + describe_found(v));
      return std::nullopt;
    }
    return v.as_bool();
  }

  void read_version(const json& root) {
    auto v = root.find("version");
    if (!v)
      return;
    if (!v->is_integer() || v->as_int() != 1)
      report("version", "expected 1 (the only version this Aloft reads), found "
                            + describe_found(*v));
  }

  void read_credential_store(const json& root) {
    auto v = root.find("credential_store");
    if (!v)
      return;
    auto s = read_string(*v, "credential_store",
                         "one of " + one_of_text(credential_store_kinds));
    if (!s)
      return;
    if (auto e = credential_store_problem(*s)) {
      report("credential_store", *e);
      return;
    }
    out_.value.credential_store = *s;
  }

  void read_sync(const json& root) {
    auto v = root.find("sync");
    if (!v)
      return;
    if (!v->is_object()) {
      report("sync", "expected an object of sync bounds, found " + describe_found(*v));
      return;
    }
    check_keys(*v, "sync", sync_keys, "key", " in sync");
    for (auto& r : sync_rules)
      if (auto x = v->find(r.rule.key))
        if (auto n = read_int(*x, "sync." + std::string{r.rule.key}, r.rule))
          out_.value.sync.*r.field = static_cast<uint64_t>(*n);
  }

  void read_accounts(const json& root) {
    auto v = root.find("accounts");
    if (!v)
      return;
    if (!v->is_array()) {
      report("accounts", "expected an array of accounts, found " + describe_found(*v));
      return;
    }
    std::map<std::string, std::string> first_path_of_name;
    for (size_t i = 0; i < v->size(); ++i) {
      auto path = element_path("accounts", i);
      const json& j = v->at(i);
      // The name counts for default_account and duplicates even when the
      // account is left out: it is what the person wrote. The first of two
      // accounts with one name is kept.
      bool duplicate = false;
      if (j.is_object())
        if (auto n = j.find("name"); n && n->is_string() && !find_token(n->as_string())) {
          auto [it, fresh] = first_path_of_name.emplace(n->as_string(), path);
          names_in_file_.push_back(n->as_string());
          if (!fresh) {
            report(path + ".name", "duplicate account name " + quoted(n->as_string())
                                       + " (also " + it->second + ")");
            duplicate = true;
          }
        }
      auto a = read_account(j, path);
      if (a && !duplicate)
        out_.value.accounts.push_back(std::move(*a));
    }
  }

  std::optional<account> read_account(const json& j, const std::string& path) {
    if (!j.is_object()) {
      report(path, "expected an account object, found " + describe_found(j));
      return std::nullopt;
    }
    size_t before = out_.problems.size();
    std::set<std::string> skip; // fields reported here, not again by check_account
    account a;
    check_keys(j, path, account_keys, "key", " in an account");

    if (auto v = j.find("name")) {
      if (auto s = read_string(*v, path + ".name"))
        a.name = *s;
      else
        skip.insert("name");
    } else {
      report(path, "missing \"name\": every account needs one");
      skip.insert("name");
    }
    if (auto v = j.find("provider")) {
      if (auto s = read_string(*v, path + ".provider",
                               "one of " + one_of_text(provider_names)))
        a.provider = *s;
      else
        skip.insert("provider");
    } else {
      report(path,
             "missing \"provider\": expected one of " + one_of_text(provider_names));
      skip.insert("provider");
    }
    if (auto v = j.find("enabled"))
      if (auto b = read_bool(*v, path + ".enabled"))
        a.enabled = *b;
    if (auto v = j.find("max_concurrent_vms")) {
      skip.insert("max_concurrent_vms");
      if (auto x = read_int(*v, path + ".max_concurrent_vms", max_vms_rule))
        a.max_concurrent_vms = static_cast<int>(*x);
    }
    if (auto v = j.find("guards"))
      read_guards(*v, path + ".guards", j.find("max_concurrent_vms"), a, skip);
    if (auto v = j.find("options"))
      read_options(*v, path + ".options", a, skip);

    report_all(path, check_account(a, skip));
    if (out_.problems.size() != before)
      return std::nullopt;
    apply_option_defaults(a);
    return a;
  }

  void read_guards(const json& g, const std::string& path, const json* account_max_vms,
                   account& a, std::set<std::string>& skip) {
    if (!g.is_object()) {
      report(path, "expected an object of guards, found " + describe_found(g));
      return;
    }
    check_keys(g, path, guard_keys, "key", " in guards");
    if (auto v = g.find("auto_destroy_on_idle"))
      if (auto b = read_bool(*v, path + ".auto_destroy_on_idle"))
        a.guards.auto_destroy_on_idle = *b;
    struct field {
      const int_rule* rule;
      int64_t* target;
    } fields[] = {{&idle_timeout_rule, &a.guards.idle_timeout_s},
                  {&hard_timeout_rule, &a.guards.hard_timeout_s},
                  {&hard_warning_rule, &a.guards.hard_warning_s}};
    for (auto& f : fields) {
      auto v = g.find(f.rule->key);
      if (!v)
        continue;
      std::string field_path{"guards."};
      field_path += f.rule->key;
      skip.insert(field_path);
      if (auto x = read_int(*v, path + "." + std::string{f.rule->key}, *f.rule))
        *f.target = *x;
    }
    // The cap is written at the account's top level; inside guards it is
    // accepted too, as long as the two agree.
    if (auto v = g.find("max_concurrent_vms")) {
      skip.insert("max_concurrent_vms");
      auto x = read_int(*v, path + ".max_concurrent_vms", max_vms_rule);
      if (x && account_max_vms && *account_max_vms != *v)
        report(path + ".max_concurrent_vms",
               "given both here and in the account with a different value; keep one");
      else if (x)
        a.max_concurrent_vms = static_cast<int>(*x);
    }
  }

  void read_options(const json& o, const std::string& path, account& a,
                    std::set<std::string>& skip) {
    if (!o.is_object()) {
      report(path, "expected an object of provider options, found " + describe_found(o));
      return;
    }
    const provider_rule* provider = find_provider(a.provider);
    if (!provider) {
      // The provider problem is reported; still refuse secrets in here.
      scan_for_secrets(o, path);
      return;
    }
    check_keys(o, path, option_names(*provider), "option",
               " for provider " + quoted(provider->name));
    for (size_t i = 0; i < o.keys().size(); ++i) {
      auto& key = o.keys()[i];
      if (!find_option(*provider, key))
        continue; // reported by check_keys
      const json& v = o.items()[i];
      auto field = member_path("options", key);
      if (!v.is_string()) {
        std::string hint;
        if (v.is_integer() || v.is_bool())
          hint = " (write " + quoted(v.dump()) + ")";
        report(member_path(path, key),
               "expected a string" + hint + ", found " + describe_found(v));
        skip.insert(field);
        continue;
      }
      a.options[key] = v.as_string(); // check_account checks the value
    }
  }

  void read_profiles(const json& root) {
    auto v = root.find("profiles");
    if (!v)
      return;
    if (!v->is_array()) {
      report("profiles", "expected an array of profiles, found " + describe_found(*v));
      return;
    }
    std::map<std::string, std::string> first_path_of_name;
    for (size_t i = 0; i < v->size(); ++i) {
      auto path = element_path("profiles", i);
      auto p = read_profile(v->at(i), path);
      if (!p)
        continue;
      auto [it, fresh] = first_path_of_name.emplace(p->name, path);
      if (!fresh) {
        report(path + ".name", "duplicate profile name " + quoted(p->name) + " (also "
                                   + it->second + ")");
        continue;
      }
      out_.value.profiles.push_back(std::move(*p));
    }
  }

  std::optional<agent_profile> read_profile(const json& j, const std::string& path) {
    if (!j.is_object()) {
      report(path, "expected a profile object, found " + describe_found(j));
      return std::nullopt;
    }
    size_t before = out_.problems.size();
    std::set<std::string> skip;
    agent_profile p;
    check_keys(j, path, profile_keys, "key", " in a profile");
    auto required = [&](const char* key, std::string& target, const char* what) {
      if (auto v = j.find(key)) {
        if (auto s = read_string(*v, path + "." + key))
          target = *s;
        else
          skip.insert(key);
      } else {
        report(path, std::string{"missing \""} + key + "\": every profile needs " + what);
        skip.insert(key);
      }
    };
    required("name", p.name, "a name");
    required("command", p.command, "the command that runs the agent");
    if (auto v = j.find("image")) {
      if (auto s = read_string(*v, path + ".image"))
        p.image = *s;
      else
        skip.insert("image");
    }
    // Names of secrets, not secrets: `ANTHROPIC_API_KEY` is fine here.
    if (auto v = j.find("secrets")) {
      if (!v->is_array()) {
        report(path + ".secrets",
               "expected an array of secret names, found " + describe_found(*v));
      } else {
        for (size_t i = 0; i < v->size(); ++i) {
          auto field = element_path("secrets", i);
          auto s = read_string(v->at(i), path + "." + field,
                               "the name of a secret as an environment variable");
          if (!s)
            skip.insert(field);
          p.secrets.push_back(s.value_or(""));
        }
      }
    }
    report_all(path, check_profile(p, skip));
    if (out_.problems.size() != before)
      return std::nullopt;
    return p;
  }

  void read_default_account(const json& root) {
    auto v = root.find("default_account");
    if (!v)
      return;
    auto s = read_string(*v, "default_account");
    if (!s)
      return;
    bool known = *s == "local"
                 || std::find(names_in_file_.begin(), names_in_file_.end(), *s)
                        != names_in_file_.end();
    if (!known) {
      report("default_account",
             default_account_message(found_string(*s), names_in_file_));
      return;
    }
    // An account left out for a problem keeps its place as the default:
    // falling back to another account would launch where nobody asked.
    out_.value.default_account = *s;
  }

  std::string_view text_;
  const std::string& file_;
  json_locator where_;
  settings_load out_;
  std::vector<std::string> names_in_file_;
};

caf::error invalid(std::string message) {
  return make_error(errc::invalid_argument, std::move(message));
}

/// The first of `problems` as an error, its path under `base` if set.
caf::error first_problem(const std::vector<field_problem>& problems,
                         const std::string& base = {}) {
  if (problems.empty())
    return {};
  auto& p = problems.front();
  return invalid((base.empty() ? p.path : base + "." + p.path) + ": " + p.message);
}

// -- files --------------------------------------------------------------------

/// Creates `dir` and its missing parents with mode 0700.
caf::error make_dirs(const std::string& dir) {
  if (dir.empty())
    return {};
  struct stat st;
  if (::stat(dir.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode))
      return {};
    return from_errno(ENOTDIR, "create directory " + dir);
  }
  auto slash = dir.find_last_of('/');
  if (slash != std::string::npos && slash > 0)
    if (auto err = make_dirs(dir.substr(0, slash)))
      return err;
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    return from_errno(errno, "create directory " + dir);
  return {};
}

} // namespace

// -- public ---------------------------------------------------------------------

bool operator==(const agent_profile& x, const agent_profile& y) {
  return x.name == y.name && x.command == y.command && x.secrets == y.secrets
         && x.image == y.image;
}

bool operator==(const sync_settings& x, const sync_settings& y) {
  for (auto& r : sync_rules)
    if (x.*r.field != y.*r.field)
      return false;
  return true;
}

bool operator==(const settings& x, const settings& y) {
  return x.accounts == y.accounts && x.default_account == y.default_account
         && x.profiles == y.profiles && x.credential_store == y.credential_store
         && x.sync == y.sync;
}

std::string settings_problem::describe() const {
  std::string out = file;
  if (line > 0)
    out += ":" + std::to_string(line);
  if (!out.empty())
    out += ": ";
  if (!path.empty())
    out += path + ": ";
  out += message;
  return out;
}

bool named_like_secret(std::string_view key) {
  auto lower = ascii_lower(key);
  for (std::string_view word : {"token", "secret", "password", "passwd", "api_key",
                                "apikey", "private_key", "credential"})
    if (lower.find(word) != std::string::npos)
      return true;
  return false;
}

bool looks_like_secret(std::string_view value) {
  return find_token(value).has_value();
}

settings_load parse_settings(std::string_view text, const std::string& file) {
  return settings_reader{text, file}.read();
}

settings_load load_settings(const std::string& path) {
  settings_load out;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT)
    return out;
  auto text = fd < 0 ? caf::expected<std::string>{from_errno(errno, "cannot read the file")}
                     : files::read_all(fd, "the file");
  if (fd >= 0)
    ::close(fd);
  if (!text) {
    out.problems.push_back(settings_problem{path, {}, 0, message_of(text.error())});
    return out;
  }
  return parse_settings(*text, path);
}

caf::error validate_account(const account& a) {
  return first_problem(check_account(a));
}

void apply_option_defaults(account& a) {
  if (auto p = find_provider(a.provider))
    for (auto& o : p->options)
      if (!o.fallback.empty())
        a.options.try_emplace(std::string{o.key}, o.fallback);
}

std::vector<std::string> known_options(const std::string& provider) {
  auto p = find_provider(provider);
  return p ? option_names(*p) : std::vector<std::string>{};
}

caf::error apply_option(account& a, const std::string& key, const std::string& value) {
  auto provider = find_provider(a.provider);
  if (!provider)
    return invalid("provider: " + unknown_provider_message(found_string(a.provider)));
  auto rule = find_option(*provider, key);
  if (!rule) {
    if (secret_key(key))
      return invalid(shown_key(key) + ": " + secret_key_message(key));
    return invalid(unknown_option_message(key, *provider));
  }
  if (auto m = find_token(value))
    return invalid(key + ": " + token_message(*m));
  if (auto e = option_expectation(*rule, value); !e.empty())
    return invalid(key + ": expected " + e + ", found " + found_string(value));
  a.options[key] = value;
  apply_option_defaults(a);
  return {};
}

caf::error set_account_field(account& a, const std::string& key,
                             const std::string& value) {
  auto boolean = [&](bool& target) -> caf::error {
    if (value == "true" || value == "false") {
      target = value == "true";
      return {};
    }
    return invalid(key + ": expected true or false, found " + found_string(value));
  };
  auto integer = [&](const int_rule& rule) -> caf::expected<int64_t> {
    auto x = parse_int(value);
    if (x && int_ok(rule, *x))
      return *x;
    return invalid(key + ": expected " + int_expectation(rule, x) + ", found "
                   + found_string(value));
  };
  if (key == "auto_destroy_on_idle")
    return boolean(a.guards.auto_destroy_on_idle);
  if (key == "enabled")
    return boolean(a.enabled);
  struct field {
    const int_rule* rule;
    int64_t* target;
  } fields[] = {{&idle_timeout_rule, &a.guards.idle_timeout_s},
                {&hard_timeout_rule, &a.guards.hard_timeout_s},
                {&hard_warning_rule, &a.guards.hard_warning_s}};
  for (auto& f : fields)
    if (key == f.rule->key) {
      auto x = integer(*f.rule);
      if (!x)
        return x.error();
      *f.target = *x;
      return {};
    }
  if (key == "max_concurrent_vms") {
    auto x = integer(max_vms_rule);
    if (!x)
      return x.error();
    a.max_concurrent_vms = static_cast<int>(*x);
    return {};
  }
  if (key == "name" || key == "provider")
    return invalid(key + ": cannot be changed; remove the account and add it again");
  auto provider = find_provider(a.provider);
  if (provider && !find_option(*provider, key) && !secret_key(key))
    return invalid("unknown setting " + quoted(key) + " for a " + a.provider
                   + " account; known: auto_destroy_on_idle, enabled, hard_timeout_s, "
                     "hard_warning_s, idle_timeout_s, max_concurrent_vms, and the "
                     "options "
                   + join(option_names(*provider)));
  return apply_option(a, key, value);
}

caf::error validate_settings(const settings& s) {
  std::set<std::string> names;
  for (size_t i = 0; i < s.accounts.size(); ++i) {
    auto path = element_path("accounts", i);
    if (auto err = first_problem(check_account(s.accounts[i]), path))
      return err;
    if (!names.insert(s.accounts[i].name).second)
      return invalid(path + ".name: duplicate account name "
                     + quoted(s.accounts[i].name));
  }
  std::set<std::string> profile_names;
  for (size_t i = 0; i < s.profiles.size(); ++i) {
    auto path = element_path("profiles", i);
    if (auto err = first_problem(check_profile(s.profiles[i]), path))
      return err;
    if (!profile_names.insert(s.profiles[i].name).second)
      return invalid(path + ".name: duplicate profile name "
                     + quoted(s.profiles[i].name));
  }
  if (!s.default_account.empty() && s.default_account != "local"
      && names.count(s.default_account) == 0)
    return invalid("default_account: "
                   + default_account_message(found_string(s.default_account),
                                             {names.begin(), names.end()}));
  if (auto e = credential_store_problem(s.credential_store))
    return invalid("credential_store: " + *e);
  for (auto& r : sync_rules) {
    auto x = static_cast<int64_t>(std::min<uint64_t>(s.sync.*r.field, INT64_MAX));
    if (!int_ok(r.rule, x))
      return invalid("sync." + std::string{r.rule.key} + ": expected "
                     + int_expectation(r.rule, x) + ", found "
                     + std::to_string(s.sync.*r.field));
  }
  return {};
}

json to_json(const settings& s) {
  auto j = json::object();
  j.set("version", 1);
  if (!s.default_account.empty())
    j.set("default_account", s.default_account);
  if (!s.credential_store.empty())
    j.set("credential_store", s.credential_store);
  auto accounts = json::array();
  for (auto& a : s.accounts)
    accounts.push_back(to_json(a));
  j.set("accounts", std::move(accounts));
  auto profiles = json::array();
  for (auto& p : s.profiles) {
    auto pj = json::object();
    pj.set("name", p.name);
    pj.set("command", p.command);
    auto secrets = json::array();
    for (auto& name : p.secrets)
      secrets.push_back(name);
    pj.set("secrets", std::move(secrets));
    if (!p.image.empty())
      pj.set("image", p.image);
    profiles.push_back(std::move(pj));
  }
  j.set("profiles", std::move(profiles));
  // Only the bounds someone changed: the file stays short, and a default
  // raised in a later Aloft reaches those who never set it.
  sync_settings defaults;
  auto bounds = json::object();
  for (auto& r : sync_rules)
    if (s.sync.*r.field != defaults.*r.field)
      bounds.set(std::string{r.rule.key}, static_cast<int64_t>(s.sync.*r.field));
  if (!bounds.keys().empty())
    j.set("sync", std::move(bounds));
  return j;
}

caf::error save_settings(const std::string& path, const settings& s) {
  return save_settings(path, s, nullptr);
}

caf::error save_settings(const std::string& path, const settings& s,
                         const std::function<void()>& before_rename) {
  if (auto err = validate_settings(s))
    return annotate(err, "save " + path);
  auto text = to_json(s).pretty();
  auto slash = path.find_last_of('/');
  std::string dir = slash == std::string::npos ? "."
                    : slash == 0               ? "/"
                                               : path.substr(0, slash);
  if (auto err = make_dirs(dir))
    return err;
  return files::write_file_atomically(path, text, 0600, before_rename);
}

} // namespace aloft
