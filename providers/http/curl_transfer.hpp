// One HTTP exchange on a libcurl easy handle: the part shared by the
// blocking `http_call` and the non-blocking `http_loop`. Internal to
// providers/http; nothing outside this folder includes it.
//
// A transfer validates a request and builds its easy handle (`prepare`),
// collects the response while libcurl runs it (capped like every provider
// answer), and converts the outcome (`finish`) with the one conversion of a
// libcurl failure into an Aloft error. Who runs the handle (curl_easy_perform
// or a multi handle) is the caller's business.
//
// Concurrency: a transfer belongs to one thread at a time.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <curl/curl.h>

#include "providers/http/http_client.hpp"

namespace aloft::http_detail {

/// `s` without leading and trailing spaces, tabs and line breaks.
std::string_view trim(std::string_view s);

/// Runs curl_global_init once per process; its result every time.
CURLcode ensure_curl_initialized();

class curl_transfer {
public:
  curl_transfer() = default;
  ~curl_transfer();

  // libcurl keeps pointers into the transfer: it never moves.
  curl_transfer(const curl_transfer&) = delete;
  curl_transfer& operator=(const curl_transfer&) = delete;

  /// Validates `req` and makes a fresh easy handle ready to perform it.
  /// Errors: invalid_argument (method, header name, a line break in a
  /// header value; values are never quoted), internal (libcurl failed).
  /// REQUIRES: called once; `req` stays alive and unchanged until the
  /// transfer is destroyed (its body is sent from place).
  caf::error prepare(const http_request& req);

  /// The easy handle; null before a successful `prepare`.
  CURL* handle() const noexcept { return easy_; }

  /// The response once libcurl reported `rc` for the handle, or the error
  /// ("<url>: <what went wrong>"): unavailable, deadline_exceeded,
  /// data_loss (larger than `max_http_body`), invalid_argument, internal.
  /// Moves the response out: call once.
  caf::expected<http_response> finish(CURLcode rc);

  /// What was received so far (headers of a failed transfer included).
  const http_response& received() const noexcept { return resp_; }

  /// Connections the transfer had to open (0 when it reused one).
  long new_connections() const;

private:
  static size_t on_body(char* data, size_t size, size_t count, void* user);
  static size_t on_header(char* data, size_t size, size_t count, void* user);

  const http_request* req_ = nullptr;
  CURL* easy_ = nullptr;
  curl_slist* headers_ = nullptr;
  http_response resp_;
  size_t header_bytes_ = 0;
  bool too_big_ = false;
  char errbuf_[CURL_ERROR_SIZE] = {0};
};

} // namespace aloft::http_detail
