#include "engine/app/api.hpp"

#include "engine/base/error.hpp"

namespace aloft {

caf::expected<sync_status> engine::sync_state(const std::string& id) {
  return make_error(errc::unimplemented, "this engine cannot compare sync state of " + id);
}

} // namespace aloft
