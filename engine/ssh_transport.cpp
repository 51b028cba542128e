#include "engine/ssh_transport.hpp"

#include <arpa/inet.h>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <deque>
#include <mutex>
#include <unordered_map>
#include <vector>

#include <libssh2.h>

#include "engine/base/base64.hpp"
#include "engine/base/error.hpp"
#include "engine/executor.hpp"

// How this file drives libssh2 without blocking.
//
// Every session is in non-blocking mode, and one thread polls all sockets.
// After any event (socket readiness, or work queued by another thread) the
// loop "pumps" the session: it steps every channel's state machine until no
// channel makes progress. libssh2 reads every packet that has arrived into
// its queue whenever any channel reads, so stepping all channels until none
// progresses never leaves data stranded in that queue.
//
// libssh2's one hard rule for non-blocking use with many channels: when a
// call returns EAGAIN because the socket would not take the rest of an
// outgoing packet, the very same call must be repeated before anything else
// on the session sends (otherwise LIBSSH2_ERROR_BAD_USE). So a channel whose
// call blocked on output becomes `out_blocked`: the pump repeats only that
// channel's call until it completes. Some libssh2 calls keep their packet on
// the stack (sending EOF), so every call into libssh2 for channels happens
// from the same function at the same stack depth (`step`, never inlined).
//
// Opening a channel uses per-session state in libssh2, so channels of one
// session are opened one at a time (`conn::opening`).

namespace aloft {

namespace detail {

namespace {

using steady = std::chrono::steady_clock;

constexpr uint32_t channel_packet_size = LIBSSH2_CHANNEL_PACKET_DEFAULT;
// Bounds that keep one busy channel or session from starving the rest.
constexpr int reads_per_step = 4;
constexpr int passes_per_pump = 16;

// -- the one place where libssh2 errors become caf::error -------------------

caf::error ssh_error(LIBSSH2_SESSION* session, int rc, const std::string& context) {
  std::string text;
  if (session != nullptr) {
    char* msg = nullptr;
    int len = 0;
    libssh2_session_last_error(session, &msg, &len, 0);
    if (msg != nullptr && len > 0)
      text.assign(msg, static_cast<size_t>(len));
  }
  errc code;
  switch (rc) {
    case LIBSSH2_ERROR_SOCKET_NONE:
    case LIBSSH2_ERROR_BANNER_RECV:
    case LIBSSH2_ERROR_BANNER_SEND:
    case LIBSSH2_ERROR_SOCKET_SEND:
    case LIBSSH2_ERROR_SOCKET_RECV:
    case LIBSSH2_ERROR_SOCKET_DISCONNECT:
    case LIBSSH2_ERROR_SOCKET_TIMEOUT:
    case LIBSSH2_ERROR_TIMEOUT:
    case LIBSSH2_ERROR_INVALID_MAC:
    case LIBSSH2_ERROR_DECRYPT:
    case LIBSSH2_ERROR_PROTO:
    case LIBSSH2_ERROR_EAGAIN:
    // An open refused by the server (for example MaxSessions reached).
    case LIBSSH2_ERROR_CHANNEL_FAILURE:
    case LIBSSH2_ERROR_CHANNEL_CLOSED:
    case LIBSSH2_ERROR_CHANNEL_UNKNOWN:
    case LIBSSH2_ERROR_CHANNEL_OUTOFORDER:
      code = errc::unavailable;
      break;
    case LIBSSH2_ERROR_KEX_FAILURE:
    case LIBSSH2_ERROR_KEY_EXCHANGE_FAILURE:
    case LIBSSH2_ERROR_METHOD_NOT_SUPPORTED:
    case LIBSSH2_ERROR_HOSTKEY_INIT:
    case LIBSSH2_ERROR_HOSTKEY_SIGN:
    case LIBSSH2_ERROR_CHANNEL_REQUEST_DENIED:
    case LIBSSH2_ERROR_REQUEST_DENIED:
      code = errc::failed_precondition;
      break;
    case LIBSSH2_ERROR_AUTHENTICATION_FAILED:
    case LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED:
    case LIBSSH2_ERROR_METHOD_NONE:
    case LIBSSH2_ERROR_PASSWORD_EXPIRED:
    case LIBSSH2_ERROR_KEYFILE_AUTH_FAILED:
      code = errc::unauthenticated;
      break;
    case LIBSSH2_ERROR_FILE:
      code = errc::failed_precondition;
      break;
    case LIBSSH2_ERROR_ALLOC:
      code = errc::resource_exhausted;
      break;
    default:
      code = errc::internal;
      break;
  }
  if (text.empty())
    text = "libssh2 error";
  return make_error(code, context + ": " + text + " (libssh2 " + std::to_string(rc)
                            + ")");
}

// Whether `rc` leaves the whole session unusable (as opposed to one channel).
bool ends_session(int rc) {
  switch (rc) {
    case LIBSSH2_ERROR_CHANNEL_OUTOFORDER:
    case LIBSSH2_ERROR_CHANNEL_FAILURE:
    case LIBSSH2_ERROR_CHANNEL_REQUEST_DENIED:
    case LIBSSH2_ERROR_CHANNEL_UNKNOWN:
    case LIBSSH2_ERROR_CHANNEL_WINDOW_EXCEEDED:
    case LIBSSH2_ERROR_CHANNEL_PACKET_EXCEEDED:
    case LIBSSH2_ERROR_CHANNEL_CLOSED:
    case LIBSSH2_ERROR_CHANNEL_EOF_SENT:
    case LIBSSH2_ERROR_REQUEST_DENIED:
      return false;
    default:
      return true;
  }
}

// -- small helpers ------------------------------------------------------------

bool base64_decode(const std::string& in, std::string& out) {
  out.clear();
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=')
      break;
    int v = base64_value(c);
    if (v < 0)
      return false;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return !out.empty();
}

// Parses "ssh-ed25519 AAAA... [comment]" into its type and key blob.
bool parse_public_key(const std::string& line, std::string& type, std::string& blob) {
  auto sp = line.find(' ');
  if (sp == std::string::npos || sp == 0)
    return false;
  type = line.substr(0, sp);
  auto rest = line.substr(sp + 1);
  auto end = rest.find_first_of(" \r\n");
  if (end != std::string::npos)
    rest.resize(end);
  return base64_decode(rest, blob);
}

int exit_code_of_signal(const std::string& name) {
  static const std::pair<const char*, int> table[] = {
    {"HUP", 1},   {"INT", 2},   {"QUIT", 3},  {"ILL", 4},   {"TRAP", 5},
    {"ABRT", 6},  {"BUS", 7},   {"FPE", 8},   {"KILL", 9},  {"USR1", 10},
    {"SEGV", 11}, {"USR2", 12}, {"PIPE", 13}, {"ALRM", 14}, {"TERM", 15},
  };
  for (auto& [n, v] : table)
    if (name == n)
      return 128 + v;
  return 128 + 64; // unknown signal: still clearly "killed"
}

void ensure_libssh2_initialized() {
  static std::once_flag once;
  std::call_once(once, [] { libssh2_init(0); });
}

} // namespace

// -- I/O-thread state ---------------------------------------------------------

struct conn_flags {
  std::atomic<bool> open{false};
};

enum class chan_state : uint8_t { waiting_open, opening, starting, running, closing,
                                  freeing, done };

// Which send a channel must repeat first (see the comment at the top).
enum class chan_op : uint8_t { none, write, eof, read };

struct chan {
  uint64_t id = 0;
  std::string command;
  exec_callbacks cb;
  LIBSSH2_CHANNEL* ch = nullptr;
  chan_state state = chan_state::waiting_open;
  chan_op pending = chan_op::none;
  std::deque<std::string> input;
  size_t input_offset = 0;
  bool close_stdin = false;
  bool eof_sent = false;
  bool cancelled = false;
  bool exited = false; // on_exit has run
  std::atomic<uint64_t> bytes_in{0};
  std::atomic<uint64_t> bytes_out{0};
};

enum class conn_state : uint8_t { resolving, tcp_connecting, handshaking,
                                  authenticating, ready, closed };

struct conn {
  uint64_t id = 0;
  ssh_endpoint ep;
  std::string label; // "ssh host:port", the prefix of every error
  conn_state state = conn_state::resolving;
  transport_factory::connect_callback done;
  steady::time_point deadline;
  std::vector<sockaddr_storage> addrs;
  std::vector<socklen_t> addr_lens;
  size_t next_addr = 0;
  int fd = -1;
  LIBSSH2_SESSION* session = nullptr;
  std::vector<std::shared_ptr<chan>> chans;
  chan* opening = nullptr;
  chan* out_blocked = nullptr;
  bool dirty = false;
  std::shared_ptr<conn_flags> flags = std::make_shared<conn_flags>();
};

class ssh_loop_core : public std::enable_shared_from_this<ssh_loop_core> {
public:
  explicit ssh_loop_core(ssh_options opts) : opts_(std::move(opts)) {
    ensure_libssh2_initialized();
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    read_buf_.resize(opts_.read_chunk == 0 ? (1u << 20) : opts_.read_chunk);
  }

  ~ssh_loop_core() {
    if (wake_fd_ >= 0)
      ::close(wake_fd_);
  }

  /// Queues `fn` for the I/O thread. Returns false once the loop stopped.
  bool post(std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> guard{mtx_};
      if (stopped_)
        return false;
      tasks_.push_back(std::move(fn));
    }
    wake();
    return true;
  }

  void request_stop() {
    {
      std::lock_guard<std::mutex> guard{mtx_};
      stopped_ = true;
    }
    wake();
  }

  void run();

  // Called on the I/O thread by tasks.
  void start_connect(ssh_endpoint ep, transport_factory::connect_callback done);
  void start_exec(uint64_t conn_id, std::shared_ptr<chan> h, const std::string& label);
  void write(uint64_t conn_id, const std::shared_ptr<chan>& h, std::string bytes);
  void close_stdin(uint64_t conn_id, const std::shared_ptr<chan>& h);
  void cancel(uint64_t conn_id, const std::shared_ptr<chan>& h);
  void close_conn(uint64_t conn_id);

  std::atomic<size_t> session_count{0};
  std::atomic<size_t> channel_count{0};

private:
  void wake() {
    uint64_t one = 1;
    auto n = ::write(wake_fd_, &one, sizeof(one));
    (void) n; // a full counter already means "wake up"
  }

  bool run_tasks(); // returns whether the loop is stopping
  conn* find(uint64_t id) {
    auto i = conns_.find(id);
    return i == conns_.end() || i->second->state == conn_state::closed
             ? nullptr
             : i->second.get();
  }

  void resolved(uint64_t id, caf::expected<std::vector<sockaddr_storage>> addrs,
                std::vector<socklen_t> lens);
  void start_tcp(conn& c);
  void on_tcp_connected(conn& c);
  // drive, pump and step are never inlined, so that libssh2 is always
  // entered at the same stack depth (see the top of the file).
  void drive(conn& c) __attribute__((noinline));
  void check_host_key(conn& c);
  void pump(conn& c) __attribute__((noinline));
  enum class step_result : uint8_t { idle, progressed, blocked, failed };
  step_result step(conn& c, chan& h) __attribute__((noinline));
  step_result blocked_or_idle(conn& c, chan& h, chan_op op);
  void finish(chan& h, const caf::error& err, int exit_code);
  void fail_conn(conn& c, const caf::error& err);
  void release(conn& c, bool graceful);
  short poll_events(const conn& c) const;

  ssh_options opts_;
  int wake_fd_ = -1;
  std::mutex mtx_;
  std::vector<std::function<void()>> tasks_;
  bool stopped_ = false;
  std::unordered_map<uint64_t, std::unique_ptr<conn>> conns_;
  uint64_t next_id_ = 1;
  std::vector<char> read_buf_;
};

// -- handles given to callers ---------------------------------------------------

class ssh_transport_handle;

class ssh_channel_handle final : public channel {
public:
  ssh_channel_handle(std::shared_ptr<ssh_transport_handle> t, std::shared_ptr<chan> h)
    : t_(std::move(t)), h_(std::move(h)) {}

  void write(std::string bytes) override;
  void close_stdin() override;
  void cancel() override;
  uint64_t bytes_in() const override { return h_->bytes_in.load(); }
  uint64_t bytes_out() const override { return h_->bytes_out.load(); }

private:
  std::shared_ptr<ssh_transport_handle> t_;
  std::shared_ptr<chan> h_;
};

class ssh_transport_handle final
  : public transport,
    public std::enable_shared_from_this<ssh_transport_handle> {
public:
  ssh_transport_handle(std::shared_ptr<ssh_loop_core> core, uint64_t id,
                       std::shared_ptr<conn_flags> flags, std::string label)
    : core_(std::move(core)), id_(id), flags_(std::move(flags)), label_(std::move(label)) {}

  ~ssh_transport_handle() override { close(); }

  std::shared_ptr<channel> exec(std::string command, exec_callbacks cb) override {
    static std::atomic<uint64_t> next_chan{1};
    auto h = std::make_shared<chan>();
    h->id = next_chan++;
    h->command = std::move(command);
    h->cb = std::move(cb);
    auto handle = std::make_shared<ssh_channel_handle>(shared_from_this(), h);
    if (!core_->post([core = core_, id = id_, h, label = label_] {
          core->start_exec(id, h, label);
        })) {
      auto on_exit = std::move(h->cb.on_exit);
      h->cb = {};
      if (on_exit)
        on_exit(make_error(errc::cancelled, label_ + ": the I/O loop has shut down"), -1);
    }
    return handle;
  }

  void close() override {
    if (closed_.exchange(true))
      return;
    flags_->open = false;
    core_->post([core = core_, id = id_] { core->close_conn(id); });
  }

  bool is_open() const override { return flags_->open.load(); }

  const std::shared_ptr<ssh_loop_core>& core() const { return core_; }
  uint64_t id() const { return id_; }

private:
  std::shared_ptr<ssh_loop_core> core_;
  uint64_t id_;
  std::shared_ptr<conn_flags> flags_;
  std::string label_;
  std::atomic<bool> closed_{false};
};

void ssh_channel_handle::write(std::string bytes) {
  if (bytes.empty())
    return;
  t_->core()->post([core = t_->core(), id = t_->id(), h = h_, b = std::move(bytes)]() mutable {
    core->write(id, h, std::move(b));
  });
}

void ssh_channel_handle::close_stdin() {
  t_->core()->post([core = t_->core(), id = t_->id(), h = h_] { core->close_stdin(id, h); });
}

void ssh_channel_handle::cancel() {
  t_->core()->post([core = t_->core(), id = t_->id(), h = h_] { core->cancel(id, h); });
}

// -- the loop -------------------------------------------------------------------

bool ssh_loop_core::run_tasks() {
  std::vector<std::function<void()>> batch;
  bool stopping;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    batch.swap(tasks_);
    stopping = stopped_;
  }
  for (auto& fn : batch)
    fn();
  return stopping;
}

void ssh_loop_core::run() {
  std::vector<pollfd> pfds;
  std::vector<conn*> polled;
  for (;;) {
    bool stopping = run_tasks();
    if (stopping)
      break;
    for (auto& [id, c] : conns_)
      if (c->dirty && c->state != conn_state::closed)
        drive(*c);
    // Deadlines of connects in progress.
    auto now = steady::now();
    int timeout_ms = -1;
    for (auto& [id, c] : conns_) {
      if (c->state == conn_state::closed || c->state == conn_state::ready)
        continue;
      if (now >= c->deadline) {
        fail_conn(*c, make_error(errc::deadline_exceeded,
                                 c->label + ": connect timed out after "
                                   + std::to_string(opts_.connect_timeout.count())
                                   + " ms"));
        continue;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(c->deadline - now)
                    .count()
                  + 1;
      if (timeout_ms < 0 || left < timeout_ms)
        timeout_ms = static_cast<int>(left);
    }
    // Forget closed sessions; nothing on the stack refers to them here.
    for (auto i = conns_.begin(); i != conns_.end();) {
      if (i->second->state == conn_state::closed)
        i = conns_.erase(i);
      else
        ++i;
    }
    pfds.clear();
    polled.clear();
    pfds.push_back({wake_fd_, POLLIN, 0});
    for (auto& [id, c] : conns_) {
      if (c->dirty)
        timeout_ms = 0;
      auto ev = poll_events(*c);
      if (ev == 0)
        continue;
      pfds.push_back({c->fd, ev, 0});
      polled.push_back(c.get());
    }
    int n = ::poll(pfds.data(), pfds.size(), timeout_ms);
    if (n < 0 && errno != EINTR) {
      // Cannot happen with valid arguments; stop (and refuse new work)
      // rather than spin.
      request_stop();
      break;
    }
    if (pfds[0].revents & POLLIN) {
      uint64_t counter;
      while (::read(wake_fd_, &counter, sizeof(counter)) > 0) {
      }
    }
    for (size_t i = 1; i < pfds.size(); ++i) {
      auto rev = pfds[i].revents;
      if (rev == 0)
        continue;
      auto& c = *polled[i - 1];
      if (c.state == conn_state::closed)
        continue;
      if (c.state == conn_state::tcp_connecting) {
        on_tcp_connected(c);
        continue;
      }
      // sshd does not set TCP_NODELAY on non-interactive sessions, so its
      // small replies wait for our ACKs; delayed ACKs would add 40 ms to
      // every request/reply exchange. Linux clears quick-ACK mode on its
      // own, hence it is set again on every wake-up.
      if (rev & POLLIN) {
        int one = 1;
        ::setsockopt(c.fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
      }
      drive(c);
      // A hang-up that the pump did not turn into an error (no channel
      // reading): the connection is gone all the same.
      if (c.state != conn_state::closed && (rev & (POLLHUP | POLLERR | POLLRDHUP))
          && c.chans.empty())
        fail_conn(c, make_error(errc::unavailable, c.label + ": connection closed by the server"));
      else if (c.state != conn_state::closed && (rev & (POLLHUP | POLLERR)))
        fail_conn(c, make_error(errc::unavailable, c.label + ": connection lost"));
    }
  }
  // Shutting down: nothing can be queued any more; run what was queued so
  // that every channel and connect gets its final callback, then close all.
  run_tasks();
  for (auto& [id, c] : conns_)
    if (c->state != conn_state::closed)
      fail_conn(*c, make_error(errc::cancelled, c->label + ": the I/O loop is shutting down"));
  conns_.clear();
}

short ssh_loop_core::poll_events(const conn& c) const {
  switch (c.state) {
    case conn_state::resolving:
    case conn_state::closed:
      return 0;
    case conn_state::tcp_connecting:
      return POLLOUT;
    case conn_state::handshaking:
    case conn_state::authenticating: {
      int dirs = libssh2_session_block_directions(c.session);
      short ev = 0;
      if (dirs & LIBSSH2_SESSION_BLOCK_INBOUND)
        ev |= POLLIN;
      if (dirs & LIBSSH2_SESSION_BLOCK_OUTBOUND)
        ev |= POLLOUT;
      return ev == 0 ? POLLIN : ev;
    }
    case conn_state::ready: {
      if (c.out_blocked != nullptr)
        return POLLOUT | POLLIN;
      // An idle session reads nothing (no channel asks libssh2 to), so it
      // only watches for the server going away.
      return c.chans.empty() ? POLLRDHUP : POLLIN;
    }
  }
  return 0;
}

// -- connecting -------------------------------------------------------------------

void ssh_loop_core::start_connect(ssh_endpoint ep, transport_factory::connect_callback done) {
  auto owned = std::make_unique<conn>();
  auto& c = *owned;
  c.id = next_id_++;
  c.label = "ssh " + ep.host + ":" + std::to_string(ep.port);
  c.ep = std::move(ep);
  c.done = std::move(done);
  c.deadline = steady::now() + opts_.connect_timeout;
  conns_.emplace(c.id, std::move(owned));
  ++session_count;
  if (c.ep.host_public_key.empty()) {
    fail_conn(c, make_error(errc::invalid_argument,
                            c.label + ": no host key is pinned for this session; "
                                      "refusing to connect"));
    return;
  }
  // Resolve: numeric addresses never block; names go to the resolver.
  auto lookup = [](const std::string& host, uint16_t port, bool numeric,
                   std::vector<socklen_t>& lens)
    -> caf::expected<std::vector<sockaddr_storage>> {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (numeric ? AI_NUMERICHOST : 0);
    addrinfo* res = nullptr;
    auto port_str = std::to_string(port);
    int rc = ::getaddrinfo(host.c_str(), port_str.c_str(), &hints, &res);
    if (rc != 0)
      return make_error(numeric ? errc::invalid_argument : errc::unavailable,
                        "cannot resolve " + host + ": " + gai_strerror(rc));
    std::vector<sockaddr_storage> out;
    for (auto p = res; p != nullptr; p = p->ai_next) {
      sockaddr_storage ss{};
      std::memcpy(&ss, p->ai_addr, p->ai_addrlen);
      out.push_back(ss);
      lens.push_back(p->ai_addrlen);
    }
    ::freeaddrinfo(res);
    return out;
  };
  std::vector<socklen_t> lens;
  auto numeric = lookup(c.ep.host, c.ep.port, true, lens);
  if (numeric || !opts_.resolver) {
    if (!numeric)
      numeric = lookup(c.ep.host, c.ep.port, false, lens);
    resolved(c.id, std::move(numeric), std::move(lens));
    return;
  }
  std::weak_ptr<ssh_loop_core> weak = shared_from_this();
  opts_.resolver->post([weak, lookup, id = c.id, host = c.ep.host, port = c.ep.port] {
    std::vector<socklen_t> lens;
    auto addrs = lookup(host, port, false, lens);
    if (auto core = weak.lock())
      core->post([core, id, addrs = std::move(addrs), lens = std::move(lens)]() mutable {
        core->resolved(id, std::move(addrs), std::move(lens));
      });
  });
}

void ssh_loop_core::resolved(uint64_t id, caf::expected<std::vector<sockaddr_storage>> addrs,
                             std::vector<socklen_t> lens) {
  auto c = find(id);
  if (c == nullptr)
    return;
  if (!addrs) {
    fail_conn(*c, annotate(addrs.error(), c->label));
    return;
  }
  if (addrs->empty()) {
    fail_conn(*c, make_error(errc::unavailable, c->label + ": no address"));
    return;
  }
  c->addrs = std::move(*addrs);
  c->addr_lens = std::move(lens);
  start_tcp(*c);
}

void ssh_loop_core::start_tcp(conn& c) {
  for (;;) {
    if (c.fd >= 0) {
      ::close(c.fd);
      c.fd = -1;
    }
    if (c.next_addr >= c.addrs.size()) {
      fail_conn(c, make_error(errc::unavailable, c.label + ": no address accepted"));
      return;
    }
    auto& addr = c.addrs[c.next_addr];
    auto len = c.addr_lens[c.next_addr];
    ++c.next_addr;
    c.fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) {
      fail_conn(c, annotate(from_errno(errno, "socket"), c.label));
      return;
    }
    int one = 1;
    ::setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (opts_.socket_send_buffer > 0)
      ::setsockopt(c.fd, SOL_SOCKET, SO_SNDBUF, &opts_.socket_send_buffer,
                   sizeof(opts_.socket_send_buffer));
    // Notice a peer that vanished without a FIN within about a minute.
    ::setsockopt(c.fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    int idle = 30, interval = 10, count = 3;
    ::setsockopt(c.fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    ::setsockopt(c.fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
    ::setsockopt(c.fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
    if (::connect(c.fd, reinterpret_cast<sockaddr*>(&addr), len) == 0) {
      on_tcp_connected(c);
      return;
    }
    if (errno == EINPROGRESS) {
      c.state = conn_state::tcp_connecting;
      return;
    }
    if (c.next_addr >= c.addrs.size()) {
      fail_conn(c, annotate(from_errno(errno, "connect"), c.label));
      return;
    }
  }
}

void ssh_loop_core::on_tcp_connected(conn& c) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (::getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
    err = errno;
  if (err != 0) {
    if (c.next_addr < c.addrs.size()) {
      start_tcp(c);
      return;
    }
    fail_conn(c, annotate(from_errno(err, "connect"), c.label));
    return;
  }
  c.session = libssh2_session_init();
  if (c.session == nullptr) {
    fail_conn(c, make_error(errc::resource_exhausted, c.label + ": cannot create a session"));
    return;
  }
  libssh2_session_set_blocking(c.session, 0);
  std::string type, blob;
  if (parse_public_key(c.ep.host_public_key, type, blob))
    // Ask for the pinned key's type, so a server with several host keys
    // presents the one we can check.
    libssh2_session_method_pref(c.session, LIBSSH2_METHOD_HOSTKEY, type.c_str());
  c.state = conn_state::handshaking;
  drive(c);
}

void ssh_loop_core::check_host_key(conn& c) {
  std::string type, pinned;
  if (!parse_public_key(c.ep.host_public_key, type, pinned)) {
    fail_conn(c, make_error(errc::invalid_argument,
                            c.label + ": the pinned host key is not an OpenSSH public "
                                      "key line; refusing to connect"));
    return;
  }
  size_t len = 0;
  int key_type = 0;
  auto key = libssh2_session_hostkey(c.session, &len, &key_type);
  if (key != nullptr && len == pinned.size() && std::memcmp(key, pinned.data(), len) == 0) {
    c.state = conn_state::authenticating;
    return;
  }
  std::string offered = "unknown key";
  if (auto hash = libssh2_hostkey_hash(c.session, LIBSSH2_HOSTKEY_HASH_SHA256))
    offered = "SHA256:" + base64_encode(std::string_view{hash, 32}, false);
  fail_conn(c, make_error(errc::permission_denied,
                          c.label + ": host key of " + c.ep.host + ":"
                            + std::to_string(c.ep.port) + " (" + offered
                            + ") does not match the key pinned for this session ("
                            + type + "); refusing to connect"));
}

void ssh_loop_core::drive(conn& c) {
  if (c.state == conn_state::handshaking) {
    int rc = libssh2_session_handshake(c.session, c.fd);
    if (rc == LIBSSH2_ERROR_EAGAIN)
      return;
    if (rc != 0) {
      fail_conn(c, ssh_error(c.session, rc, c.label + ": handshake"));
      return;
    }
    check_host_key(c);
    if (c.state != conn_state::authenticating)
      return;
  }
  if (c.state == conn_state::authenticating) {
    int rc = libssh2_userauth_publickey_fromfile_ex(
      c.session, c.ep.user.c_str(), static_cast<unsigned>(c.ep.user.size()), nullptr,
      c.ep.client_key_path.c_str(), nullptr);
    if (rc == LIBSSH2_ERROR_EAGAIN)
      return;
    if (rc != 0) {
      fail_conn(c, ssh_error(c.session, rc,
                             c.label + ": public key authentication as " + c.ep.user
                               + " with " + c.ep.client_key_path));
      return;
    }
    c.state = conn_state::ready;
    c.flags->open = true;
    auto done = std::move(c.done);
    c.done = nullptr;
    std::shared_ptr<transport> t
      = std::make_shared<ssh_transport_handle>(shared_from_this(), c.id, c.flags, c.label);
    if (done)
      done(std::move(t));
    return;
  }
  if (c.state == conn_state::ready)
    pump(c);
}

// -- channels ---------------------------------------------------------------------

void ssh_loop_core::start_exec(uint64_t conn_id, std::shared_ptr<chan> h,
                               const std::string& label) {
  ++channel_count;
  auto c = find(conn_id);
  if (c == nullptr || c->state != conn_state::ready) {
    finish(*h, make_error(errc::unavailable, label + ": the connection is closed"), -1);
    return;
  }
  c->chans.push_back(std::move(h));
  c->dirty = true;
}

void ssh_loop_core::write(uint64_t conn_id, const std::shared_ptr<chan>& h,
                          std::string bytes) {
  auto c = find(conn_id);
  if (c == nullptr || h->exited || h->close_stdin)
    return;
  h->input.push_back(std::move(bytes));
  c->dirty = true;
}

void ssh_loop_core::close_stdin(uint64_t conn_id, const std::shared_ptr<chan>& h) {
  auto c = find(conn_id);
  if (c == nullptr || h->exited)
    return;
  h->close_stdin = true;
  c->dirty = true;
}

void ssh_loop_core::cancel(uint64_t conn_id, const std::shared_ptr<chan>& h) {
  if (h->exited)
    return;
  h->cancelled = true;
  auto c = find(conn_id);
  finish(*h, make_error(errc::cancelled, (c ? c->label : std::string{"ssh"})
                                           + ": command cancelled"),
         -1);
  // The close (and the freeing) happens in the pump, after any send of this
  // channel that is half done.
  if (c != nullptr)
    c->dirty = true;
}

void ssh_loop_core::close_conn(uint64_t conn_id) {
  auto c = find(conn_id);
  if (c == nullptr)
    return;
  for (auto& h : c->chans)
    finish(*h, make_error(errc::cancelled, c->label + ": connection closed"), -1);
  release(*c, true);
}

void ssh_loop_core::finish(chan& h, const caf::error& err, int exit_code) {
  if (h.exited)
    return;
  h.exited = true;
  --channel_count;
  auto cb = std::move(h.cb);
  h.cb = {};
  if (cb.on_exit)
    cb.on_exit(err, exit_code);
}

void ssh_loop_core::fail_conn(conn& c, const caf::error& err) {
  if (c.state == conn_state::closed)
    return;
  if (c.done) {
    auto done = std::move(c.done);
    c.done = nullptr;
    release(c, false);
    done(err);
    return;
  }
  for (auto& h : c.chans)
    finish(*h, err, -1);
  release(c, false);
}

void ssh_loop_core::release(conn& c, bool graceful) {
  c.state = conn_state::closed;
  c.flags->open = false;
  for (auto& h : c.chans)
    h->ch = nullptr; // freed with the session
  c.opening = nullptr;
  c.out_blocked = nullptr;
  if (c.session != nullptr) {
    if (graceful)
      (void) libssh2_session_disconnect(c.session, "closed by Aloft");
    // With the socket shut down, libssh2's remaining sends fail at once
    // instead of blocking or returning EAGAIN.
    if (c.fd >= 0)
      ::shutdown(c.fd, SHUT_RDWR);
    libssh2_session_set_blocking(c.session, 1);
    libssh2_session_free(c.session);
    c.session = nullptr;
  }
  if (c.fd >= 0) {
    ::close(c.fd);
    c.fd = -1;
  }
  c.chans.clear();
  --session_count;
}

void ssh_loop_core::pump(conn& c) {
  c.dirty = false;
  for (int pass = 0; pass < passes_per_pump; ++pass) {
    bool progress = false;
    if (c.out_blocked != nullptr) {
      auto h = c.out_blocked;
      c.out_blocked = nullptr;
      auto r = step(c, *h);
      if (r == step_result::failed || r == step_result::blocked)
        return;
      progress = true;
    }
    for (size_t i = 0; i < c.chans.size(); ++i) {
      auto r = step(c, *c.chans[i]);
      if (r == step_result::failed)
        return;
      if (r == step_result::blocked)
        break;
      if (r == step_result::progressed)
        progress = true;
    }
    // Forget channels that are finished and freed.
    auto& v = c.chans;
    for (auto i = v.begin(); i != v.end();) {
      if ((*i)->state == chan_state::done)
        i = v.erase(i);
      else
        ++i;
    }
    if (c.out_blocked != nullptr || !progress)
      return;
  }
  c.dirty = true; // more to do; let other sessions have a turn first
}

ssh_loop_core::step_result ssh_loop_core::blocked_or_idle(conn& c, chan& h, chan_op op) {
  if (libssh2_session_block_directions(c.session) & LIBSSH2_SESSION_BLOCK_OUTBOUND) {
    h.pending = op;
    c.out_blocked = &h;
    return step_result::blocked;
  }
  return step_result::idle;
}

ssh_loop_core::step_result ssh_loop_core::step(conn& c, chan& h) {
  bool progress = false;
  auto channel_failed = [&](int rc, const char* what) {
    auto err = ssh_error(c.session, rc, c.label + ": " + what);
    if (ends_session(rc)) {
      fail_conn(c, err);
      return step_result::failed;
    }
    finish(h, err, -1);
    h.input.clear();
    h.state = h.ch != nullptr ? chan_state::closing : chan_state::done;
    return step_result::progressed;
  };
  switch (h.state) {
    case chan_state::done:
      return step_result::idle;
    case chan_state::waiting_open:
      if (h.cancelled) {
        h.state = chan_state::done;
        return step_result::progressed;
      }
      if (c.opening != nullptr)
        return step_result::idle;
      c.opening = &h;
      h.state = chan_state::opening;
      progress = true;
      [[fallthrough]];
    case chan_state::opening: {
      auto ch = libssh2_channel_open_ex(c.session, "session", sizeof("session") - 1,
                                        opts_.window_size, channel_packet_size,
                                        nullptr, 0);
      if (ch == nullptr) {
        int rc = libssh2_session_last_errno(c.session);
        if (rc == LIBSSH2_ERROR_EAGAIN) {
          auto r = blocked_or_idle(c, h, chan_op::none);
          return r == step_result::idle && progress ? step_result::progressed : r;
        }
        c.opening = nullptr;
        return channel_failed(rc, "open channel");
      }
      c.opening = nullptr;
      h.ch = ch;
      if (h.cancelled) {
        h.state = chan_state::closing;
        return step_result::progressed;
      }
      h.state = chan_state::starting;
      progress = true;
    }
      [[fallthrough]];
    case chan_state::starting: {
      int rc = libssh2_channel_process_startup(h.ch, "exec", sizeof("exec") - 1,
                                               h.command.data(),
                                               static_cast<unsigned>(h.command.size()));
      if (rc == LIBSSH2_ERROR_EAGAIN) {
        auto r = blocked_or_idle(c, h, chan_op::none);
        return r == step_result::idle && progress ? step_result::progressed : r;
      }
      if (rc != 0)
        return channel_failed(rc, "exec");
      h.state = h.cancelled ? chan_state::closing : chan_state::running;
      progress = true;
      if (h.cancelled)
        return step_result::progressed;
    }
      [[fallthrough]];
    case chan_state::running: {
      // The op that blocked on output goes first (see the top of the file).
      // A cancelled channel only completes that op, then closes.
      chan_op order[3] = {chan_op::write, chan_op::eof, chan_op::read};
      if (h.pending == chan_op::eof)
        order[0] = chan_op::eof, order[1] = chan_op::write;
      else if (h.pending == chan_op::read)
        order[0] = chan_op::read, order[1] = chan_op::write, order[2] = chan_op::eof;
      size_t ops = h.cancelled ? (h.pending == chan_op::none ? 0 : 1) : 3;
      h.pending = chan_op::none;
      for (size_t k = 0; k < ops; ++k) {
        auto op = order[k];
        if (op == chan_op::write) {
          while (!h.input.empty()) {
            auto& front = h.input.front();
            auto n = libssh2_channel_write_ex(h.ch, 0, front.data() + h.input_offset,
                                              front.size() - h.input_offset);
            if (n > 0) {
              h.input_offset += static_cast<size_t>(n);
              h.bytes_out += static_cast<uint64_t>(n);
              progress = true;
              if (h.input_offset == front.size()) {
                h.input.pop_front();
                h.input_offset = 0;
              }
              continue;
            }
            if (n == LIBSSH2_ERROR_EAGAIN) {
              if (blocked_or_idle(c, h, chan_op::write) == step_result::blocked)
                return step_result::blocked;
              break;
            }
            if (n == 0)
              break; // the server's window is full
            return channel_failed(static_cast<int>(n), "write to stdin");
          }
        } else if (op == chan_op::eof) {
          if (h.close_stdin && !h.eof_sent && h.input.empty()) {
            int rc = libssh2_channel_send_eof(h.ch);
            if (rc == LIBSSH2_ERROR_EAGAIN) {
              if (blocked_or_idle(c, h, chan_op::eof) == step_result::blocked)
                return step_result::blocked;
            } else if (rc != 0) {
              return channel_failed(rc, "close stdin");
            } else {
              h.eof_sent = true;
              progress = true;
            }
          }
        } else {
          for (int stream = 0; stream < 2; ++stream) {
            for (int i = 0; i < reads_per_step; ++i) {
              auto n = libssh2_channel_read_ex(h.ch, stream, read_buf_.data(),
                                               read_buf_.size());
              if (n > 0) {
                progress = true;
                h.bytes_in += static_cast<uint64_t>(n);
                std::string_view data{read_buf_.data(), static_cast<size_t>(n)};
                auto& fn = stream == 0 ? h.cb.on_stdout : h.cb.on_stderr;
                if (fn)
                  fn(data);
                continue;
              }
              if (n == LIBSSH2_ERROR_EAGAIN) {
                if (blocked_or_idle(c, h, chan_op::read) == step_result::blocked)
                  return step_result::blocked;
                break;
              }
              if (n == 0)
                break;
              return channel_failed(static_cast<int>(n), "read output");
            }
          }
        }
      }
      if (!h.cancelled && !libssh2_channel_eof(h.ch))
        return progress ? step_result::progressed : step_result::idle;
      // Cancelled, or the command closed its output (its exit status
      // follows with the server's close).
      h.state = chan_state::closing;
      h.input.clear();
      progress = true;
    }
      [[fallthrough]];
    case chan_state::closing: {
      int rc = libssh2_channel_close(h.ch);
      if (rc == LIBSSH2_ERROR_EAGAIN) {
        auto r = blocked_or_idle(c, h, chan_op::none);
        return r == step_result::idle && progress ? step_result::progressed : r;
      }
      if (rc != 0 && ends_session(rc) && !h.exited) {
        fail_conn(c, ssh_error(c.session, rc, c.label + ": close channel"));
        return step_result::failed;
      }
      if (!h.exited) {
        int code = libssh2_channel_get_exit_status(h.ch);
        char* signal = nullptr;
        size_t signal_len = 0;
        libssh2_channel_get_exit_signal(h.ch, &signal, &signal_len, nullptr, nullptr,
                                        nullptr, nullptr);
        if (signal != nullptr) {
          code = exit_code_of_signal(std::string{signal, signal_len});
          libssh2_free(c.session, signal);
        }
        finish(h, caf::error{}, code);
      }
      h.state = chan_state::freeing;
      progress = true;
    }
      [[fallthrough]];
    case chan_state::freeing: {
      int rc = libssh2_channel_free(h.ch);
      if (rc == LIBSSH2_ERROR_EAGAIN) {
        auto r = blocked_or_idle(c, h, chan_op::none);
        return r == step_result::idle && progress ? step_result::progressed : r;
      }
      h.ch = nullptr;
      h.state = chan_state::done;
      return step_result::progressed;
    }
  }
  return progress ? step_result::progressed : step_result::idle;
}

} // namespace detail

// -- the factory --------------------------------------------------------------------

ssh_io_loop::ssh_io_loop(ssh_options opts)
  : core_(std::make_shared<detail::ssh_loop_core>(std::move(opts))) {
  thread_ = std::thread([core = core_] { core->run(); });
}

ssh_io_loop::~ssh_io_loop() {
  core_->request_stop();
  if (thread_.joinable())
    thread_.join();
}

void ssh_io_loop::connect(const ssh_endpoint& ep, connect_callback done) {
  if (!core_->post([core = core_.get(), ep, done]() mutable {
        core->start_connect(std::move(ep), std::move(done));
      })
      && done)
    done(make_error(errc::cancelled, "ssh " + ep.host + ":" + std::to_string(ep.port)
                                       + ": the I/O loop has shut down"));
}

std::thread::id ssh_io_loop::io_thread_id() const {
  return thread_.get_id();
}

size_t ssh_io_loop::session_count() const {
  return core_->session_count.load();
}

size_t ssh_io_loop::channel_count() const {
  return core_->channel_count.load();
}

std::unique_ptr<transport_factory> make_ssh_transport_factory(ssh_options opts) {
  return std::make_unique<ssh_io_loop>(std::move(opts));
}

} // namespace aloft
