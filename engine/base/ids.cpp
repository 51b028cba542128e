#include "engine/base/ids.hpp"

#include <random>

namespace aloft {

std::string random_hex(size_t n) {
  static const char digits[] = "0123456789abcdef";
  // Seeded once per thread from the OS's random source; ids need to be
  // unique, not secret.
  thread_local std::mt19937_64 gen{[] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64{seq};
  }()};
  std::string bytes(n, '\0');
  for (auto& b : bytes)
    b = static_cast<char>(gen() & 0xff);
  std::string out;
  out.reserve(2 * n);
  for (unsigned char b : bytes) {
    out += digits[b >> 4];
    out += digits[b & 0xf];
  }
  return out;
}

std::string make_session_id() {
  return "s-" + random_hex(6);
}

std::string make_installation_id() {
  return "i-" + random_hex(8);
}

std::string make_idempotency_key() {
  return "k-" + random_hex(8);
}

bool is_valid_session_id(const std::string& id) {
  if (id.size() < 3 || id.size() > 40 || id.compare(0, 2, "s-") != 0)
    return false;
  for (size_t i = 2; i < id.size(); ++i) {
    char c = id[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
      return false;
  }
  return true;
}

} // namespace aloft
