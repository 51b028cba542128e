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

namespace aloft {

enum class vm_status : uint8_t { starting, running, stopped, gone };

const char* to_string(vm_status s);

struct vm_request {
  std::string installation_id;
  std::string session_id;
  std::string idempotency_key;
  std::string client_public_key; // authorized_keys line for the session
  std::string host_private_key;  // OpenSSH private key the VM's sshd uses
  std::string host_public_key;
  int64_t hard_deadline_ms = 0;  // for native TTLs and in-VM guards
};

struct vm_info {
  std::string vm_id;
  vm_status status = vm_status::gone;
  std::string host;
  uint16_t port = 0;
  std::string user;
  std::string workdir; // where the agent's worktree lives on the VM
  // Tags read back from the provider.
  std::string installation_id;
  std::string session_id;
  std::string idempotency_key;
};

class provider {
public:
  template <class T>
  using callback = std::function<void(caf::expected<T>)>;
  using done_callback = std::function<void(caf::error)>;

  virtual ~provider() = default;

  /// The provider's kind ("local", "fly", ...).
  virtual std::string kind() const = 0;

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
