#include "providers/fly/fly_provider.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <random>
#include <set>

#include "engine/base/base64.hpp"
#include "engine/base/error.hpp"
#include "engine/base/json.hpp"
#include "engine/executor.hpp"
#include "engine/retry.hpp"
#include "providers/fly/fly_auth.hpp"
#include "providers/http/http_loop.hpp"

namespace aloft {

namespace {

using std::chrono::milliseconds;
using steady = std::chrono::steady_clock;

// -- values ---------------------------------------------------------------------

constexpr const char* meta_installation = "aloft_installation";
constexpr const char* meta_session = "aloft_session";
constexpr const char* meta_key = "aloft_key";
constexpr const char* meta_port = "aloft_ssh_port";
constexpr const char* meta_workdir = "aloft_workdir";
constexpr const char* meta_user = "aloft_ssh_user"; // set by the emulator only
constexpr const char* default_workdir = "/root/work";

// Attempts of an ambiguous create, each preceded (after the first) by a
// look for the machine the previous one may have made.
constexpr int create_attempts = 5;

json array_of(std::vector<json> items) {
  auto a = json::array();
  for (auto& x : items)
    a.push_back(std::move(x));
  return a;
}

// A Fly id or name as it may appear in a path: what comes back from the API
// is checked before it is put in a URL.
bool is_safe_id(const std::string& s) {
  if (s.empty() || s.size() > 64)
    return false;
  for (unsigned char c : s)
    if (!std::isalnum(c) && c != '-' && c != '_')
      return false;
  return true;
}

vm_status status_of(const std::string& state) {
  if (state == "created" || state == "starting" || state == "creating"
      || state == "updating" || state == "restarting")
    return vm_status::starting;
  if (state == "started")
    return vm_status::running;
  // A machine being destroyed still exists (its destroy is not confirmed).
  if (state == "destroyed")
    return vm_status::gone;
  return vm_status::stopped; // stopping, stopped, suspended, failed, replaced, ...
}

// The machine fields Aloft reads, checked: every one that is missing or of
// the wrong type is an error naming it.
caf::expected<vm_info> machine_from_json(const json& m, const std::string& host,
                                         const std::string& what) {
  auto bad = [&](const std::string& field, const std::string& expected) {
    return make_error(errc::data_loss, what + ": the Fly API answered a machine whose `"
                                         + field + "` is not " + expected);
  };
  if (!m.is_object())
    return bad("machine", "an object");
  auto id = m.find("id");
  if (!id || !id->is_string() || !is_safe_id(id->as_string()))
    return bad("id", "an id");
  auto state = m.find("state");
  if (!state || !state->is_string())
    return bad("state", "a string");
  vm_info vm;
  vm.vm_id = id->as_string();
  vm.status = status_of(state->as_string());
  vm.host = host;
  vm.user = "root";
  vm.workdir = default_workdir;
  const json* meta = nullptr;
  if (auto cfg = m.find("config"); cfg && cfg->is_object())
    meta = cfg->find("metadata");
  if (meta && meta->is_object()) {
    vm.installation_id = meta->get_string(meta_installation);
    vm.session_id = meta->get_string(meta_session);
    vm.idempotency_key = meta->get_string(meta_key);
    auto port = std::atoi(meta->get_string(meta_port).c_str());
    if (port > 0 && port < 65536)
      vm.port = static_cast<uint16_t>(port);
    auto wd = meta->get_string(meta_workdir);
    if (!wd.empty() && wd.front() == '/' && wd.find('\n') == std::string::npos)
      vm.workdir = wd;
    auto user = meta->get_string(meta_user);
    if (!user.empty() && user.size() <= 32 && is_safe_id(user))
      vm.user = user;
  }
  return vm;
}

// Whether a TCP server answers at host:port within `bound` (blocking).
bool tcp_answers(const std::string& host, uint16_t port, milliseconds bound) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST;
  addrinfo* res = nullptr;
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0)
    return false;
  bool ok = false;
  for (auto ai = res; ai && !ok; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
      continue;
    int rc = ::connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (rc == 0) {
      ok = true;
    } else if (errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      if (::poll(&p, 1, static_cast<int>(bound.count())) == 1) {
        int err = 0;
        socklen_t len = sizeof(err);
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        ok = err == 0;
      }
    }
    if (ok) {
      // sshd speaks first: its banner says it is sshd, not a proxy that
      // accepts and drops.
      pollfd p{fd, POLLIN, 0};
      char buf[8] = {};
      ok = ::poll(&p, 1, static_cast<int>(bound.count())) == 1
           && ::recv(fd, buf, 4, 0) == 4 && std::memcmp(buf, "SSH-", 4) == 0;
    }
    ::close(fd);
  }
  ::freeaddrinfo(res);
  return ok;
}

// -- the provider ---------------------------------------------------------------

class fly_provider final : public provider,
                           public std::enable_shared_from_this<fly_provider> {
public:
  explicit fly_provider(fly_provider_options opts)
    : opts_(std::move(opts)),
      app_(fly_app_name(opts_.app_prefix, opts_.installation_id, opts_.account)),
      auth_(fly_authorization(normalize_fly_token(opts_.token))) {
    while (!opts_.api_url.empty() && opts_.api_url.back() == '/')
      opts_.api_url.pop_back();
    if (opts_.api_url.empty())
      opts_.api_url = fly_default_api_url;
  }

  std::string kind() const override { return "fly"; }

  void create(const vm_request& req, callback<vm_info> done) override {
    auto self = shared_from_this();
    ensure_app([self, req, done](caf::error err) {
      if (err) {
        done(std::move(err));
        return;
      }
      self->create_attempt(req, 1, std::move(done));
    });
  }

  void wait_ready(const std::string& vm_id, callback<vm_info> done) override {
    on_machine(vm_id, std::move(done), [vm_id](fly_provider& self, callback<vm_info> done) {
      self.wait_started(vm_id, steady::now() + self.opts_.boot_timeout, std::move(done));
    });
  }

  void get(const std::string& vm_id, callback<vm_info> done) override {
    on_machine(vm_id, std::move(done), [vm_id](fly_provider& self, callback<vm_info> done) {
      self.get_machine(vm_id, std::move(done));
    });
  }

  // Runs `then` once the machine id is known to be safe in a URL and the app
  // exists; otherwise answers `done` with why not.
  void on_machine(const std::string& vm_id, callback<vm_info> done,
                  std::function<void(fly_provider&, callback<vm_info>)> then) {
    if (!is_safe_id(vm_id)) {
      done(make_error(errc::invalid_argument, "not a Fly machine id: " + vm_id));
      return;
    }
    auto self = shared_from_this();
    ensure_app([self, done, then](caf::error err) {
      if (err)
        done(std::move(err));
      else
        then(*self, done);
    });
  }

  void list(const std::string& installation_id,
            callback<std::vector<vm_info>> done) override {
    bool app_known = false;
    {
      std::lock_guard<std::mutex> guard{mtx_};
      app_known = app_ready_;
    }
    // Every reconcile lists: once the app is known, that is one call.
    if (app_known) {
      list_machines(meta_installation, installation_id, std::move(done));
      return;
    }
    auto self = shared_from_this();
    // An app that does not exist has no machines: listing never creates it.
    call("GET", "/v1/apps/" + app_, {}, options("get app " + app_),
         [self, installation_id, done](caf::expected<http_response> r) {
           if (r && r->status == 404) {
             done(std::vector<vm_info>{});
             return;
           }
           self->ensure_app([self, installation_id, done](caf::error err) {
             if (err) {
               done(std::move(err));
               return;
             }
             self->list_machines(meta_installation, installation_id, std::move(done));
           });
         });
  }

  void destroy(const std::string& vm_id, done_callback done) override {
    if (!is_safe_id(vm_id)) {
      done(make_error(errc::invalid_argument, "not a Fly machine id: " + vm_id));
      return;
    }
    auto self = shared_from_this();
    auto opts = options("destroy machine " + vm_id);
    opts.rate_key = "machine:" + vm_id + ":delete";
    opts.rate_per_s = opts_.mutation_rate_per_s;
    opts.rate_burst = opts_.mutation_burst;
    call("DELETE", machines_path() + "/" + vm_id + "?force=true", {}, opts,
         [self, vm_id, done](caf::expected<http_response> r) {
           if (!r) {
             done(r.error());
             return;
           }
           if (r->status != 404 && (r->status < 200 || r->status > 299)) {
             done(status_error(*r, "destroy machine " + vm_id));
             return;
           }
           self->confirm_gone(vm_id, steady::now() + self->opts_.boot_timeout,
                              std::move(done));
         });
  }

private:
  // -- plumbing -------------------------------------------------------------------

  http_call_options options(std::string what) const {
    http_call_options o;
    o.what = std::move(what);
    return o;
  }

  std::string machines_path() const { return "/v1/apps/" + app_ + "/machines"; }

  void call(const std::string& method, const std::string& path, const std::string& body,
            http_call_options opts, std::function<void(caf::expected<http_response>)> done,
            milliseconds timeout = milliseconds{30'000}, bool fresh_connection = false) {
    http_request req;
    req.fresh_connection = fresh_connection;
    req.method = method;
    req.url = opts_.api_url + path;
    req.headers.emplace_back("Authorization", auth_);
    req.headers.emplace_back("User-Agent", "aloft");
    if (!body.empty())
      req.headers.emplace_back("Content-Type", "application/json");
    req.body = body;
    req.timeout = timeout;
    opts_.http->send(std::move(req), std::move(opts),
                     [done = std::move(done)](http_outcome out) {
                       // A transport error names the request id already; a
                       // status becomes an error later (status_error).
                       done(std::move(out.response));
                     });
  }

  // A status error that names the response's request id, for support, as
  // the HTTP loop's own errors do.
  static caf::error status_error(const http_response& r, const std::string& what) {
    auto err = error_from_status(r, what);
    if (auto id = r.header("fly-request-id"))
      err = make_error(code_of(err), message_of(err) + "; request id "
                                       + sanitize_provider_text(*id, 64));
    return err;
  }

  // The JSON of a 2xx answer, or the error its status means.

  static caf::expected<json> body_of(const caf::expected<http_response>& r,
                                     const std::string& what) {
    if (!r)
      return r.error();
    if (r->status < 200 || r->status > 299)
      return status_error(*r, what);
    auto j = json::parse(r->body);
    if (!j)
      return make_error(errc::data_loss, what + ": the Fly API answered JSON that does "
                                                "not parse: " + message_of(j.error()));
    return j;
  }

  void after(milliseconds delay, std::function<void()> fn) { opts_.http->after(delay, std::move(fn)); }

  // -- the app and its IPs -----------------------------------------------------

  // Runs `next` once the app exists with its IPs (made on first use).
  void ensure_app(std::function<void(caf::error)> next) {
    bool ready = false;
    {
      std::lock_guard<std::mutex> guard{mtx_};
      ready = app_ready_;
      if (!ready) {
        app_waiters_.push_back(std::move(next));
        if (app_waiters_.size() > 1)
          return; // someone is making it
      }
    }
    if (ready) {
      next({}); // outside the lock: it may call back in
      return;
    }
    auto self = shared_from_this();
    call("GET", "/v1/apps/" + app_, {}, options("get app " + app_),
         [self](caf::expected<http_response> r) {
           if (r && r->status == 404) {
             self->create_app();
             return;
           }
           if (r && r->status == 403) {
             self->app_done(make_error(
               errc::permission_denied,
               "the Fly app " + self->app_ + " exists but this token cannot reach it (another "
                 "user or organization owns the name); choose another `app_prefix` for "
                 "account " + self->opts_.account + ", or use a token of organization "
                 + self->opts_.org));
             return;
           }
           auto j = body_of(r, "get app " + self->app_);
           if (!j) {
             self->app_done(j.error());
             return;
           }
           self->ensure_ips();
         });
  }

  void create_app() {
    auto body = json::object().set("name", app_).set("org_slug", opts_.org).dump();
    auto self = shared_from_this();
    call("POST", "/v1/apps", body, options("create app " + app_),
         [self](caf::expected<http_response> r) {
           if (r && (r->status == 422 || r->status == 409)
               && r->body.find("name_taken") != std::string::npos) {
             self->app_done(make_error(
               errc::already_exists,
               "the Fly app name " + self->app_
                 + " belongs to someone else; choose another `app_prefix` for account "
                 + self->opts_.account));
             return;
           }
           auto j = body_of(r, "create app " + self->app_ + " in organization "
                                 + self->opts_.org);
           if (!j) {
             self->app_done(j.error());
             return;
           }
           self->ensure_ips();
         });
  }

  void ensure_ips() {
    auto self = shared_from_this();
    call("GET", "/v1/apps/" + app_ + "/ip_assignments", {}, options("list IPs of " + app_),
         [self](caf::expected<http_response> r) {
           auto j = body_of(r, "list IPs of " + self->app_);
           if (!j) {
             self->app_done(j.error());
             return;
           }
           std::string v6, v4;
           if (auto ips = j->find("ips"); ips && ips->is_array())
             for (auto& ip : ips->items()) {
               auto addr = ip.get_string("ip");
               if (addr.empty() || addr.size() > 64)
                 continue;
               bool shared = ip.get_bool("shared", false);
               if (addr.find(':') != std::string::npos) {
                 if (addr.rfind("fdaa:", 0) != 0) // not a private (Flycast) one
                   v6 = addr;
               } else if (!shared) {
                 v4 = addr;
               }
             }
           bool want_v4 = self->opts_.ip_mode == "ipv6+ipv4";
           if (v6.empty()) {
             self->allocate_ip("v6");
             return;
           }
           if (want_v4 && v4.empty()) {
             self->allocate_ip("v4");
             return;
           }
           {
             std::lock_guard<std::mutex> guard{self->mtx_};
             self->ssh_host_ = want_v4 ? v4 : v6;
           }
           self->app_done({});
         });
  }

  void allocate_ip(const std::string& type) {
    auto body = json::object().set("type", type).dump();
    auto self = shared_from_this();
    call("POST", "/v1/apps/" + app_ + "/ip_assignments", body,
         options("allocate a " + type + " IP for " + app_),
         [self, type](caf::expected<http_response> r) {
           auto j = body_of(r, "allocate a " + type + " IP for " + self->app_);
           if (!j) {
             self->app_done(j.error());
             return;
           }
           self->ensure_ips(); // read back what is there now
         });
  }

  void app_done(caf::error err) {
    std::vector<std::function<void(caf::error)>> waiters;
    {
      std::lock_guard<std::mutex> guard{mtx_};
      app_ready_ = !err;
      waiters.swap(app_waiters_);
    }
    for (auto& w : waiters)
      w(err);
  }

  std::string host() {
    std::lock_guard<std::mutex> guard{mtx_};
    return ssh_host_;
  }

  // -- machines ---------------------------------------------------------------

  // A service port no other machine of the app uses (the app's IPs route a
  // port to the machines that serve it: two would share one sshd's
  // traffic). Below the usual ephemeral range, so a host running the
  // emulator does not hand it out to a client socket meanwhile.
  uint16_t pick_port() {
    std::lock_guard<std::mutex> guard{mtx_};
    std::uniform_int_distribution<int> d{10000, 32000};
    for (;;) {
      auto port = static_cast<uint16_t>(d(rng_));
      if (used_ports_.insert(port).second)
        return port;
    }
  }

  void note_port(const vm_info& vm) {
    if (vm.port == 0)
      return;
    std::lock_guard<std::mutex> guard{mtx_};
    if (vm.status == vm_status::gone)
      used_ports_.erase(vm.port);
    else
      used_ports_.insert(vm.port);
  }

  std::string machine_body(const vm_request& req, uint16_t port) const {
    auto deadline_s = req.hard_deadline_ms / 1000;
    auto env = json::object()
                 .set("ALOFT_SESSION", req.session_id)
                 .set("ALOFT_HARD_DEADLINE", std::to_string(deadline_s))
                 .set("ALOFT_WORKDIR", default_workdir);
    auto meta = json::object()
                  .set(meta_installation, req.installation_id)
                  .set(meta_session, req.session_id)
                  .set(meta_key, req.idempotency_key)
                  .set(meta_port, std::to_string(port));
    auto file = [](const std::string& path, const std::string& content) {
      return json::object().set("guest_path", path).set("raw_value", base64_encode(content));
    };
    auto files = json::array();
    files.push_back(file("/root/.ssh/authorized_keys", req.client_public_key + "\n"));
    files.push_back(file("/etc/ssh/ssh_host_ed25519_key", req.host_private_key));
    files.push_back(file("/etc/ssh/ssh_host_ed25519_key.pub", req.host_public_key + "\n"));
    files.push_back(file("/aloft/init.sh", fly_init_script()));
    auto service = json::object()
                     .set("protocol", "tcp")
                     .set("internal_port", 22)
                     .set("ports", array_of({json::object().set("port", port)}));
    auto config = json::object()
                    .set("image", opts_.image)
                    .set("guest", json::object()
                                    .set("cpu_kind", "shared")
                                    .set("cpus", opts_.cpus)
                                    .set("memory_mb", opts_.memory_mb))
                    .set("env", env)
                    .set("metadata", meta)
                    .set("services", array_of({service}))
                    .set("files", files)
                    .set("init", json::object().set(
                                   "exec", array_of({json{"/bin/sh"}, json{"/aloft/init.sh"}})))
                    .set("restart", json::object().set("policy", "no"))
                    .set("auto_destroy", true);
    return json::object().set("config", config).dump();
  }

  // One create. A failure that may hide a machine made anyway (no answer, a
  // 408, a 5xx) is followed by a look for it by its idempotency key before
  // the next attempt; a machine found is adopted.
  void create_attempt(const vm_request& req, int attempt, callback<vm_info> done) {
    auto self = shared_from_this();
    auto what = "create machine for " + req.session_id;
    auto opts = options(what);
    opts.max_attempts = 1; // this code decides, after looking
    opts.rate_key = "app:" + app_ + ":create";
    opts.rate_per_s = opts_.mutation_rate_per_s;
    opts.rate_burst = opts_.mutation_burst;
    // A fresh connection: a create must never be replayed behind our back.
    call("POST", machines_path(), machine_body(req, pick_port()), opts,
         [self, req, attempt, done, what](caf::expected<http_response> r) {
           if (r && r->status >= 200 && r->status <= 299) {
             auto j = body_of(r, what);
             if (!j) {
               done(j.error());
               return;
             }
             done(machine_from_json(*j, self->host(), what));
             return;
           }
           auto err = r ? status_error(*r, what) : r.error();
           if (r && r->body.find("insufficient_capacity") != std::string::npos)
             err = make_error(errc::resource_exhausted,
                              what + ": Fly has no capacity for this machine now ("
                                + message_of(err) + ")");
           bool ambiguous = !r || r->status == 408 || r->status >= 500;
           bool retryable = ambiguous || (r && r->status == 429)
                            || code_of(err) == errc::resource_exhausted;
           if (!retryable || attempt >= create_attempts) {
             done(std::move(err));
             return;
           }
           int64_t retry_after = 0;
           if (r)
             if (auto h = r->header("Retry-After"))
               retry_after = retry_after_ms(*h, std::chrono::system_clock::now());
           retry_policy p;
           p.max_attempts = create_attempts;
           auto d = decide_retry(make_error(errc::unavailable, "retry"), attempt, p,
                                 self->jitter(), retry_after);
           auto again = [self, req, attempt, done] {
             self->create_attempt(req, attempt + 1, done);
           };
           if (!ambiguous) {
             self->after(milliseconds{d.delay_ms}, again);
             return;
           }
           self->after(milliseconds{d.delay_ms}, [self, req, done, again, what] {
             self->list_machines(meta_key, req.idempotency_key,
                                 [self, req, done, again, what](
                                   caf::expected<std::vector<vm_info>> found) {
                                   if (!found) {
                                     // Cannot tell: creating again could
                                     // double it. Fail; reconcile adopts it.
                                     done(annotate(found.error(),
                                                   what + ": after an unanswered create, "
                                                          "looking for the machine"));
                                     return;
                                   }
                                   for (auto& vm : *found)
                                     if (vm.idempotency_key == req.idempotency_key
                                         && vm.status != vm_status::gone) {
                                       done(vm);
                                       return;
                                     }
                                   again();
                                 });
           });
         },
         milliseconds{30'000}, /*fresh_connection=*/true);
  }

  void list_machines(const std::string& key, const std::string& value,
                     callback<std::vector<vm_info>> done) {
    auto self = shared_from_this();
    auto what = "list machines of " + app_;
    call("GET", machines_path() + "?metadata." + key + "=" + url_encode(value), {},
         options(what), [self, key, value, done, what](caf::expected<http_response> r) {
           auto j = body_of(r, what);
           if (!j) {
             done(j.error());
             return;
           }
           if (!j->is_array()) {
             done(make_error(errc::data_loss, what + ": the Fly API answered something "
                                                     "other than a list of machines"));
             return;
           }
           std::vector<vm_info> out;
           auto h = self->host();
           for (auto& m : j->items()) {
             auto vm = machine_from_json(m, h, what);
             if (!vm) {
               done(vm.error());
               return;
             }
             // The filter may be ignored: check it here.
             auto mine = key == meta_key ? vm->idempotency_key == value
                                         : vm->installation_id == value;
             self->note_port(*vm);
             if (mine && vm->status != vm_status::gone)
               out.push_back(std::move(*vm));
           }
           done(std::move(out));
         });
  }

  void get_machine(const std::string& vm_id, callback<vm_info> done) {
    auto self = shared_from_this();
    auto what = "get machine " + vm_id;
    auto opts = options(what);
    opts.rate_key = "machine:" + vm_id + ":get";
    opts.rate_per_s = 5;
    opts.rate_burst = 10;
    call("GET", machines_path() + "/" + vm_id, {}, opts,
         [self, vm_id, done, what](caf::expected<http_response> r) {
           if (r && r->status == 404) {
             vm_info gone;
             gone.vm_id = vm_id;
             gone.status = vm_status::gone;
             done(gone);
             return;
           }
           auto j = body_of(r, what);
           if (!j) {
             done(j.error());
             return;
           }
           done(machine_from_json(*j, self->host(), what));
         });
  }

  // Long-polls `wait?state=started` (408: not yet), then waits for sshd.
  void wait_started(const std::string& vm_id, steady::time_point deadline,
                    callback<vm_info> done) {
    auto left = std::chrono::duration_cast<std::chrono::seconds>(deadline - steady::now());
    if (left.count() < 1) {
      done(make_error(errc::deadline_exceeded,
                      "machine " + vm_id + " did not start within the boot timeout"));
      return;
    }
    auto wait_s = std::min<int64_t>(60, left.count());
    auto self = shared_from_this();
    auto what = "wait for machine " + vm_id + " to start";
    auto opts = options(what);
    opts.retry_408 = false; // a 408 here only means "not yet"
    call("GET",
         machines_path() + "/" + vm_id + "/wait?state=started&timeout=" + std::to_string(wait_s),
         {}, opts,
         [self, vm_id, deadline, done, what](caf::expected<http_response> r) {
           if (r && r->status == 408) {
             self->wait_started(vm_id, deadline, done);
             return;
           }
           if (r && r->status == 404) {
             done(make_error(errc::not_found, "machine " + vm_id + " does not exist"));
             return;
           }
           auto j = body_of(r, what);
           if (!j) {
             done(j.error());
             return;
           }
           self->get_machine(vm_id, [self, vm_id, deadline, done](caf::expected<vm_info> vm) {
             if (!vm) {
               done(vm.error());
               return;
             }
             if (vm->status == vm_status::gone || vm->status == vm_status::stopped) {
               done(make_error(errc::not_found, "machine " + vm_id + " is "
                                                  + to_string(vm->status)
                                                  + " instead of starting"));
               return;
             }
             if (vm->port == 0 || vm->host.empty()) {
               done(make_error(errc::data_loss, "machine " + vm_id
                                                  + " has no SSH address (metadata "
                                                  + meta_port + ")"));
               return;
             }
             self->wait_ssh(*vm, deadline, done);
           });
         },
         milliseconds{(wait_s + 10) * 1000});
  }

  void wait_ssh(vm_info vm, steady::time_point deadline, callback<vm_info> done) {
    auto self = shared_from_this();
    opts_.exec->post([self, vm, deadline, done] {
      if (tcp_answers(vm.host, vm.port, milliseconds{1000})) {
        auto ready = vm;
        ready.status = vm_status::running;
        done(ready);
        return;
      }
      if (steady::now() >= deadline) {
        done(make_error(errc::deadline_exceeded,
                        "machine " + vm.vm_id + " started but its sshd at " + vm.host + ":"
                          + std::to_string(vm.port) + " did not answer within the boot "
                                                      "timeout"));
        return;
      }
      self->after(self->opts_.ssh_poll_interval,
                  [self, vm, deadline, done] { self->wait_ssh(vm, deadline, done); });
    });
  }

  // A destroy succeeds once the machine is gone.
  void confirm_gone(const std::string& vm_id, steady::time_point deadline,
                    done_callback done) {
    auto self = shared_from_this();
    get_machine(vm_id, [self, vm_id, deadline, done](caf::expected<vm_info> vm) {
      if (!vm) {
        done(vm.error());
        return;
      }
      if (vm->status == vm_status::gone) {
        done({});
        return;
      }
      if (steady::now() >= deadline) {
        done(make_error(errc::deadline_exceeded,
                        "machine " + vm_id + " is still " + to_string(vm->status)
                          + " after its destroy"));
        return;
      }
      self->after(milliseconds{500}, [self, vm_id, deadline, done] {
        self->confirm_gone(vm_id, deadline, done);
      });
    });
  }

  double jitter() {
    std::lock_guard<std::mutex> guard{mtx_};
    return std::uniform_real_distribution<double>{0.0, 1.0}(rng_);
  }

  fly_provider_options opts_;
  std::string app_;
  std::string auth_;
  std::mutex mtx_;
  bool app_ready_ = false;
  std::vector<std::function<void(caf::error)>> app_waiters_;
  std::string ssh_host_;
  std::set<uint16_t> used_ports_;
  std::mt19937 rng_{std::random_device{}()};
};

} // namespace

fly_provider_options fly_options_for(const account& a, const secret_map& secrets) {
  fly_provider_options o;
  auto opt = [&](const char* key, const std::string& fallback) {
    auto i = a.options.find(key);
    return i == a.options.end() || i->second.empty() ? fallback : i->second;
  };
  o.api_url = opt("api_url", fly_default_api_url);
  if (auto t = find_secret(secrets, "token"))
    o.token = *t;
  o.org = opt("org", "personal");
  o.app_prefix = opt("app_prefix", "aloft");
  o.ip_mode = opt("ip_mode", "ipv6");
  o.image = opt("image", fly_default_image);
  o.cpus = std::atoi(opt("cpus", "2").c_str());
  o.memory_mb = std::atoi(opt("memory_mb", "2048").c_str());
  if (o.cpus < 1)
    o.cpus = 2;
  if (o.memory_mb < 256)
    o.memory_mb = 2048;
  o.account = a.name;
  return o;
}

std::shared_ptr<provider> make_fly_provider(fly_provider_options opts) {
  return std::make_shared<fly_provider>(std::move(opts));
}

std::string fly_app_name(const std::string& prefix, const std::string& installation_id,
                         const std::string& account) {
  std::string id = installation_id;
  if (id.rfind("i-", 0) == 0)
    id = id.substr(2);
  std::string raw = prefix + "-" + id + "-" + account;
  std::string out;
  for (char c : raw) {
    auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u))
      out += static_cast<char>(std::tolower(u));
    else if (!out.empty() && out.back() != '-')
      out += '-';
  }
  while (!out.empty() && out.back() == '-')
    out.pop_back();
  if (out.size() > 63)
    out.resize(63);
  while (!out.empty() && out.back() == '-')
    out.pop_back();
  return out;
}

std::string fly_init_script() {
  return R"SH(#!/bin/sh
# Aloft's machine init: sshd for the engine, and the hard deadline enforced
# here, so the machine ends itself (auto_destroy) even with no engine left.
if [ -z "$ALOFT_SKIP_SSHD" ]; then
  if ! command -v sshd > /dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends \
      openssh-server git tmux ca-certificates > /dev/null || exit 1
  fi
  mkdir -p /run/sshd /root/work && chmod 700 /root/.ssh
  chmod 600 /etc/ssh/ssh_host_ed25519_key /root/.ssh/authorized_keys
  /usr/sbin/sshd -e -o PasswordAuthentication=no -o PermitRootLogin=prohibit-password \
    -h /etc/ssh/ssh_host_ed25519_key || exit 1
fi
# The engine moves the deadline (aloft extend) by writing it next to the
# agent's state: <workdir>/../aloft/deadline, epoch seconds.
file="${ALOFT_WORKDIR:-/root/work}"; file="${file%/*}/aloft/deadline"
while :; do
  deadline="${ALOFT_HARD_DEADLINE:-0}"
  if [ -f "$file" ]; then deadline=$(cat "$file" 2>/dev/null); fi
  case "$deadline" in ''|*[!0-9]*) deadline="${ALOFT_HARD_DEADLINE:-0}" ;; esac
  if [ "$deadline" -gt 0 ] && [ "$(date +%s)" -ge "$deadline" ]; then
    echo "aloft: hard deadline reached; the machine ends" >&2
    exit 0
  fi
  sleep 5
done
)SH";
}

} // namespace aloft
