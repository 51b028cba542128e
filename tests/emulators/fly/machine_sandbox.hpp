// What backs one emulated Fly machine while it runs: a local-provider
// sandbox (its own sshd on loopback), the machine's `config.files` written
// under `<sandbox>/fs/<guest_path>`, and its init process.
//
// Why: the emulator's machines must be reachable over real SSH with the key
// and the pinned host key the client injected, exactly as on Fly, without
// containers or root.
//
// The sandbox is made by the local provider (see
// providers/local/local_provider.hpp) from a vm_request whose client key is
// the file `/root/.ssh/authorized_keys`, whose host key is the file
// `/etc/ssh/ssh_host_ed25519_key` (and `.pub`), and whose tags come from
// `config.metadata` (aloft_installation, aloft_session). The idempotency
// key is the machine's id, not `aloft_key`: two Fly machines may carry the
// same key (a retried create), and the local provider would hand both the
// same sandbox.
//
// Concurrency: `machine_sandboxes` is thread-safe; `launch` and `teardown`
// block (sshd start, process stop) and run on the emulator's workers.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "engine/base/json.hpp"

namespace aloft {
class provider;
}

namespace aloft::test {

/// One entry of `config.files`, decoded.
struct machine_file {
  std::string guest_path;
  std::string content;
  int mode = 0600;
};

/// What a machine's sandbox is made from: read from its config.
struct sandbox_spec {
  std::string machine_id;
  std::string installation_id;
  std::string session_id;
  std::vector<machine_file> files;
  /// `config.init.exec`; empty: no init (the machine runs until stopped).
  std::vector<std::string> init_argv;
  /// `config.env`, in order.
  std::vector<std::pair<std::string, std::string>> env;
};

/// Reads the sandbox spec from a machine's `config`. Errors
/// (`invalid_argument`, naming the field): files without an absolute
/// `guest_path` (or with `..` in it), `raw_value` that is not base64,
/// an `init.exec` that is not a non-empty list of strings, env values that
/// are not strings.
caf::expected<sandbox_spec> sandbox_spec_from_config(const std::string& machine_id,
                                                     const json& config);

/// A running sandbox.
struct sandbox_run {
  std::string vm_id;
  std::string dir;     // the sandbox directory
  std::string workdir; // its work dir (the local provider's vm_info::workdir)
  std::string user;    // the only user its sshd lets in
  uint16_t sshd_port = 0;
  pid_t init_pid = -1; // -1 without init
};

/// `base64` decoded (standard alphabet, padding optional, whitespace
/// ignored); false when it is not base64.
bool base64_decode(const std::string& in, std::string& out);

class machine_sandboxes {
public:
  /// Sandboxes live in `sandboxes_dir` (absolute); `sshd_path` is the
  /// OpenSSH server.
  machine_sandboxes(std::string sandboxes_dir, std::string sshd_path,
                    std::chrono::milliseconds boot_timeout);
  ~machine_sandboxes();

  /// Creates the sandbox, waits until its sshd answers, writes the files
  /// and starts the init (its own session; stdout and stderr to
  /// `<sandbox>/init.log`; cwd `<sandbox>/fs`; environment: `spec.env`,
  /// then PATH and HOME unless given, ALOFT_SKIP_SSHD=1, ALOFT_WORKDIR=
  /// the sandbox's work dir, ALOFT_SANDBOX=the sandbox dir). Argv items
  /// equal to a file's guest path are replaced by the file's path in the
  /// sandbox. On error nothing is left behind. The caller reaps the init.
  caf::expected<sandbox_run> launch(const sandbox_spec& spec);

  /// Sends `signal` to the init's process group and waits up to `grace`
  /// for the init to be reaped (by the caller's waiter: `init_reaped`
  /// says), then destroys the sandbox (the local provider stops whatever
  /// is left). Succeeds once the sandbox is gone.
  caf::error teardown(const sandbox_run& run, int signal, std::chrono::milliseconds grace,
                      const std::function<bool()>& init_reaped);

private:
  caf::error ensure_default_keys();

  std::string dir_;
  std::shared_ptr<provider> local_;
  std::mutex keys_mtx_;
  std::string default_host_private_;
  std::string default_host_public_;
};

} // namespace aloft::test
