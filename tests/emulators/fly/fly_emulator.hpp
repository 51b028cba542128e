// A local emulator of the Fly.io Machines API, for testing the Fly provider
// (and the whole engine on it) without a Fly account or the network.
//
// Why: the provider's contract with Fly (apps, IPs, machines, waits, the
// errors and ambiguities of a real cloud API) is tested against real state
// over a real socket, and the machines it makes are reachable over real SSH:
// each running machine is backed by a local-provider sandbox with its own
// sshd (see machine_sandbox.hpp). Facts emulated are those of
// shared/reference/providers.md, section 1.
//
// HTTP/1.1 on 127.0.0.1 (tests/support/http_server.hpp), everything under
// /v1, `Authorization: Bearer <token>` or `FlyV1 <token>[,<token>...]`
// required (401 `{"error"}` otherwise), a `fly-request-id` on every answer.
//
//   GET    /v1/tokens/current                      {"tokens":[{org_slug,...}]}
//   POST   /v1/apps {name, org_slug}                201 app; 422 name_taken;
//                                                   404 unknown org
//   GET    /v1/apps/{app}                           app; 404; 403 for a name
//                                                   another user holds
//   GET    /v1/apps?org_slug=                       {total_apps, apps}
//   DELETE /v1/apps/{app}[?force=true]              202; 409 while it has
//                                                   live machines unless force
//   GET    /v1/apps/{app}/ip_assignments            {ips:[{ip,region,...}]}
//   POST   /v1/apps/{app}/ip_assignments {type}     200 {ip,...}; type v6
//                                                   (::1), v4 (127.0.0.1),
//                                                   shared_v4 (127.0.0.2),
//                                                   private_v6 (fdaa:0:1::2)
//   DELETE /v1/apps/{app}/ip_assignments/{ip}       200; 404
//   POST   /v1/apps/{app}/machines                  200 machine (created);
//                                                   400 without config.image
//   GET    /v1/apps/{app}/machines                  bare array; filters state,
//                                                   region, include_deleted,
//                                                   summary, metadata.<k>=<v>
//   GET    /v1/apps/{app}/machines/{id}             machine; 404
//   POST   .../machines/{id}/stop {signal?,timeout?}  {ok:true}
//   POST   .../machines/{id}/start                  {previous_state,...}; 412
//                                                   when not stopped
//   DELETE .../machines/{id}[?force=true|kill=true]  {ok:true}; 412 for a
//                                                   live machine without force
//   GET    .../machines/{id}/wait?state=&timeout=   200 {ok,state}; 408 on
//                                                   expiry; 400 bad params;
//                                                   404 destroyed machine
//
// Machine states, driven by the emulator's timer thread and workers, never
// by requests:
//
//   created --> starting --(boot delay, sandbox sshd ready)--> started
//      |  (skip_launch)                                           |
//      +--> start ---------^          stop, or the init exits ----+
//                                              v
//   stopped <-- stopping <---------------------+
//      |  (auto_destroy, or delete)                 delete (force when live)
//      +--> destroying --> destroyed --(retention)--> forgotten (404)
//
// A launch that fails (sshd does not start) leaves the machine `failed`.
//
// Conventions of the emulated machines (what the provider may rely on):
// - `config.files` are written under `<sandbox>/fs/<guest_path>`; the
//   sandbox's sshd takes its client key from /root/.ssh/authorized_keys and
//   its host key from /etc/ssh/ssh_host_ed25519_key.
// - `config.init.exec` runs as the machine's main process on the host (as
//   the emulator's user), argv items equal to a file's guest_path replaced
//   by that file's path, env = config.env plus ALOFT_SKIP_SSHD=1 (the
//   emulator provides sshd), ALOFT_WORKDIR (the sandbox's work dir) and
//   ALOFT_SANDBOX. When it exits, the machine stops (and with
//   `auto_destroy`, is destroyed). Only `exec` is run, not `cmd` or
//   `entrypoint`, and `restart.policy` is taken as "no".
// - Workdir: real machines use /root/work; the emulator cannot. When a
//   machine starts, the emulator sets `config.metadata.aloft_workdir` to
//   the sandbox's work dir and `config.metadata.aloft_ssh_user` to the only
//   user its sshd lets in (the emulator's user). A provider uses
//   `aloft_workdir` when present, else /root/work, and `aloft_ssh_user`
//   when present, else root. Nothing else in the config is rewritten.
// - `stop` sends its signal (default SIGINT, or config.stop_config) to the
//   init's process group and waits its timeout for it; then the sandbox is
//   destroyed (what is left is killed). A stopped machine has no sandbox;
//   `start` makes a fresh one (a clean root file system, as on Fly).
// - Deleting a destroyed machine answers 404; unknown paths 404 (other
//   Machines API calls are not emulated), a known path with another
//   method 405.
// - Services: for each TCP service with internal_port 22, the Fly proxy's
//   stand-in (tcp_forwarder.hpp) listens on the external port (ports[].port)
//   on 127.0.0.1 and [::1] from create until destroy, and relays a
//   connection to the sandbox's sshd while the machine is started and the
//   app has an IP of that family: [::1] needs a `v6`, 127.0.0.1 a dedicated
//   `v4` (a shared_v4 never routes raw TCP: its address is 127.0.0.2, where
//   nothing listens). A port taken on the host fails the create with 422
//   (every machine shares the host's loopback, unlike on Fly where each app
//   has its own IPs).
//
// Faults (fly_faults.hpp), on demand through the methods below or the
// program's flags:
//   429 with Retry-After, 5xx, any status: `inject` (a kind::status rule)
//   a 408 on create that still creates: `inject_create_timeout`
//   insufficient capacity on create: 412 {"error", "status":
//     "insufficient_capacity"} (Fly documents no code; clients must key off
//     the body's status): `inject_insufficient_capacity`
//   connection resets (before or after the effect), malformed JSON bodies
//   slow boots: `set_boot_delay`; machines stuck in `starting`:
//     `stick_next_launches`
//   token expiry: 401 after N more calls: `expire_token_after`
//   an empty machine list while machines exist: `empty_next_lists`
//   a random fault rate with a seed: 503, 429 (Retry-After 1) or a reset
//   Fly's rate limits (opt-in): 1 req/s burst 3 per machine (or app) and
//     action; get, list and wait 5 req/s burst 10 -> 429 Retry-After 1
// Counters: calls per operation, faults injected per kind (`stats`).
// The program `fly-emulator` (main.cpp) takes the same as flags
// (fly_emulator_flags.hpp).
//
// Concurrency: thread-safe. Handlers run on the HTTP server's connection
// threads (a wait holds its thread up to its timeout); state changes happen
// under one lock; blocking work (sandboxes, processes, the proxy's
// listeners' shutdown) runs on a worker pool, one job at a time per
// machine. The destructor stops serving, then destroys every sandbox.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tests/emulators/fly/fly_faults.hpp"

namespace aloft::test {

struct fly_emulator_options {
  /// The one token accepted (without its scheme).
  std::string token = "fly-emulator-token";
  /// The org the token belongs to; the only org apps can be made in.
  std::string org = "personal";
  /// The region of machines that name none.
  std::string region = "iad";
  /// 0: ephemeral.
  uint16_t port = 0;
  /// Absolute; sandboxes are made here (created if missing).
  std::string sandboxes_dir;
  std::string sshd_path = "/usr/sbin/sshd";
  /// From `starting` to `started`, at least (the sandbox must be ready too).
  std::chrono::milliseconds boot_delay{200};
  /// Bound for a sandbox's sshd to answer; past it the machine is `failed`.
  std::chrono::milliseconds sandbox_boot_timeout{10000};
  /// How long a destroyed machine is still returned by get and by list with
  /// include_deleted.
  std::chrono::milliseconds destroyed_retention{std::chrono::minutes(5)};
  /// What one second of a wait's `timeout` lasts (tests shorten it, so a
  /// `timeout=1` expires in tens of ms).
  std::chrono::milliseconds wait_second{1000};
  /// Emulate Fly's rate limits (see above).
  bool rate_limit = false;
  /// Random faults: probability per call, and the generator's seed.
  double fault_rate = 0;
  uint64_t seed = 1;
  /// Called with one line per request ("GET /v1/apps/x -> 404"), on the
  /// connection's thread; unset: silent.
  std::function<void(const std::string&)> log;
  /// Worker threads for sandboxes.
  size_t workers = 4;
};

struct fly_emulator_stats {
  /// Calls per operation (see fly_ops()), faulted ones included.
  std::map<std::string, int> calls;
  /// Faults injected, per description ("machines_create 408 after effect",
  /// "any reset", "token_expired", "empty_list", "rate_limited",
  /// "stuck_starting", "random ...").
  std::map<std::string, int> faults;
  int faults_total = 0;
};

class fly_emulator {
public:
  /// Starts serving at once. When the port cannot be bound (or the options
  /// are unusable), `ok()` is false and `error()` says why.
  explicit fly_emulator(fly_emulator_options opts);
  /// Stops serving, then destroys every machine's sandbox and waits for it.
  ~fly_emulator();

  fly_emulator(const fly_emulator&) = delete;
  fly_emulator& operator=(const fly_emulator&) = delete;

  bool ok() const;
  const std::string& error() const;
  uint16_t port() const;
  /// "http://127.0.0.1:<port>" (the API is below it, at /v1).
  std::string base_url() const;

  // -- faults ------------------------------------------------------------

  /// Adds a fault rule (see fly_fault).
  void inject(fly_fault f);
  /// The next `n` creates answer 408 after creating the machine.
  void inject_create_timeout(int n = 1);
  /// The next `n` creates answer 412 insufficient_capacity (nothing made).
  void inject_insufficient_capacity(int n = 1, int status = 412);
  /// The next `n` launches (create or start) leave the machine `starting`
  /// for good (no sandbox), until it is stopped or deleted.
  void stick_next_launches(int n = 1);
  /// After `n` more authenticated calls, the token is refused (401
  /// "token expired") until `set_token`.
  void expire_token_after(int n);
  /// Replaces the accepted token (and lifts an expiry).
  void set_token(std::string token);
  /// The next `n` machine lists that would name machines answer [].
  void empty_next_lists(int n = 1);
  void set_fault_rate(double rate, uint64_t seed);
  void set_boot_delay(std::chrono::milliseconds d);
  void set_rate_limit(bool on);
  /// Drops every fault rule and pending fault counts, and the random rate.
  void clear_faults();
  /// Makes `name` an app another Fly user owns: create answers 422
  /// name_taken, get 403.
  void reserve_app_name(std::string name);

  // -- observation ---------------------------------------------------------

  fly_emulator_stats stats() const;
  int calls(const std::string& op) const;
  /// The state of a machine ("" when unknown or forgotten).
  std::string machine_state(const std::string& app, const std::string& id) const;
  /// The backing sandbox directory of a running machine ("" when none).
  std::string sandbox_dir(const std::string& app, const std::string& id) const;
  /// Machines not destroyed, over all apps.
  size_t live_machines() const;
  /// Forgets the HTTP server's record of requests (a long-running program
  /// calls it now and then).
  void clear_request_log();

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace aloft::test
