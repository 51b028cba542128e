// The bench scenarios kept in files of their own (durability lives in
// main.cpp). Each call is one run: it adds one figure per measurement to the
// report, and checks what it must for `--quick` (every session reached its
// state, counts are not zero), never timings.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "bench/report.hpp"

namespace aloft::bench {

struct launch_storm_options {
  size_t sessions = 10'000;
  size_t clients = 32;            // threads calling `launch`
  double provider_latency_ms = 0; // the fake provider's answer delay
};

/// N sessions through the whole actor graph (fake provider, no agent), every
/// transition durable: sessions/s to running, pending->running latency,
/// fsyncs and CPU per launch.
void launch_storm(report& out, const launch_storm_options& opts);

struct steady_state_options {
  size_t sessions = 10'000;
  size_t few_sessions = 100; // the thread count's baseline
  double trickle_s = 2;      // activity on 1 % of the sessions per second
  double idle_s = 3;         // then nothing
};

/// N live sessions with armed watchdogs, each size in a fresh process:
/// memory per session, threads against few sessions, CPU with a trickle of
/// activity and idle.
void steady_state(report& out, const steady_state_options& opts);
int steady_state_child(const std::vector<std::string>& args);

struct restart_options {
  size_t sessions = 10'000;
  size_t ssh_sessions = 0; // local sessions reconnected over SSH; 0: skip
  double agent_tick_s = 1;  // how often their agents print a line
};

/// N sessions persisted by an engine that is then killed (SIGKILL, no clean
/// shutdown); the time until a new engine has every session actor live and
/// asking its provider for its VM. With `ssh_sessions`, the same for local
/// sessions until each agent's output streams again over SSH.
void restart(report& out, const restart_options& opts);
int restart_child(const std::vector<std::string>& args);

struct local_options {
  size_t sessions = 100;
};

/// N sessions on the local provider (a real sshd each), all live at once, in
/// a fresh process: sessions/s to running, memory per live session (SSH
/// transports included), threads. Leaves no sshd or sandbox behind.
void local_sessions(report& out, const local_options& opts);
int local_child(const std::vector<std::string>& args);

struct provider_client_options {
  size_t calls = 2'000;   // of each kind of read
  size_t in_flight = 16;
  size_t creates = 3;     // machines created (each an sshd sandbox)
  double fault_rate = 0.05; // the faulty run's share of failed answers
};

/// The Fly provider against the Fly emulator (a child process): requests/s
/// and latency of `get` and `list` with `in_flight` calls at once, clean and
/// with injected faults (429 with Retry-After, 503, connection resets).
void provider_client(report& out, const provider_client_options& opts);

struct sync_options {
  size_t files = 10'000;
  size_t bytes = 100u << 20; // about, in all files
  int runs = 5;              // one session each
};

/// The local provider over loopback sshd and a generated tree: the initial
/// sync up against tar and rsync over ssh, a one-file incremental sync up
/// against rsync, a sync down of 100 changed files.
void sync_scenario(report& out, const sync_options& opts);

} // namespace aloft::bench
