#include "providers/validate.hpp"

#include <algorithm>

#include "engine/base/error.hpp"
#include "engine/base/json.hpp"
#include "providers/fly/fly_auth.hpp"
#include "providers/http/http_client.hpp"

namespace aloft {

namespace {

constexpr const char* vercel_default_api_url = "https://vercel.com/api";

/// Slugs listed in a permission error before "and N more".
constexpr size_t max_listed_orgs = 10;

std::string option_or(const account& a, const std::string& key, std::string fallback) {
  auto i = a.options.find(key);
  return i == a.options.end() || i->second.empty() ? fallback : i->second;
}

std::string without_trailing_slashes(std::string url) {
  while (!url.empty() && url.back() == '/')
    url.pop_back();
  return url;
}

std::string trimmed(const std::string& s) {
  auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string::npos)
    return {};
  auto last = s.find_last_not_of(" \t\r\n");
  return s.substr(first, last - first + 1);
}

/// The secret `key` of `secrets`, trimmed. The error names the key, never
/// a value.
caf::expected<std::string> required_secret(const account& a, const secret_map& secrets,
                                           const std::string& key) {
  auto i = secrets.find(key);
  auto where = "account '" + a.name + "' (" + a.provider + ")";
  if (i == secrets.end())
    return make_error(errc::invalid_argument,
                      where + ": the secret '" + key + "' is missing");
  auto value = trimmed(i->second);
  if (value.empty())
    return make_error(errc::invalid_argument,
                      where + ": the secret '" + key + "' is empty");
  return value;
}

/// `err` with every occurrence of a secret value replaced, so that no
/// message can carry one, whatever a provider echoed back.
caf::error without_secrets(const caf::error& err, const secret_map& secrets,
                           const std::vector<std::string>& extra) {
  if (!err || err.category() != error_category())
    return err;
  auto msg = message_of(err);
  auto scrub = [&](const std::string& secret) {
    // Very short values would mangle ordinary words; real tokens are long.
    if (secret.size() < 6)
      return;
    for (auto at = msg.find(secret); at != std::string::npos; at = msg.find(secret, at))
      msg.replace(at, secret.size(), "[redacted]");
  };
  for (auto& [key, value] : secrets) {
    scrub(value);
    scrub(trimmed(value));
  }
  for (auto& value : extra)
    scrub(value);
  return make_error(code_of(err), std::move(msg));
}

http_request get(const std::string& url, const std::string& authorization) {
  http_request req;
  req.method = "GET";
  req.url = url;
  req.headers = {{"Authorization", authorization}, {"Accept", "application/json"}};
  return req;
}

/// A transport failure of a validation call: unavailable naming the URL
/// (a GET may simply be tried again, even after a timeout).
caf::error unreachable(const caf::error& err, const std::string& api) {
  auto code = code_of(err);
  if (code == errc::unavailable || code == errc::deadline_exceeded)
    return make_error(errc::unavailable,
                      "could not reach the " + api + " at " + message_of(err));
  return annotate(err, "the " + api);
}

std::string status_and_text(const http_response& resp) {
  auto said = provider_error_text(resp.body);
  return std::to_string(resp.status) + (said.empty() ? "" : ": " + said);
}

std::string other_status_context(const std::string& api, const std::string& url) {
  return "the " + api + " at " + url_for_messages(url);
}

// -- Fly --------------------------------------------------------------------

constexpr const char* fly_api = "Fly API";

caf::error fly_refused(const http_response& resp) {
  return make_error(errc::unauthenticated,
                    "the Fly token was refused (" + status_and_text(resp)
                        + "): check it, or create one with `fly tokens create org`");
}

/// The organization slugs the token entries of `GET /v1/tokens/current`
/// name, and whether every entry names one (a token entry without an
/// organization, such as a user token's, may reach any of the user's).
struct fly_token_orgs {
  std::vector<std::string> slugs;
  bool every_entry_names_one = false;
};

fly_token_orgs fly_orgs_of(const json& body) {
  fly_token_orgs result;
  auto* tokens = body.find("tokens");
  if (tokens == nullptr || !tokens->is_array() || tokens->size() == 0)
    return result;
  result.every_entry_names_one = true;
  for (auto& entry : tokens->items()) {
    std::string slug = entry.get_string("org_slug");
    if (slug.empty())
      if (auto* org = entry.find("organization"); org != nullptr && org->is_object())
        slug = org->get_string("slug");
    if (slug.empty()) {
      result.every_entry_names_one = false;
      continue;
    }
    if (std::find(result.slugs.begin(), result.slugs.end(), slug) == result.slugs.end())
      result.slugs.push_back(std::move(slug));
  }
  return result;
}

std::string listed(const std::vector<std::string>& slugs) {
  std::string out;
  for (size_t i = 0; i < slugs.size() && i < max_listed_orgs; ++i) {
    if (i > 0)
      out += ", ";
    out += sanitize_provider_text(slugs[i], 60);
  }
  if (slugs.size() > max_listed_orgs)
    out += " and " + std::to_string(slugs.size() - max_listed_orgs) + " more";
  return out;
}

/// Whether the token reaches `org`, by listing the organization's apps.
caf::error check_fly_org_by_apps(const std::string& api_url, const std::string& auth,
                                 const std::string& org) {
  auto url = api_url + "/v1/apps?org_slug=" + url_encode(org);
  auto resp = http_call(get(url, auth));
  if (!resp)
    return unreachable(resp.error(), fly_api);
  switch (resp->status) {
  case 200:
    return {};
  case 401:
    return fly_refused(*resp);
  case 403:
    return make_error(errc::permission_denied, "the token cannot reach organization '"
                                                   + org + "' (" + status_and_text(*resp)
                                                   + ")");
  case 404:
    return make_error(errc::not_found, "organization '" + org
                                           + "' was not found, or the token cannot "
                                             "reach it ("
                                           + status_and_text(*resp) + ")");
  default:
    return error_from_status(*resp, other_status_context(fly_api, url));
  }
}

caf::error validate_fly(const account& a, const secret_map& secrets) {
  auto secret = required_secret(a, secrets, "token");
  if (!secret)
    return secret.error();
  auto token = normalize_fly_token(*secret);
  if (token.empty())
    return make_error(errc::invalid_argument, "account '" + a.name
                                                  + "' (fly): the secret 'token' holds "
                                                    "only an authorization scheme");
  auto api_url = without_trailing_slashes(option_or(a, "api_url", fly_default_api_url));
  auto org = option_or(a, "org", "personal");
  auto auth = fly_authorization(token);
  auto url = api_url + "/v1/tokens/current";
  auto resp = http_call(get(url, auth));
  if (!resp)
    return unreachable(resp.error(), fly_api);
  switch (resp->status) {
  case 200:
    break;
  case 401:
    return fly_refused(*resp);
  case 403:
  case 404:
    // An API (or emulator) without the endpoint, or a token not allowed
    // to describe itself: ask about the organization directly.
    return check_fly_org_by_apps(api_url, auth, org);
  default:
    return error_from_status(*resp, other_status_context(fly_api, url));
  }
  auto body = json::parse(resp->body);
  if (!body)
    return check_fly_org_by_apps(api_url, auth, org);
  auto orgs = fly_orgs_of(*body);
  if (std::find(orgs.slugs.begin(), orgs.slugs.end(), org) != orgs.slugs.end())
    return {};
  if (orgs.every_entry_names_one)
    return make_error(errc::permission_denied,
                      "the token cannot reach organization '" + org
                          + "' (it reaches: " + listed(orgs.slugs) + ")");
  return check_fly_org_by_apps(api_url, auth, org);
}

// -- Vercel -----------------------------------------------------------------

constexpr const char* vercel_api = "Vercel API";

caf::error validate_vercel(const account& a, const secret_map& secrets) {
  auto secret = required_secret(a, secrets, "token");
  if (!secret)
    return secret.error();
  // Accept a pasted "Bearer <token>" as well.
  auto token = *secret;
  if (token.size() > 7
      && (token.compare(0, 7, "Bearer ") == 0 || token.compare(0, 7, "bearer ") == 0))
    token = trimmed(token.substr(7));
  auto api_url =
      without_trailing_slashes(option_or(a, "api_url", vercel_default_api_url));
  auto team = option_or(a, "team", "");
  auto project = option_or(a, "project", "");
  auto auth = "Bearer " + token;

  auto url = api_url + "/v2/user";
  auto resp = http_call(get(url, auth));
  if (!resp)
    return unreachable(resp.error(), vercel_api);
  if (resp->status == 401 || resp->status == 403)
    return make_error(errc::unauthenticated, "the Vercel token was refused ("
                                                 + status_and_text(*resp)
                                                 + "): check it, or create one at "
                                                   "https://vercel.com/account/tokens");
  if (auto err = error_from_status(*resp, other_status_context(vercel_api, url)))
    return err;

  if (!team.empty()) {
    url = api_url + "/v2/teams/" + url_encode(team);
    resp = http_call(get(url, auth));
    if (!resp)
      return unreachable(resp.error(), vercel_api);
    if (resp->status == 401 || resp->status == 403)
      return make_error(errc::permission_denied, "the token cannot reach Vercel team '"
                                                     + team + "' ("
                                                     + status_and_text(*resp) + ")");
    if (resp->status == 404)
      return make_error(errc::not_found, "Vercel team '" + team + "' was not found ("
                                             + status_and_text(*resp)
                                             + "): check the account's `team` option");
    if (auto err = error_from_status(*resp, other_status_context(vercel_api, url)))
      return err;
  }

  if (!project.empty()) {
    url = api_url + "/v2/projects/" + url_encode(project);
    if (!team.empty())
      url += "?teamId=" + url_encode(team);
    auto scope =
        team.empty() ? std::string{"the token's personal scope"} : "team '" + team + "'";
    resp = http_call(get(url, auth));
    if (!resp)
      return unreachable(resp.error(), vercel_api);
    if (resp->status == 401 || resp->status == 403)
      return make_error(errc::permission_denied, "the token cannot reach Vercel project '"
                                                     + project + "' in " + scope + " ("
                                                     + status_and_text(*resp) + ")");
    if (resp->status == 404)
      return make_error(errc::not_found, "Vercel project '" + project
                                             + "' was not found in " + scope + " ("
                                             + status_and_text(*resp)
                                             + "): check the account's `project` option");
    if (auto err = error_from_status(*resp, other_status_context(vercel_api, url)))
      return err;
  }
  return {};
}

// -- Modal ------------------------------------------------------------------

caf::error validate_modal(const account& a, const secret_map& secrets) {
  for (auto& key : required_secrets("modal"))
    if (auto value = required_secret(a, secrets, key); !value)
      return value.error();
  return make_error(errc::unimplemented, "validating Modal credentials needs the Modal "
                                         "provider, which this build does not have yet");
}

} // namespace

std::vector<std::string> required_secrets(const std::string& provider) {
  if (provider == "fly" || provider == "vercel")
    return {"token"};
  if (provider == "modal")
    return {"token_id", "token_secret"};
  return {};
}

caf::error validate_credentials(const account& a, const secret_map& secrets) {
  // The token as sent (without a scheme) and each of its comma-joined
  // parts, in case a provider echoes only one of them.
  std::vector<std::string> derived;
  if (auto i = secrets.find("token"); i != secrets.end()) {
    auto token = normalize_fly_token(i->second);
    for (size_t start = 0; start <= token.size();) {
      auto comma = std::min(token.find(',', start), token.size());
      derived.push_back(trimmed(token.substr(start, comma - start)));
      start = comma + 1;
    }
    derived.push_back(std::move(token));
  }
  caf::error err;
  if (a.provider == "local") {
    return {};
  } else if (a.provider == "fly") {
    err = validate_fly(a, secrets);
  } else if (a.provider == "vercel") {
    err = validate_vercel(a, secrets);
  } else if (a.provider == "modal") {
    err = validate_modal(a, secrets);
  } else {
    err =
        make_error(errc::invalid_argument, "account '" + a.name + "': unknown provider '"
                                               + sanitize_provider_text(a.provider, 40)
                                               + "' (known: local, fly, vercel, modal)");
  }
  return without_secrets(err, secrets, derived);
}

} // namespace aloft
