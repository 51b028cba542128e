// A small blocking HTTP client for the providers' REST APIs, over libcurl.
//
// Why: Fly and Vercel are plain REST/JSON; every provider call is one
// request and one bounded response. The request and response are plain
// values so that a non-blocking loop (curl multi) can reuse them later.
//
// Everything a provider answers is untrusted input: bodies are capped at
// `max_http_body` bytes, and text taken from them for messages goes through
// `sanitize_provider_text`. Error messages name the URL without its query
// string or user info, and never contain a header value.
//
// Concurrency: `http_call` blocks the calling thread (never call it on a
// CAF scheduler thread); concurrent calls are safe, each uses its own
// handle. The other functions are pure.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace aloft {

using http_headers = std::vector<std::pair<std::string, std::string>>;

/// The largest response body `http_call` accepts (after decompression).
constexpr size_t max_http_body = size_t{4} << 20;

struct http_request {
  std::string method = "GET";
  std::string url;
  http_headers headers;
  /// Sent as is when not empty (or when the method is POST, PUT or PATCH).
  std::string body;
  /// The whole exchange, connecting included.
  std::chrono::milliseconds timeout{10000};
  /// Send on a new connection, closed afterwards. libcurl replays a request
  /// once, silently, when a reused connection turns out dead before any
  /// answer; a request that must never reach the server twice (a create)
  /// asks for this.
  bool fresh_connection = false;
};

struct http_response {
  long status = 0;
  /// In the order received; names as the server spelled them.
  http_headers headers;
  std::string body;

  /// The value of the first header called `name` (case-insensitive), or
  /// nullptr.
  const std::string* header(std::string_view name) const;
};

/// Performs `req` and returns the response, whatever its status.
/// Errors (the message is "<url>: <what went wrong>"):
///   unavailable        the server could not be reached or the connection
///                      broke (refused, DNS, TLS, reset)
///   deadline_exceeded  no complete answer within `req.timeout`
///   data_loss          the body was larger than `max_http_body`
///   invalid_argument   a malformed URL, a scheme other than http(s), or a
///                      header containing a line break
caf::expected<http_response> http_call(const http_request& req);

/// Converts a non-2xx response into an error: "<what>: HTTP <status>
/// (<provider's message>)", with "; retry after <n> s" for a 429 that says.
///   401 unauthenticated, 403 permission_denied, 404 not_found,
///   408 and 5xx unavailable, 409 aborted, 400 and 422 invalid_argument,
///   429 resource_exhausted, any other 4xx failed_precondition, a 1xx or
///   3xx unknown.
/// The provider's message comes from a JSON body (Fly `{"error": "..."}`,
/// Vercel `{"error": {"code", "message"}}`) or a short plain-text one.
/// Returns an empty error for a 2xx status.
caf::error error_from_status(const http_response& resp, const std::string& what);

/// The provider's own description of an error in `body`, sanitized; empty
/// when the body says nothing usable (not JSON and not short plain text).
std::string provider_error_text(std::string_view body);

/// `text` made safe to show: invalid UTF-8 and control, format and
/// direction-changing characters removed (line breaks and tabs become a
/// space), runs of spaces collapsed, cut to `max_chars` characters with
/// "..." when longer.
std::string sanitize_provider_text(std::string_view text, size_t max_chars = 200);

/// `url` as shown in messages: without user info, query string or fragment.
std::string url_for_messages(std::string_view url);

/// `s` percent-encoded for a path segment or a query value (RFC 3986
/// unreserved characters are kept).
std::string url_encode(std::string_view s);

} // namespace aloft
