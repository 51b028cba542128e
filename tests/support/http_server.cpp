#include "tests/support/http_server.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <gtest/gtest.h>

#include "engine/base/json.hpp"
#include "engine/base/text.hpp"

namespace aloft::test {

namespace {

/// Requests with larger heads are answered 431 and the connection closed.
constexpr size_t max_head_bytes = 64 * 1024;

/// Larger bodies are answered 413 (the emulators will take tarballs).
constexpr size_t max_body_bytes = size_t{64} << 20;


std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

const char* reason_phrase(int status) {
  switch (status) {
  case 200:
    return "OK";
  case 201:
    return "Created";
  case 202:
    return "Accepted";
  case 204:
    return "No Content";
  case 400:
    return "Bad Request";
  case 401:
    return "Unauthorized";
  case 403:
    return "Forbidden";
  case 404:
    return "Not Found";
  case 408:
    return "Request Timeout";
  case 409:
    return "Conflict";
  case 410:
    return "Gone";
  case 413:
    return "Content Too Large";
  case 422:
    return "Unprocessable Content";
  case 429:
    return "Too Many Requests";
  case 431:
    return "Request Header Fields Too Large";
  case 500:
    return "Internal Server Error";
  case 501:
    return "Not Implemented";
  case 502:
    return "Bad Gateway";
  case 503:
    return "Service Unavailable";
  default:
    return "Status";
  }
}

bool send_all(int fd, std::string_view data) {
  while (!data.empty()) {
    auto n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

/// Writes `reply` to `fd`; a HEAD answer carries no body.
bool send_reply(int fd, const http_reply& reply, bool head, bool closing) {
  std::string out = "HTTP/1.1 " + std::to_string(reply.status) + " "
                    + reason_phrase(reply.status) + "\r\n";
  bool has_length = false;
  for (auto& [name, value] : reply.headers) {
    has_length = has_length || iequals(name, "Content-Length");
    out += name + ": " + value + "\r\n";
  }
  if (!has_length)
    out += "Content-Length: " + std::to_string(reply.body.size()) + "\r\n";
  if (closing)
    out += "Connection: close\r\n";
  out += "\r\n";
  if (!head)
    out += reply.body;
  return send_all(fd, out);
}

/// Parses the head of a request (request line and headers, without the
/// blank line); false when it is malformed.
bool parse_head(std::string_view head, http_request_seen& req, std::string& version) {
  auto eol = head.find("\r\n");
  auto line = head.substr(0, eol);
  auto sp1 = line.find(' ');
  auto sp2 = line.rfind(' ');
  if (sp1 == std::string_view::npos || sp2 == sp1)
    return false;
  req.method = std::string{line.substr(0, sp1)};
  auto target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  version = std::string{line.substr(sp2 + 1)};
  if (req.method.empty() || target.empty() || version.rfind("HTTP/1.", 0) != 0)
    return false;
  auto q = target.find('?');
  req.path = std::string{target.substr(0, q)};
  if (q != std::string_view::npos)
    req.query = std::string{target.substr(q + 1)};
  while (eol != std::string_view::npos) {
    head.remove_prefix(eol + 2);
    eol = head.find("\r\n");
    auto h = head.substr(0, eol);
    if (h.empty())
      continue;
    auto colon = h.find(':');
    if (colon == std::string_view::npos || colon == 0)
      return false;
    req.headers.emplace_back(std::string{trim(h.substr(0, colon))},
                             std::string{trim(h.substr(colon + 1))});
  }
  return true;
}

} // namespace

std::string percent_decode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%' && i + 2 < s.size() && hex_value(s[i + 1]) >= 0
               && hex_value(s[i + 2]) >= 0) {
      out += static_cast<char>(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2]));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

// -- http_request_seen ------------------------------------------------------

std::string http_request_seen::header(std::string_view name) const {
  for (auto& [k, v] : headers)
    if (iequals(k, name))
      return v;
  return {};
}

bool http_request_seen::has_header(std::string_view name) const {
  for (auto& [k, v] : headers)
    if (iequals(k, name))
      return true;
  return false;
}

std::string http_request_seen::query_param(std::string_view key) const {
  std::string_view rest = query;
  while (!rest.empty()) {
    auto amp = rest.find('&');
    auto pair = rest.substr(0, amp);
    auto eq = pair.find('=');
    if (percent_decode(pair.substr(0, eq)) == key)
      return eq == std::string_view::npos ? std::string{}
                                          : percent_decode(pair.substr(eq + 1));
    if (amp == std::string_view::npos)
      break;
    rest.remove_prefix(amp + 1);
  }
  return {};
}

// -- http_reply -------------------------------------------------------------

http_reply http_reply::json(int status, std::string body) {
  return {status, {{"Content-Type", "application/json"}}, std::move(body), false};
}

http_reply http_reply::text(int status, std::string body) {
  return {status, {{"Content-Type", "text/plain"}}, std::move(body), false};
}

http_reply http_reply::drop() {
  http_reply r;
  r.drop_connection = true;
  return r;
}

// -- http_server ------------------------------------------------------------

http_server::http_server() : http_server(0) {}

http_server::http_server(uint16_t port) {
  if (::pipe2(wake_pipe_, O_CLOEXEC) != 0) {
    ADD_FAILURE() << "http_server: pipe2: " << std::strerror(errno);
    return;
  }
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) {
    ADD_FAILURE() << "http_server: socket: " << std::strerror(errno);
    return;
  }
  int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  socklen_t len = sizeof(addr);
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0
      || ::listen(listen_fd_, 64) != 0
      || ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ADD_FAILURE() << "http_server: bind/listen on 127.0.0.1:" << port << ": "
                  << std::strerror(errno);
    return;
  }
  port_ = ntohs(addr.sin_port);
  accept_thread_ = std::thread([this] { accept_loop(); });
}

http_server::~http_server() {
  stop();
}

std::string http_server::base_url() const {
  return "http://127.0.0.1:" + std::to_string(port_);
}

void http_server::route(std::string method, std::string path_prefix,
                        http_handler handler) {
  std::lock_guard<std::mutex> guard{mtx_};
  routes_.push_back({std::move(method), std::move(path_prefix), std::move(handler)});
}

std::vector<http_request_seen> http_server::requests() const {
  std::lock_guard<std::mutex> guard{mtx_};
  return seen_;
}

std::vector<http_request_seen>
http_server::requests_to(std::string_view path_prefix) const {
  std::lock_guard<std::mutex> guard{mtx_};
  std::vector<http_request_seen> out;
  for (auto& r : seen_)
    if (std::string_view{r.path}.substr(0, path_prefix.size()) == path_prefix)
      out.push_back(r);
  return out;
}

void http_server::clear_requests() {
  std::lock_guard<std::mutex> guard{mtx_};
  seen_.clear();
}

void http_server::stop() {
  if (stopping_.exchange(true))
    return;
  if (wake_pipe_[1] >= 0) {
    // Never read: the pipe stays readable and wakes every poll for good.
    char byte = 'x';
    [[maybe_unused]] auto n = ::write(wake_pipe_[1], &byte, 1);
  }
  if (accept_thread_.joinable())
    accept_thread_.join();
  std::vector<std::unique_ptr<connection>> conns;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    conns.swap(connections_);
  }
  // Each connection's fd stays open until its thread is joined, so the
  // shutdown below cannot hit a reused descriptor.
  for (auto& c : conns)
    ::shutdown(c->fd, SHUT_RDWR);
  for (auto& c : conns) {
    if (c->thread.joinable())
      c->thread.join();
    ::close(c->fd);
  }
  for (int* fd : {&listen_fd_, &wake_pipe_[0], &wake_pipe_[1]}) {
    if (*fd >= 0)
      ::close(*fd);
    *fd = -1;
  }
}

void http_server::accept_loop() {
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_pipe_[0], POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR)
        continue;
      return;
    }
    if (fds[1].revents != 0 || stopping_)
      return;
    if ((fds[0].revents & POLLIN) == 0)
      continue;
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0)
      continue;
    ++accepted_;
    reap_finished_connections();
    auto c = std::make_unique<connection>();
    c->fd = fd;
    auto* raw = c.get();
    std::lock_guard<std::mutex> guard{mtx_};
    connections_.push_back(std::move(c));
    raw->thread = std::thread([this, raw] {
      serve(*raw);
      raw->done = true;
    });
  }
}

void http_server::reap_finished_connections() {
  std::vector<std::unique_ptr<connection>> finished;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    for (auto i = connections_.begin(); i != connections_.end();) {
      if ((*i)->done) {
        finished.push_back(std::move(*i));
        i = connections_.erase(i);
      } else {
        ++i;
      }
    }
  }
  for (auto& c : finished) {
    c->thread.join();
    ::close(c->fd);
  }
}

void http_server::serve(connection& c) {
  std::string buf;
  // Reads more bytes into `buf`; false on EOF, error or stop.
  auto read_more = [&] {
    for (;;) {
      pollfd fds[2] = {{c.fd, POLLIN, 0}, {wake_pipe_[0], POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR)
          continue;
        return false;
      }
      if (fds[1].revents != 0)
        return false;
      char chunk[16 * 1024];
      auto n = ::recv(c.fd, chunk, sizeof(chunk), 0);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return false;
      buf.append(chunk, static_cast<size_t>(n));
      return true;
    }
  };
  auto refuse = [&](int status, std::string why) {
    send_reply(c.fd, http_reply::text(status, std::move(why)), false, true);
    ::shutdown(c.fd, SHUT_RDWR);
  };
  for (;;) {
    size_t head_end;
    while ((head_end = buf.find("\r\n\r\n")) == std::string::npos) {
      if (buf.size() > max_head_bytes)
        return refuse(431, "request head too large");
      if (!read_more()) {
        ::shutdown(c.fd, SHUT_RDWR);
        return;
      }
    }
    http_request_seen req;
    std::string version;
    if (!parse_head(std::string_view{buf}.substr(0, head_end), req, version))
      return refuse(400, "malformed request");
    if (req.has_header("Transfer-Encoding"))
      return refuse(501, "chunked request bodies are not supported by this test server");
    size_t length = 0;
    if (auto cl = req.header("Content-Length"); !cl.empty()) {
      if (cl.find_first_not_of("0123456789") != std::string::npos || cl.size() > 12)
        return refuse(400, "bad Content-Length");
      length = std::stoull(cl);
      if (length > max_body_bytes)
        return refuse(413, "request body too large");
    }
    auto body_start = head_end + 4;
    while (buf.size() < body_start + length)
      if (!read_more()) {
        ::shutdown(c.fd, SHUT_RDWR);
        return;
      }
    req.body = buf.substr(body_start, length);
    req.received_at = std::chrono::steady_clock::now();
    buf.erase(0, body_start + length);
    auto connection_header = req.header("Connection");
    bool closing =
        iequals(connection_header, "close")
        || (version == "HTTP/1.0" && !iequals(connection_header, "keep-alive"));
    {
      std::lock_guard<std::mutex> guard{mtx_};
      seen_.push_back(req);
    }
    auto reply = dispatch(req);
    if (reply.drop_connection || stopping_) {
      ::shutdown(c.fd, SHUT_RDWR);
      return;
    }
    if (!send_reply(c.fd, reply, req.method == "HEAD", closing) || closing) {
      ::shutdown(c.fd, SHUT_RDWR);
      return;
    }
  }
}

http_reply http_server::dispatch(const http_request_seen& req) {
  http_handler handler;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    const route_entry* best = nullptr;
    for (auto& r : routes_) {
      if (!r.method.empty() && r.method != req.method)
        continue;
      if (req.path.compare(0, r.prefix.size(), r.prefix) != 0)
        continue;
      if (best == nullptr || r.prefix.size() >= best->prefix.size())
        best = &r;
    }
    if (best != nullptr)
      handler = best->handler;
  }
  if (!handler)
    return http_reply::json(
        404, json::object()
                 .set("error", "no route for " + req.method + " " + req.path)
                 .dump());
  return handler(req);
}

uint16_t closed_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  uint16_t port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0
      && ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
    port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

} // namespace aloft::test
