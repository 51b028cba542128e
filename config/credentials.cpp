#include "config/credentials.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <set>
#include <type_traits>
#include <utility>

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef __APPLE__
#include <CoreFoundation/CoreFoundation.h>
#include <Security/Security.h>
#endif

#include "engine/base/error.hpp"
#include "engine/base/files.hpp"
#include "engine/base/json.hpp"
#include "engine/base/redact.hpp"
#include "engine/base/text.hpp"

extern char** environ;

namespace aloft {

namespace {

constexpr const char* use_file_store = "use credential_store: \"file\" in settings.json";

// -- shared -----------------------------------------------------------------

void register_all(const secret_map& secrets) {
  for (auto& [key, value] : secrets)
    register_secret(value);
}

caf::error check_put(const std::string& account, const secret_map& secrets) {
  if (account.empty())
    return make_error(errc::invalid_argument, "an account name is required");
  for (auto& [key, value] : secrets) {
    if (key.empty())
      return make_error(errc::invalid_argument,
                        "account " + account + ": a secret has an empty name");
    if (value.empty())
      return make_error(errc::invalid_argument,
                        "account " + account + ": secret " + key + " is empty");
  }
  return {};
}

json secrets_to_json(const secret_map& secrets) {
  auto j = json::object();
  for (auto& [key, value] : secrets)
    j.set(key, value);
  return j;
}

// `where` names the record for messages; values never appear in them.
caf::expected<secret_map> secrets_from_json(const json& j, const std::string& where) {
  if (!j.is_object())
    return make_error(errc::failed_precondition,
                      where + ": expected an object of named secrets");
  secret_map secrets;
  for (size_t i = 0; i < j.keys().size(); ++i) {
    if (!j.items()[i].is_string())
      return make_error(errc::failed_precondition,
                        where + ": secret " + j.keys()[i] + " is not a string");
    secrets[j.keys()[i]] = j.items()[i].as_string();
  }
  return secrets;
}

std::string env_spelling(const std::string& name) {
  std::string out = name;
  for (auto& c : out)
    c = c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

// -- file store ---------------------------------------------------------------

class unique_fd {
public:
  explicit unique_fd(int fd = -1) : fd_(fd) {}
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  ~unique_fd() {
    if (fd_ >= 0)
      ::close(fd_);
  }
  int get() const { return fd_; }

private:
  int fd_;
};

// Creates the missing directories of `dir` with mode 0700; existing ones are
// left as they are (the state directory may be shared with other files).
caf::error make_dirs(const std::string& dir) {
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/')
      continue;
    auto partial = dir.substr(0, pos);
    if (::mkdir(partial.c_str(), 0700) != 0 && errno != EEXIST)
      return from_errno(errno, "cannot create directory " + partial);
  }
  return {};
}

class file_store final : public credential_store {
public:
  explicit file_store(std::string dir)
      : dir_(std::move(dir)), path_(dir_ + "/credentials.json") {}

  std::string kind() const override { return "file"; }
  std::string location() const override { return path_; }
  bool read_only() const override { return false; }

  caf::expected<secret_map> get(const std::string& account) override {
    auto doc = load();
    if (!doc)
      return doc.error();
    auto entry = doc->find(account);
    if (!entry)
      return make_error(errc::not_found,
                        "no secrets for account " + account + " in " + path_);
    auto secrets = secrets_from_json(*entry, path_ + ": account " + account);
    if (secrets)
      register_all(*secrets);
    return secrets;
  }

  // An empty map removes the account: "no secrets" has one spelling.
  caf::error put(const std::string& account, const secret_map& secrets) override {
    if (auto err = check_put(account, secrets))
      return err;
    register_all(secrets);
    return update([&](json& doc) {
      if (secrets.empty())
        return without(doc, account);
      doc.set(account, secrets_to_json(secrets));
      return true;
    });
  }

  caf::error erase(const std::string& account) override {
    return update([&](json& doc) { return without(doc, account); });
  }

  std::vector<std::string> accounts() override {
    auto doc = load();
    if (!doc)
      return {};
    auto names = doc->keys();
    std::sort(names.begin(), names.end());
    return names;
  }

private:
  // Removes `account` from `doc`; false when it was not there.
  static bool without(json& doc, const std::string& account) {
    if (!doc.find(account))
      return false;
    auto rest = json::object();
    for (size_t i = 0; i < doc.keys().size(); ++i)
      if (doc.keys()[i] != account)
        rest.set(doc.keys()[i], doc.items()[i]);
    doc = std::move(rest);
    return true;
  }

  // Reads the file; a missing file is an empty object.
  caf::expected<json> load() const {
    unique_fd fd{::open(path_.c_str(), O_RDONLY | O_CLOEXEC)};
    if (fd.get() < 0) {
      if (errno == ENOENT)
        return json::object();
      return from_errno(errno, "cannot open " + path_);
    }
    struct stat st;
    if (::fstat(fd.get(), &st) != 0)
      return from_errno(errno, "cannot stat " + path_);
    if (!S_ISREG(st.st_mode))
      return make_error(errc::failed_precondition, path_ + " is not a regular file");
    if ((st.st_mode & 077) != 0) {
      char mode[8];
      std::snprintf(mode, sizeof(mode), "%04o",
                    static_cast<unsigned>(st.st_mode & 07777));
      return make_error(errc::permission_denied,
                        path_ + " has mode " + mode
                            + ", which lets other users read or change the secrets in it;"
                              " run `chmod 600 "
                            + path_ + "` and try again");
    }
    auto text = files::read_all(fd.get(), path_);
    if (!text)
      return text.error();
    auto doc = json::parse(*text);
    if (!doc)
      return make_error(errc::failed_precondition,
                        path_ + ": " + message_of(doc.error())
                            + "; fix the file, or remove it and add the secrets again");
    if (!doc->is_object())
      return make_error(errc::failed_precondition,
                        path_ + ": expected a JSON object of accounts");
    return doc;
  }

  // Read-modify-write under the in-process mutex and an exclusive flock on
  // the directory (other processes: the CLI while the daemon runs). `change`
  // returns false when it left the document as it was.
  template <class F> caf::error update(F change) {
    std::lock_guard<std::mutex> guard{mtx_};
    if (auto err = make_dirs(dir_))
      return err;
    unique_fd dir{::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
    if (dir.get() < 0)
      return from_errno(errno, "cannot open directory " + dir_);
    // Best effort: a file system without flock (some network mounts) still
    // gets the atomic rename, only not protection against a lost update.
    while (::flock(dir.get(), LOCK_EX) != 0 && errno == EINTR) {
    }
    auto doc = load();
    if (!doc)
      return doc.error();
    if (!change(*doc))
      return {};
    // A crash leaves either the old file or the new one.
    return files::write_file_atomically(path_, doc->pretty() + "\n", 0600);
  }

  std::string dir_;
  std::string path_;
  std::mutex mtx_;
};

// -- env store ----------------------------------------------------------------

constexpr std::string_view env_prefix = "ALOFT_SECRET_";

class env_store final : public credential_store {
public:
  std::string kind() const override { return "env"; }
  std::string location() const override {
    return "environment variables " + std::string{env_prefix} + "<ACCOUNT>_<KEY>";
  }
  bool read_only() const override { return true; }

  caf::expected<secret_map> get(const std::string& account) override {
    auto prefix = std::string{env_prefix} + env_spelling(account) + "_";
    secret_map secrets;
    for (char** e = environ; e && *e; ++e) {
      std::string_view entry{*e};
      auto eq = entry.find('=');
      if (eq == std::string_view::npos || entry.compare(0, prefix.size(), prefix) != 0)
        continue;
      auto key = entry.substr(prefix.size(), eq - prefix.size());
      auto value = entry.substr(eq + 1);
      // An empty variable is how CI spells a secret it does not have.
      if (!key.empty() && !value.empty())
        secrets[ascii_lower(key)] = std::string{value};
    }
    if (secrets.empty())
      return make_error(errc::not_found, "no secrets for account " + account
                                             + " in the environment (variables " + prefix
                                             + "<KEY>)");
    register_all(secrets);
    return secrets;
  }

  caf::error put(const std::string& account, const secret_map& secrets) override {
    std::string names;
    for (auto& [key, value] : secrets)
      names += (names.empty() ? "" : ", ") + secret_env_variable(account, key);
    if (names.empty())
      names = std::string{env_prefix} + env_spelling(account) + "_<KEY>";
    return make_error(errc::failed_precondition,
                      "the env credential store is read-only: set " + names
                          + " in the environment instead, or " + use_file_store
                          + " to store secrets");
  }

  caf::error erase(const std::string& account) override {
    return make_error(errc::failed_precondition,
                      "the env credential store is read-only: unset the variables "
                          + std::string{env_prefix} + env_spelling(account)
                          + "_* in the environment instead");
  }

  std::vector<std::string> accounts() override {
    std::set<std::string> names;
    for (char** e = environ; e && *e; ++e) {
      std::string_view entry{*e};
      auto eq = entry.find('=');
      if (eq == std::string_view::npos
          || entry.compare(0, env_prefix.size(), env_prefix) != 0)
        continue;
      auto rest = entry.substr(env_prefix.size(), eq - env_prefix.size());
      auto sep = rest.find('_');
      if (sep == 0 || sep == std::string_view::npos || sep + 1 == rest.size()
          || eq + 1 == entry.size())
        continue;
      names.insert(ascii_lower(rest.substr(0, sep)));
    }
    return {names.begin(), names.end()};
  }
};

// -- secret-service -----------------------------------------------------------

// The few libsecret, GLib and GIO declarations used here, copied from their
// public headers (libsecret 0.18+, GLib 2.32+), so that building needs
// neither. C enums are int-sized on every ABI Aloft builds for.
namespace libsecret {

struct GHashTable;
struct GVariant;
struct GList {
  void* data;
  GList* next;
  GList* prev;
};
struct GError {
  uint32_t domain;
  int code;
  char* message;
};

struct schema_attribute {
  const char* name;
  int type; // SecretSchemaAttributeType; 0 is STRING
};

struct schema {
  const char* name;
  int flags; // SecretSchemaFlags; 0 is NONE
  schema_attribute attributes[32];
  int reserved;
  void* reserved1;
  void* reserved2;
  void* reserved3;
  void* reserved4;
  void* reserved5;
  void* reserved6;
  void* reserved7;
};

constexpr int search_all = 1 << 1;              // SECRET_SEARCH_ALL
constexpr int bus_type_session = 2;             // G_BUS_TYPE_SESSION
constexpr int dbus_error_service_unknown = 2;   // G_DBUS_ERROR_SERVICE_UNKNOWN
constexpr int dbus_error_name_has_no_owner = 3; // G_DBUS_ERROR_NAME_HAS_NO_OWNER

struct api {
  // GLib
  GHashTable* (*g_hash_table_new)(unsigned (*)(const void*),
                                  int (*)(const void*, const void*));
  int (*g_hash_table_insert)(GHashTable*, void*, void*);
  void* (*g_hash_table_lookup)(GHashTable*, const void*);
  void (*g_hash_table_unref)(GHashTable*);
  unsigned (*g_str_hash)(const void*);
  int (*g_str_equal)(const void*, const void*);
  void (*g_error_free)(GError*);
  void (*g_list_free_full)(GList*, void (*)(void*));
  void (*g_free)(void*);
  GVariant* (*g_variant_new)(const char*, ...);
  void (*g_variant_get)(GVariant*, const char*, ...);
  void (*g_variant_unref)(GVariant*);
  // GIO
  void* (*g_bus_get_sync)(int, void*, GError**);
  int (*g_dbus_connection_is_closed)(void*);
  void (*g_dbus_connection_set_exit_on_close)(void*, int);
  GVariant* (*g_dbus_connection_call_sync)(void*, const char*, const char*, const char*,
                                           const char*, GVariant*, const void*, int, int,
                                           void*, GError**);
  uint32_t (*g_dbus_error_quark)();
  // GObject
  void (*g_object_unref)(void*);
  // libsecret
  int (*secret_password_storev_sync)(const schema*, GHashTable*, const char*, const char*,
                                     const char*, void*, GError**);
  char* (*secret_password_lookupv_sync)(const schema*, GHashTable*, void*, GError**);
  int (*secret_password_clearv_sync)(const schema*, GHashTable*, void*, GError**);
  void (*secret_password_free)(char*);
  GList* (*secret_service_search_sync)(void*, const schema*, GHashTable*, int, void*,
                                       GError**);
  GHashTable* (*secret_item_get_attributes)(void*);
  void (*secret_service_disconnect)();
};

struct loaded {
  api fns{};
  std::string problem; // empty when every symbol resolved
};

template <class F>
bool resolve(void* lib, const char* name, F& fn, std::string& problem) {
  fn = reinterpret_cast<F>(::dlsym(lib, name));
  if (!fn && problem.empty())
    problem = std::string{"symbol "} + name + " is missing";
  return fn != nullptr;
}

// Loads the libraries once per process; they stay loaded.
const loaded& load() {
  static const loaded result = [] {
    loaded r;
    void* secret = ::dlopen("libsecret-1.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!secret) {
      auto* msg = ::dlerror();
      r.problem = "libsecret-1.so.0 could not be loaded ("
                  + std::string{msg ? msg : "unknown error"} + ")";
      return r;
    }
    // libsecret links all three; these calls only hand back their handles.
    void* glib = ::dlopen("libglib-2.0.so.0", RTLD_NOW | RTLD_LOCAL);
    void* gobject = ::dlopen("libgobject-2.0.so.0", RTLD_NOW | RTLD_LOCAL);
    void* gio = ::dlopen("libgio-2.0.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!glib || !gobject || !gio) {
      r.problem =
          "libglib-2.0.so.0, libgobject-2.0.so.0 or libgio-2.0.so.0 could not be loaded";
      return r;
    }
    auto& f = r.fns;
    auto& p = r.problem;
    resolve(glib, "g_hash_table_new", f.g_hash_table_new, p);
    resolve(glib, "g_hash_table_insert", f.g_hash_table_insert, p);
    resolve(glib, "g_hash_table_lookup", f.g_hash_table_lookup, p);
    resolve(glib, "g_hash_table_unref", f.g_hash_table_unref, p);
    resolve(glib, "g_str_hash", f.g_str_hash, p);
    resolve(glib, "g_str_equal", f.g_str_equal, p);
    resolve(glib, "g_error_free", f.g_error_free, p);
    resolve(glib, "g_list_free_full", f.g_list_free_full, p);
    resolve(glib, "g_free", f.g_free, p);
    resolve(glib, "g_variant_new", f.g_variant_new, p);
    resolve(glib, "g_variant_get", f.g_variant_get, p);
    resolve(glib, "g_variant_unref", f.g_variant_unref, p);
    resolve(gio, "g_bus_get_sync", f.g_bus_get_sync, p);
    resolve(gio, "g_dbus_connection_is_closed", f.g_dbus_connection_is_closed, p);
    resolve(gio, "g_dbus_connection_set_exit_on_close",
            f.g_dbus_connection_set_exit_on_close, p);
    resolve(gio, "g_dbus_connection_call_sync", f.g_dbus_connection_call_sync, p);
    resolve(gio, "g_dbus_error_quark", f.g_dbus_error_quark, p);
    resolve(gobject, "g_object_unref", f.g_object_unref, p);
    resolve(secret, "secret_password_storev_sync", f.secret_password_storev_sync, p);
    resolve(secret, "secret_password_lookupv_sync", f.secret_password_lookupv_sync, p);
    resolve(secret, "secret_password_clearv_sync", f.secret_password_clearv_sync, p);
    resolve(secret, "secret_password_free", f.secret_password_free, p);
    resolve(secret, "secret_service_search_sync", f.secret_service_search_sync, p);
    resolve(secret, "secret_item_get_attributes", f.secret_item_get_attributes, p);
    resolve(secret, "secret_service_disconnect", f.secret_service_disconnect, p);
    if (!p.empty())
      p = "libsecret-1.so.0 is too old: " + p;
    return r;
  }();
  return result;
}

const schema aloft_schema = {
    "dev.aloft.Credentials",
    0,
    {{"application", 0}, {"account", 0}, {nullptr, 0}},
    0,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
};

} // namespace libsecret

constexpr const char* secrets_name = "org.freedesktop.secrets";

// Whether the Secret Service's name has an owner on `bus`, or the bus can
// start one (it is among the activatable names). Asks without starting it.
// False with `gerr` set when the bus did not answer.
bool bus_knows_secrets(const libsecret::api& f, void* bus, libsecret::GError** gerr) {
  auto call = [&](const char* method, libsecret::GVariant* args) {
    return f.g_dbus_connection_call_sync(bus, "org.freedesktop.DBus",
                                         "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                         method, args, nullptr, 0, 5000, nullptr, gerr);
  };
  auto* owned = call("NameHasOwner", f.g_variant_new("(s)", secrets_name));
  if (!owned)
    return false;
  int has_owner = 0;
  f.g_variant_get(owned, "(b)", &has_owner);
  f.g_variant_unref(owned);
  if (has_owner)
    return true;
  auto* activatable = call("ListActivatableNames", nullptr);
  if (!activatable)
    return false;
  const char** names = nullptr;
  f.g_variant_get(activatable, "(^a&s)", &names);
  bool found = false;
  for (auto** n = names; n && *n; ++n)
    found = found || std::string_view{*n} == secrets_name;
  f.g_free(static_cast<void*>(names));
  f.g_variant_unref(activatable);
  return found;
}

// Why the Secret Service cannot be used here, or "" when it can: the session
// bus answers, and the service's name has an owner or can be activated.
std::string secret_service_problem() {
  const char* address = std::getenv("DBUS_SESSION_BUS_ADDRESS");
  if (!address || !*address)
    return "DBUS_SESSION_BUS_ADDRESS is not set (no session bus, as on a headless "
           "machine or over SSH)";
  auto& lib = libsecret::load();
  if (!lib.problem.empty())
    return lib.problem + "; install libsecret (Debian: libsecret-1-0)";
  auto& f = lib.fns;
  // The process's shared connection, the one libsecret uses too. GLib keeps
  // it, even closed, for the life of the process.
  libsecret::GError* gerr = nullptr;
  void* bus = f.g_bus_get_sync(libsecret::bus_type_session, nullptr, &gerr);
  auto bus_error = [&](const std::string& what) {
    std::string msg = gerr && gerr->message ? gerr->message : "unknown error";
    if (gerr)
      f.g_error_free(gerr);
    return what + ": " + msg;
  };
  if (!bus)
    return bus_error("the session bus at DBUS_SESSION_BUS_ADDRESS does not answer");
  // Aloft runs no GLib main loop, but if one ever ran, the bus going away
  // must not end the process (GLib's default for this connection).
  f.g_dbus_connection_set_exit_on_close(bus, 0);
  std::string problem;
  if (f.g_dbus_connection_is_closed(bus))
    problem = "the session bus this process connected to has gone away; restart Aloft";
  else if (!bus_knows_secrets(f, bus, &gerr))
    problem =
        gerr ? bus_error("cannot ask the session bus about " + std::string{secrets_name})
             : "nothing on the session bus provides " + std::string{secrets_name}
                   + " (no GNOME Keyring or KWallet running or installed)";
  f.g_object_unref(bus);
  return problem;
}

class secret_service_store final : public credential_store {
public:
  explicit secret_service_store(const libsecret::api& fns) : f_(fns) {}

  std::string kind() const override { return "secret-service"; }
  std::string location() const override {
    return "the Secret Service (items with application=aloft)";
  }
  bool read_only() const override { return false; }

  caf::expected<secret_map> get(const std::string& account) override {
    attributes attrs{f_, account};
    libsecret::GError* gerr = nullptr;
    char* text = retrying(gerr, [&] {
      return f_.secret_password_lookupv_sync(&libsecret::aloft_schema, attrs.table,
                                             nullptr, &gerr);
    });
    if (gerr)
      return failure(gerr, "read the secrets of account " + account);
    if (!text)
      return make_error(errc::not_found,
                        "no secrets for account " + account + " in the Secret Service");
    auto doc = json::parse(text);
    f_.secret_password_free(text);
    auto where = "the Secret Service item of account " + account;
    if (!doc)
      return make_error(errc::failed_precondition,
                        where
                            + " is not the JSON Aloft writes; remove it (secret-tool "
                              "clear application aloft account "
                            + account + ") and add the secrets again");
    auto secrets = secrets_from_json(*doc, where);
    if (secrets)
      register_all(*secrets);
    return secrets;
  }

  caf::error put(const std::string& account, const secret_map& secrets) override {
    if (auto err = check_put(account, secrets))
      return err;
    if (secrets.empty())
      return erase(account);
    register_all(secrets);
    attributes attrs{f_, account};
    auto text = secrets_to_json(secrets).dump();
    auto label = "Aloft: secrets of account " + account;
    libsecret::GError* gerr = nullptr;
    retrying(gerr, [&] {
      return f_.secret_password_storev_sync(&libsecret::aloft_schema, attrs.table,
                                            nullptr, label.c_str(), text.c_str(), nullptr,
                                            &gerr);
    });
    if (gerr)
      return failure(gerr, "store the secrets of account " + account);
    return {};
  }

  caf::error erase(const std::string& account) override {
    attributes attrs{f_, account};
    libsecret::GError* gerr = nullptr;
    // FALSE without an error means there was nothing to remove.
    retrying(gerr, [&] {
      return f_.secret_password_clearv_sync(&libsecret::aloft_schema, attrs.table,
                                            nullptr, &gerr);
    });
    if (gerr)
      return failure(gerr, "remove the secrets of account " + account);
    return {};
  }

  std::vector<std::string> accounts() override {
    attributes attrs{f_, {}};
    libsecret::GError* gerr = nullptr;
    auto* items = retrying(gerr, [&] {
      return f_.secret_service_search_sync(nullptr, &libsecret::aloft_schema, attrs.table,
                                           libsecret::search_all, nullptr, &gerr);
    });
    if (gerr) {
      f_.g_error_free(gerr);
      return {};
    }
    std::set<std::string> names;
    for (auto* i = items; i; i = i->next) {
      auto* table = f_.secret_item_get_attributes(i->data);
      if (!table)
        continue;
      if (auto* name = static_cast<const char*>(f_.g_hash_table_lookup(table, "account")))
        names.insert(name);
      f_.g_hash_table_unref(table);
    }
    if (items)
      f_.g_list_free_full(items, f_.g_object_unref);
    return {names.begin(), names.end()};
  }

private:
  // The lookup attributes: application=aloft, and account=NAME unless
  // `account` is empty. The table borrows the strings, which outlive it.
  struct attributes {
    attributes(const libsecret::api& f, std::string account)
        : f_(f), account_(std::move(account)) {
      table = f_.g_hash_table_new(f_.g_str_hash, f_.g_str_equal);
      f_.g_hash_table_insert(table, const_cast<char*>("application"),
                             const_cast<char*>("aloft"));
      if (!account_.empty())
        f_.g_hash_table_insert(table, const_cast<char*>("account"), account_.data());
    }
    attributes(const attributes&) = delete;
    attributes& operator=(const attributes&) = delete;
    ~attributes() { f_.g_hash_table_unref(table); }

    const libsecret::api& f_;
    std::string account_;
    libsecret::GHashTable* table = nullptr;
  };

  // libsecret keeps one proxy for the service per process, bound to the
  // service's unique bus name. When the service restarts (gnome-keyring
  // replaced or crashed and activated again), every later call fails with
  // "The name :1.N was not provided by any .service files". On that answer,
  // drop the proxy and call once more through a fresh one. Other failures
  // (a locked collection, a dismissed prompt, a time-out) are not repeated.
  template <class Call>
  auto retrying(libsecret::GError*& gerr, Call call) -> decltype(call()) {
    auto result = call();
    if (gerr && gerr->domain == f_.g_dbus_error_quark()
        && (gerr->code == libsecret::dbus_error_service_unknown
            || gerr->code == libsecret::dbus_error_name_has_no_owner)) {
      f_.g_error_free(gerr);
      gerr = nullptr;
      f_.secret_service_disconnect();
      result = call();
    }
    return result;
  }

  // The one place a GError becomes an error. Secret Service messages carry
  // no secret values, but pass through `redact` all the same.
  caf::error failure(libsecret::GError* gerr, const std::string& what) {
    std::string msg = gerr->message ? gerr->message : "unknown error";
    f_.g_error_free(gerr);
    return make_error(errc::unavailable,
                      "Secret Service: cannot " + what + ": " + redact(msg));
  }

  const libsecret::api& f_;
};

// -- keychain -----------------------------------------------------------------

#ifdef __APPLE__

struct cf_release {
  void operator()(const void* ref) const {
    if (ref)
      CFRelease(ref);
  }
};
using cf_ptr = std::unique_ptr<const void, cf_release>;

cf_ptr cf_string(const std::string& s) {
  return cf_ptr{CFStringCreateWithBytes(
      kCFAllocatorDefault, reinterpret_cast<const UInt8*>(s.data()),
      static_cast<CFIndex>(s.size()), kCFStringEncodingUTF8, false)};
}

std::string to_std_string(CFStringRef s) {
  if (!s)
    return {};
  auto size =
      CFStringGetMaximumSizeForEncoding(CFStringGetLength(s), kCFStringEncodingUTF8) + 1;
  std::string out(static_cast<size_t>(size), '\0');
  if (!CFStringGetCString(s, out.data(), size, kCFStringEncodingUTF8))
    return {};
  out.resize(std::char_traits<char>::length(out.c_str()));
  return out;
}

// The one place an OSStatus becomes an error.
caf::error from_osstatus(OSStatus status, const std::string& what) {
  cf_ptr text{SecCopyErrorMessageString(status, nullptr)};
  auto msg = to_std_string(static_cast<CFStringRef>(text.get()));
  if (msg.empty())
    msg = "OSStatus " + std::to_string(status);
  errc code = errc::internal;
  switch (status) {
  case errSecItemNotFound:
    code = errc::not_found;
    break;
  case errSecAuthFailed:
  case errSecUserCanceled:
    code = errc::permission_denied;
    break;
  case errSecInteractionNotAllowed:
  case errSecNotAvailable:
    code = errc::unavailable;
    break;
  default:
    break;
  }
  return make_error(code, "Keychain: cannot " + what + ": " + msg);
}

class keychain_store final : public credential_store {
public:
  std::string kind() const override { return "keychain"; }
  std::string location() const override {
    return "the macOS Keychain (generic passwords of service aloft)";
  }
  bool read_only() const override { return false; }

  caf::expected<secret_map> get(const std::string& account) override {
    auto query = base_query(account);
    CFDictionarySetValue(query.get(), kSecReturnData, kCFBooleanTrue);
    CFDictionarySetValue(query.get(), kSecMatchLimit, kSecMatchLimitOne);
    CFTypeRef found = nullptr;
    auto status = SecItemCopyMatching(query.get(), &found);
    cf_ptr owned{found};
    if (status == errSecItemNotFound)
      return make_error(errc::not_found,
                        "no secrets for account " + account + " in the Keychain");
    if (status != errSecSuccess)
      return from_osstatus(status, "read the secrets of account " + account);
    if (!found || CFGetTypeID(found) != CFDataGetTypeID())
      return make_error(errc::internal,
                        "Keychain: unexpected result for account " + account);
    auto data = static_cast<CFDataRef>(found);
    std::string text(reinterpret_cast<const char*>(CFDataGetBytePtr(data)),
                     static_cast<size_t>(CFDataGetLength(data)));
    auto doc = json::parse(text);
    auto where = "the Keychain item of account " + account;
    if (!doc)
      return make_error(errc::failed_precondition,
                        where
                            + " is not the JSON Aloft writes; remove it and add "
                              "the secrets again");
    auto secrets = secrets_from_json(*doc, where);
    if (secrets)
      register_all(*secrets);
    return secrets;
  }

  caf::error put(const std::string& account, const secret_map& secrets) override {
    if (auto err = check_put(account, secrets))
      return err;
    if (secrets.empty())
      return erase(account);
    register_all(secrets);
    auto text = secrets_to_json(secrets).dump();
    cf_ptr data{CFDataCreate(kCFAllocatorDefault,
                             reinterpret_cast<const UInt8*>(text.data()),
                             static_cast<CFIndex>(text.size()))};
    auto query = base_query(account);
    cf_ptr update{CFDictionaryCreateMutable(kCFAllocatorDefault, 0,
                                            &kCFTypeDictionaryKeyCallBacks,
                                            &kCFTypeDictionaryValueCallBacks)};
    auto changes = static_cast<CFMutableDictionaryRef>(const_cast<void*>(update.get()));
    CFDictionarySetValue(changes, kSecValueData, data.get());
    auto status = SecItemUpdate(query.get(), changes);
    if (status == errSecItemNotFound) {
      auto label = cf_string("Aloft: secrets of account " + account);
      CFDictionarySetValue(query.get(), kSecValueData, data.get());
      CFDictionarySetValue(query.get(), kSecAttrLabel, label.get());
      status = SecItemAdd(query.get(), nullptr);
    }
    if (status != errSecSuccess)
      return from_osstatus(status, "store the secrets of account " + account);
    return {};
  }

  caf::error erase(const std::string& account) override {
    auto query = base_query(account);
    auto status = SecItemDelete(query.get());
    if (status != errSecSuccess && status != errSecItemNotFound)
      return from_osstatus(status, "remove the secrets of account " + account);
    return {};
  }

  std::vector<std::string> accounts() override {
    auto query = base_query({});
    CFDictionarySetValue(query.get(), kSecReturnAttributes, kCFBooleanTrue);
    CFDictionarySetValue(query.get(), kSecMatchLimit, kSecMatchLimitAll);
    CFTypeRef found = nullptr;
    auto status = SecItemCopyMatching(query.get(), &found);
    cf_ptr owned{found};
    if (status != errSecSuccess || !found || CFGetTypeID(found) != CFArrayGetTypeID())
      return {};
    std::set<std::string> names;
    auto items = static_cast<CFArrayRef>(found);
    for (CFIndex i = 0; i < CFArrayGetCount(items); ++i) {
      auto item = CFArrayGetValueAtIndex(items, i);
      if (!item || CFGetTypeID(item) != CFDictionaryGetTypeID())
        continue;
      auto name =
          CFDictionaryGetValue(static_cast<CFDictionaryRef>(item), kSecAttrAccount);
      if (name && CFGetTypeID(name) == CFStringGetTypeID())
        names.insert(to_std_string(static_cast<CFStringRef>(name)));
    }
    return {names.begin(), names.end()};
  }

private:
  struct dict_release {
    void operator()(CFMutableDictionaryRef ref) const {
      if (ref)
        CFRelease(ref);
    }
  };
  using dict_ptr =
      std::unique_ptr<std::remove_pointer_t<CFMutableDictionaryRef>, dict_release>;

  // Generic password of service "aloft", and of `account` unless it is empty.
  static dict_ptr base_query(const std::string& account) {
    dict_ptr query{CFDictionaryCreateMutable(kCFAllocatorDefault, 0,
                                             &kCFTypeDictionaryKeyCallBacks,
                                             &kCFTypeDictionaryValueCallBacks)};
    CFDictionarySetValue(query.get(), kSecClass, kSecClassGenericPassword);
    CFDictionarySetValue(query.get(), kSecAttrService, CFSTR("aloft"));
    if (!account.empty()) {
      auto name = cf_string(account);
      CFDictionarySetValue(query.get(), kSecAttrAccount, name.get());
    }
    return query;
  }
};

#endif // __APPLE__

} // namespace

// -- public functions ---------------------------------------------------------

std::vector<std::string> credential_store_kinds() {
  return {"file", "env", "secret-service", "keychain"};
}

std::string default_credential_store_kind() {
#ifdef __APPLE__
  return "keychain";
#else
  return secret_service_problem().empty() ? "secret-service" : "file";
#endif
}

caf::expected<std::unique_ptr<credential_store>>
open_credential_store(const std::string& kind, const std::string& state_dir) {
#ifndef __APPLE__
  // The default on Linux is the Secret Service when it answers, else the
  // file: one probe decides both (each may wait on D-Bus).
  if (kind.empty() && secret_service_problem().empty())
    return std::unique_ptr<credential_store>{new secret_service_store(libsecret::load().fns)};
  auto k = kind.empty() ? std::string{"file"} : kind;
#else
  auto k = kind.empty() ? default_credential_store_kind() : kind;
#endif
  if (k == "file") {
    if (state_dir.empty())
      return make_error(errc::invalid_argument,
                        "the file credential store needs a state directory");
    return std::unique_ptr<credential_store>{new file_store(state_dir)};
  }
  if (k == "env")
    return std::unique_ptr<credential_store>{new env_store};
  if (k == "secret-service") {
    auto problem = secret_service_problem();
    if (!problem.empty())
      return make_error(errc::unavailable,
                        "the Secret Service is not reachable: " + problem + "; "
                            + use_file_store + " instead");
    return std::unique_ptr<credential_store>{
        new secret_service_store(libsecret::load().fns)};
  }
  if (k == "keychain") {
#ifdef __APPLE__
    return std::unique_ptr<credential_store>{new keychain_store};
#else
    return make_error(errc::unavailable,
                      std::string{"the macOS Keychain exists only in builds for Apple; "}
                          + use_file_store + " instead");
#endif
  }
  std::string known;
  for (auto& name : credential_store_kinds())
    known += (known.empty() ? "" : ", ") + name;
  return make_error(errc::invalid_argument,
                    "unknown credential store \"" + k + "\"; known stores: " + known);
}

std::string mask_secret(const std::string& secret) {
  constexpr size_t shown = 6;
  constexpr size_t min_size_for_prefix = 16;
  auto tail = "\u2026(" + std::to_string(secret.size()) + " chars)";
  if (secret.size() < min_size_for_prefix)
    return tail;
  // Only plain ASCII: cutting a multi-byte character would print garbage.
  auto prefix = secret.substr(0, shown);
  for (unsigned char c : prefix)
    if (c < 0x21 || c > 0x7e)
      return tail;
  return prefix + tail;
}

std::string secret_env_variable(const std::string& account, const std::string& key) {
  return std::string{env_prefix} + env_spelling(account) + "_" + env_spelling(key);
}

const std::string* find_secret(const secret_map& secrets, const std::string& key) {
  if (auto i = secrets.find(key); i != secrets.end())
    return &i->second;
  auto wanted = env_spelling(key);
  for (auto& [name, value] : secrets)
    if (env_spelling(name) == wanted)
      return &value;
  return nullptr;
}

} // namespace aloft
