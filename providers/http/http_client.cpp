#include "providers/http/http_client.hpp"

#include <algorithm>
#include <cstdint>

#include "engine/base/error.hpp"
#include "engine/base/json.hpp"
#include "engine/base/text.hpp"
#include "providers/http/curl_transfer.hpp"

namespace aloft {

namespace {

using http_detail::trim;

/// A plain-text (non-JSON) error body longer than this is not quoted.
constexpr size_t max_plain_error_body = 1024;

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

} // namespace

const std::string* http_response::header(std::string_view name) const {
  for (auto& [k, v] : headers)
    if (iequals(k, name))
      return &v;
  return nullptr;
}

caf::expected<http_response> http_call(const http_request& req) {
  http_detail::curl_transfer t;
  if (auto err = t.prepare(req))
    return err;
  return t.finish(curl_easy_perform(t.handle()));
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
