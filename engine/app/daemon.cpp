#include "engine/app/daemon.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "engine/app/protocol.hpp"
#include "engine/base/error.hpp"
#include "engine/base/redact.hpp"

namespace aloft {

namespace {

// A `logs` stream reads the file while the client's buffer is below this, so
// a large log goes out at the pace the client reads it.
constexpr size_t log_pump_watermark = size_t{1} << 20;
// Output events that arrive while the file is still being sent wait here;
// past the cap the oldest go (their bytes are in the file by then, and a gap
// is refilled from the file anyway).
constexpr size_t max_pending_output = 4096;
constexpr size_t read_chunk = size_t{64} << 10;

caf::expected<sockaddr_un> unix_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path))
    return make_error(errc::invalid_argument,
                      "socket path '" + path + "' is " + std::to_string(path.size())
                        + " bytes; a Unix socket path must be 1 to "
                        + std::to_string(sizeof(addr.sun_path) - 1)
                        + " bytes (choose a shorter --home)");
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

// Queue between other threads (subscriber callbacks on engine threads, long
// ops on workers) and the poll loop. It owns the eventfd, and callbacks hold
// it by shared_ptr, so a callback that races with the daemon's teardown
// writes to a live object, never a freed one.
struct inbox {
  struct entry {
    uint64_t stream;
    event ev;
  };
  struct reply_entry {
    uint64_t client;
    std::string op;
    json reply;
  };

  explicit inbox(size_t cap) : cap(cap) {
    wake_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  }
  ~inbox() {
    if (wake_fd >= 0)
      ::close(wake_fd);
  }

  void push(uint64_t stream, const event& ev) {
    bool was_empty;
    {
      std::lock_guard<std::mutex> guard{mtx};
      if (items.size() >= cap) {
        ++dropped;
        return;
      }
      was_empty = items.empty() && replies.empty();
      items.push_back(entry{stream, ev});
    }
    // One wake per batch: the loop drains everything it finds.
    if (was_empty)
      wake();
  }

  // Replies are never dropped (each answers a request the client waits
  // for) and there are at most as many as jobs admitted, which is bounded.
  void push_reply(uint64_t client, std::string op, json reply) {
    bool was_empty;
    {
      std::lock_guard<std::mutex> guard{mtx};
      was_empty = items.empty() && replies.empty();
      replies.push_back(reply_entry{client, std::move(op), std::move(reply)});
    }
    if (was_empty)
      wake();
  }

  void wake() {
    uint64_t one = 1;
    auto n = ::write(wake_fd, &one, sizeof(one));
    (void) n; // EAGAIN means the counter is already non-zero: awake anyway
  }

  std::vector<entry> take(uint64_t& dropped_out, std::vector<reply_entry>& replies_out) {
    uint64_t counter;
    while (::read(wake_fd, &counter, sizeof(counter)) > 0) {
    }
    std::vector<entry> out;
    std::lock_guard<std::mutex> guard{mtx};
    out.swap(items);
    replies_out.swap(replies);
    dropped_out = dropped;
    dropped = 0;
    return out;
  }

  int wake_fd = -1;
  size_t cap;
  std::mutex mtx;
  std::vector<entry> items;
  std::vector<reply_entry> replies;
  uint64_t dropped = 0;
};

// A fixed set of worker threads for long ops, with a bounded queue. Threads
// start on first use (most daemons never sync) and never number more than
// `threads`. `submit` is called from the poll loop; `close` and `join` from
// the thread that owns the pool; `running` from any thread.
class job_pool {
public:
  job_pool(size_t threads, size_t max_queued)
    : threads_(std::max<size_t>(threads, 1)), max_queued_(max_queued) {}
  ~job_pool() {
    close();
    join();
  }

  job_pool(const job_pool&) = delete;
  job_pool& operator=(const job_pool&) = delete;

  /// Queues `job`; false when the queue is full or the pool stopped.
  bool submit(std::function<void()> job) {
    std::lock_guard<std::mutex> guard{mtx_};
    if (stopping_ || queue_.size() >= max_queued_)
      return false;
    queue_.push_back(std::move(job));
    // Each idle worker takes one job; jobs beyond them need a new worker.
    if (queue_.size() > idle_ && workers_.size() < threads_) {
      try {
        workers_.emplace_back([this] { work(); });
      } catch (const std::system_error&) {
        // No thread to be had: the workers there are take the job later;
        // with none at all, refuse it rather than queue it forever.
        if (workers_.empty()) {
          queue_.pop_back();
          return false;
        }
      }
    }
    cv_.notify_one();
    return true;
  }

  /// Refuses new jobs and drops the queued ones (no worker starts another);
  /// returns how many were dropped. Running jobs go on until `join`.
  size_t close() {
    size_t dropped;
    {
      std::lock_guard<std::mutex> guard{mtx_};
      stopping_ = true;
      dropped = queue_.size();
      queue_.clear();
    }
    cv_.notify_all();
    return dropped;
  }

  /// Waits for the running jobs and ends the workers. REQUIRES: close().
  void join() {
    std::vector<std::thread> workers;
    {
      std::lock_guard<std::mutex> guard{mtx_};
      workers.swap(workers_);
    }
    for (auto& t : workers)
      t.join();
  }

  /// Jobs running now.
  size_t running() {
    std::lock_guard<std::mutex> guard{mtx_};
    return running_;
  }

  size_t capacity() const { return threads_; }
  size_t max_queued() const { return max_queued_; }

private:
  void work() {
    std::unique_lock<std::mutex> lock{mtx_};
    for (;;) {
      ++idle_;
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      --idle_;
      if (stopping_)
        return;
      auto job = std::move(queue_.front());
      queue_.pop_front();
      ++running_;
      lock.unlock();
      job(); // jobs catch their own failures (see start_long_op)
      lock.lock();
      --running_;
    }
  }

  const size_t threads_;
  const size_t max_queued_;
  std::mutex mtx_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  std::vector<std::thread> workers_;
  size_t idle_ = 0;
  size_t running_ = 0;
  bool stopping_ = false;
};

} // namespace

struct daemon::impl {
  enum class stream_kind { logs, events };

  struct stream {
    uint64_t key = 0;
    uint64_t client = 0;
    json req_id;
    uint64_t subscription = 0;
    bool subscribed = false;
    bool done = false;
    stream_kind kind = stream_kind::events;
    // logs
    std::string session;
    std::string path;
    uint64_t sent_upto = 0; // bytes of the log the client has
    bool file_done = false;
    bool terminal = false;
    std::string end_state;
    std::deque<event> pending;
    // events
    events_args filter;
    uint64_t last_seq = 0;
  };

  struct client {
    int fd = -1;
    std::string in;
    bool discarding = false; // skipping the rest of an oversized line
    bool read_closed = false;
    bool dead = false;
    std::string out;
    size_t out_pos = 0;
    std::vector<uint64_t> streams;
    size_t awaiting = 0; // long ops whose replies have not come back yet

    size_t pending_out() const { return out.size() - out_pos; }
  };

  impl(engine& e, std::string path, daemon_options opts)
    : eng(e),
      path(std::move(path)),
      opts(std::move(opts)),
      box(std::make_shared<inbox>(this->opts.max_queued_events)),
      sync_pool(this->opts.worker_threads, this->opts.max_queued_jobs),
      check_pool(this->opts.check_threads, this->opts.max_queued_jobs) {}

  engine& eng;
  std::string path;
  daemon_options opts;
  std::shared_ptr<inbox> box;
  job_pool sync_pool;  // transfers: minutes
  job_pool check_pool; // checks: seconds
  std::atomic<bool> stopping{false};
  std::atomic<bool> reload_requested{false};
  int listen_fd = -1;
  dev_t sock_dev = 0;
  ino_t sock_ino = 0;
  uint64_t next_client = 1;
  uint64_t next_stream = 1;
  std::map<uint64_t, client> clients;
  std::map<uint64_t, stream> streams;

  void log(const std::string& what) {
    if (opts.log)
      opts.log(redact(what));
  }

  // -- output -----------------------------------------------------------------

  void send(client& c, const json& j) {
    if (c.dead)
      return;
    auto line = encode_line(j);
    // The last gate before a client: no stored secret leaves the daemon,
    // whichever code path put it in a reply or an event.
    c.out += is_clean(line) ? line : redact(line);
    if (c.pending_out() > opts.max_output_bytes) {
      log("dropping a client that does not read its output ("
          + std::to_string(c.pending_out()) + " bytes queued)");
      c.dead = true;
    }
  }

  void send_to(uint64_t client_id, const json& j) {
    auto i = clients.find(client_id);
    if (i != clients.end())
      send(i->second, j);
  }

  void flush(client& c) {
    while (!c.dead && c.pending_out() > 0) {
      auto n = ::send(c.fd, c.out.data() + c.out_pos, c.pending_out(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR)
          continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
          c.dead = true; // the peer is gone
        break;
      }
      c.out_pos += static_cast<size_t>(n);
    }
    if (c.out_pos == c.out.size()) {
      c.out.clear();
      c.out_pos = 0;
    } else if (c.out_pos > (size_t{1} << 20) && c.out_pos > c.out.size() / 2) {
      c.out.erase(0, c.out_pos); // keep the buffer from growing at the front
      c.out_pos = 0;
    }
  }

  // -- streams ----------------------------------------------------------------

  void end_stream(stream& s) {
    if (s.subscribed)
      eng.unsubscribe(s.subscription);
    s.subscribed = false;
    s.done = true;
  }

  void finish_stream(stream& s, json reply) {
    send_to(s.client, reply);
    end_stream(s);
  }

  void send_log_bytes(stream& s, uint64_t offset, std::string data) {
    auto item = json::object();
    item.set("offset", static_cast<long long>(offset));
    item.set("data", std::move(data));
    send_to(s.client, make_stream_item(s.req_id, std::move(item)));
  }

  // Sends the file's bytes from `sent_upto` up to `limit` (or its end).
  // Returns false if the stream failed and was ended.
  bool fill_from_file(stream& s, uint64_t limit) {
    while (s.sent_upto < limit) {
      auto want = std::min<uint64_t>(default_log_chunk_bytes, limit - s.sent_upto);
      auto c = read_log_chunk(s.path, s.sent_upto, static_cast<size_t>(want));
      if (!c) {
        finish_stream(s, make_error_reply(s.req_id, c.error()));
        return false;
      }
      if (c->data.empty())
        break;
      s.sent_upto = c->next_offset;
      send_log_bytes(s, c->offset, std::move(c->data));
    }
    return true;
  }

  void finish_logs(stream& s) {
    // Bytes written after the last event still belong to the session.
    if (!fill_from_file(s, UINT64_MAX))
      return;
    auto result = json::object();
    result.set("end", "session reached state " + s.end_state);
    result.set("state", s.end_state);
    result.set("next_offset", static_cast<long long>(s.sent_upto));
    finish_stream(s, make_reply(s.req_id, std::move(result)));
  }

  void deliver_output(stream& s, const event& ev) {
    auto end = ev.offset + ev.data.size();
    if (end <= s.sent_upto)
      return; // already sent from the file
    // Bytes between what was sent and this event were written to the file
    // but their event was missed (dropped, or published before we
    // subscribed): take them from the file.
    if (ev.offset > s.sent_upto && !fill_from_file(s, ev.offset))
      return;
    if (ev.offset >= s.sent_upto) {
      send_log_bytes(s, ev.offset, ev.data);
    } else {
      auto skip = static_cast<size_t>(s.sent_upto - ev.offset);
      send_log_bytes(s, s.sent_upto, ev.data.substr(skip));
    }
    s.sent_upto = end;
  }

  void on_log_event(stream& s, const event& ev) {
    if (ev.kind == "state") {
      session_state st;
      if (session_state_from_string(ev.state, st) && is_terminal(st)) {
        s.terminal = true;
        s.end_state = ev.state;
        if (s.file_done)
          finish_logs(s);
      }
      return;
    }
    if (ev.kind != "output")
      return;
    if (!s.file_done) {
      if (s.pending.size() >= max_pending_output)
        s.pending.pop_front();
      s.pending.push_back(ev);
      return;
    }
    deliver_output(s, ev);
  }

  // Sends the next chunks of the file while the client keeps up; at the end
  // of the file switches to events.
  void pump_logs(stream& s) {
    auto ci = clients.find(s.client);
    if (ci == clients.end())
      return;
    while (!s.done && !s.file_done && !ci->second.dead
           && ci->second.pending_out() < log_pump_watermark) {
      auto c = read_log_chunk(s.path, s.sent_upto, default_log_chunk_bytes);
      if (!c) {
        finish_stream(s, make_error_reply(s.req_id, c.error()));
        return;
      }
      if (!c->data.empty()) {
        s.sent_upto = c->next_offset;
        send_log_bytes(s, c->offset, std::move(c->data));
      }
      if (c->eof || c->next_offset == c->offset) {
        s.file_done = true;
        while (!s.pending.empty() && !s.done) {
          deliver_output(s, s.pending.front());
          s.pending.pop_front();
        }
        if (!s.done && s.terminal)
          finish_logs(s);
      }
    }
  }

  bool needs_pump() const {
    for (auto& [key, s] : streams)
      if (s.kind == stream_kind::logs && !s.done && !s.file_done) {
        auto ci = clients.find(s.client);
        if (ci != clients.end() && ci->second.pending_out() < log_pump_watermark)
          return true;
      }
    return false;
  }

  stream& add_stream(uint64_t client_id, client& c, const request& req,
                     stream_kind kind) {
    auto key = next_stream++;
    auto& s = streams[key];
    s.key = key;
    s.client = client_id;
    s.req_id = req.id;
    s.kind = kind;
    c.streams.push_back(key);
    return s;
  }

  void start_logs(uint64_t client_id, client& c, const request& req) {
    auto a = read_logs_args(req.args);
    if (!a)
      return send(c, make_error_reply(req.id, a.error()));
    auto path = eng.log_path(a->id);
    if (!path)
      return send(c, make_error_reply(req.id, path.error()));
    auto& s = add_stream(client_id, c, req, stream_kind::logs);
    s.session = a->id;
    s.path = *path;
    s.sent_upto = a->offset;
    // Subscribe before reading anything, so no byte falls between the file
    // and the events; duplicates are dropped by offset instead.
    auto box_ref = box;
    auto key = s.key;
    auto session = a->id;
    s.subscription = eng.subscribe([box_ref, key, session](const event& ev) {
      if (ev.session == session && (ev.kind == "output" || ev.kind == "state"))
        box_ref->push(key, ev);
    });
    s.subscribed = true;
    auto view = eng.show(a->id);
    if (!view) {
      finish_stream(s, make_error_reply(req.id, view.error()));
      return;
    }
    if (is_terminal(view->record.state)) {
      s.terminal = true;
      s.end_state = to_string(view->record.state);
    }
    pump_logs(s);
  }

  void start_events(uint64_t client_id, client& c, const request& req) {
    auto a = read_events_args(req.args);
    if (!a)
      return send(c, make_error_reply(req.id, a.error()));
    auto& s = add_stream(client_id, c, req, stream_kind::events);
    s.filter = *a;
    auto box_ref = box;
    auto key = s.key;
    auto filter = *a;
    s.subscription = eng.subscribe([box_ref, key, filter](const event& ev) {
      if (event_matches(filter, ev))
        box_ref->push(key, ev);
    });
    s.subscribed = true;
    // The backlog first; live events already in it are recognised by seq.
    for (auto& ev : eng.events(a->n)) {
      if (!event_matches(s.filter, ev))
        continue;
      s.last_seq = std::max(s.last_seq, ev.seq);
      send(c, make_stream_item(req.id, to_json(ev)));
    }
  }

  void on_event(stream& s, const event& ev) {
    if (s.done)
      return;
    if (s.kind == stream_kind::logs)
      return on_log_event(s, ev);
    // Output events are not journaled and may carry no seq.
    if (ev.seq != 0) {
      if (ev.seq <= s.last_seq)
        return;
      s.last_seq = ev.seq;
    }
    send_to(s.client, make_stream_item(s.req_id, to_json(ev)));
  }

  void deliver_inbox() {
    uint64_t dropped = 0;
    std::vector<inbox::reply_entry> replies;
    auto items = box->take(dropped, replies);
    if (dropped > 0)
      log("dropped " + std::to_string(dropped)
          + " events: streaming clients fell behind");
    for (auto& item : items) {
      auto i = streams.find(item.stream);
      if (i != streams.end())
        on_event(i->second, item.ev);
    }
    // Client ids are never reused, so a reply finds its own client or none.
    for (auto& r : replies) {
      auto ci = clients.find(r.client);
      if (ci == clients.end()) {
        log("a client left before its " + r.op + " reply; the reply was dropped");
        continue;
      }
      if (ci->second.awaiting > 0)
        --ci->second.awaiting;
      send(ci->second, r.reply);
    }
  }

  // -- long ops ---------------------------------------------------------------

  void start_long_op(uint64_t client_id, client& c, const request& req) {
    // Bad arguments are answered at once, even when every worker is busy.
    if (auto err = check_long_op_args(req))
      return send(c, make_error_reply(req.id, err));
    auto box_ref = box;
    auto* e = &eng;
    auto job = [box_ref, e, client_id, req] {
      json reply;
      // handle_request turns std::exceptions into replies; anything else
      // must not end the worker either, and the client still gets an answer.
      try {
        reply = handle_request(*e, req);
      } catch (...) {
        reply = make_error_reply(req.id,
                                 make_error(errc::internal, req.op + ": unexpected failure"));
      }
      box_ref->push_reply(client_id, req.op, std::move(reply));
    };
    auto& pool = pace_of(req.op) == op_pace::minutes ? sync_pool : check_pool;
    if (!pool.submit(std::move(job)))
      return send(c, make_error_reply(
                       req.id, make_error(errc::resource_exhausted,
                                          req.op + ": the daemon already runs "
                                            + std::to_string(pool.capacity())
                                            + " such ops and has "
                                            + std::to_string(pool.max_queued())
                                            + " waiting; try again later")));
    ++c.awaiting;
  }

  // -- requests -------------------------------------------------------------

  void on_line(uint64_t client_id, client& c, std::string_view line) {
    if (!line.empty() && line.back() == '\r')
      line.remove_suffix(1);
    if (line.find_first_not_of(" \t") == std::string_view::npos)
      return; // blank lines are harmless; people type them
    json id;
    auto req = parse_request_line(line, &id);
    if (!req)
      return send(c, make_error_reply(id, req.error()));
    if (is_long_op(req->op))
      return start_long_op(client_id, c, *req);
    auto follow = req->args.find("follow");
    if (follow && follow->is_bool() && follow->as_bool()) {
      if (req->op == "logs")
        return start_logs(client_id, c, *req);
      if (req->op == "events")
        return start_events(client_id, c, *req);
    }
    send(c, handle_request(eng, *req));
  }

  void read_from(uint64_t client_id, client& c) {
    char buf[read_chunk];
    auto n = ::recv(c.fd, buf, sizeof(buf), 0);
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        c.dead = true;
      return;
    }
    if (n == 0) {
      c.read_closed = true;
      return;
    }
    c.in.append(buf, static_cast<size_t>(n));
    size_t start = 0;
    for (;;) {
      auto nl = c.in.find('\n', start);
      if (nl == std::string::npos)
        break;
      if (c.discarding)
        c.discarding = false; // the end of the oversized line
      else
        on_line(client_id, c, std::string_view{c.in}.substr(start, nl - start));
      start = nl + 1;
      if (c.dead)
        return;
    }
    c.in.erase(0, start);
    if (c.discarding) {
      c.in.clear();
    } else if (c.in.size() > max_request_bytes) {
      // Answer now rather than buffer an unbounded line; the rest of it is
      // skipped up to its newline and the connection stays usable.
      send(c, make_error_reply(
                json{}, make_error(errc::invalid_argument,
                                   "request line longer than the limit of "
                                     + std::to_string(max_request_bytes)
                                     + " bytes; it was skipped")));
      c.in.clear();
      c.discarding = true;
    }
  }

  // -- connections ------------------------------------------------------------

  void accept_clients() {
    for (;;) {
      int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR)
          continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
          log(std::string{"accept failed: "} + std::strerror(errno));
        return;
      }
      // The socket is 0600 already; checking the peer too costs nothing and
      // survives a permissive directory or a chmod by someone else.
      ucred cred{};
      socklen_t len = sizeof(cred);
      if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0
          && cred.uid != ::geteuid() && cred.uid != 0) {
        log("refused a connection from uid " + std::to_string(cred.uid));
        ::close(fd);
        continue;
      }
      if (clients.size() >= opts.max_clients) {
        auto line = encode_line(make_error_reply(
          json{}, make_error(errc::resource_exhausted,
                             "the daemon serves at most "
                               + std::to_string(opts.max_clients)
                               + " connections; try again later")));
        auto n = ::send(fd, line.data(), line.size(), MSG_NOSIGNAL);
        (void) n; // best effort: the connection is closed either way
        ::close(fd);
        continue;
      }
      auto& c = clients[next_client++];
      c.fd = fd;
    }
  }

  void close_client(uint64_t id) {
    auto i = clients.find(id);
    if (i == clients.end())
      return;
    for (auto key : i->second.streams) {
      auto s = streams.find(key);
      if (s != streams.end()) {
        end_stream(s->second);
        streams.erase(s);
      }
    }
    ::close(i->second.fd);
    clients.erase(i);
  }

  void reap() {
    for (auto i = streams.begin(); i != streams.end();) {
      if (i->second.done) {
        auto c = clients.find(i->second.client);
        if (c != clients.end()) {
          auto& v = c->second.streams;
          v.erase(std::remove(v.begin(), v.end(), i->first), v.end());
        }
        i = streams.erase(i);
      } else {
        ++i;
      }
    }
    std::vector<uint64_t> gone;
    for (auto& [id, c] : clients) {
      // A client that closed its sending side still gets its answers and
      // its streams; once those are out there is nothing left to do.
      bool finished = c.read_closed && c.streams.empty() && c.awaiting == 0
                      && c.pending_out() == 0;
      if (c.dead || finished)
        gone.push_back(id);
    }
    for (auto id : gone)
      close_client(id);
  }

  void shutdown() {
    std::vector<uint64_t> ids;
    for (auto& [id, c] : clients)
      ids.push_back(id);
    for (auto id : ids)
      close_client(id);
    for (auto& [key, s] : streams)
      end_stream(s);
    streams.clear();
    // Queued syncs have not started: drop them. A running one may be writing
    // into a worktree: let it finish rather than pull the engine away under
    // it.
    auto dropped = sync_pool.close() + check_pool.close();
    if (dropped > 0)
      log("dropped " + std::to_string(dropped) + " queued sync"
          + (dropped == 1 ? "" : "s") + " (not started)");
    auto running = sync_pool.running() + check_pool.running();
    if (running > 0)
      log("waiting for " + std::to_string(running) + " running sync"
          + (running == 1 ? "" : "s") + " to finish");
    sync_pool.join();
    check_pool.join();
    if (listen_fd >= 0) {
      ::close(listen_fd);
      listen_fd = -1;
      // Remove the file only if it is still ours: a daemon started after us
      // on the same path owns whatever is there now.
      struct stat st;
      if (::lstat(path.c_str(), &st) == 0 && st.st_dev == sock_dev
          && st.st_ino == sock_ino)
        ::unlink(path.c_str());
    }
  }

  caf::error listen() {
    auto addr = unix_address(path);
    if (!addr)
      return addr.error();
    if (box->wake_fd < 0)
      return from_errno(errno, "eventfd");
    struct stat st;
    if (::lstat(path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode))
        return make_error(errc::failed_precondition,
                          path + " exists and is not a socket; move it away or "
                                 "choose another --home");
      auto probe = connect_unix_socket(path);
      if (probe) {
        ::close(*probe);
        return make_error(errc::already_exists,
                          "another aloft daemon is already listening on " + path
                            + "; stop it first, or use another --home");
      }
      if (code_of(probe.error()) != errc::unavailable)
        return annotate(probe.error(), "checking the existing socket " + path);
      log("replacing stale socket " + path + " (no daemon answered)");
      if (::unlink(path.c_str()) != 0 && errno != ENOENT)
        return from_errno(errno, "cannot remove stale socket " + path);
    }
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
      return from_errno(errno, "socket");
    // Narrow the umask around bind so the file never exists with looser
    // permissions, not even for the instant before chmod.
    auto old_mask = ::umask(0177);
    auto rc = ::bind(fd, reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr));
    auto bind_errno = errno;
    ::umask(old_mask);
    if (rc != 0) {
      ::close(fd);
      return from_errno(bind_errno, "cannot bind " + path);
    }
    if (::chmod(path.c_str(), 0600) != 0 || ::lstat(path.c_str(), &st) != 0) {
      auto err = from_errno(errno, "cannot set the mode of " + path);
      ::close(fd);
      ::unlink(path.c_str());
      return err;
    }
    sock_dev = st.st_dev;
    sock_ino = st.st_ino;
    if (::listen(fd, 128) != 0) {
      auto err = from_errno(errno, "cannot listen on " + path);
      ::close(fd);
      ::unlink(path.c_str());
      return err;
    }
    listen_fd = fd;
    return {};
  }

  // SIGHUP: settings.json again. Reading a small file and the credential
  // store is quick enough for the loop.
  void reload_settings() {
    auto r = eng.reload();
    std::string what = "reloaded settings: " + std::to_string(r.added.size()) + " added, "
                       + std::to_string(r.changed.size()) + " changed, "
                       + std::to_string(r.removed.size()) + " removed";
    log(what);
    for (auto& p : r.problems)
      log("settings: " + p);
  }

  caf::error run() {
    if (listen_fd < 0)
      return make_error(errc::failed_precondition, "daemon: run() before listen()");
    std::vector<pollfd> fds;
    std::vector<uint64_t> ids;
    caf::error result;
    while (!stopping.load()) {
      fds.clear();
      ids.clear();
      fds.push_back(pollfd{box->wake_fd, POLLIN, 0});
      fds.push_back(pollfd{listen_fd, POLLIN, 0});
      for (auto& [id, c] : clients) {
        short events = 0;
        if (!c.read_closed)
          events |= POLLIN;
        if (c.pending_out() > 0)
          events |= POLLOUT;
        fds.push_back(pollfd{c.fd, events, 0});
        ids.push_back(id);
      }
      int timeout = needs_pump() ? 0 : -1;
      int n = ::poll(fds.data(), fds.size(), timeout);
      if (n < 0) {
        if (errno == EINTR)
          continue;
        result = from_errno(errno, "poll");
        break;
      }
      if (fds[0].revents & POLLIN)
        deliver_inbox();
      if (reload_requested.exchange(false))
        reload_settings();
      if (fds[1].revents & POLLIN)
        accept_clients();
      for (size_t i = 0; i < ids.size(); ++i) {
        auto ci = clients.find(ids[i]);
        if (ci == clients.end())
          continue;
        auto& c = ci->second;
        auto rev = fds[i + 2].revents;
        if (rev & (POLLERR | POLLNVAL))
          c.dead = true;
        if (!c.dead && (rev & POLLIN))
          read_from(ids[i], c);
        // POLLHUP on a Unix stream socket means the peer closed both ways
        // (a half-close is only POLLRDHUP): nobody is left to answer.
        if (rev & POLLHUP)
          c.dead = true;
      }
      for (auto& [key, s] : streams)
        if (s.kind == stream_kind::logs && !s.done && !s.file_done)
          pump_logs(s);
      // Departed clients are dropped (and unsubscribed) before anyone is
      // answered, so a reply always reflects what this turn saw.
      reap();
      for (auto& [id, c] : clients)
        flush(c);
      reap();
    }
    shutdown();
    return result;
  }
};

daemon::daemon(engine& e, std::string socket_path, daemon_options opts)
  : impl_(std::make_unique<impl>(e, std::move(socket_path), std::move(opts))) {}

daemon::~daemon() {
  impl_->shutdown();
}

caf::error daemon::listen() {
  return impl_->listen();
}

caf::error daemon::run() {
  return impl_->run();
}

void daemon::stop() {
  impl_->stopping.store(true);
  impl_->box->wake();
}

void daemon::reload() {
  impl_->reload_requested.store(true);
  impl_->box->wake();
}

const std::string& daemon::socket_path() const {
  return impl_->path;
}

caf::expected<int> connect_unix_socket(const std::string& path) {
  auto addr = unix_address(path);
  if (!addr)
    return addr.error();
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return from_errno(errno, "socket");
  int rc;
  do {
    rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr));
  } while (rc != 0 && errno == EINTR);
  if (rc == 0)
    return fd;
  auto e = errno;
  ::close(fd);
  if (e == ENOENT)
    return make_error(errc::not_found, "no socket at " + path);
  if (e == ECONNREFUSED)
    return make_error(errc::unavailable, "nobody answers on " + path);
  return from_errno(e, "cannot connect to " + path);
}

} // namespace aloft
