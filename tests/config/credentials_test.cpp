#include "config/credentials.hpp"

#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <thread>

#include <gtest/gtest.h>

#include "engine/base/error.hpp"
#include "engine/base/json.hpp"
#include "engine/base/redact.hpp"
#include "tests/persistence/temp_dir.hpp"

namespace aloft {
namespace {

// Sets (or unsets, with nullopt) an environment variable for one scope.
class scoped_env {
public:
  scoped_env(std::string name, std::optional<std::string> value)
      : name_(std::move(name)) {
    if (auto* old = std::getenv(name_.c_str()))
      old_ = old;
    if (value)
      ::setenv(name_.c_str(), value->c_str(), 1);
    else
      ::unsetenv(name_.c_str());
  }
  ~scoped_env() {
    if (old_)
      ::setenv(name_.c_str(), old_->c_str(), 1);
    else
      ::unsetenv(name_.c_str());
  }

private:
  std::string name_;
  std::optional<std::string> old_;
};

std::unique_ptr<credential_store> open_or_die(const std::string& kind,
                                              const std::string& dir) {
  auto store = open_credential_store(kind, dir);
  if (!store) {
    ADD_FAILURE() << describe(store.error());
    return nullptr;
  }
  return std::move(*store);
}

unsigned mode_of(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0)
    return 0;
  return st.st_mode & 07777;
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  if (auto* d = ::opendir(dir.c_str())) {
    while (auto* e = ::readdir(d))
      if (std::string{e->d_name} != "." && std::string{e->d_name} != "..")
        names.push_back(e->d_name);
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// Replaces `path` the way another process would: a new file renamed over it.
void replace_file(const std::string& path, const std::string& text) {
  auto tmp = path + ".other-writer";
  {
    std::ofstream out{tmp};
    out << text;
  }
  ::chmod(tmp.c_str(), 0600);
  ASSERT_EQ(::rename(tmp.c_str(), path.c_str()), 0);
}

const std::string fly_token = "fo1_abcdefghijklmnopqrstuvwxyz0123456789ABC";

// -- file store ---------------------------------------------------------------

TEST(file_credential_store, round_trips_the_secrets_of_several_accounts) {
  test::temp_dir dir;
  auto store = open_or_die("file", dir.path());
  ASSERT_TRUE(store);
  EXPECT_EQ(store->kind(), "file");
  EXPECT_EQ(store->location(), dir.sub("credentials.json"));
  EXPECT_FALSE(store->read_only());
  ASSERT_FALSE(store->put("fly", {{"token", fly_token}}));
  ASSERT_FALSE(
      store->put("modal", {{"token_id", "ak-123456"}, {"token_secret", "as-abcdef"}}));
  ASSERT_FALSE(store->put("fly", {{"token", fly_token + "-new"}}));

  auto fly = store->get("fly");
  ASSERT_TRUE(fly) << describe(fly.error());
  EXPECT_EQ(*fly, (secret_map{{"token", fly_token + "-new"}}));
  auto modal = store->get("modal");
  ASSERT_TRUE(modal) << describe(modal.error());
  EXPECT_EQ(modal->at("token_secret"), "as-abcdef");
  EXPECT_EQ(store->accounts(), (std::vector<std::string>{"fly", "modal"}));

  auto missing = store->get("vercel");
  ASSERT_FALSE(missing);
  EXPECT_EQ(code_of(missing.error()), errc::not_found);

  // The layout is the documented one: {account: {key: value}}.
  std::ifstream in{dir.sub("credentials.json")};
  std::string text{std::istreambuf_iterator<char>{in}, {}};
  auto doc = json::parse(text);
  ASSERT_TRUE(doc);
  EXPECT_EQ(doc->find("modal")->get_string("token_id"), "ak-123456");
}

TEST(file_credential_store, creates_the_file_0600_and_missing_directories_0700) {
  test::temp_dir dir;
  // A umask that would leave the file 0400 if it were only used at open().
  auto old_umask = ::umask(0277);
  auto state = dir.sub("state/nested");
  auto store = open_or_die("file", state);
  ASSERT_TRUE(store);
  auto err = store->put("fly", {{"token", fly_token}});
  ::umask(old_umask);
  ASSERT_FALSE(err) << describe(err);
  EXPECT_EQ(mode_of(state + "/credentials.json"), 0600u);
  EXPECT_EQ(mode_of(state) & 0077, 0u);
  EXPECT_TRUE(store->get("fly"));
}

TEST(file_credential_store, refuses_a_file_that_others_can_read) {
  test::temp_dir dir;
  auto store = open_or_die("file", dir.path());
  ASSERT_TRUE(store);
  ASSERT_FALSE(store->put("fly", {{"token", fly_token}}));
  auto path = dir.sub("credentials.json");
  ASSERT_EQ(::chmod(path.c_str(), 0640), 0);

  auto got = store->get("fly");
  ASSERT_FALSE(got);
  EXPECT_EQ(code_of(got.error()), errc::permission_denied);
  auto msg = message_of(got.error());
  EXPECT_NE(msg.find(path + " has mode 0640"), std::string::npos) << msg;
  EXPECT_NE(msg.find("chmod 600 " + path), std::string::npos) << msg;
  EXPECT_EQ(msg.find(fly_token), std::string::npos);

  // Writing goes through the same check, so the loose file is not rewritten.
  auto err = store->put("vercel", {{"token", "vc-0123456789"}});
  EXPECT_EQ(code_of(err), errc::permission_denied);
  EXPECT_TRUE(store->accounts().empty());
  EXPECT_EQ(mode_of(path), 0640u);

  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  EXPECT_TRUE(store->get("fly"));
}

TEST(file_credential_store, a_put_leaves_no_temporary_files_behind) {
  test::temp_dir dir;
  auto store = open_or_die("file", dir.path());
  ASSERT_TRUE(store);
  for (int i = 0; i < 5; ++i)
    ASSERT_FALSE(store->put("acct" + std::to_string(i), {{"token", fly_token}}));
  ASSERT_FALSE(store->erase("acct0"));
  EXPECT_EQ(list_dir(dir.path()), (std::vector<std::string>{"credentials.json"}));
}

TEST(file_credential_store, rereads_a_file_another_writer_replaced) {
  test::temp_dir dir;
  auto store = open_or_die("file", dir.path());
  ASSERT_TRUE(store);
  ASSERT_FALSE(store->put("fly", {{"token", fly_token}}));
  ASSERT_TRUE(store->get("fly"));

  replace_file(dir.sub("credentials.json"),
               R"({"vercel": {"token": "vc-from-another-process"}})");
  EXPECT_EQ(code_of(store->get("fly").error()), errc::not_found);
  auto vercel = store->get("vercel");
  ASSERT_TRUE(vercel) << describe(vercel.error());
  EXPECT_EQ(vercel->at("token"), "vc-from-another-process");

  // A second store on the same directory sees the first one's writes, and
  // its own put keeps them (read-modify-write of the current file).
  auto other = open_or_die("file", dir.path());
  ASSERT_TRUE(other);
  ASSERT_FALSE(other->put("fly", {{"token", fly_token}}));
  EXPECT_EQ(store->accounts(), (std::vector<std::string>{"fly", "vercel"}));
}

TEST(file_credential_store, concurrent_writers_lose_no_update) {
  test::temp_dir dir;
  // Two stores on one directory stand for two processes: their mutexes are
  // separate, so only the lock on the directory keeps them apart.
  auto first = open_or_die("file", dir.path());
  auto second = open_or_die("file", dir.path());
  ASSERT_TRUE(first && second);
  constexpr int threads = 6;
  constexpr int per_thread = 8;
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t)
    workers.emplace_back([&, t] {
      auto& store = t % 2 == 0 ? *first : *second;
      for (int i = 0; i < per_thread; ++i) {
        auto name = "a" + std::to_string(t) + "-" + std::to_string(i);
        auto err = store.put(name, {{"token", "token-of-" + name}});
        EXPECT_FALSE(err) << describe(err);
      }
    });
  for (auto& w : workers)
    w.join();
  EXPECT_EQ(first->accounts().size(), static_cast<size_t>(threads * per_thread));
  auto one = second->get("a3-7");
  ASSERT_TRUE(one);
  EXPECT_EQ(one->at("token"), "token-of-a3-7");
  EXPECT_EQ(list_dir(dir.path()), (std::vector<std::string>{"credentials.json"}));
}

TEST(file_credential_store, erase_removes_one_account_and_tolerates_absent_ones) {
  test::temp_dir dir;
  auto store = open_or_die("file", dir.path());
  ASSERT_TRUE(store);
  EXPECT_FALSE(store->erase("never-there")); // no file at all
  ASSERT_FALSE(store->put("fly", {{"token", fly_token}}));
  ASSERT_FALSE(store->put("vercel", {{"token", "vc-0123456789"}}));
  ASSERT_FALSE(store->erase("fly"));
  EXPECT_FALSE(store->erase("fly"));
  EXPECT_EQ(code_of(store->get("fly").error()), errc::not_found);
  EXPECT_EQ(store->accounts(), (std::vector<std::string>{"vercel"}));
  // Putting no secrets is the same as erasing.
  ASSERT_FALSE(store->put("vercel", {}));
  EXPECT_TRUE(store->accounts().empty());
}

TEST(file_credential_store, rejects_empty_names_and_values_without_echoing_them) {
  test::temp_dir dir;
  auto store = open_or_die("file", dir.path());
  ASSERT_TRUE(store);
  EXPECT_EQ(code_of(store->put("", {{"token", fly_token}})), errc::invalid_argument);
  EXPECT_EQ(code_of(store->put("fly", {{"", fly_token}})), errc::invalid_argument);
  auto err = store->put("fly", {{"token", ""}});
  EXPECT_EQ(code_of(err), errc::invalid_argument);
  EXPECT_NE(message_of(err).find("token"), std::string::npos);
}

TEST(file_credential_store, a_malformed_file_is_reported_with_its_path) {
  test::temp_dir dir;
  auto path = dir.sub("credentials.json");
  replace_file(path, R"({"fly": {"token": )");
  auto store = open_or_die("file", dir.path());
  ASSERT_TRUE(store);
  auto got = store->get("fly");
  ASSERT_FALSE(got);
  EXPECT_EQ(code_of(got.error()), errc::failed_precondition);
  EXPECT_EQ(message_of(got.error()).rfind(path + ": ", 0), 0u) << describe(got.error());

  replace_file(path, R"({"fly": {"token": 42}})");
  got = store->get("fly");
  ASSERT_FALSE(got);
  EXPECT_NE(message_of(got.error()).find("secret token is not a string"),
            std::string::npos);
}

TEST(file_credential_store, secrets_it_returns_are_redacted_from_output) {
  test::temp_dir dir;
  const std::string token = "fo1_only-in-this-test-5f1c0d9e8b7a";
  replace_file(dir.sub("credentials.json"), R"({"fly": {"token": ")" + token + R"("}})");
  EXPECT_TRUE(is_clean("curl -H 'Authorization: " + token + "'"));
  auto store = open_or_die("file", dir.path());
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->get("fly"));
  EXPECT_EQ(redact("Authorization: Bearer " + token), "Authorization: Bearer [redacted]");
  forget_secret(token);
}

// -- env store ----------------------------------------------------------------

TEST(env_credential_store, reads_upper_cased_variables) {
  scoped_env token{"ALOFT_SECRET_CI_BOX_TOKEN", "ci-token-0123456789"};
  scoped_env token_id{"ALOFT_SECRET_CI_BOX_TOKEN_ID", "ci-id-0123456789"};
  scoped_env blank{"ALOFT_SECRET_CI_BOX_UNSET", ""};
  auto store = open_or_die("env", "");
  ASSERT_TRUE(store);
  EXPECT_EQ(store->kind(), "env");
  EXPECT_TRUE(store->read_only());
  EXPECT_EQ(secret_env_variable("ci-box", "token_id"), "ALOFT_SECRET_CI_BOX_TOKEN_ID");

  auto got = store->get("ci-box");
  ASSERT_TRUE(got) << describe(got.error());
  EXPECT_EQ(*got, (secret_map{{"token", "ci-token-0123456789"},
                              {"token_id", "ci-id-0123456789"}}));
  ASSERT_NE(find_secret(*got, "TOKEN_ID"), nullptr);
  EXPECT_EQ(*find_secret(*got, "TOKEN_ID"), "ci-id-0123456789");
  EXPECT_EQ(find_secret(*got, "token-secret"), nullptr);
  EXPECT_EQ(redact("x ci-token-0123456789 y"), "x [redacted] y");

  auto missing = store->get("nobody-here");
  ASSERT_FALSE(missing);
  EXPECT_EQ(code_of(missing.error()), errc::not_found);
  EXPECT_NE(message_of(missing.error()).find("ALOFT_SECRET_NOBODY_HERE_<KEY>"),
            std::string::npos);
  forget_secret("ci-token-0123456789");
  forget_secret("ci-id-0123456789");
}

TEST(env_credential_store, lists_accounts_by_their_first_word) {
  scoped_env a{"ALOFT_SECRET_ENVACCT_TOKEN", "value-0123456789"};
  scoped_env b{"ALOFT_SECRET_OTHERACCT_TOKEN_SECRET", "value-9876543210"};
  scoped_env empty{"ALOFT_SECRET_EMPTYACCT_TOKEN", ""};
  auto store = open_or_die("env", "");
  ASSERT_TRUE(store);
  auto names = store->accounts();
  EXPECT_NE(std::find(names.begin(), names.end(), "envacct"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "otheracct"), names.end());
  EXPECT_EQ(std::find(names.begin(), names.end(), "emptyacct"), names.end());
}

TEST(env_credential_store, refuses_writes_and_says_which_variable_to_set) {
  auto store = open_or_die("env", "");
  ASSERT_TRUE(store);
  auto err = store->put("fly-prod", {{"token", fly_token}});
  EXPECT_EQ(code_of(err), errc::failed_precondition);
  auto msg = message_of(err);
  EXPECT_NE(msg.find("read-only"), std::string::npos) << msg;
  EXPECT_NE(msg.find("set ALOFT_SECRET_FLY_PROD_TOKEN in the environment"),
            std::string::npos)
      << msg;
  EXPECT_EQ(msg.find(fly_token), std::string::npos);

  err = store->erase("fly-prod");
  EXPECT_EQ(code_of(err), errc::failed_precondition);
  EXPECT_NE(message_of(err).find("unset the variables ALOFT_SECRET_FLY_PROD_*"),
            std::string::npos)
      << describe(err);
}

// -- choosing a store ---------------------------------------------------------

TEST(open_credential_store, an_unknown_kind_lists_the_known_ones) {
  auto store = open_credential_store("vault", "/tmp");
  ASSERT_FALSE(store);
  EXPECT_EQ(code_of(store.error()), errc::invalid_argument);
  EXPECT_EQ(message_of(store.error()),
            "unknown credential store \"vault\"; known stores: file, env, "
            "secret-service, keychain");
}

TEST(open_credential_store, the_file_store_needs_a_directory) {
  auto store = open_credential_store("file", "");
  ASSERT_FALSE(store);
  EXPECT_EQ(code_of(store.error()), errc::invalid_argument);
}

TEST(open_credential_store, secret_service_without_a_session_bus_is_unavailable) {
  scoped_env no_bus{"DBUS_SESSION_BUS_ADDRESS", std::nullopt};
  auto store = open_credential_store("secret-service", "/tmp");
  ASSERT_FALSE(store);
  EXPECT_EQ(code_of(store.error()), errc::unavailable);
  auto msg = message_of(store.error());
  EXPECT_NE(msg.find("DBUS_SESSION_BUS_ADDRESS is not set"), std::string::npos) << msg;
  EXPECT_NE(msg.find("credential_store: \"file\""), std::string::npos) << msg;
#ifndef __APPLE__
  EXPECT_EQ(default_credential_store_kind(), "file");
  auto fallback = open_credential_store("", "/tmp/aloft-unused");
  ASSERT_TRUE(fallback);
  EXPECT_EQ((*fallback)->kind(), "file");
#endif
}

// A session bus address where nothing listens (a stale variable, as after
// logging in again inside an old tmux) is no bus either: reachability is
// checked, not only the variable. tests/config/secret_service_test.cpp runs
// the store against a real bus and keyring.
TEST(open_credential_store, secret_service_on_a_bus_that_does_not_answer_is_unavailable) {
  scoped_env bus{"DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/aloft-test-bus"};
  auto store = open_credential_store("secret-service", "/tmp");
  ASSERT_FALSE(store);
  EXPECT_EQ(code_of(store.error()), errc::unavailable);
  auto msg = message_of(store.error());
  if (auto* lib = ::dlopen("libsecret-1.so.0", RTLD_NOW | RTLD_LOCAL)) {
    ::dlclose(lib);
    // GLib keeps a process's first session bus connection: after the Secret
    // Service suite ran in this process, that one is closed instead.
    EXPECT_TRUE(msg.find("the session bus at DBUS_SESSION_BUS_ADDRESS does not answer")
                    != std::string::npos
                || msg.find("the session bus this process connected to has gone away")
                       != std::string::npos)
        << msg;
  } else {
    EXPECT_NE(msg.find("libsecret-1.so.0 could not be loaded"), std::string::npos) << msg;
  }
  EXPECT_NE(msg.find("credential_store: \"file\""), std::string::npos) << msg;
#ifndef __APPLE__
  EXPECT_EQ(default_credential_store_kind(), "file");
  auto fallback = open_credential_store("", "/tmp/aloft-unused");
  ASSERT_TRUE(fallback);
  EXPECT_EQ((*fallback)->kind(), "file");
#endif
}

#ifndef __APPLE__
TEST(open_credential_store, the_keychain_exists_only_on_apple) {
  auto store = open_credential_store("keychain", "/tmp");
  ASSERT_FALSE(store);
  EXPECT_EQ(code_of(store.error()), errc::unavailable);
  EXPECT_NE(message_of(store.error())
                .find("the macOS Keychain exists only in builds for Apple"),
            std::string::npos);
}
#endif

// -- masking ------------------------------------------------------------------

TEST(mask_secret, shows_a_prefix_only_of_long_secrets) {
  EXPECT_EQ(mask_secret(fly_token), "fo1_ab\u2026(43 chars)");
  EXPECT_EQ(mask_secret("0123456789abcdef"), "012345\u2026(16 chars)");
  EXPECT_EQ(mask_secret("0123456789abcde"), "\u2026(15 chars)");
  EXPECT_EQ(mask_secret("short"), "\u2026(5 chars)");
  EXPECT_EQ(mask_secret(""), "\u2026(0 chars)");
  // A prefix that is not plain text is not shown.
  EXPECT_EQ(mask_secret("ab\tcdefghijklmnopq"), "\u2026(18 chars)");
}

} // namespace
} // namespace aloft
