#include "engine/app/protocol.hpp"

#include <algorithm>
#include <cerrno>
#include <exception>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>
#include <vector>

#include "engine/base/error.hpp"
#include "engine/base/ids.hpp"

namespace aloft {

namespace {

// Bounds on what a request may carry. They are generous for people and tight
// enough that a hostile client cannot make the engine store megabytes.
constexpr size_t max_account_chars = 128;
constexpr size_t max_agent_chars = 16 << 10;
constexpr size_t max_path_chars = 4096;
constexpr size_t max_source_chars = 64;
constexpr int64_t max_timeout_s = 365LL * 24 * 3600;

const char* kind_name(const json& j) {
  switch (j.type()) {
    case json::kind::null: return "null";
    case json::kind::boolean: return "a boolean";
    case json::kind::integer: return "an integer";
    case json::kind::real: return "a non-integral number";
    case json::kind::string: return "a string";
    case json::kind::array: return "an array";
    case json::kind::object: return "an object";
  }
  return "something else";
}

// What the client sent, for an error message: short, and quoted as JSON so
// control characters cannot reach a terminal raw.
std::string rendering(const json& j) {
  if (!j.is_string())
    return kind_name(j);
  auto s = j.as_string();
  if (s.size() > 40)
    s = s.substr(0, 40) + "...";
  std::string out;
  append_json_string(out, s);
  return to_valid_utf8(out);
}

bool has_control_chars(const std::string& s, bool allow_whitespace) {
  for (unsigned char c : s) {
    if (c == 0x7f || c == 0)
      return true;
    if (c < 0x20 && !(allow_whitespace && (c == '\t' || c == '\n' || c == '\r')))
      return true;
  }
  return false;
}

bool is_valid_utf8(std::string_view s);

// The first rule of `git check-ref-format --branch` that `name` breaks, as
// the end of a sentence about it ("must not ..."), or "" when it breaks none.
// "@" passes git's check but names HEAD in every git command, so it is
// refused too.
std::string broken_branch_rule(const std::string& name) {
  constexpr size_t max_branch_chars = 255;
  if (name.empty())
    return "must not be empty";
  if (name.size() > max_branch_chars)
    return "must be at most " + std::to_string(max_branch_chars) + " bytes, got "
           + std::to_string(name.size());
  if (name.front() == '-')
    return "must not start with '-' (git would take it for an option)";
  for (unsigned char c : name)
    if (c < 0x20 || c == 0x7f)
      return "must not contain control characters";
  if (name.find(' ') != std::string::npos)
    return "must not contain spaces";
  if (!is_valid_utf8(name))
    return "must be valid UTF-8";
  for (char c : std::string_view{"~^:?*[\\"})
    if (name.find(c) != std::string::npos)
      return std::string{"must not contain '"} + c + "' (git refuses ~ ^ : ? * [ \\)";
  if (name.find("..") != std::string::npos)
    return "must not contain \"..\"";
  if (name.find("@{") != std::string::npos)
    return "must not contain \"@{\"";
  if (name == "@")
    return "must not be \"@\" (git reads it as HEAD)";
  if (name == "HEAD")
    return "must not be \"HEAD\"";
  if (name.front() == '/')
    return "must not start with '/'";
  if (name.back() == '/')
    return "must not end with '/'";
  if (name.find("//") != std::string::npos)
    return "must not contain \"//\"";
  if (name.back() == '.')
    return "must not end with '.'";
  // Per component (between slashes): git refuses ".hidden" and "x.lock".
  size_t start = 0;
  for (;;) {
    auto slash = name.find('/', start);
    auto part = std::string_view{name}.substr(
      start, slash == std::string::npos ? std::string::npos : slash - start);
    if (!part.empty() && part.front() == '.')
      return "must not have a part that starts with '.'";
    constexpr std::string_view lock = ".lock";
    if (part.size() >= lock.size() && part.substr(part.size() - lock.size()) == lock)
      return slash == std::string::npos ? "must not end with \".lock\""
                                        : "must not have a part that ends with \".lock\"";
    if (slash == std::string::npos)
      break;
    start = slash + 1;
  }
  return {};
}

// Reads the members of `args` one by one, keeping the first error, and at the
// end refuses members nobody asked for (a misspelt option must not be
// silently ignored).
class arg_reader {
public:
  arg_reader(const json& args, std::string op) : args_(args), op_(std::move(op)) {}

  const json* member(std::string_view key) {
    known_.emplace_back(key);
    return args_.find(key);
  }

  std::string str(std::string_view key, bool required, size_t max_chars,
                  bool allow_whitespace = false) {
    auto v = member(key);
    if (!v) {
      if (required)
        fail(key, "is required (a non-empty string)");
      return {};
    }
    if (!v->is_string() || v->as_string().empty()) {
      fail(key, "expected a non-empty string, got " + rendering(*v));
      return {};
    }
    auto& s = v->as_string();
    if (s.size() > max_chars) {
      fail(key, "expected at most " + std::to_string(max_chars) + " bytes, got "
                  + std::to_string(s.size()));
      return {};
    }
    if (has_control_chars(s, allow_whitespace)) {
      fail(key, "must not contain control characters");
      return {};
    }
    return s;
  }

  std::string session_id(std::string_view key = "id") {
    auto v = member(key);
    if (!v) {
      fail(key, "is required (a session id like s-3f9a0c1d2e4b)");
      return {};
    }
    if (!v->is_string() || !is_valid_session_id(v->as_string())) {
      fail(key, "expected a session id like s-3f9a0c1d2e4b, got " + rendering(*v));
      return {};
    }
    return v->as_string();
  }

  int64_t integer(std::string_view key, int64_t fallback, int64_t min, int64_t max,
                  bool required = false) {
    auto v = member(key);
    auto range = "an integer from " + std::to_string(min) + " to " + std::to_string(max);
    if (!v) {
      if (required)
        fail(key, "is required (" + range + ")");
      return fallback;
    }
    if (!v->is_integer()) {
      fail(key, "expected " + range + ", got " + rendering(*v));
      return fallback;
    }
    auto x = v->as_int();
    if (x < min || x > max) {
      fail(key, "expected " + range + ", got " + std::to_string(x));
      return fallback;
    }
    return x;
  }

  bool boolean(std::string_view key, bool fallback) {
    auto v = member(key);
    if (!v)
      return fallback;
    if (!v->is_bool()) {
      fail(key, "expected true or false, got " + rendering(*v));
      return fallback;
    }
    return v->as_bool();
  }

  void fail(std::string_view key, const std::string& what) {
    // "args.id is required ..." reads as a sentence; anything else follows
    // the field's name after a colon: "args.id: expected ...".
    auto sep = what.compare(0, 3, "is ") == 0 || what.compare(0, 4, "must") == 0 ? " " : ": ";
    if (!err_)
      err_ = make_error(errc::invalid_argument,
                        op_ + ": args." + std::string{key} + sep + what);
  }

  caf::error finish() {
    if (err_)
      return err_;
    for (auto& k : args_.keys()) {
      bool known = false;
      for (auto& n : known_)
        known = known || n == k;
      if (!known) {
        std::string expected;
        for (auto& n : known_)
          expected += (expected.empty() ? "" : ", ") + n;
        return make_error(errc::invalid_argument,
                          op_ + ": unknown argument " + rendering(json{k})
                            + (expected.empty() ? " (this op takes none)"
                                                : " (expected: " + expected + ")"));
      }
    }
    return {};
  }

private:
  const json& args_;
  std::string op_;
  std::vector<std::string> known_;
  caf::error err_;
};

// Args of an op that takes only a session id.
caf::expected<std::string> read_id_args(const json& args, const std::string& op) {
  arg_reader r{args, op};
  auto id = r.session_id();
  if (auto err = r.finish())
    return err;
  return id;
}

json error_json(const caf::error& err) {
  auto e = json::object();
  auto code = code_of(err);
  e.set("code", to_string(code == errc::ok ? errc::internal : code));
  e.set("message", message_of(err));
  return e;
}

json ok_id(const std::string& id) {
  return json::object().set("id", id);
}

// -- ops ----------------------------------------------------------------------

using op_result = caf::expected<json>;
using op_fn = op_result (*)(engine&, const json&);

op_result op_hello(engine& e, const json& args);

op_result op_launch(engine& e, const json& args) {
  arg_reader r{args, "launch"};
  launch_request req;
  req.account = r.str("account", false, max_account_chars);
  req.agent_cmd = r.str("agent", false, max_agent_chars, true);
  req.profile = r.str("profile", false, max_account_chars);
  if (req.agent_cmd.empty() && req.profile.empty() && !args.find("agent"))
    r.fail("agent", "is required (a non-empty string) unless a profile gives it");
  req.worktree = r.str("worktree", false, max_path_chars);
  req.idle_timeout_s = r.integer("idle_timeout_s", -1, 1, max_timeout_s);
  req.hard_timeout_s = r.integer("hard_timeout_s", -1, 1, max_timeout_s);
  auto auto_destroy = r.boolean("auto_destroy", true);
  if (args.find("auto_destroy"))
    req.auto_destroy = auto_destroy ? 1 : 0;
  // The daemon's working directory means nothing to the client: a relative
  // path would name some other directory.
  if (!req.worktree.empty() && req.worktree.front() != '/')
    r.fail("worktree", "expected an absolute path, got " + rendering(json{req.worktree}));
  if (auto err = r.finish())
    return err;
  auto rec = e.launch(req);
  if (!rec)
    return rec.error();
  return to_json(*rec);
}

op_result op_list(engine& e, const json& args) {
  arg_reader r{args, "list"};
  if (auto err = r.finish())
    return err;
  auto sessions = json::array();
  for (auto& rec : e.list())
    sessions.push_back(to_json(rec));
  return json::object().set("sessions", std::move(sessions));
}

op_result op_show(engine& e, const json& args) {
  arg_reader r{args, "show"};
  auto id = r.session_id();
  if (auto err = r.finish())
    return err;
  auto v = e.show(id);
  if (!v)
    return v.error();
  return to_json(*v);
}

op_result op_stop(engine& e, const json& args) {
  arg_reader r{args, "stop"};
  auto id = r.session_id();
  if (auto err = r.finish())
    return err;
  if (auto err = e.stop(id))
    return err;
  return ok_id(id);
}

op_result op_destroy(engine& e, const json& args) {
  arg_reader r{args, "destroy"};
  auto id = r.session_id();
  if (auto err = r.finish())
    return err;
  if (auto err = e.destroy(id))
    return err;
  return ok_id(id);
}

op_result op_extend(engine& e, const json& args) {
  arg_reader r{args, "extend"};
  auto id = r.session_id();
  auto seconds = r.integer("seconds", 0, 1, max_timeout_s, true);
  if (auto err = r.finish())
    return err;
  auto rec = e.extend(id, seconds);
  if (!rec)
    return rec.error();
  return to_json(*rec);
}

op_result op_attach(engine& e, const json& args) {
  arg_reader r{args, "attach"};
  auto id = r.session_id();
  if (auto err = r.finish())
    return err;
  auto info = e.attach(id);
  if (!info)
    return info.error();
  return to_json(*info);
}

op_result op_activity(engine& e, const json& args) {
  arg_reader r{args, "activity"};
  auto id = r.session_id();
  auto source = r.str("source", false, max_source_chars);
  if (auto err = r.finish())
    return err;
  // `activity` reports nothing back, so check the id names a session: a
  // typo must not look like success.
  auto v = e.show(id);
  if (!v)
    return v.error();
  e.activity(id, source.empty() ? "attach" : source);
  return ok_id(id);
}

op_result op_log_path(engine& e, const json& args) {
  arg_reader r{args, "log_path"};
  auto id = r.session_id();
  if (auto err = r.finish())
    return err;
  auto path = e.log_path(id);
  if (!path)
    return path.error();
  return json::object().set("id", id).set("path", *path);
}

op_result op_logs(engine& e, const json& args) {
  auto a = read_logs_args(args);
  if (!a)
    return a.error();
  if (a->follow)
    return make_error(errc::unimplemented,
                      "logs: follow streams only over the daemon's socket; "
                      "embedders subscribe to output events instead");
  auto path = e.log_path(a->id);
  if (!path)
    return path.error();
  auto chunk = read_log_chunk(*path, a->offset, a->max_bytes);
  if (!chunk)
    return chunk.error();
  auto j = to_json(*chunk);
  j.set("id", a->id);
  return j;
}

op_result op_events(engine& e, const json& args) {
  auto a = read_events_args(args);
  if (!a)
    return a.error();
  if (a->follow)
    return make_error(errc::unimplemented,
                      "events: follow streams only over the daemon's socket; "
                      "embedders use aloft_subscribe instead");
  auto out = json::array();
  for (auto& ev : e.events(a->n))
    if (event_matches(*a, ev))
      out.push_back(to_json(ev));
  return json::object().set("events", std::move(out));
}

op_result op_sync_up(engine& e, const json& args) {
  auto id = read_sync_up_args(args);
  if (!id)
    return id.error();
  auto res = e.sync_up(*id);
  if (!res)
    return res.error();
  auto j = to_json(*res);
  j.set("id", *id);
  return j;
}

op_result op_sync_down(engine& e, const json& args) {
  auto req = read_sync_down_args(args);
  if (!req)
    return req.error();
  auto res = e.sync_down(*req);
  if (!res)
    return res.error();
  auto j = to_json(*res);
  j.set("id", req->id);
  j.set("mode", to_string(req->mode));
  return j;
}

op_result op_sync_state(engine& e, const json& args) {
  auto id = read_id_args(args, "sync_state");
  if (!id)
    return id.error();
  auto st = e.sync_state(*id);
  if (!st)
    return st.error();
  auto j = to_json(*st);
  j.set("id", *id);
  return j;
}


// -- accounts -------------------------------------------------------------------

// Secrets travel only in `account_add`'s `secrets` object. Their values are
// never rendered into a message, whatever is wrong with them.
caf::expected<secret_map> read_secrets(const json& args) {
  secret_map out;
  auto v = args.find("secrets");
  if (!v)
    return out;
  if (!v->is_object())
    return make_error(errc::invalid_argument,
                      "account_add: args.secrets: expected an object of strings");
  for (size_t i = 0; i < v->keys().size(); ++i) {
    auto& key = v->keys()[i];
    auto& val = v->items()[i];
    if (key.empty() || key.size() > 64 || has_control_chars(key, false))
      return make_error(errc::invalid_argument,
                        "account_add: args.secrets: a key is empty, too long or has "
                        "control characters");
    if (!val.is_string() || val.as_string().empty() || val.as_string().size() > 16384
        || has_control_chars(val.as_string(), false))
      return make_error(errc::invalid_argument,
                        "account_add: args.secrets." + key
                          + ": expected a non-empty string of at most 16 KiB without "
                            "control characters (its value is not shown)");
    out[key] = val.as_string();
  }
  return out;
}

op_result op_account_list(engine& e, const json& args) {
  arg_reader r{args, "account_list"};
  if (auto err = r.finish())
    return err;
  auto list = json::array();
  for (auto& v : e.accounts())
    list.push_back(to_json(v));
  return json::object().set("accounts", std::move(list));
}

op_result op_account_add(engine& e, const json& args) {
  arg_reader r{args, "account_add"};
  account a;
  a.name = r.str("name", true, max_account_chars);
  a.provider = r.str("provider", true, 32);
  if (auto opts = r.member("options")) {
    if (!opts->is_object())
      r.fail("options", "expected an object of strings, got " + rendering(*opts));
    else
      for (size_t i = 0; i < opts->keys().size(); ++i) {
        auto& val = opts->items()[i];
        if (!val.is_string())
          r.fail("options", opts->keys()[i] + ": expected a string, got " + rendering(val));
        else
          a.options[opts->keys()[i]] = val.as_string();
      }
  }
  a.guards.idle_timeout_s = r.integer("idle_timeout_s", a.guards.idle_timeout_s, 1,
                                      max_timeout_s);
  a.guards.hard_timeout_s = r.integer("hard_timeout_s", a.guards.hard_timeout_s, 1,
                                      max_timeout_s);
  a.guards.auto_destroy_on_idle = r.boolean("auto_destroy_on_idle", true);
  a.max_concurrent_vms = static_cast<int>(r.integer("max_concurrent_vms",
                                                    a.max_concurrent_vms, 1, 100000));
  r.member("secrets"); // read below, never rendered
  if (auto err = r.finish())
    return err;
  auto secrets = read_secrets(args);
  if (!secrets)
    return secrets.error();
  auto v = e.add_account(a, *secrets);
  if (!v)
    return v.error();
  return to_json(*v);
}

op_result op_account_validate(engine& e, const json& args) {
  arg_reader r{args, "account_validate"};
  auto name = r.str("name", true, max_account_chars);
  if (auto err = r.finish())
    return err;
  if (auto err = e.validate_account(name))
    return err;
  return json::object().set("name", name).set("valid", true);
}

op_result op_account_set(engine& e, const json& args) {
  arg_reader r{args, "account_set"};
  auto name = r.str("name", true, max_account_chars);
  auto key = r.str("key", true, 64);
  auto value = r.str("value", true, 4096);
  auto apply = r.boolean("apply_to_running", false);
  if (auto err = r.finish())
    return err;
  size_t rearmed = 0;
  auto v = e.set_account(name, key, value, apply, &rearmed);
  if (!v)
    return v.error();
  auto j = to_json(*v);
  j.set("rearmed_sessions", static_cast<int64_t>(rearmed));
  return j;
}

op_result account_toggle(engine& e, const json& args, const char* op, bool on) {
  arg_reader r{args, op};
  auto name = r.str("name", true, max_account_chars);
  if (auto err = r.finish())
    return err;
  if (auto err = e.enable_account(name, on))
    return err;
  return json::object().set("name", name).set("enabled", on);
}

op_result op_account_enable(engine& e, const json& args) {
  return account_toggle(e, args, "account_enable", true);
}

op_result op_account_disable(engine& e, const json& args) {
  return account_toggle(e, args, "account_disable", false);
}

// The secret's value is never rendered into a message.
op_result op_account_secret(engine& e, const json& args) {
  arg_reader r{args, "account_secret"};
  auto name = r.str("name", true, max_account_chars);
  auto key = r.str("key", true, 128);
  r.member("value");
  if (auto err = r.finish())
    return err;
  auto v = args.find("value");
  if (!v || !v->is_string() || v->as_string().empty() || v->as_string().size() > 16384
      || has_control_chars(v->as_string(), false))
    return make_error(errc::invalid_argument,
                      "account_secret: args.value: expected a non-empty string of at most "
                      "16 KiB without control characters (its value is not shown)");
  if (auto err = e.set_account_secret(name, key, v->as_string()))
    return err;
  return json::object().set("name", name).set("key", key).set("stored", true);
}

op_result op_account_default(engine& e, const json& args) {
  arg_reader r{args, "account_default"};
  auto name = r.str("name", true, max_account_chars);
  if (auto err = r.finish())
    return err;
  if (auto err = e.set_default_account(name))
    return err;
  return json::object().set("name", name).set("default", true);
}

op_result op_account_rm(engine& e, const json& args) {
  arg_reader r{args, "account_rm"};
  auto name = r.str("name", true, max_account_chars);
  auto force = r.boolean("force", false);
  if (auto err = r.finish())
    return err;
  if (auto err = e.remove_account(name, force))
    return err;
  return json::object().set("name", name).set("removed", true);
}

op_result op_reload(engine& e, const json& args) {
  arg_reader r{args, "reload"};
  if (auto err = r.finish())
    return err;
  return to_json(e.reload());
}

struct op_entry {
  const char* name;
  op_fn fn;
  op_pace pace = op_pace::immediate;
};

constexpr op_entry ops[] = {
  {"hello", op_hello},
  {"version", op_hello},
  {"launch", op_launch},
  {"list", op_list},
  {"show", op_show},
  {"stop", op_stop},
  {"destroy", op_destroy},
  {"extend", op_extend},
  {"attach", op_attach},
  {"activity", op_activity},
  {"log_path", op_log_path},
  {"logs", op_logs},
  {"events", op_events},
  {"sync_up", op_sync_up, op_pace::minutes},
  {"sync_down", op_sync_down, op_pace::minutes},
  {"sync_state", op_sync_state, op_pace::seconds},
  {"account_list", op_account_list},
  {"account_add", op_account_add, op_pace::seconds},
  {"account_validate", op_account_validate, op_pace::seconds},
  {"account_set", op_account_set},
  {"account_enable", op_account_enable},
  {"account_disable", op_account_disable},
  {"account_default", op_account_default},
  {"account_secret", op_account_secret, op_pace::seconds},
  {"account_rm", op_account_rm, op_pace::minutes},
  {"reload", op_reload},
};

op_result op_hello(engine& e, const json& args) {
  arg_reader r{args, "hello"};
  // Clients may say who they are; the daemon does not depend on it.
  r.str("client", false, 128);
  r.integer("protocol", 0, 0, 1 << 30);
  if (auto err = r.finish())
    return err;
  auto names = json::array();
  for (auto& op : ops)
    names.push_back(op.name);
  return json::object()
    .set("server", "aloft")
    .set("protocol", protocol_version)
    .set("installation_id", e.installation_id())
    .set("ops", std::move(names));
}

std::string op_list_text() {
  std::string s;
  for (auto& op : ops)
    s += (s.empty() ? "" : ", ") + std::string{op.name};
  return s;
}

// Length of the UTF-8 sequence starting at s[i] if it is valid there, else 0.
size_t utf8_sequence_at(std::string_view s, size_t i) {
  auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = b(i);
  if (c < 0x80)
    return 1;
  size_t n;
  uint32_t cp;
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
    cp = c & 0x1f;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    cp = c & 0x0f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size())
    return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xc0) != 0x80)
      return 0;
    cp = (cp << 6) | (b(i + k) & 0x3f);
  }
  // Overlong forms, surrogates and code points past U+10FFFF.
  if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff
      || (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return n;
}

bool is_valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    auto n = utf8_sequence_at(s, i);
    if (n == 0)
      return false;
    i += n;
  }
  return true;
}

// How many bytes at the end of `s` are the start of a character that the
// next read would complete (0 when `s` ends on a boundary).
size_t incomplete_tail(std::string_view s) {
  for (size_t back = 1; back <= 3 && back <= s.size(); ++back) {
    auto c = static_cast<unsigned char>(s[s.size() - back]);
    if ((c & 0xc0) == 0x80)
      continue; // a continuation byte: keep looking for the lead byte
    size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
    return need > back ? back : 0;
  }
  return 0;
}

} // namespace

// -- envelope -----------------------------------------------------------------

caf::expected<request> parse_request(const json& j, json* id_out) {
  if (!j.is_object())
    return make_error(errc::invalid_argument,
                      "a request must be a JSON object, got " + rendering(j));
  request req;
  if (auto id = j.find("id")) {
    if (!id->is_integer() && !id->is_string() && !id->is_null())
      return make_error(errc::invalid_argument,
                        "id: expected an integer or a string, got " + rendering(*id));
    if (id->is_string() && id->as_string().size() > 128)
      return make_error(errc::invalid_argument, "id: expected at most 128 bytes");
    req.id = *id;
    if (id_out)
      *id_out = *id;
  }
  auto op = j.find("op");
  if (!op)
    return make_error(errc::invalid_argument,
                      "op is required (one of: " + op_list_text() + ")");
  if (!op->is_string())
    return make_error(errc::invalid_argument,
                      "op: expected a string, got " + rendering(*op));
  req.op = op->as_string();
  if (auto args = j.find("args")) {
    if (!args->is_object() && !args->is_null())
      return make_error(errc::invalid_argument,
                        "args: expected an object, got " + rendering(*args));
    if (args->is_object())
      req.args = *args;
  }
  if (!req.args.is_object())
    req.args = json::object();
  for (auto& k : j.keys())
    if (k != "id" && k != "op" && k != "args")
      return make_error(errc::invalid_argument,
                        "unknown request member " + rendering(json{k})
                          + " (a request has id, op and args)");
  return req;
}

caf::expected<request> parse_request_line(std::string_view line, json* id_out) {
  if (line.size() > max_request_bytes)
    return make_error(errc::invalid_argument,
                      "request line of " + std::to_string(line.size())
                        + " bytes is longer than the limit of "
                        + std::to_string(max_request_bytes));
  auto j = json::parse(line);
  if (!j)
    return make_error(errc::invalid_argument,
                      "request is not valid JSON (" + message_of(j.error())
                        + "); send one JSON object per line");
  return parse_request(*j, id_out);
}

json handle_request(engine& e, const request& req) {
  for (auto& op : ops) {
    if (req.op != op.name)
      continue;
    // The engine reports failures as values; an exception here is a bug or
    // an allocation failure, and must not take the daemon down with it.
    try {
      auto result = op.fn(e, req.args);
      if (!result)
        return make_error_reply(req.id, result.error());
      return make_reply(req.id, std::move(*result));
    } catch (const std::exception& ex) {
      return make_error_reply(req.id,
                              make_error(errc::internal, req.op + ": " + ex.what()));
    }
  }
  return make_error_reply(req.id,
                          make_error(errc::unimplemented,
                                     "unknown op " + rendering(json{req.op})
                                       + " (known: " + op_list_text() + ")"));
}

json handle_request(engine& e, const json& request_json) {
  json id;
  auto req = parse_request(request_json, &id);
  if (!req)
    return make_error_reply(id, req.error());
  return handle_request(e, *req);
}

json handle_request_line(engine& e, std::string_view line) {
  json id;
  auto req = parse_request_line(line, &id);
  if (!req)
    return make_error_reply(id, req.error());
  return handle_request(e, *req);
}

// -- replies ------------------------------------------------------------------

json make_reply(const json& id, json result) {
  auto j = json::object();
  j.set("id", id).set("ok", true).set("result", std::move(result));
  return j;
}

json make_error_reply(const json& id, const caf::error& err) {
  auto j = json::object();
  j.set("id", id).set("ok", false).set("error", error_json(err));
  return j;
}

json make_stream_item(const json& id, json item) {
  auto j = json::object();
  j.set("id", id).set("ok", true).set("more", true).set("result", std::move(item));
  return j;
}

std::string to_valid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    auto n = utf8_sequence_at(s, i);
    if (n == 0) {
      out += "\xef\xbf\xbd";
      ++i;
    } else {
      out.append(s.data() + i, n);
      i += n;
    }
  }
  return out;
}

std::string encode_line(const json& j) {
  auto s = j.dump();
  if (!is_valid_utf8(s))
    s = to_valid_utf8(s); // invalid bytes can only sit inside string literals
  s += '\n';
  return s;
}

// -- shared arguments ---------------------------------------------------------

caf::expected<logs_args> read_logs_args(const json& args) {
  arg_reader r{args, "logs"};
  logs_args a;
  a.id = r.session_id();
  a.follow = r.boolean("follow", false);
  a.offset = static_cast<uint64_t>(r.integer("offset", 0, 0, INT64_MAX));
  a.max_bytes = static_cast<size_t>(
    r.integer("max_bytes", default_log_chunk_bytes, 1, max_log_chunk_bytes));
  if (auto err = r.finish())
    return err;
  return a;
}

caf::expected<events_args> read_events_args(const json& args) {
  arg_reader r{args, "events"};
  events_args a;
  a.n = static_cast<size_t>(r.integer("n", 100, 0, max_events));
  a.follow = r.boolean("follow", false);
  a.include_output = r.boolean("include_output", false);
  if (args.find("session"))
    a.session = r.session_id("session");
  else
    r.member("session"); // known, even when absent
  if (auto err = r.finish())
    return err;
  return a;
}

bool event_matches(const events_args& a, const event& ev) {
  if (!a.include_output && ev.kind == "output")
    return false;
  return a.session.empty() || ev.session == a.session;
}

// -- long ops -------------------------------------------------------------------

op_pace pace_of(std::string_view op) {
  for (auto& entry : ops)
    if (op == entry.name)
      return entry.pace;
  return op_pace::immediate;
}

bool is_long_op(std::string_view op) {
  return pace_of(op) != op_pace::immediate;
}

caf::error check_long_op_args(const request& req) {
  if (req.op.rfind("account_", 0) == 0)
    return {}; // checked by the op itself; nothing slow happens before that
  if (req.op == "sync_up" || req.op == "sync_state") {
    auto id = read_id_args(req.args, req.op);
    return id ? caf::error{} : id.error();
  }
  if (req.op == "sync_down") {
    auto r = read_sync_down_args(req.args);
    return r ? caf::error{} : r.error();
  }
  return make_error(errc::unimplemented, rendering(json{req.op}) + " is not a long op");
}

caf::expected<std::string> read_sync_up_args(const json& args) {
  return read_id_args(args, "sync_up");
}

caf::expected<sync_down_request> read_sync_down_args(const json& args) {
  arg_reader r{args, "sync_down"};
  sync_down_request req;
  req.id = r.session_id();
  auto mode = r.member("mode");
  if (mode) {
    std::string m = mode->is_string() ? mode->as_string() : std::string{};
    if (m == "apply")
      req.mode = sync_down_mode::apply;
    else if (m == "branch")
      req.mode = sync_down_mode::branch;
    else if (m == "dry_run")
      req.mode = sync_down_mode::dry_run;
    else
      r.fail("mode", "expected \"apply\", \"branch\" or \"dry_run\", got "
                       + rendering(*mode));
  }
  auto branch = r.member("branch");
  if (req.mode == sync_down_mode::branch && !branch) {
    r.fail("branch", "is required with mode \"branch\" (the new branch's name)");
  } else if (branch && req.mode != sync_down_mode::branch) {
    r.fail("branch", "is taken only with mode \"branch\"");
  } else if (branch && !branch->is_string()) {
    r.fail("branch", "expected a branch name (a string), got " + rendering(*branch));
  } else if (branch) {
    auto rule = broken_branch_rule(branch->as_string());
    if (!rule.empty())
      r.fail("branch", rule + ", got " + rendering(*branch));
    else
      req.branch = branch->as_string();
  }
  if (auto err = r.finish())
    return err;
  return req;
}

caf::error check_branch_name(const std::string& name) {
  auto rule = broken_branch_rule(name);
  if (rule.empty())
    return {};
  return make_error(errc::invalid_argument, "the branch name " + rendering(json{name}) + " "
                                              + rule);
}

const char* to_string(sync_down_mode m) {
  switch (m) {
    case sync_down_mode::apply: return "apply";
    case sync_down_mode::branch: return "branch";
    case sync_down_mode::dry_run: return "dry_run";
  }
  return "apply";
}

caf::expected<log_chunk> read_log_chunk(const std::string& path, uint64_t offset,
                                        size_t max_bytes) {
  log_chunk c;
  c.offset = c.next_offset = offset;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) {
      c.eof = true; // the agent has written nothing yet
      return c;
    }
    return from_errno(errno, "cannot open log " + path);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    auto err = from_errno(errno, "cannot stat log " + path);
    ::close(fd);
    return err;
  }
  c.size = static_cast<uint64_t>(st.st_size);
  if (offset >= c.size) {
    ::close(fd);
    c.eof = true;
    return c;
  }
  auto want = static_cast<size_t>(std::min<uint64_t>(max_bytes, c.size - offset));
  c.data.resize(want);
  size_t got = 0;
  while (got < want) {
    auto n = ::pread(fd, c.data.data() + got, want - got,
                     static_cast<off_t>(offset + got));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      auto err = from_errno(errno, "cannot read log " + path);
      ::close(fd);
      return err;
    }
    if (n == 0)
      break; // truncated meanwhile
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  c.data.resize(got);
  if (offset + got < c.size) {
    // Leave a character cut by the chunk size for the next chunk, unless
    // that would leave nothing (a tiny max_bytes).
    auto tail = incomplete_tail(c.data);
    if (tail < c.data.size())
      c.data.resize(c.data.size() - tail);
  }
  c.next_offset = offset + c.data.size();
  c.eof = c.next_offset >= c.size;
  return c;
}

json to_json(const log_chunk& c) {
  auto j = json::object();
  j.set("offset", static_cast<long long>(c.offset));
  j.set("data", c.data);
  j.set("next_offset", static_cast<long long>(c.next_offset));
  j.set("size", static_cast<long long>(c.size));
  j.set("eof", c.eof);
  return j;
}

json to_json(const session_view& v) {
  auto j = json::object();
  j.set("session", to_json(v.record));
  j.set("next_timer", v.next_timer);
  j.set("next_timer_at", v.next_timer_at);
  return j;
}

json to_json(const sync_result& r) {
  auto strings = [](const std::vector<std::string>& v) {
    auto a = json::array();
    for (auto& s : v)
      a.push_back(s);
    return a;
  };
  auto j = json::object();
  j.set("direction", r.direction);
  j.set("commit", r.commit);
  j.set("base", r.base);
  j.set("ref", r.ref);
  j.set("bytes", static_cast<long long>(r.bytes));
  j.set("files", static_cast<long long>(r.files));
  j.set("changed", strings(r.changed));
  j.set("conflicts", strings(r.conflicts));
  j.set("notes", strings(r.notes));
  j.set("saved_ref", r.saved_ref);
  j.set("branch", r.branch);
  j.set("diffstat", r.diffstat);
  return j;
}

json to_json(const sync_status& s) {
  auto tri = [](int v) { return v < 0 ? json{} : json{v > 0}; };
  auto j = json::object();
  j.set("local_changed", tri(s.local_changed));
  j.set("vm_changed", tri(s.vm_changed));
  j.set("local_note", s.local_note);
  j.set("vm_note", s.vm_note);
  return j;
}

json to_json(const attach_info& a) {
  auto j = json::object();
  j.set("host", a.endpoint.host);
  j.set("port", static_cast<int>(a.endpoint.port));
  j.set("user", a.endpoint.user);
  j.set("client_key_path", a.endpoint.client_key_path);
  j.set("host_public_key", a.endpoint.host_public_key);
  j.set("command", a.command);
  return j;
}

json to_json(const account_view& v) {
  auto j = to_json(v.account);
  j.set("default", v.is_default);
  j.set("built_in", v.built_in);
  j.set("can_launch", v.can_launch);
  auto secrets = json::object();
  for (auto& [k, masked] : v.secrets)
    secrets.set(k, masked);
  j.set("secrets", std::move(secrets));
  j.set("store", v.store);
  j.set("live_sessions", static_cast<int64_t>(v.live_sessions));
  j.set("problem", v.problem);
  return j;
}

json to_json(const reload_report& r) {
  auto list = [](const std::vector<std::string>& xs) {
    auto a = json::array();
    for (auto& x : xs)
      a.push_back(x);
    return a;
  };
  return json::object()
    .set("added", list(r.added))
    .set("changed", list(r.changed))
    .set("removed", list(r.removed))
    .set("problems", list(r.problems));
}

} // namespace aloft
