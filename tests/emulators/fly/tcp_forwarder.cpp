#include "tests/emulators/fly/tcp_forwarder.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "engine/base/error.hpp"

namespace aloft::test {

namespace {

// Makes a listening socket on the loopback address of `family`; -1 with
// errno set on failure.
int listen_on(int family, uint16_t port) {
  int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  int rc;
  if (family == AF_INET6) {
    ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    sockaddr_in6 addr{};
    addr.sin6_family = AF_INET6;
    addr.sin6_addr = in6addr_loopback;
    addr.sin6_port = htons(port);
    rc = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  } else {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    rc = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  }
  if (rc != 0 || ::listen(fd, 64) != 0) {
    int err = errno;
    ::close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

bool send_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    auto n = ::send(fd, data, size, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

int connect_loopback(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

} // namespace

caf::expected<std::unique_ptr<tcp_forwarder>> tcp_forwarder::listen(uint16_t port,
                                                                    router route) {
  auto where = "proxy: listen on loopback port " + std::to_string(port);
  if (port == 0)
    return make_error(errc::invalid_argument, where + ": a service needs a port");
  std::unique_ptr<tcp_forwarder> f{new tcp_forwarder(port, std::move(route))};
  if (::pipe2(f->wake_pipe_, O_CLOEXEC) != 0)
    return from_errno(errno, where + ": pipe");
  f->v4_fd_ = listen_on(AF_INET, port);
  if (f->v4_fd_ < 0) {
    if (errno == EADDRINUSE)
      return make_error(errc::already_exists, where
                                                  + ": 127.0.0.1:" + std::to_string(port)
                                                  + " is taken on this host");
    return from_errno(errno, where + ": 127.0.0.1");
  }
  f->v6_fd_ = listen_on(AF_INET6, port);
  if (f->v6_fd_ < 0) {
    if (errno == EADDRINUSE)
      return make_error(errc::already_exists, where + ": [::1]:" + std::to_string(port)
                                                  + " is taken on this host");
    // No IPv6 loopback on this host: serve 127.0.0.1 only.
    if (errno != EADDRNOTAVAIL && errno != EAFNOSUPPORT)
      return from_errno(errno, where + ": [::1]");
  }
  auto* raw = f.get();
  f->accept_thread_ = std::thread([raw] { raw->accept_loop(); });
  return f;
}

tcp_forwarder::~tcp_forwarder() {
  close();
}

void tcp_forwarder::close() {
  if (closing_.exchange(true))
    return;
  if (wake_pipe_[1] >= 0) {
    // Never read: the pipe stays readable and wakes every poll for good.
    char byte = 'x';
    [[maybe_unused]] auto n = ::write(wake_pipe_[1], &byte, 1);
  }
  if (accept_thread_.joinable())
    accept_thread_.join();
  std::vector<std::unique_ptr<relay>> relays;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    relays.swap(relays_);
    // Descriptors stay open until their thread is joined, so these
    // shutdowns cannot hit a reused descriptor.
    for (auto& r : relays) {
      ::shutdown(r->client_fd, SHUT_RDWR);
      if (r->target_fd >= 0)
        ::shutdown(r->target_fd, SHUT_RDWR);
    }
  }
  for (auto& r : relays) {
    if (r->thread.joinable())
      r->thread.join();
    ::close(r->client_fd);
    if (r->target_fd >= 0)
      ::close(r->target_fd);
  }
  for (int* fd : {&v4_fd_, &v6_fd_, &wake_pipe_[0], &wake_pipe_[1]}) {
    if (*fd >= 0)
      ::close(*fd);
    *fd = -1;
  }
}

void tcp_forwarder::accept_loop() {
  for (;;) {
    pollfd fds[3] = {
        {wake_pipe_[0], POLLIN, 0}, {v4_fd_, POLLIN, 0}, {v6_fd_, POLLIN, 0}};
    nfds_t n = v6_fd_ >= 0 ? 3 : 2;
    if (::poll(fds, n, -1) < 0) {
      if (errno == EINTR)
        continue;
      return;
    }
    if (fds[0].revents != 0 || closing_)
      return;
    for (nfds_t i = 1; i < n; ++i) {
      if ((fds[i].revents & POLLIN) == 0)
        continue;
      int fd = ::accept4(fds[i].fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0)
        continue;
      reap_finished();
      auto r = std::make_unique<relay>();
      r->client_fd = fd;
      r->ipv6 = i == 2;
      auto* raw = r.get();
      std::lock_guard<std::mutex> guard{mtx_};
      relays_.push_back(std::move(r));
      raw->thread = std::thread([this, raw] {
        serve(*raw);
        raw->done = true;
      });
    }
  }
}

void tcp_forwarder::reap_finished() {
  std::vector<std::unique_ptr<relay>> finished;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    for (auto i = relays_.begin(); i != relays_.end();) {
      if ((*i)->done) {
        finished.push_back(std::move(*i));
        i = relays_.erase(i);
      } else {
        ++i;
      }
    }
  }
  for (auto& r : finished) {
    r->thread.join();
    ::close(r->client_fd);
    if (r->target_fd >= 0)
      ::close(r->target_fd);
  }
}

void tcp_forwarder::serve(relay& r) {
  auto target_port = route_(r.ipv6);
  int target = target_port == 0 ? -1 : connect_loopback(target_port);
  {
    std::lock_guard<std::mutex> guard{mtx_};
    r.target_fd = target;
    if (target < 0 || closing_) {
      // No route (or nothing listens there): the client sees the connection
      // closed, as when the Fly proxy finds no instance.
      ::shutdown(r.client_fd, SHUT_RDWR);
      if (target >= 0)
        ::shutdown(target, SHUT_RDWR);
      return;
    }
  }
  // Relays both ways until both sides have finished sending; a half-close
  // is passed on, so protocols that shut down their sending side work.
  bool client_open = true;
  bool target_open = true;
  char buf[16 * 1024];
  while (client_open || target_open) {
    // A side that finished sending is left out (a negative fd), else its
    // hang-up would wake every poll.
    pollfd fds[3] = {{wake_pipe_[0], POLLIN, 0},
                     {client_open ? r.client_fd : -1, POLLIN, 0},
                     {target_open ? target : -1, POLLIN, 0}};
    if (::poll(fds, 3, -1) < 0) {
      if (errno == EINTR)
        continue;
      break;
    }
    if (fds[0].revents != 0)
      break;
    bool failed = false;
    for (int i = 1; i <= 2 && !failed; ++i) {
      if (fds[i].revents == 0)
        continue;
      int from = i == 1 ? r.client_fd : target;
      int to = i == 1 ? target : r.client_fd;
      auto n = ::recv(from, buf, sizeof(buf), 0);
      if (n < 0 && errno == EINTR)
        continue;
      if (n > 0) {
        failed = !send_all(to, buf, static_cast<size_t>(n));
        continue;
      }
      if (n < 0) {
        failed = true;
        continue;
      }
      ::shutdown(to, SHUT_WR);
      (i == 1 ? client_open : target_open) = false;
    }
    if (failed)
      break;
  }
  ::shutdown(r.client_fd, SHUT_RDWR);
  ::shutdown(target, SHUT_RDWR);
}

} // namespace aloft::test
