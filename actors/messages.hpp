// Types that travel in Aloft's actor messages.
//
// Aloft's actors live in one process and never talk over the network, so
// message types are declared unsafe (not serializable) instead of written
// out with inspectors.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <caf/allowed_unsafe_message_type.hpp>

#include "config/account.hpp"
#include "engine/event.hpp"
#include "engine/session_record.hpp"
#include "engine/vm.hpp"

namespace aloft {

class provider;
using provider_ptr = std::shared_ptr<provider>;

/// Work handed back to an actor from a foreign thread (a store commit, a
/// provider or transport callback): the closure runs inside the actor, so it
/// may touch the actor's state. Dropped with the actor if it is gone.
struct actor_task {
  std::function<void()> fn;
};

using subscriber_fn = std::function<void(const event&)>;

using session_records = std::vector<session_record>;
using vm_infos = std::vector<vm_info>;
using events_list = std::vector<event>;

} // namespace aloft

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(aloft::actor_task)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(aloft::subscriber_fn)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(aloft::session_record)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(aloft::session_records)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(aloft::event)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(aloft::events_list)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(aloft::vm_info)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(aloft::vm_infos)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(aloft::vm_request)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(aloft::account)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(aloft::guards)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(aloft::provider_ptr)

#include "engine/watchdog_policy.hpp"
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(aloft::watchdog_input)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(aloft::watchdog_action)
