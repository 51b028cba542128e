// Redaction of stored secrets by value.
//
// Every secret Aloft reads from a credential store is registered here, and
// every log line, error message and event passes through `redact` on its way
// out, whichever code path produced it. A registered value is replaced by
// `[redacted]` wherever it appears. Thread-safe; values shorter than 6
// characters are not registered (they would mangle ordinary text).
#pragma once

#include <string>
#include <string_view>

namespace aloft {

/// Registers `secret` for redaction (idempotent).
void register_secret(std::string_view secret);

/// Forgets `secret` (when an account is removed).
void forget_secret(std::string_view secret);

/// `text` with every registered secret replaced by `[redacted]`.
std::string redact(std::string_view text);

/// True when no secret is registered in `text`.
bool is_clean(std::string_view text);

} // namespace aloft
