#include "tests/emulators/fly/fly_emulator.hpp"

#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <ctime>
#include <deque>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "engine/base/error.hpp"
#include "engine/base/ids.hpp"
#include "engine/base/json.hpp"
#include "engine/executor.hpp"
#include "tests/emulators/fly/machine_sandbox.hpp"
#include "tests/emulators/fly/tcp_forwarder.hpp"
#include "tests/support/http_server.hpp"

namespace aloft::test {

namespace {

using steady = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr const char* v6_address = "::1";
constexpr const char* v4_address = "127.0.0.1";
constexpr const char* shared_v4_address = "127.0.0.2";
constexpr const char* private_v6_address = "fdaa:0:1::2";

int64_t now_ms() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string rfc3339(int64_t ms) {
  std::time_t t = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string upper(std::string s) {
  for (auto& c : s)
    if (c >= 'a' && c <= 'z')
      c = static_cast<char>(c - 'a' + 'A');
  return s;
}

using query_list = std::vector<std::pair<std::string, std::string>>;

query_list parse_query(std::string_view q) {
  query_list out;
  while (!q.empty()) {
    auto amp = q.find('&');
    auto pair = q.substr(0, amp);
    if (!pair.empty()) {
      auto eq = pair.find('=');
      out.emplace_back(percent_decode(pair.substr(0, eq)),
                       eq == std::string_view::npos
                           ? std::string{}
                           : percent_decode(pair.substr(eq + 1)));
    }
    if (amp == std::string_view::npos)
      break;
    q.remove_prefix(amp + 1);
  }
  return out;
}

std::string query_value(const query_list& q, const std::string& key) {
  for (auto& [k, v] : q)
    if (k == key)
      return v;
  return {};
}

bool truthy(const std::string& v) {
  return v == "true" || v == "1" || v == "yes";
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    auto end = s.find(',', start);
    auto item =
        s.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!item.empty())
      out.push_back(item);
    if (end == std::string::npos)
      break;
    start = end + 1;
  }
  return out;
}

http_reply json_reply(int status, const json& body) {
  return http_reply::json(status, body.dump());
}

http_reply error_reply(int status, const std::string& message,
                       const std::string& fly_status = {}) {
  auto body = json::object();
  body.set("error", message);
  if (!fly_status.empty())
    body.set("status", fly_status);
  return json_reply(status, body);
}

// "SIGTERM", "TERM" or a number; 0 when unknown.
int parse_signal(const json* v) {
  if (v == nullptr)
    return 0;
  if (v->is_integer())
    return v->as_int() > 0 && v->as_int() < NSIG ? static_cast<int>(v->as_int()) : 0;
  auto s = upper(v->as_string());
  if (s.rfind("SIG", 0) == 0)
    s = s.substr(3);
  static const std::pair<const char*, int> names[] = {
      {"INT", SIGINT}, {"TERM", SIGTERM}, {"KILL", SIGKILL}, {"QUIT", SIGQUIT},
      {"HUP", SIGHUP}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"ABRT", SIGABRT}};
  for (auto& [name, sig] : names)
    if (s == name)
      return sig;
  return 0;
}

// A duration as Fly writes it ("10s", "500ms", "1m") or integer seconds;
// nullopt when unreadable.
std::optional<milliseconds> parse_duration(const json* v) {
  if (v == nullptr || v->is_null())
    return std::nullopt;
  if (v->is_number())
    return milliseconds(static_cast<int64_t>(v->as_double() * 1000));
  auto s = v->as_string();
  size_t digits = 0;
  while (digits < s.size() && s[digits] >= '0' && s[digits] <= '9')
    ++digits;
  if (digits == 0 || digits > 9)
    return std::nullopt;
  auto n = std::stoll(s.substr(0, digits));
  auto unit = s.substr(digits);
  if (unit.empty() || unit == "s")
    return milliseconds(n * 1000);
  if (unit == "ms")
    return milliseconds(n);
  if (unit == "m")
    return milliseconds(n * 60000);
  return std::nullopt;
}

bool valid_app_name(const std::string& n) {
  if (n.size() < 2 || n.size() > 63 || n.front() == '-' || n.back() == '-')
    return false;
  for (char c : n)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
      return false;
  return true;
}

// "registry/repo:tag" as Fly's image_ref.
json image_ref(const std::string& image) {
  std::string registry = "docker.io";
  std::string rest = image;
  auto slash = rest.find('/');
  if (slash != std::string::npos) {
    auto first = rest.substr(0, slash);
    if (first.find('.') != std::string::npos || first.find(':') != std::string::npos
        || first == "localhost") {
      registry = first;
      rest = rest.substr(slash + 1);
    }
  }
  std::string digest;
  if (auto at = rest.find('@'); at != std::string::npos) {
    digest = rest.substr(at + 1);
    rest = rest.substr(0, at);
  }
  std::string tag = "latest";
  auto colon = rest.rfind(':');
  if (colon != std::string::npos && rest.find('/', colon) == std::string::npos) {
    tag = rest.substr(colon + 1);
    rest = rest.substr(0, colon);
  }
  if (registry == "docker.io" && rest.find('/') == std::string::npos)
    rest = "library/" + rest;
  auto ref = json::object();
  ref.set("registry", registry)
      .set("repository", rest)
      .set("tag", tag)
      .set("digest", digest);
  return ref;
}

// A queue of blocking jobs run one at a time, in order, on a shared pool:
// one per machine, so a stop never overtakes the launch before it.
class strand : public std::enable_shared_from_this<strand> {
public:
  explicit strand(thread_pool* pool) : pool_(pool) {}

  void post(std::function<void()> job) {
    std::lock_guard<std::mutex> guard{mtx_};
    jobs_.push_back(std::move(job));
    if (running_)
      return;
    running_ = true;
    pool_->post([self = shared_from_this()] { self->drain(); });
  }

private:
  void drain() {
    for (;;) {
      std::function<void()> job;
      {
        std::lock_guard<std::mutex> guard{mtx_};
        if (jobs_.empty()) {
          running_ = false;
          return;
        }
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }

  thread_pool* pool_;
  std::mutex mtx_;
  std::deque<std::function<void()>> jobs_;
  bool running_ = false;
};

struct ip_record {
  std::string ip;
  std::string type;
  std::string region;
  std::string service_name;
  int64_t created_ms = 0;
};

struct app_record {
  std::string id;
  std::string name;
  std::string org;
  int64_t created_ms = 0;
  std::vector<ip_record> ips;
};

struct machine_record {
  std::string id;
  std::string app;
  std::string app_id;
  std::string name;
  std::string region;
  std::string instance_id;
  std::string private_ip;
  std::string state;
  json config;
  int64_t created_ms = 0;
  int64_t updated_ms = 0;
  uint64_t seq = 0;
  std::vector<json> events; // oldest first
  // Bumped by every launch and stop: stale timers and waiters check it.
  uint64_t gen = 0;
  steady::time_point boot_due;
  std::optional<sandbox_run> run;
  pid_t init_pid = 0; // of the last launch, until reaped
  bool init_reaped = true;
  std::thread init_waiter;
  std::vector<std::unique_ptr<tcp_forwarder>> proxies;
  std::shared_ptr<strand> jobs;
  int stop_signal = SIGINT;
  milliseconds stop_grace{5000};
  std::string last_error;
};

bool live(const machine_record& m) {
  return m.state != "destroyed";
}

} // namespace

// -- the emulator's state ---------------------------------------------------------

struct fly_emulator::impl {
  using machine_ptr = std::shared_ptr<machine_record>;

  fly_emulator_options opts;
  std::string error;

  mutable std::mutex mtx;
  std::condition_variable changed; // any machine changed state
  bool closing = false;
  std::map<std::string, app_record> apps;
  std::map<std::string, machine_ptr> machines;
  std::set<std::string> reserved_names;
  uint64_t next_seq = 0;
  uint64_t next_event = 0;

  fly_fault_plan plan;
  fly_rate_limiter limiter;
  int stuck_launches = 0;
  std::optional<int> token_calls_left;
  bool token_expired = false;
  int empty_lists = 0;
  fly_emulator_stats counters;

  std::multimap<steady::time_point, std::function<void()>> timers;
  std::condition_variable timer_cv;
  std::thread timer_thread;

  std::unique_ptr<thread_pool> pool;
  std::unique_ptr<machine_sandboxes> sandboxes;
  std::unique_ptr<http_server> server;

  explicit impl(fly_emulator_options o) : opts(std::move(o)) {
    plan.set_random(opts.fault_rate, opts.seed);
  }

  // -- lifecycle ------------------------------------------------------------

  void start() {
    if (opts.sandboxes_dir.empty() || opts.sandboxes_dir[0] != '/') {
      error = "fly emulator: sandboxes_dir must be an absolute path";
      return;
    }
    if (opts.token.empty()) {
      error = "fly emulator: a token is required";
      return;
    }
    sandboxes = std::make_unique<machine_sandboxes>(opts.sandboxes_dir, opts.sshd_path,
                                                    opts.sandbox_boot_timeout);
    pool = std::make_unique<thread_pool>(std::max<size_t>(1, opts.workers));
    timer_thread = std::thread([this] { timer_loop(); });
    server = std::make_unique<http_server>(opts.port);
    if (server->port() == 0) {
      error = "fly emulator: cannot listen on 127.0.0.1:" + std::to_string(opts.port);
      return;
    }
    server->route("", "/", [this](const http_request_seen& r) { return handle(r); });
  }

  void shutdown() {
    {
      std::lock_guard<std::mutex> guard{mtx};
      closing = true;
    }
    changed.notify_all();
    timer_cv.notify_all();
    if (server)
      server->stop();
    if (timer_thread.joinable())
      timer_thread.join();
    {
      std::lock_guard<std::mutex> guard{mtx};
      for (auto& [id, m] : machines) {
        if (!live(*m))
          continue;
        if (m->state != "destroying") {
          m->state = "destroying";
          m->stop_signal = SIGKILL;
          m->stop_grace = milliseconds(0);
        }
        m->jobs->post([this, m = m] { teardown_job(m); });
      }
    }
    // Finishes every queued job (launches bail out, teardowns run), then
    // joins the workers.
    pool.reset();
    std::lock_guard<std::mutex> guard{mtx};
    for (auto& [id, m] : machines)
      if (m->init_waiter.joinable())
        m->init_waiter.detach(); // unreachable: every teardown joined its waiter
    machines.clear();
  }

  // -- timers -----------------------------------------------------------------

  // REQUIRES: mtx held.
  void schedule(steady::time_point when, std::function<void()> fn) {
    timers.emplace(when, std::move(fn));
    timer_cv.notify_one();
  }

  void timer_loop() {
    std::unique_lock<std::mutex> lock{mtx};
    while (!closing) {
      if (timers.empty()) {
        timer_cv.wait(lock);
        continue;
      }
      auto due = timers.begin()->first;
      if (steady::now() < due) {
        timer_cv.wait_until(lock, due);
        continue;
      }
      auto fn = std::move(timers.begin()->second);
      timers.erase(timers.begin());
      fn(); // timer actions are quick state changes, run under the lock
    }
  }

  // -- machine state changes (REQUIRES: mtx held) -------------------------------

  json event(const std::string& type, const std::string& status,
             const std::string& source) {
    auto e = json::object();
    e.set("id", "ev-" + std::to_string(++next_event))
        .set("type", type)
        .set("status", status)
        .set("source", source)
        .set("timestamp", static_cast<long long>(now_ms()));
    return e;
  }

  void set_state(machine_record& m, const std::string& state) {
    m.state = state;
    m.updated_ms = now_ms();
    changed.notify_all();
  }

  void count_fault(const std::string& what) {
    ++counters.faults[what];
    ++counters.faults_total;
  }

  void begin_launch(const machine_ptr& m) {
    set_state(*m, "starting");
    ++m->gen;
    m->boot_due = steady::now() + opts.boot_delay;
    m->events.push_back(event("start", "starting", "user"));
    if (stuck_launches > 0) {
      --stuck_launches;
      count_fault("stuck_starting");
      return;
    }
    m->jobs->post([this, m, gen = m->gen] { launch_job(m, gen); });
  }

  void mark_started(const machine_ptr& m) {
    set_state(*m, "started");
    m->events.push_back(event("start", "started", "flyd"));
  }

  // Ends a machine's run: `target` is "stopping" or "destroying".
  void begin_teardown(const machine_ptr& m, const std::string& target, int signal,
                      milliseconds grace) {
    ++m->gen;
    m->stop_signal = signal;
    m->stop_grace = grace;
    set_state(*m, target);
    m->events.push_back(event(target == "stopping" ? "stop" : "destroy", target, "user"));
    m->jobs->post([this, m] { teardown_job(m); });
  }

  // -- blocking jobs (run on a machine's strand; take the lock briefly) ---------

  void launch_job(const machine_ptr& m, uint64_t gen) {
    json config;
    {
      std::lock_guard<std::mutex> guard{mtx};
      if (closing || m->gen != gen || m->state != "starting")
        return;
      config = m->config;
    }
    auto spec = sandbox_spec_from_config(m->id, config);
    auto run = spec ? sandboxes->launch(*spec) : caf::expected<sandbox_run>{spec.error()};
    std::lock_guard<std::mutex> guard{mtx};
    if (!run) {
      m->last_error = describe(run.error());
      if (opts.log)
        opts.log("machine " + m->id + ": launch failed: " + m->last_error);
      if (m->gen == gen && m->state == "starting") {
        set_state(*m, "failed");
        auto e = event("launch", "failed", "flyd");
        e.set("error", m->last_error);
        m->events.push_back(std::move(e));
      }
      return;
    }
    m->run = *run;
    m->init_pid = run->init_pid;
    m->init_reaped = run->init_pid <= 0;
    if (run->init_pid > 0)
      m->init_waiter =
          std::thread([this, m, gen, pid = run->init_pid] { wait_init(m, gen, pid); });
    auto md =
        m->config.find("metadata") != nullptr && m->config.find("metadata")->is_object()
            ? *m->config.find("metadata")
            : json::object();
    md.set("aloft_workdir", run->workdir).set("aloft_ssh_user", run->user);
    m->config.set("metadata", md);
    // A stop or delete that came meanwhile has its teardown queued behind
    // this job; it cleans up the run recorded above.
    if (m->gen != gen || m->state != "starting")
      return;
    if (steady::now() >= m->boot_due) {
      mark_started(m);
      return;
    }
    schedule(m->boot_due, [this, m, gen] {
      if (m->gen == gen && m->state == "starting" && m->run)
        mark_started(m);
    });
  }

  void wait_init(const machine_ptr& m, uint64_t gen, pid_t pid) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    std::lock_guard<std::mutex> guard{mtx};
    m->init_reaped = true;
    bool requested = m->state == "stopping" || m->state == "destroying" || closing;
    auto exit_event = json::object();
    exit_event.set("exit_code", WIFEXITED(status) ? WEXITSTATUS(status) : -1)
        .set("signal", WIFSIGNALED(status) ? WTERMSIG(status) : -1)
        .set("oom_killed", false)
        .set("requested_stop", requested)
        .set("exited_at", rfc3339(now_ms()));
    auto e = event("exit", "stopped", "flyd");
    e.set("request", json::object().set("exit_event", exit_event));
    m->events.push_back(std::move(e));
    changed.notify_all();
    if (closing || m->gen != gen || (m->state != "started" && m->state != "starting"))
      return;
    // The main process ended: the machine stops (and with auto_destroy is
    // destroyed once stopped).
    begin_teardown(m, "stopping", SIGTERM, milliseconds(0));
  }

  void teardown_job(const machine_ptr& m) {
    std::optional<sandbox_run> run;
    std::thread waiter;
    int signal;
    milliseconds grace;
    {
      std::lock_guard<std::mutex> guard{mtx};
      run = std::move(m->run);
      m->run.reset();
      waiter = std::move(m->init_waiter);
      signal = m->stop_signal;
      grace = m->stop_grace;
    }
    if (run) {
      auto err = sandboxes->teardown(*run, signal, grace, [&] {
        std::lock_guard<std::mutex> guard{mtx};
        return m->init_reaped;
      });
      if (err) {
        std::lock_guard<std::mutex> guard{mtx};
        m->last_error = describe(err);
        if (opts.log)
          opts.log("machine " + m->id + ": " + m->last_error);
      }
    }
    if (waiter.joinable()) {
      // Whatever the teardown above did, the init must be gone before its
      // waiter can be joined: a machine torn down while it was starting
      // may reach here with its init still running.
      pid_t pid = 0;
      {
        std::lock_guard<std::mutex> guard{mtx};
        pid = m->init_pid;
      }
      auto until = steady::now() + std::chrono::seconds(10);
      while (pid > 0 && steady::now() < until) {
        {
          std::lock_guard<std::mutex> guard{mtx};
          if (m->init_reaped)
            break;
        }
        ::kill(-pid, SIGKILL);
        ::kill(pid, SIGKILL);
        std::this_thread::sleep_for(milliseconds(2));
      }
      waiter.join();
    }
    std::vector<std::unique_ptr<tcp_forwarder>> proxies;
    {
      std::lock_guard<std::mutex> guard{mtx};
      if (m->state == "stopping") {
        set_state(*m, "stopped");
        m->events.push_back(event("stop", "stopped", "flyd"));
        if (auto ad = m->config.find("auto_destroy"); ad != nullptr && ad->as_bool()) {
          set_state(*m, "destroying");
          m->events.push_back(event("destroy", "destroying", "flyd"));
        }
      }
      if (m->state != "destroying")
        return;
      proxies = std::move(m->proxies);
    }
    // Closing joins the proxy's threads, which take the lock: outside it.
    proxies.clear();
    std::lock_guard<std::mutex> guard{mtx};
    set_state(*m, "destroyed");
    m->events.push_back(event("destroy", "destroyed", "flyd"));
    if (!closing)
      schedule(steady::now() + opts.destroyed_retention, [this, m] {
        auto it = machines.find(m->id);
        if (it != machines.end() && it->second == m && m->state == "destroyed")
          machines.erase(it);
      });
  }

  // Where the proxy relays a connection to machine `id` (0: nowhere).
  uint16_t route_for(const std::string& id, bool ipv6) {
    std::lock_guard<std::mutex> guard{mtx};
    auto it = machines.find(id);
    if (it == machines.end() || it->second->state != "started" || !it->second->run)
      return 0;
    auto& m = *it->second;
    auto app = apps.find(m.app);
    if (app == apps.end() || app->second.id != m.app_id)
      return 0;
    for (auto& ip : app->second.ips)
      if (ip.type == (ipv6 ? "v6" : "v4"))
        return m.run->sshd_port;
    return 0;
  }

  // -- JSON views (REQUIRES: mtx held) -------------------------------------------

  json app_json(const app_record& a) const {
    int count = 0;
    for (auto& [id, m] : machines)
      if (m->app_id == a.id && live(*m))
        ++count;
    auto org = json::object();
    org.set("name", a.org).set("slug", a.org);
    auto j = json::object();
    j.set("id", a.id)
        .set("name", a.name)
        .set("status", "deployed")
        .set("network", "default")
        .set("machine_count", count)
        .set("volume_count", 0)
        .set("organization", org)
        .set("created_at", rfc3339(a.created_ms));
    return j;
  }

  json ip_json(const ip_record& ip) const {
    auto j = json::object();
    j.set("ip", ip.ip)
        .set("region", ip.region)
        .set("service_name", ip.service_name)
        .set("shared", ip.type == "shared_v4")
        .set("created_at", rfc3339(ip.created_ms));
    return j;
  }

  json machine_json(const machine_record& m, bool summary) const {
    auto j = json::object();
    j.set("id", m.id)
        .set("name", m.name)
        .set("state", m.state)
        .set("region", m.region)
        .set("instance_id", m.instance_id)
        .set("version", m.instance_id)
        .set("private_ip", m.private_ip)
        .set("host_status", "ok");
    if (!summary)
      j.set("config", m.config);
    else if (auto md = m.config.find("metadata"))
      j.set("config", json::object().set("metadata", *md));
    j.set("image_ref", image_ref(m.config.get_string("image")))
        .set("created_at", rfc3339(m.created_ms))
        .set("updated_at", rfc3339(m.updated_ms));
    if (!summary) {
      auto events = json::array();
      for (auto e = m.events.rbegin(); e != m.events.rend(); ++e)
        events.push_back(*e);
      j.set("events", events);
    }
    return j;
  }

  // -- requests ---------------------------------------------------------------------

  struct call {
    std::string op = "unknown";
    std::string app;
    std::string machine;
    std::string ip;
    bool allowed = true; // false: a known path with another method
  };

  static call route(const http_request_seen& req) {
    call c;
    std::vector<std::string> seg;
    std::string_view p = req.path;
    while (!p.empty()) {
      auto slash = p.find('/');
      auto part = p.substr(0, slash);
      if (!part.empty())
        seg.push_back(percent_decode(part));
      if (slash == std::string_view::npos)
        break;
      p.remove_prefix(slash + 1);
    }
    auto& m = req.method;
    auto pick = [&](const char* method, const char* op) {
      if (m == method)
        c.op = op;
    };
    auto any_of = [&](std::initializer_list<std::pair<const char*, const char*>> ops) {
      for (auto& [method, op] : ops)
        pick(method, op);
      c.allowed = c.op != "unknown";
    };
    if (seg.size() < 2 || seg[0] != "v1")
      return c;
    if (seg.size() == 3 && seg[1] == "tokens" && seg[2] == "current")
      any_of({{"GET", "tokens_current"}});
    if (seg[1] != "apps")
      return c;
    if (seg.size() == 2)
      any_of({{"GET", "apps_list"}, {"POST", "apps_create"}});
    if (seg.size() >= 3)
      c.app = seg[2];
    if (seg.size() == 3)
      any_of({{"GET", "apps_get"}, {"DELETE", "apps_delete"}});
    if (seg.size() >= 4 && seg[3] == "ip_assignments") {
      if (seg.size() == 4)
        any_of({{"GET", "ips_list"}, {"POST", "ips_create"}});
      if (seg.size() == 5) {
        c.ip = seg[4];
        any_of({{"DELETE", "ips_delete"}});
      }
    }
    if (seg.size() >= 4 && seg[3] == "machines") {
      if (seg.size() == 4)
        any_of({{"GET", "machines_list"}, {"POST", "machines_create"}});
      if (seg.size() >= 5)
        c.machine = seg[4];
      if (seg.size() == 5)
        any_of({{"GET", "machines_get"}, {"DELETE", "machines_delete"}});
      if (seg.size() == 6 && seg[5] == "start")
        any_of({{"POST", "machines_start"}});
      if (seg.size() == 6 && seg[5] == "stop")
        any_of({{"POST", "machines_stop"}});
      if (seg.size() == 6 && seg[5] == "wait")
        any_of({{"GET", "machines_wait"}});
    }
    return c;
  }

  // REQUIRES: mtx held.
  bool authorized(const http_request_seen& req) const {
    auto h = req.header("Authorization");
    auto sp = h.find(' ');
    if (sp == std::string::npos)
      return false;
    auto scheme = upper(h.substr(0, sp));
    auto rest = h.substr(sp + 1);
    if (scheme == "BEARER")
      return rest == opts.token;
    if (scheme != "FLYV1")
      return false;
    for (auto& t : split_list(rest)) {
      auto s = t;
      while (!s.empty() && s.front() == ' ')
        s.erase(0, 1);
      if (s == opts.token)
        return true;
    }
    return false;
  }

  static http_reply fault_reply(const fly_fault& f) {
    if (f.what == fly_fault::kind::reset)
      return http_reply::drop();
    auto r = error_reply(f.status,
                         f.message.empty() ? "emulator: injected fault (HTTP "
                                                 + std::to_string(f.status) + ")"
                                           : f.message,
                         f.fly_status);
    if (f.retry_after_s > 0)
      r.headers.emplace_back("Retry-After", std::to_string(f.retry_after_s));
    return r;
  }

  http_reply handle(const http_request_seen& req) {
    auto request_id = "01" + upper(random_hex(12)) + "-" + opts.region;
    auto c = route(req);
    auto reply = serve(req, c);
    if (!reply.drop_connection)
      reply.headers.emplace_back("fly-request-id", request_id);
    if (opts.log)
      opts.log(
          req.method + " " + req.path + (req.query.empty() ? "" : "?" + req.query)
          + " -> "
          + (reply.drop_connection ? std::string{"reset"} : std::to_string(reply.status))
          + " (" + c.op + ", " + request_id + ")");
    return reply;
  }

  http_reply serve(const http_request_seen& req, const call& c) {
    {
      std::lock_guard<std::mutex> guard{mtx};
      ++counters.calls[c.op];
      if (!authorized(req))
        return error_reply(401, "unauthorized: missing or invalid Authorization header");
      if (token_calls_left) {
        if (*token_calls_left <= 0)
          token_expired = true;
        else
          --*token_calls_left;
      }
      if (token_expired) {
        count_fault("token_expired");
        return error_reply(401, "unauthorized: token expired");
      }
      if (auto f = plan.next(c.op, false)) {
        count_fault(fly_fault_label(*f));
        return fault_reply(*f);
      }
      if (opts.rate_limit) {
        bool reads =
            c.op == "machines_get" || c.op == "machines_list" || c.op == "machines_wait";
        auto key = (c.machine.empty() ? c.app : c.machine) + " " + c.op;
        if (!limiter.allow(key, reads ? 5 : 1, reads ? 10 : 3, steady::now())) {
          count_fault("rate_limited");
          auto r = error_reply(429, "rate limit exceeded");
          r.headers.emplace_back("Retry-After", "1");
          return r;
        }
      }
    }
    auto reply = dispatch(req, c);
    std::lock_guard<std::mutex> guard{mtx};
    auto f = plan.next(c.op, true);
    if (!f)
      return reply;
    count_fault(fly_fault_label(*f));
    if (f->what != fly_fault::kind::malformed_json)
      return fault_reply(*f);
    reply.body =
        reply.body.size() > 1 ? reply.body.substr(0, reply.body.size() / 2) : "{";
    return reply;
  }

  http_reply dispatch(const http_request_seen& req, const call& c) {
    if (c.op == "unknown")
      return c.allowed ? error_reply(404, "not found (or not emulated): " + req.method
                                              + " " + req.path)
                       : error_reply(405, "method not allowed: " + req.method);
    auto q = parse_query(req.query);
    if (c.op == "tokens_current")
      return tokens_current();
    if (c.op == "apps_create")
      return apps_create(req);
    if (c.op == "apps_list")
      return apps_list(q);
    if (c.op == "machines_wait")
      return machines_wait(c, q);
    std::unique_lock<std::mutex> lock{mtx};
    auto app = apps.find(c.app);
    if (c.op == "apps_get" && reserved_names.count(c.app))
      return error_reply(403, "app " + c.app + " belongs to another organization");
    if (app == apps.end())
      return error_reply(404, "app not found: " + c.app);
    if (c.op == "apps_get")
      return json_reply(200, app_json(app->second));
    if (c.op == "apps_delete")
      return apps_delete(app, truthy(query_value(q, "force")));
    if (c.op == "ips_list") {
      auto ips = json::array();
      for (auto& ip : app->second.ips)
        ips.push_back(ip_json(ip));
      return json_reply(200, json::object().set("ips", ips));
    }
    if (c.op == "ips_create")
      return ips_create(app->second, req);
    if (c.op == "ips_delete") {
      auto& ips = app->second.ips;
      auto before = ips.size();
      ips.erase(std::remove_if(ips.begin(), ips.end(),
                               [&](const ip_record& r) { return r.ip == c.ip; }),
                ips.end());
      if (ips.size() == before)
        return error_reply(404, "ip assignment not found: " + c.ip);
      return json_reply(200, json::object().set("ok", true));
    }
    if (c.op == "machines_list")
      return machines_list(app->second, q);
    if (c.op == "machines_create")
      return machines_create(app->second, req, lock);
    auto m = find_machine(app->second, c.machine);
    if (!m)
      return error_reply(404, "machine not found: " + c.machine);
    if (c.op == "machines_get")
      return json_reply(200, machine_json(*m, false));
    if (c.op == "machines_start")
      return machines_start(m);
    if (c.op == "machines_stop")
      return machines_stop(m, req);
    if (c.op == "machines_delete")
      return machines_delete(m, truthy(query_value(q, "force"))
                                    || truthy(query_value(q, "kill")));
    return error_reply(404, "not found");
  }

  // REQUIRES: mtx held.
  machine_ptr find_machine(const app_record& app, const std::string& id) const {
    auto it = machines.find(id);
    if (it == machines.end() || it->second->app_id != app.id)
      return nullptr;
    return it->second;
  }

  // -- tokens and apps ----------------------------------------------------------------

  http_reply tokens_current() {
    std::lock_guard<std::mutex> guard{mtx};
    auto tok = json::object();
    tok.set("org_slug", opts.org)
        .set("organization", opts.org)
        .set("apps", json::array())
        .set("user", "emulator@example.invalid")
        .set("token_id", "tok-emulator")
        .set("restricted_to_machine", "")
        .set("source_machine_id", "");
    auto tokens = json::array();
    tokens.push_back(tok);
    return json_reply(200, json::object().set("tokens", tokens));
  }

  http_reply apps_create(const http_request_seen& req) {
    auto body = json::parse(req.body);
    if (!body || !body->is_object())
      return error_reply(400, "request body must be a JSON object");
    auto name = body->get_string("name", body->get_string("app_name"));
    auto org = body->get_string("org_slug");
    if (name.empty())
      return error_reply(400, "name is required");
    if (org.empty())
      return error_reply(400, "org_slug is required");
    if (!valid_app_name(name))
      return error_reply(422, "app name must be 2 to 63 lowercase letters, digits and "
                              "dashes, not starting or ending with a dash");
    std::lock_guard<std::mutex> guard{mtx};
    if (org != opts.org)
      return error_reply(404, "organization not found: " + org);
    if (apps.count(name) || reserved_names.count(name))
      return error_reply(422, "Name has already been taken", "name_taken");
    app_record a;
    a.id = random_hex(8);
    a.name = name;
    a.org = org;
    a.created_ms = now_ms();
    auto it = apps.emplace(name, std::move(a)).first;
    return json_reply(201, app_json(it->second));
  }

  http_reply apps_list(const query_list& q) {
    auto org = query_value(q, "org_slug");
    if (org.empty())
      return error_reply(400, "org_slug is required");
    std::lock_guard<std::mutex> guard{mtx};
    if (org != opts.org)
      return error_reply(404, "organization not found: " + org);
    auto list = json::array();
    for (auto& [name, a] : apps)
      list.push_back(app_json(a));
    auto j = json::object();
    j.set("total_apps", static_cast<long long>(list.size())).set("apps", list);
    return json_reply(200, j);
  }

  // REQUIRES: mtx held.
  http_reply apps_delete(std::map<std::string, app_record>::iterator app, bool force) {
    std::vector<machine_ptr> alive;
    for (auto& [id, m] : machines)
      if (m->app_id == app->second.id && live(*m))
        alive.push_back(m);
    if (!alive.empty() && !force)
      return error_reply(409, "app " + app->first + " has " + std::to_string(alive.size())
                                  + " machines that are not destroyed; destroy them "
                                    "first or pass force=true");
    for (auto& m : alive)
      if (m->state != "destroying")
        begin_teardown(m, "destroying", SIGKILL, milliseconds(0));
    apps.erase(app);
    return json_reply(202, json::object().set("ok", true));
  }

  // REQUIRES: mtx held.
  http_reply ips_create(app_record& app, const http_request_seen& req) {
    auto body = json::parse(req.body);
    if (!body || !body->is_object())
      return error_reply(400, "request body must be a JSON object");
    ip_record ip;
    ip.type = body->get_string("type");
    if (ip.type == "v6")
      ip.ip = v6_address;
    else if (ip.type == "v4")
      ip.ip = v4_address;
    else if (ip.type == "shared_v4")
      ip.ip = shared_v4_address;
    else if (ip.type == "private_v6")
      ip.ip = private_v6_address;
    else
      return error_reply(400, "type must be one of v6, v4, shared_v4, private_v6");
    ip.region = body->get_string("region", "global");
    ip.service_name = body->get_string("service_name");
    ip.created_ms = now_ms();
    app.ips.push_back(ip);
    return json_reply(200, ip_json(ip));
  }

  // -- machines
  // ----------------------------------------------------------------------------

  // REQUIRES: mtx held.
  http_reply machines_list(const app_record& app, const query_list& q) {
    auto states = split_list(query_value(q, "state"));
    bool include_deleted = truthy(query_value(q, "include_deleted"));
    bool summary = truthy(query_value(q, "summary"));
    auto region = query_value(q, "region");
    std::vector<std::pair<std::string, std::string>> metadata;
    for (auto& [k, v] : q)
      if (k.rfind("metadata.", 0) == 0)
        metadata.emplace_back(k.substr(9), v);
    std::vector<machine_ptr> found;
    for (auto& [id, m] : machines) {
      if (m->app_id != app.id)
        continue;
      if (!include_deleted && !live(*m))
        continue;
      if (!states.empty()
          && std::find(states.begin(), states.end(), m->state) == states.end())
        continue;
      if (!region.empty() && m->region != region)
        continue;
      auto md = m->config.find("metadata");
      bool match = true;
      for (auto& [k, v] : metadata)
        match = match && md != nullptr && md->is_object() && md->find(k) != nullptr
                && md->get_string(k) == v;
      if (match)
        found.push_back(m);
    }
    std::sort(found.begin(), found.end(),
              [](const machine_ptr& x, const machine_ptr& y) { return x->seq < y->seq; });
    auto list = json::array();
    if (!found.empty() && empty_lists > 0) {
      --empty_lists;
      count_fault("empty_list");
      return json_reply(200, list);
    }
    for (auto& m : found)
      list.push_back(machine_json(*m, summary));
    return json_reply(200, list);
  }

  // REQUIRES: `lock` holds mtx (released while the proxy's ports are bound,
  // so `app` is not used after that).
  http_reply machines_create(app_record& app, const http_request_seen& req,
                             std::unique_lock<std::mutex>& lock) {
    auto body = json::parse(req.body);
    if (!body || !body->is_object())
      return error_reply(400, "request body must be a JSON object");
    auto config = body->find("config");
    if (config == nullptr || !config->is_object() || config->get_string("image").empty())
      return error_reply(400, "config.image is required");
    auto id = random_hex(7);
    auto spec = sandbox_spec_from_config(id, *config);
    if (!spec)
      return error_reply(400, message_of(spec.error()));
    std::vector<uint16_t> ssh_ports;
    if (auto services = config->find("services"); services && !services->is_null()) {
      if (!services->is_array())
        return error_reply(400, "config.services must be a list");
      for (size_t i = 0; i < services->size(); ++i) {
        auto& s = services->at(i);
        auto where = "config.services[" + std::to_string(i) + "]";
        if (!s.is_object())
          return error_reply(400, where + " must be an object");
        auto protocol = s.get_string("protocol", "tcp");
        if (protocol != "tcp" && protocol != "udp")
          return error_reply(400, where + ".protocol must be tcp or udp");
        auto internal = s.get_int("internal_port", -1);
        if (internal < 1 || internal > 65535)
          return error_reply(400, where + ".internal_port must be a port number");
        auto ports = s.find("ports");
        if (ports != nullptr && !ports->is_array())
          return error_reply(400, where + ".ports must be a list");
        for (size_t k = 0; ports != nullptr && k < ports->size(); ++k) {
          auto port = ports->at(k).get_int("port", -1);
          if (port < 1 || port > 65535)
            return error_reply(400, where + ".ports[" + std::to_string(k)
                                        + "].port must be a port number");
          if (protocol == "tcp" && internal == 22)
            ssh_ports.push_back(static_cast<uint16_t>(port));
        }
      }
    }
    auto app_id = app.id;
    auto app_name = app.name;
    // Binding the proxy's ports needs no lock, and its threads take it.
    std::vector<std::unique_ptr<tcp_forwarder>> proxies;
    lock.unlock();
    caf::error bind_error;
    for (auto port : ssh_ports) {
      auto f =
          tcp_forwarder::listen(port, [this, id](bool v6) { return route_for(id, v6); });
      if (!f) {
        bind_error = f.error();
        break;
      }
      proxies.push_back(std::move(*f));
    }
    if (bind_error)
      proxies.clear();
    lock.lock();
    if (bind_error)
      return error_reply(422, "emulator: cannot serve the machine's service: "
                                  + message_of(bind_error));
    auto it = apps.find(app_name);
    if (it == apps.end() || it->second.id != app_id) {
      lock.unlock();
      proxies.clear();
      lock.lock();
      return error_reply(404, "app not found: " + app_name);
    }
    auto m = std::make_shared<machine_record>();
    m->id = id;
    m->app = app_name;
    m->app_id = app_id;
    m->name = body->get_string("name", "machine-" + id.substr(0, 6));
    m->region = body->get_string("region", opts.region);
    m->instance_id = "01" + upper(random_hex(12));
    m->private_ip = "fdaa:0:1:a7b:" + random_hex(2) + ":" + random_hex(2) + ":"
                    + random_hex(2) + ":2";
    m->config = *config;
    m->created_ms = m->updated_ms = now_ms();
    m->seq = ++next_seq;
    m->state = "created";
    m->proxies = std::move(proxies);
    m->jobs = std::make_shared<strand>(pool.get());
    if (auto sc = config->find("stop_config"); sc && sc->is_object()) {
      if (auto sig = parse_signal(sc->find("signal")))
        m->stop_signal = sig;
      if (auto d = parse_duration(sc->find("timeout")))
        m->stop_grace = *d;
    }
    m->events.push_back(event("launch", "created", "user"));
    machines.emplace(id, m);
    auto answer = json_reply(200, machine_json(*m, false));
    if (!body->get_bool("skip_launch"))
      begin_launch(m);
    changed.notify_all();
    return answer;
  }

  // REQUIRES: mtx held.
  http_reply machines_start(const machine_ptr& m) {
    auto previous = m->state;
    if (previous == "destroyed" || previous == "destroying")
      return error_reply(412,
                         "failed_precondition: machine " + m->id + " is " + previous);
    if (previous != "stopped" && previous != "created" && previous != "failed")
      return error_reply(412, "failed_precondition: machine still active, refusing to "
                              "start");
    begin_launch(m);
    auto j = json::object();
    j.set("previous_state", previous).set("migrated", false).set("new_host", "");
    return json_reply(200, j);
  }

  // REQUIRES: mtx held.
  http_reply machines_stop(const machine_ptr& m, const http_request_seen& req) {
    int signal = m->stop_signal;
    auto grace = m->stop_grace;
    if (!req.body.empty()) {
      auto body = json::parse(req.body);
      if (!body || !body->is_object())
        return error_reply(400, "request body must be a JSON object");
      if (auto s = body->find("signal"); s && !s->is_null()) {
        signal = parse_signal(s);
        if (signal == 0)
          return error_reply(400, "unknown signal");
      }
      if (auto t = body->find("timeout"); t && !t->is_null()) {
        auto d = parse_duration(t);
        if (!d)
          return error_reply(400, "timeout must be a duration such as \"10s\"");
        grace = *d;
      }
    }
    auto& s = m->state;
    if (s == "destroyed" || s == "destroying")
      return error_reply(412, "failed_precondition: machine " + m->id + " is " + s);
    if (s == "started" || s == "starting")
      begin_teardown(m, "stopping", signal, grace);
    else if (s == "failed")
      set_state(*m, "stopped");
    return json_reply(200, json::object().set("ok", true));
  }

  // REQUIRES: mtx held.
  http_reply machines_delete(const machine_ptr& m, bool force) {
    auto& s = m->state;
    if (s == "destroyed")
      return error_reply(404, "machine not found: " + m->id + " (destroyed)");
    if ((s == "started" || s == "starting") && !force)
      return error_reply(412, "failed_precondition: unable to destroy machine, not "
                              "currently stopped or suspended (pass force=true)");
    if (s != "destroying")
      begin_teardown(m, "destroying", SIGKILL, milliseconds(0));
    return json_reply(200, json::object().set("ok", true));
  }

  http_reply machines_wait(const call& c, const query_list& q) {
    static const std::set<std::string> known{"started", "stopped", "suspended",
                                             "destroyed", "failed"};
    std::vector<std::string> wanted;
    for (auto& [k, v] : q)
      if (k == "state")
        for (auto& s : split_list(v))
          wanted.push_back(s);
    if (wanted.empty())
      wanted.push_back("started");
    for (auto& s : wanted)
      if (!known.count(s))
        return error_reply(400, "invalid state '" + s
                                    + "': expected started, stopped, "
                                      "suspended, destroyed or failed");
    int64_t seconds = 60;
    auto t = query_value(q, "timeout");
    if (!t.empty()) {
      if (t.back() == 's')
        t.pop_back();
      if (t.empty() || t.size() > 6
          || t.find_first_not_of("0123456789") != std::string::npos)
        return error_reply(400, "timeout must be a number of seconds from 1 to 60");
      seconds = std::stoll(t);
      if (seconds < 1 || seconds > 60)
        return error_reply(400, "timeout must be a number of seconds from 1 to 60");
    }
    auto deadline = steady::now() + opts.wait_second * seconds;
    std::unique_lock<std::mutex> lock{mtx};
    auto app = apps.find(c.app);
    if (app == apps.end())
      return error_reply(404, "app not found: " + c.app);
    auto m = find_machine(app->second, c.machine);
    if (!m)
      return error_reply(404, "machine not found: " + c.machine);
    for (;;) {
      if (std::find(wanted.begin(), wanted.end(), m->state) != wanted.end()) {
        auto j = json::object();
        j.set("ok", true).set("state", m->state);
        return json_reply(200, j);
      }
      if (m->state == "destroyed")
        return error_reply(404, "machine " + m->id + " was destroyed");
      if (closing)
        return error_reply(503, "emulator shutting down");
      if (changed.wait_until(lock, deadline) == std::cv_status::timeout
          && std::find(wanted.begin(), wanted.end(), m->state) == wanted.end())
        return error_reply(408, "deadline_exceeded: machine " + m->id + " did not reach "
                                    + query_value(q, "state") + " in time (state "
                                    + m->state + ")");
    }
  }
};

// -- fly_emulator ---------------------------------------------------------------------

fly_emulator::fly_emulator(fly_emulator_options opts)
    : impl_(std::make_unique<impl>(std::move(opts))) {
  impl_->start();
}

fly_emulator::~fly_emulator() {
  impl_->shutdown();
}

bool fly_emulator::ok() const {
  return impl_->error.empty();
}

const std::string& fly_emulator::error() const {
  return impl_->error;
}

uint16_t fly_emulator::port() const {
  return impl_->server ? impl_->server->port() : 0;
}

std::string fly_emulator::base_url() const {
  return "http://127.0.0.1:" + std::to_string(port());
}

void fly_emulator::inject(fly_fault f) {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  impl_->plan.add(std::move(f));
}

void fly_emulator::inject_create_timeout(int n) {
  fly_fault f;
  f.op = "machines_create";
  f.count = n;
  f.status = 408;
  f.after_effect = true;
  f.message = "deadline_exceeded: request timed out";
  inject(std::move(f));
}

void fly_emulator::inject_insufficient_capacity(int n, int status) {
  fly_fault f;
  f.op = "machines_create";
  f.count = n;
  f.status = status;
  f.fly_status = "insufficient_capacity";
  f.message = "insufficient resources available to fulfill request: could not reserve "
              "resource for machine";
  inject(std::move(f));
}

void fly_emulator::stick_next_launches(int n) {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  impl_->stuck_launches += n;
}

void fly_emulator::expire_token_after(int n) {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  impl_->token_calls_left = std::max(0, n);
}

void fly_emulator::set_token(std::string token) {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  impl_->opts.token = std::move(token);
  impl_->token_calls_left.reset();
  impl_->token_expired = false;
}

void fly_emulator::empty_next_lists(int n) {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  impl_->empty_lists += n;
}

void fly_emulator::set_fault_rate(double rate, uint64_t seed) {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  impl_->opts.fault_rate = rate;
  impl_->opts.seed = seed;
  impl_->plan.set_random(rate, seed);
}

void fly_emulator::set_boot_delay(std::chrono::milliseconds d) {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  impl_->opts.boot_delay = d;
}

void fly_emulator::set_rate_limit(bool on) {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  impl_->opts.rate_limit = on;
}

void fly_emulator::clear_faults() {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  impl_->plan.clear();
  impl_->opts.fault_rate = 0;
  impl_->stuck_launches = 0;
  impl_->empty_lists = 0;
  impl_->token_calls_left.reset();
  impl_->token_expired = false;
}

void fly_emulator::reserve_app_name(std::string name) {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  impl_->reserved_names.insert(std::move(name));
}

fly_emulator_stats fly_emulator::stats() const {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  return impl_->counters;
}

int fly_emulator::calls(const std::string& op) const {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  auto it = impl_->counters.calls.find(op);
  return it == impl_->counters.calls.end() ? 0 : it->second;
}

std::string fly_emulator::machine_state(const std::string& app,
                                        const std::string& id) const {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  auto it = impl_->machines.find(id);
  return it == impl_->machines.end() || it->second->app != app ? std::string{}
                                                               : it->second->state;
}

std::string fly_emulator::sandbox_dir(const std::string& app,
                                      const std::string& id) const {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  auto it = impl_->machines.find(id);
  if (it == impl_->machines.end() || it->second->app != app || !it->second->run)
    return {};
  return it->second->run->dir;
}

size_t fly_emulator::live_machines() const {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  size_t n = 0;
  for (auto& [id, m] : impl_->machines)
    n += live(*m) ? 1 : 0;
  return n;
}

void fly_emulator::clear_request_log() {
  if (impl_->server)
    impl_->server->clear_requests();
}

} // namespace aloft::test
