#include "engine/app/engine_impl.hpp"

#include <algorithm>
#include <atomic>
#include <mutex>
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
#include "config/settings.hpp"
#include "engine/base/error.hpp"
#include "engine/base/ids.hpp"
#include "engine/base/redact.hpp"
#include "engine/clock.hpp"
#include "engine/executor.hpp"
#include "engine/home.hpp"
#include "engine/keys.hpp"
#include "engine/ssh_transport.hpp"
#include "engine/watchdog_policy.hpp"
#include "persistence/store.hpp"
#include "providers/fly/fly_provider.hpp"
#include "providers/http/http_loop.hpp"
#include "providers/local/local_provider.hpp"
#include "providers/validate.hpp"

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
    // Calls still in flight are answered `cancelled` (their callbacks may
    // post to the pool, which is still there), then the loop's thread ends.
    if (http_)
      http_->shutdown();
    clients_.clear();
    http_.reset();
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
    senv->agent_secrets = [this](const session_record& rec) { return agent_secrets_of(rec); };
    senv->sync_limits = [this] { return sync_limits(); };
    if (!ov.no_agent) {
      transports_ = make_ssh_transport_factory();
      senv->transports = transports_.get();
    } else {
      senv->ssh_keys = false;
    }
    registry_env renv;
    renv.sessions = senv;
    renv.next_event_seq = next_seq;
    std::vector<std::string> load_problems;
    if (ov.accounts.empty()) {
      load_problems = load_accounts();
    } else {
      // Tests and the bench bring their own accounts and clients.
      for (auto& [acct, client] : ov.accounts) {
        if (default_account_.empty())
          default_account_ = acct.name;
        accounts_[acct.name] = acct;
        clients_[acct.name] = client;
      }
    }
    for (auto& [name, acct] : accounts_) {
      renv.accounts[name] = acct;
      if (clients_[name])
        renv.providers[name] = clients_[name];
    }
    registry_ = spawn_registry(*sys_, std::move(renv));
    caf::scoped_actor self{*sys_};
    caf::error err;
    self->request(registry_, call_timeout, rehydrate_atom::value, records)
      .receive([](done_atom) {}, [&](caf::error& e) { err = std::move(e); });
    if (err)
      return annotate(err, "rehydrate sessions");
    for (auto& why : load_problems) {
      event e;
      e.kind = "error";
      e.message = why;
      caf::anon_send(registry_, publish_atom::value, std::move(e));
    }
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

  store_stats db_stats() const { return db_ ? db_->stats() : store_stats{}; }

  caf::expected<session_record> launch(const launch_request& req) override {
    session_record rec;
    rec.agent_cmd = req.agent_cmd;
    account acct;
    {
      std::lock_guard<std::mutex> guard{accounts_mtx_};
      if (!req.profile.empty()) {
        auto p = std::find_if(profiles_.begin(), profiles_.end(),
                              [&](const agent_profile& x) { return x.name == req.profile; });
        if (p == profiles_.end())
          return make_error(errc::invalid_argument,
                            "no agent profile '" + req.profile
                              + "' in settings.json (profiles: " + profile_names() + ")");
        rec.profile = p->name;
        rec.agent_secrets = p->secrets;
        if (rec.agent_cmd.empty())
          rec.agent_cmd = p->command;
      }
      if (rec.agent_cmd.empty())
        return make_error(errc::invalid_argument,
                          "launch needs an agent command (--agent CMD) or a profile "
                          "(--profile NAME)");
      rec.account = req.account.empty() ? default_account_ : req.account;
      auto i = accounts_.find(rec.account);
      if (i == accounts_.end())
        return make_error(errc::invalid_argument,
                          "unknown account '" + rec.account + "'; known accounts: "
                            + account_names());
      acct = i->second;
      // Every secret the agent needs must be there now, not at its start.
      if (!rec.agent_secrets.empty()) {
        auto have = creds_ ? creds_->get(acct.name) : caf::expected<secret_map>{secret_map{}};
        for (auto& name : rec.agent_secrets)
          if (!have || find_secret(*have, name) == nullptr)
            return make_error(errc::failed_precondition,
                              "profile '" + rec.profile + "' hands the agent the secret "
                                + name + ", which account '" + acct.name
                                + "' does not have; add it with `aloft account secret "
                                + acct.name + " " + name + "`");
      }
    }
    if (!acct.enabled)
      return make_error(errc::failed_precondition,
                        "account '" + rec.account + "' is disabled; `aloft account enable "
                          + rec.account + "` turns it back on");
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
    auto& g = acct.guards;
    auto idle_s = req.idle_timeout_s >= 0 ? req.idle_timeout_s : g.idle_timeout_s;
    auto hard_s = req.hard_timeout_s >= 0 ? req.hard_timeout_s : g.hard_timeout_s;
    if (idle_s < 1 || hard_s < 1)
      return make_error(errc::invalid_argument, "timeouts must be at least 1 second");
    auto now = clock_.now_ms();
    rec.id = make_session_id();
    rec.provider = acct.provider;
    rec.idempotency_key = make_idempotency_key();
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

  // -- accounts ----------------------------------------------------------------

  std::vector<account_view> accounts() override {
    auto live = live_counts();
    std::lock_guard<std::mutex> guard{accounts_mtx_};
    std::vector<account_view> out;
    for (auto& [name, acct] : accounts_)
      out.push_back(view_of(acct, live));
    return out;
  }

  caf::expected<account_view> add_account(const account& requested,
                                          const secret_map& secrets) override {
    std::lock_guard<std::mutex> guard{accounts_mtx_};
    auto cur = editable_settings();
    if (!cur)
      return cur.error();
    if (accounts_.count(requested.name) != 0)
      return make_error(errc::already_exists,
                        "account '" + requested.name + "' exists; `aloft account rm "
                          + requested.name + "` first, or change it with `aloft account set`");
    auto normal = normalized(requested);
    if (!normal)
      return normal.error();
    auto& a = *normal;
    for (auto& key : required_secrets(a.provider)) {
      auto i = secrets.find(key);
      if (i == secrets.end() || i->second.empty())
        return make_error(errc::invalid_argument,
                          "account '" + a.name + "' (" + a.provider + ") needs the secret '"
                            + key + "'; nothing was stored");
    }
    for (auto& [key, value] : secrets)
      register_secret(value);
    if (auto err = validate_credentials(a, secrets))
      return annotate(err, "account '" + a.name + "' not added (nothing was stored)");
    if (!secrets.empty()) {
      if (!creds_)
        return make_error(errc::unavailable, "account '" + a.name
                                               + "' not added: no credential store ("
                                               + creds_problem_ + ")");
      if (auto err = creds_->put(a.name, secrets))
        return annotate(err, "account '" + a.name + "' not added: store its secrets in "
                               + creds_->location());
    }
    cur->accounts.push_back(a);
    if (auto err = save_settings(home_.settings_path(), *cur)) {
      if (!secrets.empty())
        ignore_error(creds_->erase(a.name));
      return annotate(err, "account '" + a.name + "' not added");
    }
    install(a, secrets);
    return view_of(a, live_counts());
  }

  caf::error validate_account(const std::string& name) override {
    account a;
    secret_map secrets;
    {
      std::lock_guard<std::mutex> guard{accounts_mtx_};
      auto i = accounts_.find(name);
      if (i == accounts_.end())
        return unknown_account(name);
      a = i->second;
      auto got = secrets_of(a);
      if (!got)
        return got.error();
      secrets = std::move(*got);
    }
    if (auto err = validate_credentials(a, secrets))
      return annotate(err, "account '" + name + "'");
    return {};
  }

  caf::expected<account_view> set_account(const std::string& name, const std::string& key,
                                          const std::string& value, bool apply_to_running,
                                          size_t* rearmed) override {
    std::lock_guard<std::mutex> guard{accounts_mtx_};
    auto i = accounts_.find(name);
    if (i == accounts_.end())
      return unknown_account(name);
    auto cur = editable_settings();
    if (!cur)
      return cur.error();
    auto a = i->second;
    if (auto err = set_account_field(a, key, value))
      return annotate(err, "account '" + name + "'");
    if (auto err = aloft::validate_account(a))
      return annotate(err, "account '" + name + "'");
    put_account(*cur, a);
    if (auto err = save_settings(home_.settings_path(), *cur))
      return err;
    bool is_guard = key == "idle_timeout_s" || key == "hard_timeout_s"
                    || key == "auto_destroy_on_idle" || key == "hard_warning_s"
                    || key == "max_concurrent_vms";
    if (is_guard || key == "enabled") {
      accounts_[name] = a;
      caf::anon_send(registry_, account_atom::value, a);
    } else {
      auto secrets = secrets_of(a);
      install(a, secrets ? *secrets : secret_map{});
    }
    size_t n = 0;
    if (apply_to_running && is_guard) {
      auto r = call<uint64_t>(guards_atom::value, name, a.guards);
      n = r ? static_cast<size_t>(*r) : 0;
    }
    if (rearmed)
      *rearmed = n;
    return view_of(a, live_counts());
  }

  caf::error enable_account(const std::string& name, bool enabled) override {
    auto r = set_account(name, "enabled", enabled ? "true" : "false", false, nullptr);
    return r ? caf::error{} : r.error();
  }

  caf::error set_account_secret(const std::string& name, const std::string& key,
                                const std::string& value) override {
    std::lock_guard<std::mutex> guard{accounts_mtx_};
    auto i = accounts_.find(name);
    if (i == accounts_.end())
      return unknown_account(name);
    auto required = required_secrets(i->second.provider);
    bool provider_key = std::find(required.begin(), required.end(), key) != required.end();
    if (!provider_key && !is_env_name(key))
      return make_error(errc::invalid_argument,
                        "secret name '" + key + "': expected an environment variable's name "
                          "(letters, digits and _, not starting with a digit)");
    if (value.empty())
      return make_error(errc::invalid_argument, "the secret " + key + " is empty");
    if (!creds_)
      return make_error(errc::unavailable, "no credential store (" + creds_problem_ + ")");
    auto now = creds_->get(name);
    secret_map next = now ? *now : secret_map{};
    next[key] = value;
    register_secret(value);
    if (provider_key)
      if (auto err = validate_credentials(i->second, next))
        return annotate(err, "account '" + name + "': the new " + key
                               + " was not stored");
    if (auto err = creds_->put(name, next))
      return annotate(err, "account '" + name + "': store the secret in "
                             + creds_->location());
    if (provider_key)
      install(i->second, next);
    return {};
  }

  caf::error set_default_account(const std::string& name) override {
    std::lock_guard<std::mutex> guard{accounts_mtx_};
    if (accounts_.count(name) == 0)
      return unknown_account(name);
    auto cur = editable_settings();
    if (!cur)
      return cur.error();
    cur->default_account = name;
    if (auto err = save_settings(home_.settings_path(), *cur))
      return err;
    default_account_ = name;
    return {};
  }

  caf::error remove_account(const std::string& name, bool force) override {
    if (name == "local")
      return make_error(errc::failed_precondition,
                        "the local account is built in and cannot be removed; `aloft "
                        "account disable local` stops new sessions on it");
    {
      std::lock_guard<std::mutex> guard{accounts_mtx_};
      if (accounts_.count(name) == 0)
        return unknown_account(name);
      if (auto cur = editable_settings(); !cur)
        return cur.error();
    }
    auto live = live_sessions_of(name);
    if (!live.empty() && !force)
      return make_error(errc::failed_precondition,
                        "account '" + name + "' has " + std::to_string(live.size())
                          + " live session(s) (" + join(live) + "); stop them, or `aloft "
                          "account rm " + name + " --force` destroys them first");
    for (auto& id : live)
      if (auto err = destroy(id); err && code_of(err) != errc::failed_precondition)
        return annotate(err, "account '" + name + "' kept: destroy session " + id);
    // Destroying waits for the provider; the account's client stays alive for
    // those sessions after the account is gone from settings.
    std::lock_guard<std::mutex> guard{accounts_mtx_};
    auto cur = editable_settings();
    if (!cur)
      return cur.error();
    auto& list = cur->accounts;
    list.erase(std::remove_if(list.begin(), list.end(),
                              [&](const account& a) { return a.name == name; }),
               list.end());
    if (cur->default_account == name)
      cur->default_account.clear();
    if (auto err = save_settings(home_.settings_path(), *cur))
      return err;
    if (creds_ && !creds_->read_only())
      if (auto old = creds_->get(name)) {
        for (auto& [k, v] : *old)
          forget_secret(v);
        if (auto err = creds_->erase(name))
          return annotate(err, "account '" + name + "' removed from settings, but its "
                                 "secrets are still in " + creds_->location());
      }
    accounts_.erase(name);
    clients_.erase(name);
    problems_.erase(name);
    if (default_account_ == name)
      default_account_ = pick_default(*cur);
    caf::anon_send(registry_, forget_atom::value, name);
    return {};
  }

  reload_report reload() override {
    std::lock_guard<std::mutex> guard{accounts_mtx_};
    reload_report report;
    auto load = load_settings(home_.settings_path());
    for (auto& p : load.problems)
      report.problems.push_back(p.describe());
    reopen_credentials(load.value.credential_store, report.problems);
    std::map<std::string, account> next;
    next["local"] = default_local_account();
    for (auto& a : load.value.accounts)
      next[a.name] = a;
    auto live = live_counts();
    // Accounts gone from the file: removed, unless they still have live
    // sessions, or the file has problems (a broken entry is not a removal).
    for (auto& [name, old] : accounts_) {
      if (next.count(name) != 0)
        continue;
      if (!load.problems.empty()) {
        report.problems.push_back("account '" + name
                                  + "' kept as it was until settings.json loads cleanly");
        next[name] = old;
      } else if (live[name] > 0) {
        report.problems.push_back("account '" + name + "' is gone from settings.json but has "
                                  + std::to_string(live[name])
                                  + " live session(s); kept until they end");
        next[name] = old;
      } else {
        report.removed.push_back(name);
      }
    }
    for (auto& name : report.removed) {
      accounts_.erase(name);
      clients_.erase(name);
      problems_.erase(name);
      caf::anon_send(registry_, forget_atom::value, name);
    }
    for (auto& [name, a] : next) {
      auto old = accounts_.find(name);
      if (old == accounts_.end()) {
        auto secrets = secrets_of(a);
        install(a, secrets ? *secrets : secret_map{});
        report.added.push_back(name);
        continue;
      }
      if (to_json(old->second) == to_json(a))
        continue;
      report.changed.push_back(name);
      if (old->second.provider == a.provider && old->second.options == a.options) {
        old->second = a;
        caf::anon_send(registry_, account_atom::value, a);
      } else {
        auto secrets = secrets_of(a);
        install(a, secrets ? *secrets : secret_map{});
      }
    }
    default_account_ = pick_default(load.value);
    profiles_ = load.value.profiles;
    // The bounds keep the values they had while the file has any problem,
    // as a broken account keeps its definition: a typo must not reset a
    // bound raised on purpose (a syntax error anywhere stops the parse
    // before `sync` is read).
    if (!load.problems.empty())
      report.problems.push_back("the sync bounds are kept as they were until settings.json "
                                "loads cleanly");
    else
      set_sync_settings(load.value.sync);
    if (!load.value.default_account.empty() && accounts_.count(load.value.default_account) == 0)
      report.problems.push_back("default_account '" + load.value.default_account
                                + "' is not an account; using '" + default_account_ + "'");
    return report;
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


  // -- accounts: helpers (callers hold accounts_mtx_) ---------------------------

  // Reads settings.json and the credential store at open; returns problems.
  std::vector<std::string> load_accounts() {
    std::vector<std::string> problems;
    auto load = load_settings(home_.settings_path());
    for (auto& p : load.problems)
      problems.push_back(p.describe());
    reopen_credentials(load.value.credential_store, problems);
    install_quietly(default_local_account(), {});
    for (auto& a : load.value.accounts) {
      auto secrets = secrets_of(a);
      if (!secrets)
        problems.push_back(describe(secrets.error()));
      install_quietly(a, secrets ? *secrets : secret_map{});
    }
    default_account_ = pick_default(load.value);
    profiles_ = load.value.profiles;
    set_sync_settings(load.value.sync);
    return problems;
  }

  void set_sync_settings(const sync_settings& s) {
    std::lock_guard<std::mutex> guard{sync_mtx_};
    sync_ = s;
  }

  // Read by sessions (on actor threads) at each sync's start: its own
  // mutex, never held across I/O.
  sync::limits sync_limits() const {
    std::lock_guard<std::mutex> guard{sync_mtx_};
    return sync_;
  }

  void reopen_credentials(const std::string& kind, std::vector<std::string>& problems) {
    if (creds_ && (kind.empty() || kind == creds_->kind()))
      return;
    auto store = open_credential_store(kind, home_.data_dir);
    if (store) {
      std::lock_guard<std::mutex> guard{creds_mtx_};
      creds_ = std::shared_ptr<credential_store>{std::move(*store)};
      creds_problem_.clear();
    } else {
      creds_problem_ = describe(store.error());
      problems.push_back("credential store: " + creds_problem_);
    }
  }

  std::string pick_default(const settings& s) const {
    if (!s.default_account.empty() && accounts_.count(s.default_account) != 0)
      return s.default_account;
    return "local";
  }

  // The settings file as it is now, for a change: refused while the file
  // has problems, so a write never drops an entry the user is fixing.
  caf::expected<settings> editable_settings() {
    auto load = load_settings(home_.settings_path());
    if (!load.problems.empty()) {
      std::string all;
      for (auto& p : load.problems)
        all += "\n  " + p.describe();
      return make_error(errc::failed_precondition,
                        "settings.json has problems; fix them first (nothing was changed):"
                          + all);
    }
    return std::move(load.value);
  }

  static void put_account(settings& s, const account& a) {
    for (auto& x : s.accounts)
      if (x.name == a.name) {
        x = a;
        return;
      }
    s.accounts.push_back(a);
  }

  // `requested` with every option checked and the provider's defaults
  // applied, exactly as loading the file would give it back.
  caf::expected<account> normalized(const account& requested) {
    account a;
    a.name = requested.name;
    a.provider = requested.provider;
    a.enabled = requested.enabled;
    a.guards = requested.guards;
    a.max_concurrent_vms = requested.max_concurrent_vms;
    if (auto err = aloft::validate_account(a))
      return err;
    for (auto& [k, v] : requested.options)
      if (auto err = apply_option(a, k, v))
        return annotate(err, "account '" + a.name + "'");
    settings one;
    one.accounts.push_back(a);
    auto back = parse_settings(to_json(one).dump(), "the new account");
    if (!back.problems.empty() || back.value.accounts.size() != 1)
      return make_error(errc::invalid_argument,
                        back.problems.empty() ? "account '" + a.name + "' does not validate"
                                              : back.problems.front().describe());
    return back.value.accounts.front();
  }

  caf::expected<secret_map> secrets_of(const account& a) {
    if (required_secrets(a.provider).empty())
      return secret_map{};
    if (!creds_)
      return make_error(errc::unavailable, "account '" + a.name
                                             + "': no credential store (" + creds_problem_ + ")");
    auto got = creds_->get(a.name);
    if (!got)
      return annotate(got.error(), "account '" + a.name + "': its secrets are not in "
                                     + creds_->location() + "; add it again with `aloft "
                                     "account add`");
    for (auto& [k, v] : *got)
      register_secret(v);
    return got;
  }

  caf::expected<std::shared_ptr<provider>> make_client(const account& a,
                                                      const secret_map& secrets) {
    if (a.provider == "local") {
      local_provider_options lopts;
      // Each local account has sandboxes of its own, so one account's
      // reconcile never lists another's VMs.
      lopts.sandboxes_dir = a.name == "local" ? home_.sandboxes_dir()
                                              : home_.sandboxes_dir() + "-" + a.name;
      lopts.exec = pool_;
      return make_local_provider(lopts);
    }
    if (a.provider == "fly") {
      auto o = fly_options_for(a, secrets);
      if (o.token.empty())
        return make_error(errc::failed_precondition,
                          "account '" + a.name + "' has no Fly token; `aloft account secret "
                            + a.name + " token` stores one");
      o.installation_id = installation_id_;
      o.http = http();
      o.exec = pool_;
      return make_fly_provider(std::move(o));
    }
    return make_error(errc::unimplemented, "the " + a.provider
                                             + " provider is not in this build yet");
  }

  // One HTTP loop for every cloud account, made on first use.
  std::shared_ptr<http_loop> http() {
    if (!http_)
      http_ = std::make_shared<http_loop>();
    return http_;
  }

  // Makes the account live: its client and its actor (replacing any).
  void install(const account& a, const secret_map& secrets) {
    install_quietly(a, secrets);
    caf::anon_send(registry_, account_atom::value, a, clients_[a.name]);
  }

  void install_quietly(const account& a, const secret_map& secrets) {
    accounts_[a.name] = a;
    auto client = make_client(a, secrets);
    if (client) {
      clients_[a.name] = *client;
      problems_.erase(a.name);
    } else {
      clients_[a.name] = nullptr;
      problems_[a.name] = describe(client.error());
    }
  }

  account_view view_of(const account& a, const std::map<std::string, size_t>& live) {
    account_view v;
    v.account = a;
    v.is_default = a.name == default_account_;
    v.built_in = a.name == "local";
    v.can_launch = clients_.count(a.name) != 0 && clients_[a.name] != nullptr;
    if (auto i = live.find(a.name); i != live.end())
      v.live_sessions = i->second;
    if (auto p = problems_.find(a.name); p != problems_.end())
      v.problem = p->second;
    if (!required_secrets(a.provider).empty()) {
      if (creds_) {
        v.store = creds_->kind();
        auto got = creds_->get(a.name);
        if (got) {
          for (auto& [k, val] : *got) {
            register_secret(val);
            v.secrets[k] = mask_secret(val);
          }
        } else if (v.problem.empty()) {
          v.problem = "no secrets in " + creds_->location();
        }
      } else if (v.problem.empty()) {
        v.problem = "no credential store: " + creds_problem_;
      }
    }
    return v;
  }

  std::map<std::string, size_t> live_counts() {
    std::map<std::string, size_t> out;
    for (auto& rec : list())
      if (!is_terminal(rec.state))
        ++out[rec.account];
    return out;
  }

  std::vector<std::string> live_sessions_of(const std::string& name) {
    std::vector<std::string> out;
    for (auto& rec : list())
      if (rec.account == name && !is_terminal(rec.state))
        out.push_back(rec.id);
    return out;
  }

  static std::string join(const std::vector<std::string>& xs) {
    std::string out;
    for (auto& x : xs)
      out += (out.empty() ? "" : ", ") + x;
    return out;
  }

  caf::error unknown_account(const std::string& name) const {
    return make_error(errc::not_found, "no account '" + name + "'; known accounts: "
                                         + account_names());
  }

  caf::expected<std::vector<std::pair<std::string, std::string>>>
  agent_secrets_of(const session_record& rec) {
    std::shared_ptr<credential_store> store;
    {
      std::lock_guard<std::mutex> guard{creds_mtx_};
      store = creds_;
    }
    if (!store)
      return make_error(errc::unavailable, "no credential store");
    auto have = store->get(rec.account);
    if (!have)
      return annotate(have.error(), "secrets of account '" + rec.account + "'");
    std::vector<std::pair<std::string, std::string>> out;
    for (auto& name : rec.agent_secrets) {
      auto value = find_secret(*have, name);
      if (value == nullptr)
        return make_error(errc::not_found, "account '" + rec.account
                                             + "' has no secret " + name);
      register_secret(*value);
      out.emplace_back(name, *value);
    }
    return out;
  }

  std::string profile_names() const {
    std::string out;
    for (auto& p : profiles_)
      out += (out.empty() ? "" : ", ") + p.name;
    return out.empty() ? "none" : out;
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
  std::shared_ptr<http_loop> http_;
  std::unique_ptr<transport_factory> transports_;
  caf::actor registry_;
  std::mutex accounts_mtx_; // accounts_, clients_, problems_, creds_, default
  std::map<std::string, account> accounts_;
  std::map<std::string, std::shared_ptr<provider>> clients_; // null: cannot launch
  std::map<std::string, std::string> problems_;
  // Swapped only under creds_mtx_ (reload); readers take a copy, so an
  // actor thread reading an agent's secrets never waits on accounts_mtx_,
  // which engine calls hold while they ask the registry.
  std::mutex creds_mtx_;
  std::shared_ptr<credential_store> creds_;
  std::string creds_problem_;
  std::string default_account_;
  std::vector<agent_profile> profiles_;
  std::atomic<uint64_t> next_subscriber_{0};
  mutable std::mutex sync_mtx_;
  sync_settings sync_; // guarded by sync_mtx_
};

} // namespace

caf::expected<std::unique_ptr<engine>> open_engine_with(const engine_options& opts,
                                                        engine_overrides overrides) {
  auto e = std::make_unique<engine_impl>();
  if (auto err = e->open(opts, std::move(overrides)))
    return err;
  return std::unique_ptr<engine>{std::move(e)};
}

store_stats store_stats_of(engine& e) {
  auto impl = dynamic_cast<engine_impl*>(&e);
  return impl ? impl->db_stats() : store_stats{};
}

caf::expected<std::unique_ptr<engine>> open_engine(const engine_options& opts) {
  return open_engine_with(opts, {});
}

} // namespace aloft
