#include "engine/app/api.hpp"

#include "engine/base/error.hpp"

namespace aloft {

caf::expected<sync_status> engine::sync_state(const std::string& id) {
  return make_error(errc::unimplemented, "this engine cannot compare sync state of " + id);
}

namespace {

caf::error no_accounts() {
  return make_error(errc::unimplemented, "this engine does not manage accounts");
}

} // namespace

std::vector<account_view> engine::accounts() {
  return {};
}

caf::expected<account_view> engine::add_account(const account&, const secret_map&) {
  return no_accounts();
}

caf::error engine::validate_account(const std::string&) {
  return no_accounts();
}

caf::expected<account_view> engine::set_account(const std::string&, const std::string&,
                                                const std::string&, bool, size_t*) {
  return no_accounts();
}

caf::error engine::enable_account(const std::string&, bool) {
  return no_accounts();
}

caf::error engine::set_account_secret(const std::string&, const std::string&,
                                      const std::string&) {
  return no_accounts();
}

caf::error engine::set_default_account(const std::string&) {
  return no_accounts();
}

caf::error engine::remove_account(const std::string&, bool) {
  return no_accounts();
}

reload_report engine::reload() {
  reload_report r;
  r.problems.push_back("this engine does not read settings");
  return r;
}

} // namespace aloft
