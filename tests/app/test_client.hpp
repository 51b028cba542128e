// A blocking test client for the daemon's socket, and a daemon running on
// its own thread. Reads wait with a timeout (poll), never with sleeps.
#pragma once

#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine/app/daemon.hpp"
#include "engine/app/protocol.hpp"
#include "engine/base/error.hpp"

namespace aloft::testing {

class test_client {
public:
  explicit test_client(const std::string& path) {
    auto fd = connect_unix_socket(path);
    EXPECT_TRUE(fd) << (fd ? "" : describe(fd.error()));
    fd_ = fd ? *fd : -1;
  }
  ~test_client() { close(); }

  void close() {
    if (fd_ >= 0)
      ::close(fd_);
    fd_ = -1;
  }

  void send_raw(const std::string& bytes) {
    size_t done = 0;
    while (done < bytes.size()) {
      auto n = ::send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
      ASSERT_GT(n, 0) << "send failed";
      done += static_cast<size_t>(n);
    }
  }

  void send(const std::string& op, json args = json::object(), int64_t id = 1) {
    auto req = json::object();
    req.set("id", id).set("op", op).set("args", std::move(args));
    send_raw(encode_line(req));
  }

  /// The next line, or a null json after `timeout_ms` (the test fails).
  json read(int timeout_ms = 5000) {
    for (;;) {
      auto nl = buf_.find('\n');
      if (nl != std::string::npos) {
        auto line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        auto j = json::parse(line);
        EXPECT_TRUE(j) << "not JSON: " << line;
        return j ? *j : json{};
      }
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, timeout_ms) <= 0) {
        ADD_FAILURE() << "no reply within " << timeout_ms << " ms";
        return json{};
      }
      char chunk[65536];
      auto n = ::recv(fd_, chunk, sizeof(chunk), 0);
      if (n <= 0) {
        eof_ = true;
        return json{};
      }
      buf_.append(chunk, static_cast<size_t>(n));
    }
  }

  /// Whether the daemon closed the connection within `timeout_ms`.
  bool closed_by_peer(int timeout_ms = 5000) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0)
      return false;
    char c;
    return ::recv(fd_, &c, 1, 0) == 0;
  }

  json call(const std::string& op, json args = json::object(), int64_t id = 1) {
    send(op, std::move(args), id);
    return read();
  }

  bool eof() const { return eof_; }
  int fd() const { return fd_; }

private:
  int fd_ = -1;
  std::string buf_;
  bool eof_ = false;
};

/// A daemon serving `e` on `path`, on its own thread, for one test.
class running_daemon {
public:
  running_daemon(engine& e, const std::string& path, daemon_options opts = {})
    : d_(e, path, std::move(opts)) {
    auto err = d_.listen();
    EXPECT_FALSE(err) << describe(err);
    if (!err)
      thread_ = std::thread([this] { result_ = d_.run(); });
  }
  ~running_daemon() { stop(); }

  void stop() {
    d_.stop();
    if (thread_.joinable())
      thread_.join();
  }

  daemon& get() { return d_; }
  const caf::error& result() const { return result_; }

private:
  daemon d_;
  std::thread thread_;
  caf::error result_;
};

} // namespace aloft::testing
