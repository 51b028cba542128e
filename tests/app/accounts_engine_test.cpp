// The engine's account operations in process, against a loopback stand-in
// for the Fly API: each kind of validation failure says what it was and
// stores nothing; a good account lands half in settings.json, half in the
// credential store; reload keeps what no longer loads.
#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "config/settings.hpp"
#include "engine/app/api.hpp"
#include "engine/base/error.hpp"
#include "tests/support/http_server.hpp"
#include "tests/support/local_vm.hpp"

namespace aloft {
namespace {

const std::string good_token = "fo1_FAKE_GOOD_TOKEN_0123456789";

std::string slurp(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class accounts_engine_test : public ::testing::Test {
protected:
  void SetUp() override {
    fly_.route("GET", "/v1/tokens/current", [](const test::http_request_seen& req) {
      if (req.header("Authorization") == "Bearer " + good_token)
        return test::http_reply::json(200, R"({"tokens":[{"org_slug":"acme"}]})");
      return test::http_reply::json(401, R"({"error":"unauthorized"})");
    });
    // The file store, whatever the desktop offers: the tests read the file.
    std::ofstream{home_.path() + "/settings.json"} << R"({"version": 1, "credential_store": "file"})";
    engine_options opts;
    opts.home = home_.path();
    opts.worker_threads = 1;
    auto e = open_engine(opts);
    ASSERT_TRUE(e) << describe(e.error());
    engine_ = std::move(*e);
  }

  account fly_account(const std::string& name, const std::string& org = "acme") {
    account a;
    a.name = name;
    a.provider = "fly";
    a.options["api_url"] = fly_.base_url();
    a.options["org"] = org;
    return a;
  }

  // Nothing of `name` is stored anywhere.
  void expect_nothing_stored(const std::string& name) {
    EXPECT_EQ(slurp(home_.path() + "/settings.json").find(name), std::string::npos);
    EXPECT_EQ(slurp(home_.path() + "/credentials.json").find(name), std::string::npos);
    for (auto& v : engine_->accounts())
      EXPECT_NE(v.account.name, name);
  }

  test::temp_dir home_;
  test::http_server fly_;
  std::unique_ptr<engine> engine_;
};

TEST_F(accounts_engine_test, each_kind_of_validation_failure_says_which_and_stores_nothing) {
  auto bad = engine_->add_account(fly_account("fly-a"), {{"token", "fo1_FAKE_BAD_TOKEN_000000"}});
  ASSERT_FALSE(bad);
  EXPECT_EQ(code_of(bad.error()), errc::unauthenticated);
  EXPECT_NE(message_of(bad.error()).find("Fly token was refused"), std::string::npos)
    << message_of(bad.error());
  expect_nothing_stored("fly-a");

  auto org = engine_->add_account(fly_account("fly-a", "other-org"), {{"token", good_token}});
  ASSERT_FALSE(org);
  EXPECT_EQ(code_of(org.error()), errc::permission_denied);
  EXPECT_NE(message_of(org.error()).find("organization 'other-org'"), std::string::npos)
    << message_of(org.error());
  expect_nothing_stored("fly-a");

  auto net_account = fly_account("fly-a");
  net_account.options["api_url"] = "http://127.0.0.1:" + std::to_string(test::closed_port());
  auto net = engine_->add_account(net_account, {{"token", good_token}});
  ASSERT_FALSE(net);
  EXPECT_EQ(code_of(net.error()), errc::unavailable);
  EXPECT_NE(message_of(net.error()).find("could not reach the Fly API"), std::string::npos)
    << message_of(net.error());
  expect_nothing_stored("fly-a");

  auto missing = engine_->add_account(fly_account("fly-a"), {});
  ASSERT_FALSE(missing);
  EXPECT_EQ(code_of(missing.error()), errc::invalid_argument);
  EXPECT_NE(message_of(missing.error()).find("needs the secret 'token'"), std::string::npos);
  expect_nothing_stored("fly-a");

  auto option = fly_account("fly-a");
  option.options["ip_mode"] = "ipv5";
  auto bad_option = engine_->add_account(option, {{"token", good_token}});
  ASSERT_FALSE(bad_option);
  EXPECT_EQ(code_of(bad_option.error()), errc::invalid_argument);
  EXPECT_NE(message_of(bad_option.error()).find("ip_mode"), std::string::npos);
  expect_nothing_stored("fly-a");
  for (auto& m : {bad.error(), org.error(), net.error()})
    EXPECT_EQ(message_of(m).find(good_token), std::string::npos);
}

TEST_F(accounts_engine_test, a_good_account_is_split_between_settings_and_the_credential_store) {
  auto v = engine_->add_account(fly_account("fly-a"), {{"token", good_token}});
  ASSERT_TRUE(v) << describe(v.error());
  EXPECT_EQ(v->account.options.at("ip_mode"), "ipv6") << "defaults applied";
  EXPECT_TRUE(v->can_launch);
  ASSERT_EQ(v->secrets.count("token"), 1u);
  EXPECT_EQ(v->secrets.at("token").find(good_token), std::string::npos);
  auto settings_text = slurp(home_.path() + "/settings.json");
  EXPECT_NE(settings_text.find("fly-a"), std::string::npos);
  EXPECT_EQ(settings_text.find(good_token), std::string::npos);
  EXPECT_NE(slurp(home_.path() + "/credentials.json").find(good_token), std::string::npos);
  EXPECT_FALSE(engine_->validate_account("fly-a"));
  auto dup = engine_->add_account(fly_account("fly-a"), {{"token", good_token}});
  ASSERT_FALSE(dup);
  EXPECT_EQ(code_of(dup.error()), errc::already_exists);
  // Removing it removes both halves.
  EXPECT_FALSE(engine_->remove_account("fly-a", false));
  expect_nothing_stored("fly-a");
  EXPECT_EQ(slurp(home_.path() + "/credentials.json").find(good_token), std::string::npos);
}

TEST_F(accounts_engine_test, reload_applies_what_loads_and_keeps_what_does_not) {
  ASSERT_TRUE(engine_->add_account(fly_account("fly-a"), {{"token", good_token}}));
  account dev;
  dev.name = "dev";
  dev.provider = "local";
  ASSERT_TRUE(engine_->add_account(dev, {}));
  // By hand: dev's guard changes, fly-a gets a bad option.
  auto path = home_.path() + "/settings.json";
  auto load = load_settings(path);
  ASSERT_TRUE(load.problems.empty());
  auto text = to_json(load.value).pretty();
  auto pos = text.find("\"idle_timeout_s\": 800", text.find("\"dev\""));
  ASSERT_NE(pos, std::string::npos);
  text.replace(pos, 21, "\"idle_timeout_s\": 42");
  auto ip = text.find("\"ipv6\"");
  ASSERT_NE(ip, std::string::npos);
  text.replace(ip, 6, "\"ipv5\"");
  std::ofstream{path, std::ios::trunc} << text;
  auto r = engine_->reload();
  ASSERT_FALSE(r.problems.empty());
  EXPECT_NE(r.problems.front().find("ip_mode"), std::string::npos) << r.problems.front();
  EXPECT_EQ(r.changed, std::vector<std::string>{"dev"});
  bool fly_kept = false;
  for (auto& v : engine_->accounts()) {
    if (v.account.name == "dev") {
      EXPECT_EQ(v.account.guards.idle_timeout_s, 42);
    }
    if (v.account.name == "fly-a") {
      fly_kept = true;
      EXPECT_EQ(v.account.options.at("ip_mode"), "ipv6");
    }
  }
  EXPECT_TRUE(fly_kept);
  // While the file has a problem, changes through the engine are refused
  // (a write would drop the entry being fixed).
  auto set = engine_->set_account("dev", "idle_timeout_s", "60", false, nullptr);
  ASSERT_FALSE(set);
  EXPECT_EQ(code_of(set.error()), errc::failed_precondition);
  EXPECT_NE(slurp(path).find("ipv5"), std::string::npos) << "the file was rewritten";
}

TEST_F(accounts_engine_test, removing_an_account_with_live_sessions_needs_force_which_destroys_them) {
  account dev;
  dev.name = "dev";
  dev.provider = "local";
  ASSERT_TRUE(engine_->add_account(dev, {}));
  test::temp_dir wt;
  launch_request req;
  req.account = "dev";
  req.agent_cmd = "sleep 600";
  req.worktree = wt.path();
  auto rec = engine_->launch(req);
  ASSERT_TRUE(rec) << describe(rec.error());
  ASSERT_TRUE(test::wait_until(
    [&] {
      auto v = engine_->show(rec->id);
      return v && v->record.state == session_state::running;
    },
    std::chrono::seconds(30)));
  auto refused = engine_->remove_account("dev", false);
  ASSERT_TRUE(refused);
  EXPECT_EQ(code_of(refused), errc::failed_precondition);
  EXPECT_NE(message_of(refused).find(rec->id), std::string::npos) << message_of(refused);
  ASSERT_FALSE(engine_->remove_account("dev", true));
  auto v = engine_->show(rec->id);
  ASSERT_TRUE(v);
  EXPECT_TRUE(v->record.state == session_state::stopping
              || v->record.state == session_state::destroyed)
    << to_string(v->record.state);
  ASSERT_TRUE(test::wait_until(
    [&] {
      auto s = engine_->show(rec->id);
      return s && s->record.state == session_state::destroyed;
    },
    std::chrono::seconds(30)))
    << "the retired account's client still destroys the VM";
  expect_nothing_stored("dev");
  EXPECT_TRUE(test::processes_matching(home_.path() + "/sandboxes-dev").empty());
}

TEST(engine_lifetime, closing_an_engine_leaves_no_thread_behind) {
  test::temp_dir home;
  engine_options opts;
  opts.home = home.path();
  opts.worker_threads = 4;
  // The first open starts what lives for the process (libcurl, CAF's
  // globals); every later open and close must leave the count where it was.
  { auto e = open_engine(opts); ASSERT_TRUE(e) << describe(e.error()); }
  auto before = test::thread_count();
  for (int i = 0; i < 5; ++i) {
    auto e = open_engine(opts);
    ASSERT_TRUE(e) << describe(e.error());
  }
  EXPECT_EQ(test::thread_count(), before);
}

} // namespace
} // namespace aloft
