#include "engine/base/error.hpp"
#include "engine/base/redact.hpp"

#include <cstring>

#include <caf/atom.hpp>
#include <caf/message.hpp>
#include <caf/sec.hpp>

namespace aloft {

namespace {

constexpr const char* names[] = {
  "ok",        "cancelled",      "unknown",           "invalid_argument",
  "deadline_exceeded", "not_found", "already_exists", "permission_denied",
  "resource_exhausted", "failed_precondition", "aborted", "out_of_range",
  "unimplemented", "internal", "unavailable", "data_loss", "unauthenticated",
};

} // namespace

caf::atom_value error_category() {
  return caf::atom("aloft");
}

caf::error make_error(errc code, std::string message) {
  // Whatever path produced the text, a stored secret never travels on in it.
  if (!is_clean(message))
    message = redact(message);
  return caf::error{static_cast<uint8_t>(code), error_category(),
                    caf::make_message(std::move(message))};
}

caf::error make_error(errc code) {
  return make_error(code, std::string{});
}

errc code_of(const caf::error& err) {
  if (!err)
    return errc::ok;
  if (err.category() != error_category())
    return errc::unknown;
  return static_cast<errc>(err.code());
}

std::string message_of(const caf::error& err) {
  if (!err)
    return {};
  if (err.category() == error_category()) {
    auto& ctx = err.context();
    if (ctx.size() == 1 && ctx.match_element<std::string>(0))
      return ctx.get_as<std::string>(0);
    return {};
  }
  if (err.category() == caf::atom("system"))
    return caf::to_string(static_cast<caf::sec>(err.code()));
  return caf::to_string(err);
}

std::string describe(const caf::error& err) {
  auto msg = message_of(err);
  std::string result = to_string(code_of(err));
  if (!msg.empty()) {
    result += ": ";
    result += msg;
  }
  return result;
}

const char* to_string(errc code) {
  auto i = static_cast<size_t>(code);
  return i < sizeof(names) / sizeof(names[0]) ? names[i] : "unknown";
}

errc errc_from_string(const std::string& name) {
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); ++i)
    if (name == names[i])
      return static_cast<errc>(i);
  return errc::unknown;
}

caf::error annotate(const caf::error& err, const std::string& context) {
  if (!err)
    return err;
  auto msg = message_of(err);
  return make_error(code_of(err), msg.empty() ? context : context + ": " + msg);
}

bool is_retryable(const caf::error& err) {
  auto c = code_of(err);
  return c == errc::unavailable || c == errc::resource_exhausted;
}

caf::error from_errno(int err, const std::string& what) {
  errc code;
  switch (err) {
    case ENOENT: code = errc::not_found; break;
    case EEXIST: code = errc::already_exists; break;
    case EACCES:
    case EPERM: code = errc::permission_denied; break;
    case EINTR:
    case EAGAIN:
    case ECONNREFUSED:
    case ECONNRESET:
    case EPIPE:
    case ETIMEDOUT: code = errc::unavailable; break;
    case ENOSPC:
    case EMFILE:
    case ENFILE:
    case ENOMEM: code = errc::resource_exhausted; break;
    case EINVAL: code = errc::invalid_argument; break;
    default: code = errc::internal; break;
  }
  return make_error(code, what + ": " + std::strerror(err));
}

} // namespace aloft
