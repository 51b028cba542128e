// Redaction of stored secrets by value.
//
// Every secret Aloft reads from a credential store is registered here, and
// every log line, error message and event passes through `redact` on its way
// out, whichever code path produced it. A registered value is replaced by
// `[redacted]` wherever it appears; where registered values overlap in the
// text, the whole overlapping run becomes one `[redacted]`, so no fragment
// of either is left. Values shorter than 6 characters are not registered
// (they would mangle ordinary text).
//
// Thread-safe: a process-wide registry. Readers take a snapshot of the list
// under a short lock, and skip even that while nothing is registered.
#pragma once

#include <string>
#include <string_view>

namespace aloft {

/// Registers `secret` for redaction (idempotent).
void register_secret(std::string_view secret);

/// Forgets `secret` (when an account is removed).
void forget_secret(std::string_view secret);

/// `text` with every occurrence of a registered secret replaced by
/// `[redacted]`.
std::string redact(std::string_view text);

/// True when no secret is registered in `text`.
bool is_clean(std::string_view text);

} // namespace aloft
