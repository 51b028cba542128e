#pragma once

// ASCII text helpers for protocol and file-format parsing (HTTP headers,
// JSON escapes, key names): locale-independent on purpose, since what they
// read is defined in ASCII whatever the user's locale.
//
// Concurrency: pure functions.

#include <string>
#include <string_view>

namespace aloft {

constexpr char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

inline std::string ascii_lower(std::string_view s) {
  std::string out{s};
  for (auto& c : out)
    c = ascii_lower(c);
  return out;
}

/// ASCII case-insensitive equality (header names, keywords).
constexpr bool iequals(std::string_view x, std::string_view y) {
  if (x.size() != y.size())
    return false;
  for (size_t i = 0; i < x.size(); ++i)
    if (ascii_lower(x[i]) != ascii_lower(y[i]))
      return false;
  return true;
}

/// The value (0 to 15) of the hex digit `c`, either case; -1 otherwise.
constexpr int hex_value(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  c = ascii_lower(c);
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

} // namespace aloft
