// A TCP relay on loopback: the Fly emulator's stand-in for the Fly proxy.
//
// Why: on Fly, a machine's service port is reached through the app's public
// IPs and the Fly proxy, which relays raw TCP to the machine. The emulator
// plays the app's IPv6 as [::1] and its dedicated IPv4 as 127.0.0.1, so it
// listens on both at the service's external port and relays each accepted
// connection to a loopback port it asks a router for (the backing sandbox's
// sshd), or closes it at once when the router has none (no route: the
// machine is not started, or the app has no IP of that family).
//
// Concurrency: one accept thread, one thread per relayed connection.
// `close` (also run by the destructor) stops listening, cuts every relayed
// connection and joins all threads; it must not be called while holding a
// lock the router takes.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <caf/expected.hpp>

namespace aloft::test {

class tcp_forwarder {
public:
  /// For a connection accepted on [::1] (`ipv6`) or 127.0.0.1: the loopback
  /// port to relay it to, or 0 to close it. Runs on a connection thread.
  using router = std::function<uint16_t(bool ipv6)>;

  /// Listens on 127.0.0.1:`port` and [::1]:`port` (the latter skipped when
  /// the host has no IPv6 loopback). Errors: `already_exists` when the port
  /// is taken, `unavailable` for other socket errors.
  static caf::expected<std::unique_ptr<tcp_forwarder>> listen(uint16_t port,
                                                              router route);

  ~tcp_forwarder();
  tcp_forwarder(const tcp_forwarder&) = delete;
  tcp_forwarder& operator=(const tcp_forwarder&) = delete;

  uint16_t port() const { return port_; }

  /// Stops listening, cuts relayed connections, joins threads; idempotent.
  void close();

private:
  struct relay {
    int client_fd = -1;
    int target_fd = -1;
    bool ipv6 = false;
    std::thread thread;
    std::atomic<bool> done{false};
  };

  tcp_forwarder(uint16_t port, router route) : port_(port), route_(std::move(route)) {}

  void accept_loop();
  void serve(relay& r);
  void reap_finished();

  uint16_t port_;
  router route_;
  int v4_fd_ = -1;
  int v6_fd_ = -1;
  int wake_pipe_[2] = {-1, -1};
  std::atomic<bool> closing_{false};
  std::thread accept_thread_;
  std::mutex mtx_;
  std::vector<std::unique_ptr<relay>> relays_;
};

} // namespace aloft::test
