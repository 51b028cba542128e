#include "providers/fly/fly_auth.hpp"

namespace aloft {

namespace {

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front()))
    s.remove_prefix(1);
  while (!s.empty() && is_space(s.back()))
    s.remove_suffix(1);
  return s;
}

/// Whether `s` starts with `prefix`, ignoring ASCII case.
bool starts_with_nocase(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size())
    return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    auto c = s[i];
    if (c >= 'A' && c <= 'Z')
      c = static_cast<char>(c - 'A' + 'a');
    if (c != prefix[i])
      return false;
  }
  return true;
}

} // namespace

std::string normalize_fly_token(std::string_view token) {
  auto t = trim(token);
  for (std::string_view scheme : {"bearer", "flyv1"}) {
    if (starts_with_nocase(t, scheme) && t.size() == scheme.size())
      return {}; // a scheme with no token after it
    if (starts_with_nocase(t, scheme) && is_space(t[scheme.size()])) {
      t = trim(t.substr(scheme.size()));
      break;
    }
  }
  return std::string{t};
}

bool is_fly_macaroon(std::string_view token) {
  while (!token.empty()) {
    auto comma = token.find(',');
    auto part = trim(token.substr(0, comma));
    for (std::string_view prefix : {"fm1r_", "fm1a_", "fm2_"})
      if (part.substr(0, prefix.size()) == prefix)
        return true;
    if (comma == std::string_view::npos)
      break;
    token.remove_prefix(comma + 1);
  }
  return false;
}

std::string fly_authorization(std::string_view token) {
  return (is_fly_macaroon(token) ? "FlyV1 " : "Bearer ") + std::string{token};
}

} // namespace aloft
