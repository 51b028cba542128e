// The Fly.io provider: VMs are Fly Machines, driven through the Machines API
// (reference: ../shared/reference/providers.md, section 1).
//
// What Aloft asks of Fly, and the conventions its machines follow (the Fly
// emulator in tests/emulators/fly implements the public API; the parts
// below marked "Aloft" are this provider's own choices):
//
// - App (Aloft): one per account and installation, named
//   `<app_prefix>-<installation hex>-<account>` (lowercase, at most 63
//   characters), so it is found again after a restart without storing
//   anything. Created on first use (`POST /v1/apps {name, org_slug}`); a
//   422 `name_taken` means another Fly user owns the name: an error saying
//   to change the account's `app_prefix`.
// - IPs: after the app exists, `GET .../ip_assignments`; a `v6` is
//   allocated if missing, and a dedicated `v4` too in mode `ipv6+ipv4`.
//   SSH goes to the v4 address in that mode, else to the v6 one.
// - Machine (Aloft): `POST /v1/apps/{app}/machines` with `config`:
//     image              the account's `image` option (default below)
//     guest              shared CPUs `cpus` (default 2), `memory_mb` (2048)
//     env                ALOFT_SESSION, ALOFT_HARD_DEADLINE (epoch seconds),
//                        ALOFT_WORKDIR (/root/work; the emulator sets its
//                        sandbox's work dir for the init it runs)
//     metadata           aloft_installation, aloft_session, aloft_key (the
//                        idempotency key), aloft_ssh_port
//     services           one TCP service, internal_port 22, external port
//                        `aloft_ssh_port` (a port of its own per machine, so
//                        the app's IP reaches this machine's sshd), no
//                        handlers (raw TCP)
//     files              /root/.ssh/authorized_keys (the session's client
//                        key), /etc/ssh/ssh_host_ed25519_key and .pub (the
//                        session's host key, pinned by the engine),
//                        /aloft/init.sh (the init below), all base64
//     init.exec          ["/bin/sh", "/aloft/init.sh"]
//     restart.policy     "no";  auto_destroy: true
//   The init starts sshd (unless ALOFT_SKIP_SSHD is set: the emulator runs
//   its own) and exits at the hard deadline, so the machine ends itself
//   (auto_destroy) even when no engine is left to destroy it. The deadline
//   is ALOFT_HARD_DEADLINE, or the newer one the engine writes (extend) to
//   `<workdir>/../aloft/deadline` (agent_deadline_command).
// - Ready: `GET .../machines/{id}/wait?state=started&timeout=60` in a loop
//   (408: keep waiting), bounded by the boot timeout; then sshd must answer
//   on the address and port.
// - Ambiguous create (408, 5xx, connection lost): before another attempt,
//   the machines are listed by `metadata.aloft_key`; one that exists is
//   adopted, so a session never gets two machines.
// - List: `GET .../machines?metadata.aloft_installation=<id>` (filtered
//   again here: the filter may be ignored); an app that does not exist
//   lists nothing.
// - Destroy: `DELETE .../machines/{id}?force=true` (404: already gone),
//   confirmed by `get` reporting it gone or destroyed.
// - Workdir and user: /root/work and root, unless the machine's metadata
//   names others (`aloft_workdir`, `aloft_ssh_user`: only the emulator,
//   whose machines are sandboxes on the host, sets them).
// - Status: created/starting -> starting; started -> running;
//   stopping/stopped/suspended/failed/replaced -> stopped; destroying,
//   destroyed or 404 -> gone.
//
// All calls go through one shared http_loop (curl multi, retries, Fly's
// per-machine rate of 1/s with a burst of 3). Every response is untrusted:
// a body that does not decode, or lacks a field, is an error naming the call
// and the field.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "config/account.hpp"
#include "config/credentials.hpp"
#include "providers/provider.hpp"

namespace aloft {

class executor;
class http_loop;

/// The image machines run when the account names none: Debian with sshd,
/// git and tmux installed by the init on first boot when missing.
inline constexpr const char* fly_default_image = "docker.io/library/debian:bookworm-slim";

struct fly_provider_options {
  std::string api_url;    // the account's api_url (default: the public API)
  std::string token;      // normalized by the provider
  std::string org = "personal";
  std::string app_prefix = "aloft";
  std::string ip_mode = "ipv6"; // or "ipv6+ipv4"
  std::string image = fly_default_image;
  int cpus = 2;
  int memory_mb = 2048;
  std::string account;         // the account's name (part of the app name)
  std::string installation_id; // part of the app name
  std::shared_ptr<http_loop> http;
  /// Runs the blocking probe of a machine's sshd.
  std::shared_ptr<executor> exec;
  /// Bound for a machine to reach `started` and its sshd to answer.
  std::chrono::milliseconds boot_timeout{std::chrono::minutes(5)};
  /// Polling of the sshd port once the machine started.
  std::chrono::milliseconds ssh_poll_interval{500};
  /// Fly's documented limit for mutations, per app (create) and per
  /// machine (delete): 1 per second, burst 3. Emulator runs may raise it.
  double mutation_rate_per_s = 1.0;
  int mutation_burst = 3;
};

/// The options of `account`'s Fly settings with its token.
fly_provider_options fly_options_for(const account& a, const secret_map& secrets);

std::shared_ptr<provider> make_fly_provider(fly_provider_options opts);

/// The app name of an account (see above).
std::string fly_app_name(const std::string& prefix, const std::string& installation_id,
                         const std::string& account);

/// The init script machines run (see above).
std::string fly_init_script();

} // namespace aloft
