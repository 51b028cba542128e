// The provider seam: create, find and destroy VMs with one provider account.
//
// Every call is asynchronous: it returns at once and its callback runs later
// on a thread of the provider's choosing (a worker pool, an HTTP loop), never
// on an actor's. Actors turn callbacks into messages.
//
// Contracts every provider keeps:
// - create tags the VM with the installation id, the session id and the
//   idempotency key, so `list` finds it again after a crash;
// - `get` reports `gone` for a VM that does not exist (not an error);
// - `destroy` succeeds only when the provider confirms the VM is gone, and
//   succeeds for a VM already gone;
// - nothing here ever starts, revives or replaces a VM except `create`.
//
// Implementations are thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "engine/vm.hpp"

namespace aloft {

class provider {
public:
  template <class T>
  using callback = std::function<void(caf::expected<T>)>;
  using done_callback = std::function<void(caf::error)>;

  virtual ~provider() = default;

  /// The provider's kind ("local", "fly", ...).
  virtual std::string kind() const = 0;

  /// Whether calls reach a remote API with a budget to spare, so that each
  /// account paces its calls to it; a provider on this machine has none.
  virtual bool remote_api() const { return true; }

  /// Creates a VM for `req`. The result may still be `starting`.
  virtual void create(const vm_request& req, callback<vm_info> done) = 0;

  /// Waits until the VM's SSH server accepts connections (bounded by the
  /// provider's boot timeout). Errors: `deadline_exceeded`, `not_found`.
  virtual void wait_ready(const std::string& vm_id, callback<vm_info> done) = 0;

  /// What became of a VM; status `gone` when it no longer exists.
  virtual void get(const std::string& vm_id, callback<vm_info> done) = 0;

  /// Every VM tagged with `installation_id`.
  virtual void list(const std::string& installation_id,
                    callback<std::vector<vm_info>> done) = 0;

  /// Destroys the VM; succeeds once it is confirmed gone.
  virtual void destroy(const std::string& vm_id, done_callback done) = 0;
};

} // namespace aloft
