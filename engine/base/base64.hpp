#pragma once

// The standard base64 alphabet (RFC 4648, section 4): one encoder, and the
// digit values for the decoders of OpenSSH key lines (ssh_transport) and of
// the Fly emulator's file contents, which differ in what else they accept
// (padding, whitespace).
//
// Concurrency: pure functions.

#include <cstdint>
#include <string>
#include <string_view>

namespace aloft {

/// `in` in base64, padded with '=' to a multiple of 4 unless `pad` is false
/// (OpenSSH prints fingerprints unpadded).
inline std::string base64_encode(std::string_view in, bool pad = true) {
  static const char digits[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : in) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out.push_back(digits[(acc >> bits) & 0x3f]);
    }
  }
  if (bits > 0)
    out.push_back(digits[(acc << (6 - bits)) & 0x3f]);
  while (pad && out.size() % 4 != 0)
    out.push_back('=');
  return out;
}

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
