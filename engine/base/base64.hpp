#pragma once

// The standard base64 alphabet (RFC 4648, section 4), for the decoders of
// OpenSSH key lines (ssh_transport) and of the Fly emulator's file contents,
// which differ in what else they accept (padding, whitespace).
//
// Concurrency: pure functions.

namespace aloft {

/// The value (0 to 63) of the base64 digit `c`; -1 for any other character,
/// '=' included.
constexpr int base64_value(char c) {
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == '+')
    return 62;
  if (c == '/')
    return 63;
  return -1;
}

} // namespace aloft
