// Identifiers: session ids, idempotency keys, installation ids.
//
// Ids are short lowercase strings with a kind prefix ("s-3f9a0c1d2e4b") so
// that they read well in a terminal and in provider tags. They come from the
// OS's random source. Thread-safe.
#pragma once

#include <string>

namespace aloft {

/// Returns `n` random bytes as lowercase hex (2n characters).
std::string random_hex(size_t n);

/// A new session id, "s-" followed by 12 hex digits.
std::string make_session_id();

/// A new installation id, "i-" followed by 16 hex digits.
std::string make_installation_id();

/// A new idempotency key for a provider create call.
std::string make_idempotency_key();

/// Whether `id` looks like a session id (prefix and hex digits only). Used to
/// reject ids from the socket before they reach a path or a key.
bool is_valid_session_id(const std::string& id);

} // namespace aloft
