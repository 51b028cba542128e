// Checking an account's credentials against its provider's API, before
// anything is stored (`aloft account add`, `aloft account validate`).
//
// Each provider uses its own cheap validation call (reference:
// ../shared/reference/providers.md): Fly `GET /v1/tokens/current` (and the
// organization must be one the token reaches), Vercel `GET /v2/user`, then
// the team and the project. The local provider accepts anything.
//
// Errors say which kind of failure it was, so the user knows what to fix:
//   unauthenticated     the token is wrong or expired
//   permission_denied   the token is fine but cannot reach the named
//                       organization, team or project
//   not_found           the organization, team or project does not exist
//   unavailable         the API could not be reached (network, 5xx); the
//                       message names the URL
//   resource_exhausted  rate limited (429), with the Retry-After when given
//   invalid_argument    a required secret is missing or empty
// No message ever contains a secret.
#pragma once

#include <string>
#include <vector>

#include <caf/error.hpp>

#include "config/account.hpp"
#include "config/credentials.hpp"

namespace aloft {

/// The secret keys an account of `provider` needs (Fly: {"token"}, Vercel:
/// {"token"}, Modal: {"token_id", "token_secret"}, local: none).
std::vector<std::string> required_secrets(const std::string& provider);

/// Checks `secrets` against the API of `a`'s provider (blocking: call it on
/// a worker thread). `a.options` are already validated, with defaults.
caf::error validate_credentials(const account& a, const secret_map& secrets);

} // namespace aloft
