// A small HTTP/1.1 server on 127.0.0.1 for tests: the base of the Fly and
// Vercel API emulators.
//
// Why: the providers' HTTP code is tested against a real socket and a real
// libcurl, with answers the test chooses, without touching the network.
//
// It listens on an ephemeral port, serves each connection on its own
// thread (keep-alive honoured; requests with a Content-Length body only,
// no chunked uploads), routes each request to the handler registered for
// its method and the longest matching path prefix, and records every
// request for assertions. A handler may also drop the connection without
// answering, to stand for a reset.
//
// Concurrency: handlers run on connection threads, possibly several at once;
// everything else is safe to call from any thread. `stop` (also run by the
// destructor) closes the listener and every connection and joins all
// threads; a handler still running delays it (a handler that blocks must
// be released by the test first).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace aloft::test {

using header_list = std::vector<std::pair<std::string, std::string>>;

/// One request as the server received it.
struct http_request_seen {
  std::string method;
  /// The target before '?', still percent-encoded.
  std::string path;
  /// The target after '?', without it; empty when there is none.
  std::string query;
  header_list headers;
  std::string body;
  /// When its head and body had been read (before the handler ran).
  std::chrono::steady_clock::time_point received_at;

  /// The first header called `name` (case-insensitive), or "".
  std::string header(std::string_view name) const;
  bool has_header(std::string_view name) const;
  /// The value of query parameter `key`, percent-decoded, or "".
  std::string query_param(std::string_view key) const;
};

/// `s` with each `%XX` escape decoded and `+` read as a space (form
/// encoding); a malformed escape is kept as it is.
std::string percent_decode(std::string_view s);

/// The answer a handler gives.
struct http_reply {
  int status = 200;
  header_list headers;
  std::string body;
  /// Close the connection without sending anything.
  bool drop_connection = false;

  /// `body` with `Content-Type: application/json`.
  static http_reply json(int status, std::string body);
  static http_reply text(int status, std::string body);
  static http_reply drop();
};

using http_handler = std::function<http_reply(const http_request_seen&)>;

class http_server {
public:
  /// Binds 127.0.0.1 on an ephemeral port and starts serving; records a
  /// test failure (and serves nothing) when the socket cannot be made.
  http_server();
  /// The same on 127.0.0.1:`port` (0: ephemeral). When the socket cannot
  /// be made, `port()` is 0 (and a test failure is recorded).
  explicit http_server(uint16_t port);
  ~http_server();

  http_server(const http_server&) = delete;
  http_server& operator=(const http_server&) = delete;

  uint16_t port() const { return port_; }
  /// "http://127.0.0.1:<port>".
  std::string base_url() const;

  /// Serves requests whose method is `method` ("" for any) and whose path
  /// starts with `path_prefix`. The longest matching prefix wins; among
  /// equal ones, the last registered. Unmatched requests get a JSON 404.
  void route(std::string method, std::string path_prefix, http_handler handler);

  /// Every request received so far, in arrival order.
  std::vector<http_request_seen> requests() const;
  /// Requests whose path starts with `path_prefix`.
  std::vector<http_request_seen> requests_to(std::string_view path_prefix) const;
  void clear_requests();
  /// Connections accepted so far (keep-alive makes it lower than requests).
  uint64_t connections_accepted() const { return accepted_.load(); }

  /// Stops serving and joins every thread; idempotent.
  void stop();

private:
  struct route_entry {
    std::string method;
    std::string prefix;
    http_handler handler;
  };
  struct connection {
    int fd = -1;
    std::thread thread;
    std::atomic<bool> done{false};
  };

  void accept_loop();
  void serve(connection& c);
  http_reply dispatch(const http_request_seen& req);
  void reap_finished_connections();

  int listen_fd_ = -1;
  int wake_pipe_[2] = {-1, -1};
  uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> accepted_{0};
  std::thread accept_thread_;

  mutable std::mutex mtx_;
  std::vector<route_entry> routes_;
  std::vector<http_request_seen> seen_;
  std::vector<std::unique_ptr<connection>> connections_;
};

/// A TCP port on 127.0.0.1 with nothing listening (bound once, then
/// closed), for "connection refused" tests.
uint16_t closed_port();

} // namespace aloft::test
