#include "providers/http/http_client.hpp"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>

#include <curl/curl.h>

#include "engine/base/error.hpp"
#include "engine/base/json.hpp"

namespace aloft {

namespace {

/// Headers beyond this total are refused like an oversized body.
constexpr size_t max_header_bytes = 256 * 1024;

/// A plain-text (non-JSON) error body longer than this is not quoted.
constexpr size_t max_plain_error_body = 1024;

char lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

bool iequals(std::string_view x, std::string_view y) {
  if (x.size() != y.size())
    return false;
  for (size_t i = 0; i < x.size(); ++i)
    if (lower(x[i]) != lower(y[i]))
      return false;
  return true;
}

std::string_view trim(std::string_view s) {
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  while (!s.empty() && space(s.front()))
    s.remove_prefix(1);
  while (!s.empty() && space(s.back()))
    s.remove_suffix(1);
  return s;
}

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

// -- UTF-8 ------------------------------------------------------------------

/// Decodes one code point at `s[i]`; returns its length, or 0 when the bytes
/// there are not valid UTF-8 (overlong forms and surrogates included).
size_t decode_utf8(std::string_view s, size_t i, uint32_t& cp) {
  auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    cp = b0;
    return 1;
  }
  size_t len;
  uint32_t min;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2, min = 0x80, cp = b0 & 0x1F;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, min = 0x800, cp = b0 & 0x0F;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4, min = 0x10000, cp = b0 & 0x07;
  } else {
    return 0;
  }
  if (i + len > s.size())
    return 0;
  for (size_t k = 1; k < len; ++k) {
    auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80)
      return 0;
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
    return 0;
  return len;
}

/// Characters that would let a provider's text rewrite a terminal line,
/// hide text or reorder it on screen.
bool is_hidden_or_control(uint32_t cp) {
  return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F) || cp == 0xAD
         || (cp >= 0x200B && cp <= 0x200F) || (cp >= 0x202A && cp <= 0x202E)
         || (cp >= 0x2060 && cp <= 0x206F) || cp == 0xFEFF
         || (cp >= 0xFFF9 && cp <= 0xFFFB);
}

bool is_line_break_or_tab(uint32_t cp) {
  return cp == '\n' || cp == '\r' || cp == '\t' || cp == 0x2028 || cp == 0x2029
         || cp == 0x85;
}

// -- libcurl ----------------------------------------------------------------

std::once_flag curl_once;
CURLcode curl_init_result = CURLE_OK;

CURLcode ensure_curl_initialized() {
  std::call_once(curl_once,
                 [] { curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT); });
  return curl_init_result;
}

struct easy_deleter {
  void operator()(CURL* h) const { curl_easy_cleanup(h); }
};

struct slist_deleter {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};

struct transfer_state {
  http_response* resp;
  size_t header_bytes = 0;
  bool too_big = false;
};

size_t on_body(char* data, size_t size, size_t count, void* user) {
  auto* st = static_cast<transfer_state*>(user);
  auto len = size * count;
  if (st->resp->body.size() + len > max_http_body) {
    st->too_big = true;
    return 0; // any short count makes libcurl abort the transfer
  }
  st->resp->body.append(data, len);
  return len;
}

size_t on_header(char* data, size_t size, size_t count, void* user) {
  auto* st = static_cast<transfer_state*>(user);
  auto len = size * count;
  st->header_bytes += len;
  if (st->header_bytes > max_header_bytes) {
    st->too_big = true;
    return 0;
  }
  auto line = trim(std::string_view{data, len});
  // A status line starts a new response (after a 100 Continue, or a
  // proxy's CONNECT answer): only the final one's headers are kept.
  if (line.substr(0, 5) == "HTTP/") {
    st->resp->headers.clear();
    return len;
  }
  auto colon = line.find(':');
  if (line.empty() || colon == std::string_view::npos)
    return len;
  st->resp->headers.emplace_back(std::string{trim(line.substr(0, colon))},
                                 std::string{trim(line.substr(colon + 1))});
  return len;
}

/// The one conversion of a libcurl failure into an Aloft error.
caf::error from_curl(CURLcode rc, const transfer_state& st, const char* detail,
                     const std::string& url) {
  auto where = url_for_messages(url);
  if (st.too_big || rc == CURLE_FILESIZE_EXCEEDED)
    return make_error(errc::data_loss, where + ": the response is larger than "
                                           + std::to_string(max_http_body >> 20)
                                           + " MiB; refused");
  std::string text = curl_easy_strerror(rc);
  auto more = sanitize_provider_text(detail, 300);
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

} // namespace

const std::string* http_response::header(std::string_view name) const {
  for (auto& [k, v] : headers)
    if (iequals(k, name))
      return &v;
  return nullptr;
}

caf::expected<http_response> http_call(const http_request& req) {
  auto where = url_for_messages(req.url);
  if (!is_token(req.method))
    return make_error(errc::invalid_argument, where + ": not an HTTP method: '"
                                                  + sanitize_provider_text(req.method, 20)
                                                  + "'");
  // Build the header list first: a bad header fails before any I/O.
  // Values are never quoted in messages (they may be credentials).
  std::unique_ptr<curl_slist, slist_deleter> headers;
  auto add_header = [&](const std::string& line) {
    auto* next = curl_slist_append(headers.get(), line.c_str());
    if (next == nullptr)
      return false;
    headers.release();
    headers.reset(next);
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
  std::unique_ptr<CURL, easy_deleter> h{curl_easy_init()};
  if (!h)
    return make_error(errc::internal, where + ": libcurl could not make a handle");

  http_response resp;
  transfer_state st{&resp};
  char errbuf[CURL_ERROR_SIZE] = {0};
  auto* e = h.get();
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(e, CURLOPT_URL, req.url.c_str());
#if LIBCURL_VERSION_NUM >= 0x075500
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
  curl_easy_setopt(e, CURLOPT_PROTOCOLS, CURLPROTO_HTTP | CURLPROTO_HTTPS);
#endif
  // Redirects are not followed: a provider API does not redirect, and a
  // redirect must never carry the Authorization header elsewhere.
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(req.timeout.count()));
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(req.timeout.count()));
  curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(max_http_body));
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
  if (!has_user_agent)
    curl_easy_setopt(e, CURLOPT_USERAGENT, "aloft");
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers.get());
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &st);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, &st);
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

  auto rc = curl_easy_perform(e);
  if (rc != CURLE_OK)
    return from_curl(rc, st, errbuf, req.url);
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &resp.status);
  return resp;
}

std::string sanitize_provider_text(std::string_view text, size_t max_chars) {
  // Decode first, keeping only what is safe to print; cut afterwards, on a
  // character boundary.
  std::vector<std::string_view> chars;
  chars.reserve(std::min(text.size(), max_chars + 1));
  bool pending_space = false;
  for (size_t i = 0; i < text.size() && chars.size() <= max_chars;) {
    uint32_t cp = 0;
    auto len = decode_utf8(text, i, cp);
    if (len == 0) {
      ++i;
      continue;
    }
    auto ch = text.substr(i, len);
    i += len;
    if (cp == ' ' || is_line_break_or_tab(cp)) {
      pending_space = !chars.empty();
      continue;
    }
    if (is_hidden_or_control(cp))
      continue;
    if (pending_space) {
      chars.push_back(" ");
      pending_space = false;
    }
    chars.push_back(ch);
  }
  std::string out;
  if (chars.size() <= max_chars) {
    for (auto c : chars)
      out += c;
    return out;
  }
  size_t keep = max_chars > 3 ? max_chars - 3 : 0;
  while (keep > 0 && chars[keep - 1] == " ")
    --keep;
  for (size_t k = 0; k < keep; ++k)
    out += chars[k];
  out.append(std::min<size_t>(3, max_chars), '.');
  return out;
}

std::string provider_error_text(std::string_view body) {
  auto text = trim(body);
  if (text.empty())
    return {};
  if (text.front() == '{') {
    auto j = json::parse(text);
    if (!j)
      return {};
    std::string said;
    if (auto* err = j->find("error")) {
      if (err->is_string()) {
        said = err->as_string();
      } else if (err->is_object()) {
        auto code = err->get_string("code");
        auto message = err->get_string("message");
        said = code.empty() || message.empty() ? code + message : code + ": " + message;
      }
    }
    // Fly sometimes adds a longer "message" next to "error".
    auto message = j->get_string("message");
    if (said.empty())
      said = message;
    else if (!message.empty() && message != said)
      said += ": " + message;
    return sanitize_provider_text(said);
  }
  // An HTML error page from a proxy, or anything long, is noise in a
  // one-line message.
  if (text.front() == '<' || text.front() == '[' || text.size() > max_plain_error_body)
    return {};
  return sanitize_provider_text(text);
}

caf::error error_from_status(const http_response& resp, const std::string& what) {
  auto status = resp.status;
  if (status >= 200 && status < 300)
    return {};
  errc code;
  if (status == 401)
    code = errc::unauthenticated;
  else if (status == 403)
    code = errc::permission_denied;
  else if (status == 404)
    code = errc::not_found;
  else if (status == 408 || status >= 500)
    code = errc::unavailable;
  else if (status == 409)
    code = errc::aborted;
  else if (status == 400 || status == 422)
    code = errc::invalid_argument;
  else if (status == 429)
    code = errc::resource_exhausted;
  else if (status >= 400)
    code = errc::failed_precondition;
  else
    code = errc::unknown; // 1xx or 3xx: not an answer a REST API gives
  auto msg = what + ": HTTP " + std::to_string(status);
  if (auto said = provider_error_text(resp.body); !said.empty())
    msg += " (" + said + ")";
  if (status == 429 || status == 503) {
    if (auto* after = resp.header("Retry-After")) {
      auto value = sanitize_provider_text(*after, 40);
      bool seconds =
          !value.empty() && value.find_first_not_of("0123456789") == std::string::npos;
      if (seconds)
        msg += "; retry after " + value + " s";
      else if (!value.empty())
        msg += "; retry after " + value;
    }
  }
  return make_error(code, std::move(msg));
}

std::string url_for_messages(std::string_view url) {
  auto end = url.find_first_of("?#");
  auto out = std::string{url.substr(0, end)};
  auto scheme = out.find("://");
  auto authority_start = scheme == std::string::npos ? 0 : scheme + 3;
  auto authority_end = out.find('/', authority_start);
  auto at = out.rfind('@', authority_end);
  if (at != std::string::npos && at >= authority_start)
    out.erase(authority_start, at + 1 - authority_start);
  return out;
}

std::string url_encode(std::string_view s) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    auto b = static_cast<unsigned char>(c);
    if ((b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || (b >= '0' && b <= '9')
        || b == '-' || b == '.' || b == '_' || b == '~') {
      out += c;
    } else {
      out += '%';
      out += hex[b >> 4];
      out += hex[b & 0xF];
    }
  }
  return out;
}

} // namespace aloft
