// The blocking HTTP client against the loopback test server, and the
// conversion of HTTP statuses and provider error bodies into errors.
#include "providers/http/http_client.hpp"

#include <chrono>
#include <cstdio>
#include <future>
#include <string>

#include <gtest/gtest.h>

#include "engine/base/error.hpp"
#include "tests/support/http_server.hpp"

namespace aloft {
namespace {

using namespace std::chrono_literals;
using test::http_reply;
using test::http_request_seen;
using test::http_server;

/// Whether `s` holds a byte a terminal would act on.
bool has_control_bytes(const std::string& s) {
  for (unsigned char c : s)
    if (c < 0x20 || c == 0x7F)
      return true;
  return false;
}

http_response response(long status, std::string body, http_headers headers = {}) {
  http_response r;
  r.status = status;
  r.body = std::move(body);
  r.headers = std::move(headers);
  return r;
}

// -- http_call ---------------------------------------------------------------

TEST(http_client_test, get_returns_status_headers_and_body) {
  http_server server;
  server.route("GET", "/hello", [](const http_request_seen&) {
    auto r = http_reply::json(200, R"({"hi":1})");
    r.headers.emplace_back("Fly-Request-Id", "req-42");
    return r;
  });
  http_request req;
  req.url = server.base_url() + "/hello?x=1";
  req.headers = {{"X-Custom", "yes"}};
  auto resp = http_call(req);
  ASSERT_TRUE(resp) << describe(resp.error());
  EXPECT_EQ(resp->status, 200);
  EXPECT_EQ(resp->body, R"({"hi":1})");
  ASSERT_NE(resp->header("fly-request-id"), nullptr);
  EXPECT_EQ(*resp->header("FLY-REQUEST-ID"), "req-42");
  EXPECT_EQ(resp->header("X-Absent"), nullptr);
  auto seen = server.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].method, "GET");
  EXPECT_EQ(seen[0].path, "/hello");
  EXPECT_EQ(seen[0].query, "x=1");
  EXPECT_EQ(seen[0].header("X-Custom"), "yes");
  EXPECT_EQ(seen[0].header("User-Agent"), "aloft");
}

TEST(http_client_test, post_sends_the_body_at_once) {
  http_server server;
  server.route("POST", "/v1/apps",
               [](const http_request_seen& r) { return http_reply::json(201, r.body); });
  http_request req;
  req.method = "POST";
  req.url = server.base_url() + "/v1/apps";
  req.headers = {{"Content-Type", "application/json"}};
  req.body = R"({"app_name":"a","org_slug":"personal"})";
  auto resp = http_call(req);
  ASSERT_TRUE(resp) << describe(resp.error());
  EXPECT_EQ(resp->status, 201);
  EXPECT_EQ(resp->body, req.body);
  auto seen = server.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].body, req.body);
  EXPECT_FALSE(seen[0].has_header("Expect"));
}

TEST(http_client_test, delete_and_empty_post_work) {
  http_server server;
  server.route("", "/", [](const http_request_seen& r) {
    return http_reply::json(202, "{\"method\":\"" + r.method + "\"}");
  });
  for (std::string method : {"DELETE", "POST", "PUT", "PATCH"}) {
    http_request req;
    req.method = method;
    req.url = server.base_url() + "/x";
    auto resp = http_call(req);
    ASSERT_TRUE(resp) << method << ": " << describe(resp.error());
    EXPECT_EQ(resp->body, "{\"method\":\"" + method + "\"}");
  }
}

TEST(http_client_test, an_error_status_is_a_response_not_an_error) {
  http_server server;
  server.route("GET", "/", [](const http_request_seen&) {
    return http_reply::json(503, R"({"error":"try later"})");
  });
  http_request req;
  req.url = server.base_url() + "/busy";
  auto resp = http_call(req);
  ASSERT_TRUE(resp) << describe(resp.error());
  EXPECT_EQ(resp->status, 503);
}

TEST(http_client_test, refused_connection_is_unavailable_naming_the_url_without_query) {
  auto url = "http://127.0.0.1:" + std::to_string(test::closed_port());
  http_request req;
  req.url = url + "/v1/apps?org_slug=acme&access_token=SECRET_QUERY_VALUE";
  auto resp = http_call(req);
  ASSERT_FALSE(resp);
  EXPECT_EQ(code_of(resp.error()), errc::unavailable);
  auto msg = message_of(resp.error());
  EXPECT_NE(msg.find(url + "/v1/apps"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("SECRET_QUERY_VALUE"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("org_slug"), std::string::npos) << msg;
}

TEST(http_client_test, user_info_in_the_url_is_not_shown) {
  http_request req;
  req.url = "http://someone:PASSWORD_IN_URL@127.0.0.1:"
            + std::to_string(test::closed_port()) + "/x";
  auto resp = http_call(req);
  ASSERT_FALSE(resp);
  EXPECT_EQ(message_of(resp.error()).find("PASSWORD_IN_URL"), std::string::npos)
      << message_of(resp.error());
}

TEST(http_client_test, no_answer_in_time_is_deadline_exceeded) {
  http_server server;
  std::promise<void> release;
  auto released = release.get_future().share();
  server.route("GET", "/slow", [released](const http_request_seen&) {
    released.wait();
    return http_reply::json(200, "{}");
  });
  http_request req;
  req.url = server.base_url() + "/slow";
  req.timeout = 200ms;
  auto resp = http_call(req);
  release.set_value();
  ASSERT_FALSE(resp);
  EXPECT_EQ(code_of(resp.error()), errc::deadline_exceeded);
  EXPECT_NE(message_of(resp.error()).find(server.base_url() + "/slow"), std::string::npos)
      << message_of(resp.error());
}

TEST(http_client_test, a_dropped_connection_is_unavailable) {
  http_server server;
  server.route("GET", "/", [](const http_request_seen&) { return http_reply::drop(); });
  http_request req;
  req.url = server.base_url() + "/v1/tokens/current";
  auto resp = http_call(req);
  ASSERT_FALSE(resp);
  EXPECT_EQ(code_of(resp.error()), errc::unavailable);
}

TEST(http_client_test, an_oversized_body_is_refused_as_data_loss) {
  http_server server;
  server.route("GET", "/", [](const http_request_seen&) {
    return http_reply::text(200, std::string(max_http_body + 1, 'x'));
  });
  http_request req;
  req.url = server.base_url() + "/big";
  auto resp = http_call(req);
  ASSERT_FALSE(resp);
  EXPECT_EQ(code_of(resp.error()), errc::data_loss);
  EXPECT_NE(message_of(resp.error()).find("4 MiB"), std::string::npos)
      << message_of(resp.error());
}

TEST(http_client_test, a_body_of_exactly_the_limit_is_accepted) {
  http_server server;
  server.route("GET", "/", [](const http_request_seen&) {
    return http_reply::text(200, std::string(max_http_body, 'x'));
  });
  http_request req;
  req.url = server.base_url() + "/big";
  auto resp = http_call(req);
  ASSERT_TRUE(resp) << describe(resp.error());
  EXPECT_EQ(resp->body.size(), max_http_body);
}

TEST(http_client_test, a_header_with_a_line_break_is_refused_without_its_value) {
  http_server server;
  http_request req;
  req.url = server.base_url() + "/x";
  req.headers = {{"Authorization", "Bearer fo1_FAKE_TEST_TOKEN_0123456789\r\nX-Evil: 1"}};
  auto resp = http_call(req);
  ASSERT_FALSE(resp);
  EXPECT_EQ(code_of(resp.error()), errc::invalid_argument);
  auto msg = message_of(resp.error());
  EXPECT_NE(msg.find("Authorization"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("fo1_FAKE"), std::string::npos) << msg;
  EXPECT_TRUE(server.requests().empty());
}

TEST(http_client_test, only_http_and_https_are_spoken) {
  http_request req;
  req.url = "file:///etc/passwd";
  auto resp = http_call(req);
  ASSERT_FALSE(resp);
  EXPECT_EQ(code_of(resp.error()), errc::invalid_argument);
}

TEST(http_client_test, redirects_are_not_followed) {
  http_server server;
  server.route("GET", "/moved", [&server](const http_request_seen&) {
    http_reply r;
    r.status = 302;
    r.headers = {{"Location", server.base_url() + "/elsewhere"}};
    return r;
  });
  http_request req;
  req.url = server.base_url() + "/moved";
  req.headers = {{"Authorization", "Bearer fo1_FAKE_TEST_TOKEN_0123456789"}};
  auto resp = http_call(req);
  ASSERT_TRUE(resp) << describe(resp.error());
  EXPECT_EQ(resp->status, 302);
  EXPECT_TRUE(server.requests_to("/elsewhere").empty());
}

// -- error_from_status --------------------------------------------------------

TEST(http_status_test, statuses_map_to_codes_with_retry_meaning) {
  struct row {
    long status;
    errc code;
  };
  for (auto [status, code] : std::initializer_list<row>{
           {400, errc::invalid_argument},
           {401, errc::unauthenticated},
           {403, errc::permission_denied},
           {404, errc::not_found},
           {408, errc::unavailable},
           {409, errc::aborted},
           {410, errc::failed_precondition},
           {422, errc::invalid_argument},
           {429, errc::resource_exhausted},
           {500, errc::unavailable},
           {502, errc::unavailable},
           {503, errc::unavailable},
       }) {
    auto err = error_from_status(response(status, ""), "fly: GET /v1/apps");
    EXPECT_EQ(code_of(err), code) << status;
    EXPECT_EQ(message_of(err), "fly: GET /v1/apps: HTTP " + std::to_string(status));
  }
  EXPECT_FALSE(error_from_status(response(200, ""), "x"));
  EXPECT_FALSE(error_from_status(response(204, ""), "x"));
}

TEST(http_status_test, quotes_a_fly_error_body) {
  auto err = error_from_status(
      response(422, R"({"error":"app name already taken","status":"name_taken"})"),
      "fly");
  EXPECT_EQ(message_of(err), "fly: HTTP 422 (app name already taken)");
}

TEST(http_status_test, quotes_a_fly_error_with_a_message) {
  auto err = error_from_status(
      response(412,
               R"({"error":"insufficient capacity","message":"try another region"})"),
      "fly");
  EXPECT_EQ(message_of(err), "fly: HTTP 412 (insufficient capacity: try another region)");
}

TEST(http_status_test, quotes_a_vercel_error_body) {
  auto err = error_from_status(
      response(403, R"({"error":{"code":"forbidden","message":"Not authorized"}})"),
      "vercel");
  EXPECT_EQ(code_of(err), errc::permission_denied);
  EXPECT_EQ(message_of(err), "vercel: HTTP 403 (forbidden: Not authorized)");
}

TEST(http_status_test, quotes_short_plain_text_but_not_html) {
  EXPECT_EQ(message_of(error_from_status(response(502, "upstream down\n"), "x")),
            "x: HTTP 502 (upstream down)");
  EXPECT_EQ(
      message_of(error_from_status(
          response(502, "<html><body><h1>502 Bad Gateway</h1></body></html>"), "x")),
      "x: HTTP 502");
  EXPECT_EQ(message_of(error_from_status(response(500, "{not json"), "x")),
            "x: HTTP 500");
}

TEST(http_status_test, rate_limit_says_when_to_retry) {
  auto err = error_from_status(response(429, "", {{"retry-after", "30"}}), "vercel");
  EXPECT_EQ(code_of(err), errc::resource_exhausted);
  EXPECT_EQ(message_of(err), "vercel: HTTP 429; retry after 30 s");
  auto dated = error_from_status(
      response(429, "", {{"Retry-After", "Wed, 21 Oct 2026 07:28:00 GMT"}}), "vercel");
  EXPECT_EQ(message_of(dated),
            "vercel: HTTP 429; retry after Wed, 21 Oct 2026 07:28:00 GMT");
}

TEST(http_status_test, a_hostile_error_body_is_sanitized_and_capped) {
  std::string evil = "line one\nline two\r\x1b[31mred\x1b[0m\x07\x7f";
  evil += "\xe2\x80\xae"
          "reversed"; // U+202E RIGHT-TO-LEFT OVERRIDE
  evil += std::string(10000, 'A');
  std::string body = R"({"error":")";
  for (char c : evil) {
    // As a JSON string: control characters escaped, the rest as is.
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned char>(c));
      body += buf;
    } else {
      body += c;
    }
  }
  body += R"("})";
  auto err = error_from_status(response(400, body), "fly");
  auto msg = message_of(err);
  EXPECT_FALSE(has_control_bytes(msg)) << msg;
  EXPECT_EQ(msg.find("\xe2\x80\xae"), std::string::npos);
  EXPECT_NE(msg.find("(line one line two [31mred[0mreversedAAA"), std::string::npos)
      << msg;
  auto excerpt = msg.substr(msg.find('(') + 1);
  excerpt.pop_back(); // ')'
  EXPECT_EQ(excerpt.size(), 200u) << excerpt;
  EXPECT_EQ(excerpt.substr(197), "...");
}

TEST(http_status_test, raw_control_bytes_in_a_plain_body_are_removed) {
  static const char raw[] = "bad\x1b]0;title\x07 \xff\xfe"
                            "thing\0x";
  auto msg = message_of(error_from_status(response(500, {raw, sizeof(raw) - 1}), "x"));
  EXPECT_EQ(msg, "x: HTTP 500 (bad]0;title thingx)");
}

TEST(http_status_test, a_json_body_that_is_not_utf8_is_not_quoted) {
  auto msg = message_of(error_from_status(response(500, "{\"error\":\"a\xff\"}"), "x"));
  EXPECT_EQ(msg, "x: HTTP 500");
}

TEST(http_status_test, a_huge_body_is_not_quoted_whole) {
  auto msg = message_of(error_from_status(
      response(500, R"({"error":")" + std::string(1 << 20, 'B') + "\"}"), "x"));
  EXPECT_LT(msg.size(), 250u);
}

// -- text helpers -------------------------------------------------------------

TEST(http_text_test, sanitize_cuts_on_a_character_boundary) {
  std::string accents;
  for (int i = 0; i < 300; ++i)
    accents += "\xc3\xa9"; // é
  auto out = sanitize_provider_text(accents, 10);
  std::string expected;
  for (int i = 0; i < 7; ++i)
    expected += "\xc3\xa9";
  EXPECT_EQ(out, expected + "...");
  EXPECT_EQ(sanitize_provider_text("short", 10), "short");
  EXPECT_EQ(sanitize_provider_text("exactly10!", 10), "exactly10!");
  EXPECT_EQ(sanitize_provider_text("  spaced \t\n out  "), "spaced out");
  EXPECT_EQ(sanitize_provider_text("zero\xe2\x80\x8bwidth"), "zerowidth");
  // Overlong encoding of '/' and a lone surrogate are not UTF-8.
  EXPECT_EQ(sanitize_provider_text("a\xc0\xaf"
                                   "b\xed\xa0\x80"
                                   "c"),
            "abc");
}

TEST(http_text_test, url_for_messages_drops_secrets_carriers) {
  EXPECT_EQ(url_for_messages("https://api.machines.dev/v1/apps?org_slug=x#frag"),
            "https://api.machines.dev/v1/apps");
  EXPECT_EQ(url_for_messages("https://user:pw@vercel.com/api/v2/user"),
            "https://vercel.com/api/v2/user");
  EXPECT_EQ(url_for_messages("http://127.0.0.1:80/a@b"), "http://127.0.0.1:80/a@b");
  EXPECT_EQ(url_for_messages("https://u:p@host"), "https://host");
}

TEST(http_text_test, url_encode_keeps_unreserved_characters) {
  EXPECT_EQ(url_encode("team_ABC-1.2~x"), "team_ABC-1.2~x");
  EXPECT_EQ(url_encode("a b/c?d&e"), "a%20b%2Fc%3Fd%26e");
}

} // namespace
} // namespace aloft
