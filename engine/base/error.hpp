// The project's one error vocabulary.
//
// Every failure in Aloft is a `caf::error` whose category is `aloft` and whose
// code is an `errc`. The codes follow abseil's meanings so that a caller can
// decide what to do without parsing text:
//   unavailable       - transient; retry this call with backoff
//   aborted           - a conflict; retry the whole step
//   deadline_exceeded - the outcome is unknown; look before retrying
//   failed_precondition, invalid_argument, not_found, ... - do not retry
// Foreign errors (libssh2, RocksDB, errno, HTTP) are converted in exactly one
// function next to their seam; each layer prepends context with `annotate`.
//
// Thread-safe: everything here is a pure function.
#pragma once

#include <cstdint>
#include <string>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace aloft {

enum class errc : uint8_t {
  ok = 0,
  cancelled,
  unknown,
  invalid_argument,
  deadline_exceeded,
  not_found,
  already_exists,
  permission_denied,
  resource_exhausted,
  failed_precondition,
  aborted,
  out_of_range,
  unimplemented,
  internal,
  unavailable,
  data_loss,
  unauthenticated,
};

/// The category atom of every Aloft error.
caf::atom_value error_category();

/// Makes an error with `code` and a human-readable `message`.
caf::error make_error(errc code, std::string message);
caf::error make_error(errc code);

/// Returns the Aloft code of `err`; errors of other categories map to
/// `unknown`, a default-constructed (empty) error to `ok`.
errc code_of(const caf::error& err);

/// Returns the message carried by `err` (without the code), or a rendering of
/// a foreign error.
std::string message_of(const caf::error& err);

/// Returns "code: message", for logs and replies.
std::string describe(const caf::error& err);

/// Returns the name of `code` ("unavailable").
const char* to_string(errc code);

/// Parses a code name; returns `unknown` for names it does not know.
errc errc_from_string(const std::string& name);

/// Returns a copy of `err` whose message is prefixed with `context: `.
caf::error annotate(const caf::error& err, const std::string& context);

/// Whether retrying the same call later may succeed (unavailable,
/// resource_exhausted).
bool is_retryable(const caf::error& err);

/// Converts an errno value into an error, with `what` naming the operation.
caf::error from_errno(int err, const std::string& what);

/// Marks a deliberately ignored error; searchable and explicit.
inline void ignore_error(const caf::error&) {}

} // namespace aloft
