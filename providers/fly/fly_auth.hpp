// How Aloft presents a Fly.io token to the Machines API.
//
// Fly tokens come in two families (fly-go `tokens.Parse`): macaroons
// (`fm1r_`, `fm1a_`, `fm2_`; what `fly tokens create ...` prints, already
// prefixed `FlyV1 ` and possibly several joined by commas) go out as
// `Authorization: FlyV1 <tokens>`; anything else (notably `fo1_` user
// tokens) as `Authorization: Bearer <token>`.
//
// Pure functions; thread-safe.
#pragma once

#include <string>
#include <string_view>

namespace aloft {

/// The public Machines API (every path below it starts with `/v1`).
inline constexpr const char* fly_default_api_url = "https://api.machines.dev";

/// `token` trimmed, without a leading `Bearer ` or `FlyV1 ` scheme (in any
/// case), as a user may paste it. Empty when nothing is left.
std::string normalize_fly_token(std::string_view token);

/// Whether a normalized token is (or, comma-joined, contains) a macaroon.
bool is_fly_macaroon(std::string_view token);

/// The value of the Authorization header for a normalized token:
/// "FlyV1 <token>" for macaroons, else "Bearer <token>".
std::string fly_authorization(std::string_view token);

} // namespace aloft
