#include "config/account.hpp"

#include "engine/base/error.hpp"

namespace aloft {

bool operator==(const aloft::guards& x, const aloft::guards& y) {
  return x.auto_destroy_on_idle == y.auto_destroy_on_idle
         && x.idle_timeout_s == y.idle_timeout_s && x.hard_timeout_s == y.hard_timeout_s
         && x.hard_warning_s == y.hard_warning_s;
}

bool operator==(const account& x, const account& y) {
  return x.name == y.name && x.provider == y.provider && x.enabled == y.enabled
         && x.options == y.options && x.guards == y.guards
         && x.max_concurrent_vms == y.max_concurrent_vms;
}

account default_local_account() {
  account a;
  a.name = "local";
  a.provider = "local";
  return a;
}

json to_json(const aloft::guards& g) {
  auto j = json::object();
  j.set("auto_destroy_on_idle", g.auto_destroy_on_idle);
  j.set("idle_timeout_s", g.idle_timeout_s);
  j.set("hard_timeout_s", g.hard_timeout_s);
  j.set("hard_warning_s", g.hard_warning_s);
  return j;
}

json to_json(const account& a) {
  auto j = json::object();
  j.set("name", a.name);
  j.set("provider", a.provider);
  j.set("enabled", a.enabled);
  auto opts = json::object();
  for (auto& [k, v] : a.options)
    opts.set(k, v);
  j.set("options", std::move(opts));
  j.set("guards", to_json(a.guards));
  j.set("max_concurrent_vms", a.max_concurrent_vms);
  return j;
}

caf::expected<account> account_from_json(const json& j) {
  if (!j.is_object())
    return make_error(errc::invalid_argument, "account: expected an object");
  account a;
  a.name = j.get_string("name");
  a.provider = j.get_string("provider");
  if (a.name.empty() || a.provider.empty())
    return make_error(errc::invalid_argument, "account: name and provider are required");
  a.enabled = j.get_bool("enabled", true);
  if (auto opts = j.find("options"); opts && opts->is_object())
    for (size_t i = 0; i < opts->keys().size(); ++i)
      a.options[opts->keys()[i]] = opts->items()[i].as_string();
  if (auto g = j.find("guards"); g && g->is_object()) {
    a.guards.auto_destroy_on_idle = g->get_bool("auto_destroy_on_idle", true);
    a.guards.idle_timeout_s = g->get_int("idle_timeout_s", 800);
    a.guards.hard_timeout_s = g->get_int("hard_timeout_s", 8 * 3600);
    a.guards.hard_warning_s = g->get_int("hard_warning_s", 600);
  }
  a.max_concurrent_vms = static_cast<int>(j.get_int("max_concurrent_vms", 10));
  return a;
}

} // namespace aloft
