#include "actors/registry.hpp"

#include <chrono>
#include <deque>
#include <unordered_map>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/response_promise.hpp>
#include <caf/send.hpp>

#include "actors/account.hpp"
#include "actors/atoms.hpp"
#include "actors/messages.hpp"
#include "actors/sync.hpp"
#include "engine/base/error.hpp"
#include "engine/base/redact.hpp"
#include "engine/clock.hpp"
#include "persistence/store.hpp"
#include "providers/provider.hpp"

namespace aloft {

namespace {

using std::chrono::milliseconds;

class registry_actor : public caf::event_based_actor {
public:
  registry_actor(caf::actor_config& cfg, registry_env env)
    : caf::event_based_actor(cfg), env_(std::move(env)) {
    // nop
  }

  caf::behavior make_behavior() override {
    auto senv = std::make_shared<session_env>(*env_.sessions);
    senv->registry = caf::actor_cast<caf::actor>(this);
    session_env_ = senv;
    for (auto& [name, acct] : env_.accounts) {
      auto p = env_.providers.find(name);
      add_account(acct, p == env_.providers.end() ? nullptr : p->second);
    }
    set_down_handler([=](caf::down_msg& dm) {
      for (auto i = live_.begin(); i != live_.end(); ++i)
        if (i->second.address() == dm.source) {
          live_.erase(i);
          break;
        }
    });
    return {
      [=](actor_task& t) { t.fn(); },
      [=](launch_atom, session_record draft) -> caf::result<caf::message> {
        auto def = defs_.find(draft.account);
        if (def == defs_.end())
          return make_error(errc::invalid_argument,
                            "unknown account '" + draft.account + "'");
        auto a = accounts_.find(draft.account);
        if (a == accounts_.end())
          return make_error(errc::unimplemented,
                            "account '" + draft.account + "' uses the "
                              + def->second.provider
                              + " provider, which this build cannot launch VMs with yet");
        auto cap = def->second.max_concurrent_vms;
        if (cap > 0 && live_count_[draft.account] >= static_cast<size_t>(cap))
          return make_error(errc::resource_exhausted,
                            "account '" + draft.account + "' has "
                              + std::to_string(live_count_[draft.account])
                              + " live sessions, its max_concurrent_vms; stop one, or `aloft account set "
                              + draft.account + " max_concurrent_vms N`");
        track(nullptr, draft);
        snapshots_[draft.id] = draft;
        order_.push_back(draft.id);
        auto s = spawn_session(system(), draft, a->second, session_env_);
        monitor(s);
        live_[draft.id] = s;
        return delegate(s, launch_atom::value);
      },
      [=](list_atom) {
        session_records out;
        out.reserve(order_.size());
        for (auto i = order_.rbegin(); i != order_.rend(); ++i)
          out.push_back(snapshots_[*i]);
        return out;
      },
      [=](get_atom, const std::string& id) -> caf::result<session_record> {
        auto i = snapshots_.find(id);
        if (i == snapshots_.end())
          return unknown(id);
        return i->second;
      },
      [=](stop_atom, const std::string& id) -> caf::result<caf::message> {
        auto s = live_.find(id);
        if (s == live_.end())
          return not_live(id);
        return delegate(s->second, stop_atom::value);
      },
      [=](destroy_atom, const std::string& id) -> caf::result<caf::message> {
        auto s = live_.find(id);
        if (s != live_.end())
          return delegate(s->second, destroy_atom::value);
        auto snap = snapshots_.find(id);
        if (snap == snapshots_.end())
          return unknown(id);
        if (snap->second.state != session_state::lost)
          return not_live(id);
        // A lost session may still own what is left of its VM: respawn its
        // actor to destroy it.
        auto a = accounts_.find(snap->second.account);
        if (a == accounts_.end())
          return make_error(errc::failed_precondition,
                            "account '" + snap->second.account + "' of session " + id
                              + " is not configured any more");
        auto actor = spawn_session(system(), snap->second, a->second, session_env_);
        monitor(actor);
        live_[id] = actor;
        return delegate(actor, destroy_atom::value);
      },
      [=](extend_atom, const std::string& id, int64_t seconds)
        -> caf::result<caf::message> {
        auto s = live_.find(id);
        if (s == live_.end())
          return not_live(id);
        return delegate(s->second, extend_atom::value, seconds);
      },
      [=](sync_up_atom, const std::string& id) -> caf::result<caf::message> {
        auto s = live_.find(id);
        if (s == live_.end())
          return not_live(id);
        return delegate(s->second, sync_up_atom::value);
      },
      [=](sync_down_atom, const std::string& id, sync::apply_mode mode,
          const std::string& branch) -> caf::result<caf::message> {
        auto s = live_.find(id);
        if (s == live_.end())
          return not_live(id);
        return delegate(s->second, sync_down_atom::value, mode, branch);
      },
      [=](sync_state_atom, const std::string& id) -> caf::result<caf::message> {
        auto s = live_.find(id);
        if (s == live_.end())
          return not_live(id);
        return delegate(s->second, sync_state_atom::value);
      },
      [=](activity_atom, const std::string& id, const std::string& source) {
        auto s = live_.find(id);
        if (s != live_.end())
          send(s->second, activity_atom::value, source);
      },
      [=](events_atom, uint64_t n) {
        events_list out;
        auto start = recent_.size() > n ? recent_.size() - n : 0;
        for (size_t i = start; i < recent_.size(); ++i)
          out.push_back(recent_[i]);
        return out;
      },
      [=](subscribe_atom, uint64_t handle, subscriber_fn fn) {
        subscribers_[handle] = std::move(fn);
      },
      [=](unsub_atom, uint64_t handle) { subscribers_.erase(handle); },
      [=](publish_atom, event e) { publish(std::move(e)); },
      [=](publish_atom, const session_record& rec, event e) {
        auto i = snapshots_.find(rec.id);
        if (i == snapshots_.end()) {
          order_.push_back(rec.id);
          track(nullptr, rec);
          snapshots_[rec.id] = rec;
        } else {
          track(&i->second, rec);
          i->second = rec;
        }
        e.session = rec.id;
        publish(std::move(e));
      },
      [=](rehydrate_atom, const session_records& records) -> done_atom {
        for (auto& rec : records) {
          auto known = snapshots_.find(rec.id);
          if (known == snapshots_.end()) {
            order_.push_back(rec.id);
            track(nullptr, rec);
          } else {
            track(&known->second, rec);
          }
          snapshots_[rec.id] = rec;
          if (is_terminal(rec.state))
            continue;
          auto a = accounts_.find(rec.account);
          if (a == accounts_.end()) {
            event e;
            e.kind = "error";
            e.session = rec.id;
            e.message = "account '" + rec.account
                        + "' is not configured: session left as it was";
            publish(std::move(e));
            continue;
          }
          auto s = spawn_session(system(), rec, a->second, session_env_);
          monitor(s);
          live_[rec.id] = s;
          send(s, rehydrate_atom::value);
        }
        reconcile_all();
        return done_atom::value;
      },
      [=](account_atom, const account& acct, const provider_ptr& client) {
        add_account(acct, client);
        return done_atom::value;
      },
      [=](account_atom, const account& acct) -> caf::result<done_atom> {
        auto def = defs_.find(acct.name);
        if (def == defs_.end())
          return make_error(errc::not_found, "no account '" + acct.name + "'");
        def->second = acct;
        return done_atom::value;
      },
      [=](forget_atom, const std::string& name) {
        defs_.erase(name);
        auto a = accounts_.find(name);
        if (a != accounts_.end()) {
          retire(a->second);
          accounts_.erase(a);
        }
        return done_atom::value;
      },
      [=](guards_atom, const std::string& name, const guards& g) {
        uint64_t n = 0;
        for (auto& [id, actor] : live_) {
          auto snap = snapshots_.find(id);
          if (snap != snapshots_.end() && snap->second.account == name) {
            send(actor, guards_atom::value, g);
            ++n;
          }
        }
        return n;
      },
      [=](reconcile_atom) { reconcile_all(); },
      [=](tick_atom) {
        reconcile_all();
        delayed_send(this, milliseconds{env_.reconcile_interval_ms}, tick_atom::value);
      },
    };
  }

  void on_exit() override {
    for (auto& [id, s] : live_)
      caf::anon_send_exit(s, caf::exit_reason::user_shutdown);
    live_.clear();
    // The session template holds a handle to this actor, and the account
    // actors hold the provider clients (and through them worker pools):
    // let go of all of it, or the cycle keeps it alive after the engine.
    for (auto& [name, a] : accounts_)
      caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
    for (auto& a : retired_)
      caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
    accounts_.clear();
    retired_.clear();
    session_env_.reset();
    env_.sessions.reset();
    env_.providers.clear();
    subscribers_.clear();
  }

private:
  // Spawns (or replaces) the actor of `acct`. A replaced actor stays alive
  // for the sessions still holding it. Without a client the account is
  // known (and listed) but cannot launch.
  void add_account(const account& acct, const provider_ptr& client) {
    defs_[acct.name] = acct;
    auto old = accounts_.find(acct.name);
    if (old != accounts_.end()) {
      retire(old->second);
      accounts_.erase(old);
    }
    if (!client)
      return;
    account_env aenv;
    aenv.installation_id = session_env_->installation_id;
    aenv.registry = caf::actor_cast<caf::actor>(this);
    aenv.retry.base_delay_ms = env_.provider_retry_base_ms;
    // A remote API gets a steady pace per account.
    if (client->remote_api()) {
      aenv.rate_per_s = env_.cloud_calls_per_s;
      aenv.rate_burst = env_.cloud_calls_burst;
    }
    auto a = spawn_account(system(), acct, client, aenv);
    link_to(a);
    accounts_[acct.name] = a;
  }

  // An account actor no new session will use; sessions that hold it keep
  // it until the registry ends.
  void retire(const caf::actor& a) { retired_.push_back(a); }

  // Keeps the count of live sessions per account (for max_concurrent_vms).
  void track(const session_record* before, const session_record& after) {
    bool was = before && !is_terminal(before->state);
    bool is = !is_terminal(after.state);
    if (was && !is)
      --live_count_[after.account];
    else if (!was && is)
      ++live_count_[after.account];
  }

  caf::error unknown(const std::string& id) {
    return make_error(errc::not_found,
                      "no session '" + id + "'; `aloft ls` lists the sessions");
  }

  caf::error not_live(const std::string& id) {
    auto snap = snapshots_.find(id);
    if (snap == snapshots_.end())
      return unknown(id);
    return make_error(errc::failed_precondition,
                      "session " + id + " is " + to_string(snap->second.state));
  }

  void reconcile_all() {
    if (accounts_.empty())
      return;
    // Each account reads the sessions itself, after its list of VMs.
    for (auto& [name, actor] : accounts_) {
      request(actor, caf::infinite, reconcile_atom::value)
        .then([](done_atom) {},
              [=, name = name](caf::error& err) {
                event e;
                e.kind = "error";
                e.message = "reconcile of account " + name + ": " + describe(err);
                publish(std::move(e));
              });
    }
  }

  void publish(event e) {
    e.at_ms = session_env_->clock->now_ms();
    // Events reach the journal, subscribers and clients: never a secret.
    if (!is_clean(e.message))
      e.message = redact(e.message);
    if (e.kind != "output" && !e.transient) {
      e.seq = env_.next_event_seq++;
      write_batch batch;
      batch.push_back({family::events, event_key(e.seq), to_json(e).dump()});
      // The journal is for people reading history: a failed append is not
      // worth stopping anything for.
      session_env_->db->commit(std::move(batch), [](caf::error err) { ignore_error(err); });
      recent_.push_back(e);
      if (recent_.size() > env_.events_kept)
        recent_.pop_front();
    }
    for (auto& [handle, fn] : subscribers_)
      fn(e);
  }

  registry_env env_;
  std::shared_ptr<const session_env> session_env_;
  std::unordered_map<std::string, caf::actor> accounts_; // that can launch
  std::unordered_map<std::string, account> defs_;        // every known account
  std::unordered_map<std::string, size_t> live_count_;
  std::vector<caf::actor> retired_;
  std::unordered_map<std::string, caf::actor> live_;
  std::unordered_map<std::string, session_record> snapshots_;
  std::vector<std::string> order_; // ids in creation order
  std::deque<event> recent_;
  std::map<uint64_t, subscriber_fn> subscribers_;
};

} // namespace

caf::actor spawn_registry(caf::actor_system& sys, registry_env env) {
  return sys.spawn<registry_actor>(std::move(env));
}

} // namespace aloft
