#include "engine/app/engine_impl.hpp"

#include <atomic>
#include <chrono>
#include <climits>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "actors/atoms.hpp"
#include "actors/messages.hpp"
#include "actors/registry.hpp"
#include "actors/sync.hpp"
#include "engine/agent_script.hpp"
#include "engine/base/error.hpp"
#include "engine/base/ids.hpp"
#include "engine/clock.hpp"
#include "engine/executor.hpp"
#include "engine/home.hpp"
#include "engine/keys.hpp"
#include "engine/ssh_transport.hpp"
#include "engine/watchdog_policy.hpp"
#include "persistence/store.hpp"
#include "providers/local/local_provider.hpp"

namespace aloft {

namespace {

using std::chrono::seconds;

constexpr auto call_timeout = seconds(30);

class engine_impl final : public engine {
public:
  ~engine_impl() override {
    if (registry_)
      caf::anon_send_exit(registry_, caf::exit_reason::user_shutdown);
    registry_ = nullptr;
    sys_.reset(); // waits for every actor
    transports_.reset();
    pool_.reset();
    db_.reset();
  }

  caf::error open(const engine_options& opts, engine_overrides ov) {
    home_ = resolve_home(opts.home);
    if (auto err = create_home(home_))
      return err;
    auto db = open_rocksdb_store(home_.store_dir());
    if (!db)
      return annotate(db.error(), "open store in " + home_.store_dir());
    db_ = std::move(*db);
    auto inst = open_meta(*db_);
    if (!inst)
      return inst.error();
    installation_id_ = *inst;

    // Read every session back; a record that does not decode is set aside,
    // so one bad record never keeps the others from loading.
    session_records records;
    std::vector<std::pair<std::string, std::string>> corrupt;
    auto scan_err = db_->scan(family::sessions, [&](const std::string& k, const std::string& v) {
      auto rec = decode_session_record(v);
      if (rec)
        records.push_back(std::move(*rec));
      else
        corrupt.emplace_back(k, describe(rec.error()));
    });
    if (scan_err)
      return annotate(scan_err, "read sessions");
    for (auto& [key, why] : corrupt) {
      auto raw = db_->get(family::sessions, key);
      write_batch batch;
      batch.push_back({family::quarantine, key, raw ? *raw : std::string{}});
      batch.push_back({family::sessions, key, {}, true});
      if (auto err = db_->commit_and_wait(std::move(batch)))
        return annotate(err, "quarantine session " + key);
    }
    uint64_t next_seq = 1;
    db_->scan(family::events, [&](const std::string& k, const std::string&) {
      next_seq = std::max<uint64_t>(next_seq, std::strtoull(k.c_str(), nullptr, 16) + 1);
    });

    cfg_.set("scheduler.policy", caf::atom("sharing"));
    auto threads = opts.scheduler_threads;
    if (threads == 0)
      threads = std::max(1u, std::thread::hardware_concurrency());
    cfg_.set("scheduler.max-threads", threads);
    sys_ = std::make_unique<caf::actor_system>(cfg_);

    pool_ = std::make_shared<thread_pool>(opts.worker_threads);
    auto senv = std::make_shared<session_env>();
    senv->db = db_.get();
    senv->clock = &clock_;
    senv->blocking = pool_.get();
    senv->home = home_;
    senv->installation_id = installation_id_;
    senv->status_interval_s = ov.status_interval_s;
    senv->retry_delay_ms = ov.retry_delay_ms;
    if (!ov.no_agent) {
      transports_ = make_ssh_transport_factory();
      senv->transports = transports_.get();
    } else {
      senv->ssh_keys = false;
    }
    registry_env renv;
    renv.sessions = senv;
    renv.next_event_seq = next_seq;
    if (ov.accounts.empty()) {
      local_provider_options lopts;
      lopts.sandboxes_dir = home_.sandboxes_dir();
      lopts.exec = pool_;
      ov.accounts.emplace_back(default_local_account(), make_local_provider(lopts));
    }
    for (auto& [acct, client] : ov.accounts) {
      if (default_account_.empty())
        default_account_ = acct.name;
      accounts_[acct.name] = acct;
      renv.accounts[acct.name] = acct;
      renv.providers[acct.name] = client;
    }
    registry_ = spawn_registry(*sys_, std::move(renv));
    caf::scoped_actor self{*sys_};
    caf::error err;
    self->request(registry_, call_timeout, rehydrate_atom::value, records)
      .receive([](done_atom) {}, [&](caf::error& e) { err = std::move(e); });
    if (err)
      return annotate(err, "rehydrate sessions");
    for (auto& [key, why] : corrupt) {
      event e;
      e.kind = "quarantine";
      e.session = key;
      e.message = "stored record could not be read and was set aside: " + why;
      caf::anon_send(registry_, publish_atom::value, std::move(e));
    }
    caf::anon_send(registry_, tick_atom::value);
    return {};
  }

  std::string installation_id() const override { return installation_id_; }

  caf::expected<session_record> launch(const launch_request& req) override {
    if (req.agent_cmd.empty())
      return make_error(errc::invalid_argument,
                        "launch needs an agent command (--agent CMD)");
    session_record rec;
    rec.account = req.account.empty() ? default_account_ : req.account;
    auto acct = accounts_.find(rec.account);
    if (acct == accounts_.end())
      return make_error(errc::invalid_argument,
                        "unknown account '" + rec.account + "'; known accounts: "
                          + account_names());
    if (!acct->second.enabled)
      return make_error(errc::failed_precondition,
                        "account '" + rec.account + "' is disabled");
    auto worktree = req.worktree;
    if (worktree.empty()) {
      char buf[PATH_MAX];
      if (::getcwd(buf, sizeof(buf)) != nullptr)
        worktree = buf;
    }
    char resolved[PATH_MAX];
    struct stat st;
    if (::realpath(worktree.c_str(), resolved) == nullptr
        || ::stat(resolved, &st) != 0 || !S_ISDIR(st.st_mode))
      return make_error(errc::invalid_argument,
                        "worktree '" + worktree + "' is not a directory");
    auto& g = acct->second.guards;
    auto idle_s = req.idle_timeout_s >= 0 ? req.idle_timeout_s : g.idle_timeout_s;
    auto hard_s = req.hard_timeout_s >= 0 ? req.hard_timeout_s : g.hard_timeout_s;
    if (idle_s < 1 || hard_s < 1)
      return make_error(errc::invalid_argument, "timeouts must be at least 1 second");
    auto now = clock_.now_ms();
    rec.id = make_session_id();
    rec.provider = acct->second.provider;
    rec.idempotency_key = make_idempotency_key();
    rec.agent_cmd = req.agent_cmd;
    rec.worktree = resolved;
    rec.auto_destroy = req.auto_destroy >= 0 ? req.auto_destroy == 1
                                             : g.auto_destroy_on_idle;
    rec.idle_timeout_ms = idle_s * 1000;
    rec.created_at = now;
    rec.idle_deadline = now + idle_s * 1000;
    rec.hard_deadline = now + hard_s * 1000;
    return call<session_record>(launch_atom::value, std::move(rec));
  }

  std::vector<session_record> list() override {
    auto r = call<session_records>(list_atom::value);
    return r ? std::move(*r) : session_records{};
  }

  caf::expected<session_view> show(const std::string& id) override {
    auto rec = call<session_record>(get_atom::value, id);
    if (!rec)
      return rec.error();
    session_view v;
    v.record = std::move(*rec);
    if (v.record.state == session_state::running) {
      watchdog_input in;
      in.idle_deadline = v.record.idle_deadline;
      in.hard_deadline = v.record.hard_deadline;
      in.auto_destroy = v.record.auto_destroy;
      in.hard_warned = v.record.hard_warned;
      auto d = decide_watchdog(in, clock_.now_ms());
      v.next_timer = d.next_timer;
      v.next_timer_at = d.next_at;
    }
    return v;
  }

  caf::error stop(const std::string& id) override {
    auto r = call<done_atom>(stop_atom::value, id);
    return r ? caf::error{} : r.error();
  }

  caf::error destroy(const std::string& id) override {
    auto r = call<done_atom>(destroy_atom::value, id);
    return r ? caf::error{} : r.error();
  }

  caf::expected<session_record> extend(const std::string& id, int64_t s) override {
    return call<session_record>(extend_atom::value, id, s);
  }

  caf::expected<attach_info> attach(const std::string& id) override {
    auto rec = call<session_record>(get_atom::value, id);
    if (!rec)
      return rec.error();
    if (rec->state != session_state::running)
      return make_error(errc::failed_precondition,
                        "session " + id + " is " + to_string(rec->state)
                          + "; attach needs a running VM (it never starts one)");
    auto keys = load_session_keys(home_.keys_dir(id));
    if (!keys)
      return annotate(keys.error(), "keys of session " + id);
    attach_info info;
    info.endpoint.host = rec->host;
    info.endpoint.port = rec->port;
    info.endpoint.user = rec->user;
    info.endpoint.client_key_path = keys->client_key_path;
    info.endpoint.host_public_key = keys->host_public_key;
    info.command = agent_attach_command(rec->workdir);
    return info;
  }

  void activity(const std::string& id, const std::string& source) override {
    caf::anon_send(registry_, activity_atom::value, id, source);
  }

  caf::expected<sync_result> sync_up(const std::string& id) override {
    auto out = call_long<sync_outcome>(sync_up_atom::value, id);
    if (!out)
      return out.error();
    auto r = to_result(*out);
    r.direction = "up";
    return r;
  }

  caf::expected<sync_result> sync_down(const sync_down_request& req) override {
    auto mode = req.mode == sync_down_mode::branch    ? sync::apply_mode::branch
                : req.mode == sync_down_mode::dry_run ? sync::apply_mode::dry_run
                                                      : sync::apply_mode::apply;
    if (mode == sync::apply_mode::branch && req.branch.empty())
      return make_error(errc::invalid_argument, "sync down to a branch needs its name");
    auto out = call_long<sync_outcome>(sync_down_atom::value, req.id, mode, req.branch);
    if (!out)
      return out.error();
    auto r = to_result(*out);
    r.direction = "down";
    return r;
  }

  caf::expected<sync_status> sync_state(const std::string& id) override {
    auto st = call<aloft::sync_state>(sync_state_atom::value, id);
    if (!st)
      return st.error();
    sync_status out;
    out.local_changed = st->local_changed;
    out.vm_changed = st->vm_changed;
    out.local_note = st->local_note;
    out.vm_note = st->vm_note;
    return out;
  }

  caf::expected<std::string> log_path(const std::string& id) override {
    auto rec = call<session_record>(get_atom::value, id);
    if (!rec)
      return rec.error();
    return home_.log_path(id);
  }

  std::vector<event> events(size_t n) override {
    auto r = call<events_list>(events_atom::value, static_cast<uint64_t>(n));
    return r ? std::move(*r) : events_list{};
  }

  uint64_t subscribe(subscriber fn) override {
    auto handle = ++next_subscriber_;
    caf::anon_send(registry_, subscribe_atom::value, handle, subscriber_fn{std::move(fn)});
    return handle;
  }

  void unsubscribe(uint64_t handle) override {
    caf::anon_send(registry_, unsub_atom::value, handle);
  }

private:
  template <class T, class... Ts>
  caf::expected<T> call(Ts&&... xs) {
    caf::scoped_actor self{*sys_};
    caf::expected<T> result{make_error(errc::internal, "no reply")};
    self->request(registry_, call_timeout, std::forward<Ts>(xs)...)
      .receive([&](T& x) { result = std::move(x); },
               [&](caf::error& err) {
                 result = code_of(err) == errc::unknown
                            ? make_error(errc::deadline_exceeded,
                                         "the engine did not answer: " + describe(err))
                            : std::move(err);
               });
    return result;
  }

  // Sync jobs move whole trees: they get an hour, not the usual 30 s.
  template <class T, class... Ts>
  caf::expected<T> call_long(Ts&&... xs) {
    caf::scoped_actor self{*sys_};
    caf::expected<T> result{make_error(errc::internal, "no reply")};
    self->request(registry_, std::chrono::seconds(3600), std::forward<Ts>(xs)...)
      .receive([&](T& x) { result = std::move(x); },
               [&](caf::error& err) { result = std::move(err); });
    return result;
  }

  static sync_result to_result(const sync_outcome& out) {
    sync_result r;
    r.commit = out.commit;
    r.base = out.base;
    r.ref = out.ref;
    r.bytes = out.bytes;
    r.files = out.files;
    r.notes = out.notes;
    r.changed = out.applied.changed;
    r.conflicts = out.applied.conflicts;
    r.saved_ref = out.applied.saved_ref;
    r.branch = out.applied.branch;
    r.diffstat = out.applied.diffstat;
    return r;
  }

  std::string account_names() const {
    std::string out;
    for (auto& [name, a] : accounts_)
      out += (out.empty() ? "" : ", ") + name;
    return out;
  }

  caf::actor_system_config cfg_;
  std::unique_ptr<caf::actor_system> sys_;
  home_layout home_;
  std::unique_ptr<store> db_;
  std::string installation_id_;
  system_clock clock_;
  std::shared_ptr<thread_pool> pool_;
  std::unique_ptr<transport_factory> transports_;
  caf::actor registry_;
  std::map<std::string, account> accounts_;
  std::string default_account_;
  std::atomic<uint64_t> next_subscriber_{0};
};

} // namespace

caf::expected<std::unique_ptr<engine>> open_engine_with(const engine_options& opts,
                                                        engine_overrides overrides) {
  auto e = std::make_unique<engine_impl>();
  if (auto err = e->open(opts, std::move(overrides)))
    return err;
  return std::unique_ptr<engine>{std::move(e)};
}

caf::expected<std::unique_ptr<engine>> open_engine(const engine_options& opts) {
  return open_engine_with(opts, {});
}

} // namespace aloft
