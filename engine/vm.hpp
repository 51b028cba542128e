// VM vocabulary shared by providers, policies and actors: what is asked of a
// provider and what it reports back. Plain values.
#pragma once

#include <cstdint>
#include <string>

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

} // namespace aloft
