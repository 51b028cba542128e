// Credential validation against loopback stand-ins for the Fly Machines API
// (`/v1/tokens/current`, `/v1/apps`) and the Vercel API (`/v2/user`,
// `/v2/teams/{id}`, `/v2/projects/{id}`). Every error is also checked for
// the token it must never contain.
#include "providers/validate.hpp"

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "engine/base/error.hpp"
#include "engine/base/json.hpp"
#include "tests/support/http_server.hpp"

namespace aloft {
namespace {

using test::http_reply;
using test::http_request_seen;
using test::http_server;

constexpr const char* fly_user_token = "fo1_FAKE_TEST_TOKEN_0123456789";
constexpr const char* fly_macaroon = "fm2_FAKE_TEST_MACAROON_0123456789";
constexpr const char* vercel_token = "vercel_FAKE_TEST_TOKEN_0123456789";

account make_account(std::string provider, std::map<std::string, std::string> options) {
  account a;
  a.name = "test-" + provider;
  a.provider = std::move(provider);
  a.options = std::move(options);
  return a;
}

/// Checks that neither `token` nor its distinctive tail appears in `err`.
void expect_no_secret(const caf::error& err, const std::string& token) {
  auto msg = describe(err);
  EXPECT_EQ(msg.find(token), std::string::npos) << msg;
  EXPECT_EQ(msg.find("FAKE_TEST"), std::string::npos) << msg;
}

void expect_mentions(const caf::error& err, const std::string& part) {
  EXPECT_NE(message_of(err).find(part), std::string::npos)
      << "'" << part << "' not in: " << message_of(err);
}

// -- Fly ----------------------------------------------------------------------

/// A stand-in for the Machines API: known tokens, the organizations each
/// reaches, and switches for the older API without `/v1/tokens/current`
/// and for canned failures.
class validate_fly_test : public ::testing::Test {
protected:
  void SetUp() override {
    orgs_of_["Bearer " + std::string{fly_user_token}] = {"personal", "acme"};
    orgs_of_["FlyV1 " + std::string{fly_macaroon}] = {"personal"};
    server_.route("GET", "/v1/tokens/current", [this](const http_request_seen& r) {
      if (override_)
        return *override_;
      if (!has_tokens_endpoint_)
        return http_reply::json(404, R"({"error":"Not Found"})");
      auto i = orgs_of_.find(r.header("Authorization"));
      if (i == orgs_of_.end())
        return http_reply::json(401, R"({"error":"token validation error"})");
      auto tokens = json::array();
      for (auto& slug : i->second) {
        auto entry = json::object().set("token_id", "tok_" + slug);
        if (name_orgs_)
          entry.set("org_slug", slug);
        tokens.push_back(std::move(entry));
      }
      return http_reply::json(200, json::object().set("tokens", tokens).dump());
    });
    server_.route("GET", "/v1/apps", [this](const http_request_seen& r) {
      auto i = orgs_of_.find(r.header("Authorization"));
      if (i == orgs_of_.end())
        return http_reply::json(401, R"({"error":"token validation error"})");
      auto org = r.query_param("org_slug");
      if (known_orgs_.count(org) == 0)
        return http_reply::json(404, R"({"error":"organization not found"})");
      if (i->second.count(org) == 0)
        return http_reply::json(403, R"({"error":"unauthorized"})");
      return http_reply::json(200, R"({"total_apps":0,"apps":[]})");
    });
  }

  account fly(std::string org = "") {
    std::map<std::string, std::string> options{{"api_url", server_.base_url()}};
    if (!org.empty())
      options["org"] = org;
    return make_account("fly", options);
  }

  http_server server_;
  std::map<std::string, std::set<std::string>> orgs_of_;
  std::set<std::string> known_orgs_{"personal", "acme", "other"};
  bool has_tokens_endpoint_ = true;
  bool name_orgs_ = true;
  std::optional<http_reply> override_;
};

TEST_F(validate_fly_test, a_good_user_token_passes_as_bearer) {
  auto err = validate_credentials(fly(), {{"token", fly_user_token}});
  EXPECT_FALSE(err) << describe(err);
  auto seen = server_.requests_to("/v1/tokens/current");
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].header("Authorization"), "Bearer " + std::string{fly_user_token});
  EXPECT_TRUE(server_.requests_to("/v1/apps").empty());
}

TEST_F(validate_fly_test, a_macaroon_goes_out_as_flyv1_once) {
  // As `fly tokens create` prints it: already prefixed, with a newline.
  auto err = validate_credentials(
      fly("personal"), {{"token", "FlyV1 " + std::string{fly_macaroon} + "\n"}});
  EXPECT_FALSE(err) << describe(err);
  auto seen = server_.requests_to("/v1/tokens/current");
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].header("Authorization"), "FlyV1 " + std::string{fly_macaroon});
}

TEST_F(validate_fly_test, a_pasted_bearer_scheme_is_not_doubled) {
  auto err =
      validate_credentials(fly(), {{"token", "Bearer " + std::string{fly_user_token}}});
  EXPECT_FALSE(err) << describe(err);
  EXPECT_EQ(server_.requests().at(0).header("Authorization"),
            "Bearer " + std::string{fly_user_token});
}

TEST_F(validate_fly_test, a_refused_token_is_unauthenticated) {
  std::string bad = "fo1_FAKE_TEST_WRONG_TOKEN_987654";
  auto err = validate_credentials(fly(), {{"token", bad}});
  EXPECT_EQ(code_of(err), errc::unauthenticated) << describe(err);
  expect_mentions(err, "the Fly token was refused (401");
  expect_mentions(err, "fly tokens create org");
  expect_no_secret(err, bad);
}

TEST_F(validate_fly_test, a_token_echoed_back_by_the_api_is_redacted) {
  override_ = http_reply::json(
      401, R"({"error":"token fo1_FAKE_TEST_TOKEN_0123456789 is expired"})");
  auto err = validate_credentials(fly(), {{"token", fly_user_token}});
  EXPECT_EQ(code_of(err), errc::unauthenticated);
  expect_mentions(err, "[redacted]");
  expect_no_secret(err, fly_user_token);
}

TEST_F(validate_fly_test, an_organization_the_token_does_not_reach_is_permission_denied) {
  auto err = validate_credentials(fly("other"), {{"token", fly_user_token}});
  EXPECT_EQ(code_of(err), errc::permission_denied) << describe(err);
  expect_mentions(err, "the token cannot reach organization 'other' (it reaches: ");
  expect_mentions(err, "acme");
  expect_mentions(err, "personal");
  expect_no_secret(err, fly_user_token);
}

TEST_F(validate_fly_test, the_named_organization_passes) {
  auto err = validate_credentials(fly("acme"), {{"token", fly_user_token}});
  EXPECT_FALSE(err) << describe(err);
}

TEST_F(validate_fly_test, without_the_tokens_endpoint_the_apps_list_decides) {
  has_tokens_endpoint_ = false;
  EXPECT_FALSE(validate_credentials(fly("acme"), {{"token", fly_user_token}}));
  auto apps = server_.requests_to("/v1/apps");
  ASSERT_EQ(apps.size(), 1u);
  EXPECT_EQ(apps[0].query_param("org_slug"), "acme");

  auto denied = validate_credentials(fly("other"), {{"token", fly_user_token}});
  EXPECT_EQ(code_of(denied), errc::permission_denied) << describe(denied);
  expect_mentions(denied, "organization 'other'");

  auto missing = validate_credentials(fly("nowhere"), {{"token", fly_user_token}});
  EXPECT_EQ(code_of(missing), errc::not_found) << describe(missing);
  expect_mentions(missing, "organization 'nowhere' was not found");

  auto refused = validate_credentials(fly(), {{"token", "fo1_FAKE_TEST_WRONG"}});
  EXPECT_EQ(code_of(refused), errc::unauthenticated) << describe(refused);
  for (auto& err : {denied, missing, refused})
    expect_no_secret(err, fly_user_token);
}

TEST_F(validate_fly_test,
       token_entries_without_organizations_fall_back_to_the_apps_list) {
  name_orgs_ = false;
  EXPECT_FALSE(validate_credentials(fly("acme"), {{"token", fly_user_token}}));
  EXPECT_EQ(server_.requests_to("/v1/apps").size(), 1u);
  auto err = validate_credentials(fly("other"), {{"token", fly_user_token}});
  EXPECT_EQ(code_of(err), errc::permission_denied) << describe(err);
}

TEST_F(validate_fly_test, an_unreachable_api_is_unavailable_naming_the_url) {
  auto url = "http://127.0.0.1:" + std::to_string(test::closed_port());
  auto a = make_account("fly", {{"api_url", url}});
  auto err = validate_credentials(a, {{"token", fly_user_token}});
  EXPECT_EQ(code_of(err), errc::unavailable) << describe(err);
  expect_mentions(err, "could not reach the Fly API at " + url + "/v1/tokens/current: ");
  expect_no_secret(err, fly_user_token);
}

TEST_F(validate_fly_test, a_server_error_is_unavailable) {
  override_ = http_reply::json(500, R"({"error":"internal error"})");
  auto err = validate_credentials(fly(), {{"token", fly_user_token}});
  EXPECT_EQ(code_of(err), errc::unavailable) << describe(err);
  expect_mentions(err, server_.base_url() + "/v1/tokens/current");
  expect_mentions(err, "HTTP 500 (internal error)");
}

TEST_F(validate_fly_test, rate_limiting_is_resource_exhausted_with_retry_after) {
  override_ = http_reply::json(429, R"({"error":"rate limited"})");
  override_->headers.emplace_back("Retry-After", "7");
  auto err = validate_credentials(fly(), {{"token", fly_user_token}});
  EXPECT_EQ(code_of(err), errc::resource_exhausted) << describe(err);
  expect_mentions(err, "retry after 7 s");
  EXPECT_TRUE(is_retryable(err));
}

TEST_F(validate_fly_test, a_missing_or_empty_token_is_invalid_argument) {
  auto missing = validate_credentials(fly(), {});
  EXPECT_EQ(code_of(missing), errc::invalid_argument);
  expect_mentions(missing, "'token'");
  for (std::string value : {"", "  \n", "FlyV1 "}) {
    auto err = validate_credentials(fly(), {{"token", value}});
    EXPECT_EQ(code_of(err), errc::invalid_argument) << "'" << value << "'";
    expect_mentions(err, "'token'");
  }
  EXPECT_TRUE(server_.requests().empty());
}

TEST_F(validate_fly_test, a_trailing_slash_in_api_url_is_harmless) {
  auto a = make_account("fly", {{"api_url", server_.base_url() + "/"}});
  EXPECT_FALSE(validate_credentials(a, {{"token", fly_user_token}}));
  EXPECT_EQ(server_.requests().at(0).path, "/v1/tokens/current");
}

// -- Vercel -------------------------------------------------------------------

/// A stand-in for the Vercel API: one good token, a team it belongs to, a
/// team it cannot see, and projects per team.
class validate_vercel_test : public ::testing::Test {
protected:
  void SetUp() override {
    server_.route("GET", "/v2/user", [this](const http_request_seen& r) {
      if (user_override_)
        return *user_override_;
      if (!authorized(r))
        return forbidden();
      return http_reply::json(200, R"({"user":{"id":"u_1","username":"tester"}})");
    });
    server_.route("GET", "/v2/teams/", [this](const http_request_seen& r) {
      if (!authorized(r))
        return forbidden();
      auto team = r.path.substr(std::string{"/v2/teams/"}.size());
      if (team == "team_FOREIGN")
        return http_reply::json(
            403, R"({"error":{"code":"forbidden","message":"Not authorized"}})");
      if (projects_.count(team) == 0)
        return http_reply::json(
            404, R"({"error":{"code":"not_found","message":"Team not found"}})");
      return http_reply::json(200, "{\"id\":\"" + team + "\"}");
    });
    server_.route("GET", "/v2/projects/", [this](const http_request_seen& r) {
      if (!authorized(r))
        return forbidden();
      auto project = r.path.substr(std::string{"/v2/projects/"}.size());
      auto team = r.query_param("teamId");
      auto i = projects_.find(team);
      if (i == projects_.end() || i->second.count(project) == 0)
        return http_reply::json(
            404, R"({"error":{"code":"not_found","message":"Project not found"}})");
      return http_reply::json(200, "{\"id\":\"" + project + "\"}");
    });
  }

  static bool authorized(const http_request_seen& r) {
    return r.header("Authorization") == "Bearer " + std::string{vercel_token};
  }

  static http_reply forbidden() {
    return http_reply::json(
        403,
        R"({"error":{"code":"forbidden","message":"Not authorized","invalidToken":true}})");
  }

  account vercel(std::string team, std::string project) {
    std::map<std::string, std::string> options{{"api_url", server_.base_url()}};
    if (!team.empty())
      options["team"] = team;
    if (!project.empty())
      options["project"] = project;
    return make_account("vercel", options);
  }

  http_server server_;
  std::map<std::string, std::set<std::string>> projects_{{"team_FAKE", {"prj_FAKE"}},
                                                         {"", {"prj_SOLO"}}};
  std::optional<http_reply> user_override_;
};

TEST_F(validate_vercel_test, a_good_token_team_and_project_pass) {
  auto err =
      validate_credentials(vercel("team_FAKE", "prj_FAKE"), {{"token", vercel_token}});
  EXPECT_FALSE(err) << describe(err);
  auto seen = server_.requests();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0].path, "/v2/user");
  EXPECT_EQ(seen[1].path, "/v2/teams/team_FAKE");
  EXPECT_EQ(seen[2].path, "/v2/projects/prj_FAKE");
  EXPECT_EQ(seen[2].query_param("teamId"), "team_FAKE");
  for (auto& r : seen)
    EXPECT_EQ(r.header("Authorization"), "Bearer " + std::string{vercel_token});
}

TEST_F(validate_vercel_test, without_team_or_project_only_the_user_is_checked) {
  EXPECT_FALSE(validate_credentials(vercel("", ""), {{"token", vercel_token}}));
  EXPECT_EQ(server_.requests().size(), 1u);
  EXPECT_FALSE(validate_credentials(vercel("", "prj_SOLO"), {{"token", vercel_token}}));
  EXPECT_EQ(server_.requests().back().query, "");
}

TEST_F(validate_vercel_test, a_refused_token_is_unauthenticated) {
  std::string bad = "vercel_FAKE_TEST_WRONG_987654";
  auto err = validate_credentials(vercel("team_FAKE", "prj_FAKE"), {{"token", bad}});
  EXPECT_EQ(code_of(err), errc::unauthenticated) << describe(err);
  expect_mentions(err, "the Vercel token was refused (403");
  expect_no_secret(err, bad);
  EXPECT_EQ(server_.requests().size(), 1u);
}

TEST_F(validate_vercel_test, a_team_the_token_cannot_reach_is_permission_denied) {
  auto err = validate_credentials(vercel("team_FOREIGN", ""), {{"token", vercel_token}});
  EXPECT_EQ(code_of(err), errc::permission_denied) << describe(err);
  expect_mentions(err, "team 'team_FOREIGN'");
  expect_no_secret(err, vercel_token);
}

TEST_F(validate_vercel_test, an_unknown_team_is_not_found) {
  auto err =
      validate_credentials(vercel("team_NOPE", "prj_FAKE"), {{"token", vercel_token}});
  EXPECT_EQ(code_of(err), errc::not_found) << describe(err);
  expect_mentions(err, "Vercel team 'team_NOPE' was not found");
  expect_no_secret(err, vercel_token);
  EXPECT_TRUE(server_.requests_to("/v2/projects/").empty());
}

TEST_F(validate_vercel_test, an_unknown_project_is_not_found_naming_it_and_the_team) {
  auto err =
      validate_credentials(vercel("team_FAKE", "prj_NOPE"), {{"token", vercel_token}});
  EXPECT_EQ(code_of(err), errc::not_found) << describe(err);
  expect_mentions(err, "Vercel project 'prj_NOPE' was not found in team 'team_FAKE'");
  expect_no_secret(err, vercel_token);
}

TEST_F(validate_vercel_test, an_unreachable_api_is_unavailable_naming_the_url) {
  auto url = "http://127.0.0.1:" + std::to_string(test::closed_port());
  auto a = make_account("vercel", {{"api_url", url}, {"team", "team_FAKE"}});
  auto err = validate_credentials(a, {{"token", vercel_token}});
  EXPECT_EQ(code_of(err), errc::unavailable) << describe(err);
  expect_mentions(err, "could not reach the Vercel API at " + url + "/v2/user: ");
}

TEST_F(validate_vercel_test, server_errors_and_rate_limits_keep_their_retry_meaning) {
  user_override_ = http_reply::json(502, "");
  auto down = validate_credentials(vercel("", ""), {{"token", vercel_token}});
  EXPECT_EQ(code_of(down), errc::unavailable) << describe(down);
  expect_mentions(down, server_.base_url() + "/v2/user: HTTP 502");

  user_override_ = http_reply::json(
      429, R"({"error":{"code":"rate_limited","message":"Too many requests"}})");
  user_override_->headers.emplace_back("Retry-After", "12");
  auto limited = validate_credentials(vercel("", ""), {{"token", vercel_token}});
  EXPECT_EQ(code_of(limited), errc::resource_exhausted) << describe(limited);
  expect_mentions(limited, "rate_limited: Too many requests");
  expect_mentions(limited, "retry after 12 s");
}

TEST_F(validate_vercel_test, a_missing_token_is_invalid_argument) {
  auto err = validate_credentials(vercel("", ""), {{"tokn", vercel_token}});
  EXPECT_EQ(code_of(err), errc::invalid_argument);
  expect_mentions(err, "'token'");
  expect_no_secret(err, vercel_token);
  EXPECT_TRUE(server_.requests().empty());
}

// -- Modal, local, the rest ---------------------------------------------------

TEST(validate_test, required_secrets_per_provider) {
  EXPECT_EQ(required_secrets("fly"), std::vector<std::string>{"token"});
  EXPECT_EQ(required_secrets("vercel"), std::vector<std::string>{"token"});
  EXPECT_EQ(required_secrets("modal"),
            (std::vector<std::string>{"token_id", "token_secret"}));
  EXPECT_TRUE(required_secrets("local").empty());
}

TEST(validate_test, local_accepts_anything) {
  EXPECT_FALSE(validate_credentials(default_local_account(), {}));
  EXPECT_FALSE(validate_credentials(make_account("local", {}), {{"x", "y"}}));
}

TEST(validate_test, modal_checks_its_secrets_then_says_it_is_not_built) {
  secret_map secrets{{"token_id", "ak-FAKE_TEST_ID_0123"}};
  auto missing = validate_credentials(make_account("modal", {}), secrets);
  EXPECT_EQ(code_of(missing), errc::invalid_argument);
  expect_mentions(missing, "'token_secret'");
  expect_no_secret(missing, "ak-FAKE_TEST_ID_0123");

  secrets["token_secret"] = "as-FAKE_TEST_SECRET_0123";
  auto err = validate_credentials(make_account("modal", {}), secrets);
  EXPECT_EQ(code_of(err), errc::unimplemented);
  expect_mentions(err, "Modal provider");
}

TEST(validate_test, an_unknown_provider_is_invalid_argument) {
  auto err = validate_credentials(make_account("azure", {}), {{"token", "x"}});
  EXPECT_EQ(code_of(err), errc::invalid_argument);
  expect_mentions(err, "'azure'");
}

} // namespace
} // namespace aloft
