#include "providers/http/curl_transfer.hpp"

#include <mutex>

#include "engine/base/error.hpp"
#include "engine/base/text.hpp"

namespace aloft::http_detail {

namespace {

/// Headers beyond this total are refused like an oversized body.
constexpr size_t max_header_bytes = 256 * 1024;


bool is_token_char(char c) {
  // RFC 9110 tchar.
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
    return true;
  return std::string_view{"!#$%&'*+-.^_`|~"}.find(c) != std::string_view::npos;
}

bool is_token(std::string_view s) {
  if (s.empty())
    return false;
  for (char c : s)
    if (!is_token_char(c))
      return false;
  return true;
}

std::once_flag curl_once;
CURLcode curl_init_result = CURLE_OK;

} // namespace

std::string_view trim(std::string_view s) {
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  while (!s.empty() && space(s.front()))
    s.remove_prefix(1);
  while (!s.empty() && space(s.back()))
    s.remove_suffix(1);
  return s;
}

CURLcode ensure_curl_initialized() {
  std::call_once(curl_once,
                 [] { curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT); });
  return curl_init_result;
}

curl_transfer::~curl_transfer() {
  if (easy_ != nullptr)
    curl_easy_cleanup(easy_);
  if (headers_ != nullptr)
    curl_slist_free_all(headers_);
}

caf::error curl_transfer::prepare(const http_request& req) {
  req_ = &req;
  auto where = url_for_messages(req.url);
  if (!is_token(req.method))
    return make_error(errc::invalid_argument, where + ": not an HTTP method: '"
                                                  + sanitize_provider_text(req.method, 20)
                                                  + "'");
  // Build the header list first: a bad header fails before any I/O.
  // Values are never quoted in messages (they may be credentials).
  auto add_header = [&](const std::string& line) {
    auto* next = curl_slist_append(headers_, line.c_str());
    if (next == nullptr)
      return false;
    headers_ = next;
    return true;
  };
  bool has_user_agent = false;
  for (auto& [name, value] : req.headers) {
    if (!is_token(name))
      return make_error(errc::invalid_argument, where + ": not a valid header name: '"
                                                    + sanitize_provider_text(name, 60)
                                                    + "'");
    if (value.find_first_of(std::string_view{"\r\n\0", 3}) != std::string::npos)
      return make_error(errc::invalid_argument, where + ": the value of header '" + name
                                                    + "' contains a line break");
    if (iequals(name, "User-Agent"))
      has_user_agent = true;
    // libcurl drops "Name:" with nothing after it; "Name;" sends it empty.
    auto line = trim(value).empty() ? name + ";" : name + ": " + value;
    if (!add_header(line))
      return make_error(errc::internal, where + ": out of memory");
  }
  bool sends_body = !req.body.empty() || req.method == "POST" || req.method == "PUT"
                    || req.method == "PATCH";
  // A body goes out at once; waiting for "100 Continue" only adds a round trip.
  if (sends_body && !add_header("Expect:"))
    return make_error(errc::internal, where + ": out of memory");

  if (auto rc = ensure_curl_initialized(); rc != CURLE_OK)
    return make_error(errc::internal, where + ": libcurl failed to initialize: "
                                          + curl_easy_strerror(rc));
  easy_ = curl_easy_init();
  if (easy_ == nullptr)
    return make_error(errc::internal, where + ": libcurl could not make a handle");

  auto* e = easy_;
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf_);
  curl_easy_setopt(e, CURLOPT_URL, req.url.c_str());
#if LIBCURL_VERSION_NUM >= 0x075500
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
  curl_easy_setopt(e, CURLOPT_PROTOCOLS, CURLPROTO_HTTP | CURLPROTO_HTTPS);
#endif
  // Redirects are not followed: a provider API does not redirect, and a
  // redirect must never carry the Authorization header elsewhere.
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, req.fresh_connection ? 1L : 0L);
  curl_easy_setopt(e, CURLOPT_FORBID_REUSE, req.fresh_connection ? 1L : 0L);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(req.timeout.count()));
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(req.timeout.count()));
  curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(max_http_body));
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
  if (!has_user_agent)
    curl_easy_setopt(e, CURLOPT_USERAGENT, "aloft");
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers_);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, this);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, this);
  if (req.method == "GET" && !sends_body) {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  } else if (req.method == "HEAD") {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req.method.c_str());
    if (sends_body) {
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, req.body.data());
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                       static_cast<curl_off_t>(req.body.size()));
    }
  }
  return {};
}

size_t curl_transfer::on_body(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<curl_transfer*>(user);
  auto len = size * count;
  if (t->resp_.body.size() + len > max_http_body) {
    t->too_big_ = true;
    return 0; // any short count makes libcurl abort the transfer
  }
  t->resp_.body.append(data, len);
  return len;
}

size_t curl_transfer::on_header(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<curl_transfer*>(user);
  auto len = size * count;
  t->header_bytes_ += len;
  if (t->header_bytes_ > max_header_bytes) {
    t->too_big_ = true;
    return 0;
  }
  auto line = trim(std::string_view{data, len});
  // A status line starts a new response (after a 100 Continue, or a
  // proxy's CONNECT answer): only the final one's headers are kept.
  if (line.substr(0, 5) == "HTTP/") {
    t->resp_.headers.clear();
    return len;
  }
  auto colon = line.find(':');
  if (line.empty() || colon == std::string_view::npos)
    return len;
  t->resp_.headers.emplace_back(std::string{trim(line.substr(0, colon))},
                                std::string{trim(line.substr(colon + 1))});
  return len;
}

/// The one conversion of a libcurl failure into an Aloft error.
caf::expected<http_response> curl_transfer::finish(CURLcode rc) {
  if (rc == CURLE_OK) {
    curl_easy_getinfo(easy_, CURLINFO_RESPONSE_CODE, &resp_.status);
    return std::move(resp_);
  }
  auto where = url_for_messages(req_->url);
  if (too_big_ || rc == CURLE_FILESIZE_EXCEEDED)
    return make_error(errc::data_loss, where + ": the response is larger than "
                                           + std::to_string(max_http_body >> 20)
                                           + " MiB; refused");
  std::string text = curl_easy_strerror(rc);
  auto more = sanitize_provider_text(errbuf_, 300);
  if (!more.empty() && more != text)
    text += " (" + more + ")";
  errc code;
  switch (rc) {
  case CURLE_OPERATION_TIMEDOUT:
    code = errc::deadline_exceeded;
    break;
  case CURLE_URL_MALFORMAT:
  case CURLE_UNSUPPORTED_PROTOCOL:
    code = errc::invalid_argument;
    break;
  case CURLE_OUT_OF_MEMORY:
  case CURLE_FAILED_INIT:
    code = errc::internal;
    break;
  default:
    // Refused, DNS, TLS, reset, nothing received: the server may answer
    // a later attempt.
    code = errc::unavailable;
    break;
  }
  return make_error(code, where + ": " + text);
}

long curl_transfer::new_connections() const {
  long n = 0;
  if (easy_ != nullptr)
    curl_easy_getinfo(easy_, CURLINFO_NUM_CONNECTS, &n);
  return n;
}

} // namespace aloft::http_detail
