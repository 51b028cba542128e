#include "actors/account.hpp"

#include <deque>
#include <random>
#include <set>

#include <caf/actor_clock.hpp>
#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/response_promise.hpp>
#include <caf/send.hpp>

#include "actors/atoms.hpp"
#include "actors/messages.hpp"
#include "engine/base/error.hpp"
#include "engine/reconcile.hpp"
#include "providers/provider.hpp"

namespace aloft {

namespace {

class account_actor : public caf::event_based_actor {
public:
  account_actor(caf::actor_config& cfg, account acct, std::shared_ptr<provider> client,
                account_env env)
    : caf::event_based_actor(cfg),
      acct_(std::move(acct)),
      client_(std::move(client)),
      env_(std::move(env)) {
    // nop
  }

  void on_exit() override {
    // Calls still queued are answered by their promises' destruction; the
    // client (and what it holds: pools, HTTP loops) goes now.
    queue_.clear();
    client_.reset();
    env_.registry = nullptr;
  }

  caf::behavior make_behavior() override {
    return {
      [=](actor_task& t) { t.fn(); },
      [=](create_atom, const vm_request& req) {
        return call<vm_info>(
          "create VM for " + req.session_id,
          [req](provider& p, provider::callback<vm_info> cb) { p.create(req, std::move(cb)); },
          call_kind::create);
      },
      [=](ready_atom, const std::string& vm_id) {
        return call<vm_info>("wait for VM " + vm_id,
                             [vm_id](provider& p, provider::callback<vm_info> cb) {
                               p.wait_ready(vm_id, std::move(cb));
                             });
      },
      [=](get_atom, const std::string& vm_id) {
        return call<vm_info>("get VM " + vm_id,
                             [vm_id](provider& p, provider::callback<vm_info> cb) {
                               p.get(vm_id, std::move(cb));
                             });
      },
      [=](list_atom) {
        auto inst = env_.installation_id;
        return call<vm_infos>("list VMs",
                              [inst](provider& p, provider::callback<vm_infos> cb) {
                                p.list(inst, std::move(cb));
                              });
      },
      [=](destroy_atom, const std::string& vm_id) {
        return call<done_atom>("destroy VM " + vm_id,
                               [vm_id](provider& p, provider::callback<done_atom> cb) {
                                 p.destroy(vm_id, [cb](caf::error err) {
                                   if (err)
                                     cb(std::move(err));
                                   else
                                     cb(done_atom::value);
                                 });
                               },
                               call_kind::destroy, vm_id);
      },
      // The VMs first, then the sessions: every VM listed was asked for by a
      // session the registry knew before its create, so sessions read after
      // the list own every VM in it (read before, a session launched while
      // a slow list ran would lose its new VM as a stray).
      [=](reconcile_atom) -> caf::result<done_atom> {
        // Before the promise: once made, it is the only way to answer.
        if (!env_.registry)
          return make_error(errc::failed_precondition, "reconcile: no registry");
        auto rp = make_response_promise();
        this->request(caf::actor_cast<caf::actor>(this), caf::infinite, list_atom::value)
          .then(
            [=](const vm_infos& observed) mutable {
              if (!env_.registry) {
                rp.deliver(make_error(errc::cancelled, "reconcile: account retired"));
                return;
              }
              this->request(env_.registry, caf::infinite, list_atom::value)
                .then(
                  [=](const session_records& sessions) mutable {
                    auto plan =
                      plan_reconcile(env_.installation_id, acct_.name, sessions, observed);
                    count_live(plan, sessions);
                    apply(plan);
                    rp.deliver(done_atom::value);
                  },
                  [=](caf::error& err) mutable { rp.deliver(std::move(err)); });
            },
            [=](caf::error& err) mutable { rp.deliver(std::move(err)); });
        return rp;
      },
    };
  }

private:
  using starter = std::function<void(provider&, std::function<void(caf::expected<caf::message>)>)>;

  enum class call_kind { other, create, destroy };

  struct pending_call {
    call_kind kind = call_kind::other;
    std::string vm_id; // destroy: which
    std::string what;
    starter start;
    caf::response_promise rp;
    int attempt = 1;
  };

  // Starts (or queues) a provider call whose result is delivered to the
  // current request's sender, retrying retryable failures.
  template <class T, class Start>
  caf::result<T> call(std::string what, Start start, call_kind kind = call_kind::other,
                      std::string vm_id = {}) {
    auto rp = make_response_promise();
    pending_call pc;
    pc.kind = kind;
    pc.vm_id = std::move(vm_id);
    pc.what = std::move(what);
    pc.start = [start](provider& p, std::function<void(caf::expected<caf::message>)> done) {
      start(p, [done](caf::expected<T> r) {
        if (r)
          done(caf::make_message(std::move(*r)));
        else
          done(std::move(r.error()));
      });
    };
    pc.rp = rp;
    enqueue(std::move(pc));
    return caf::delegated<T>{};
  }

  void enqueue(pending_call pc) {
    queue_.push_back(std::move(pc));
    drain();
  }

  // Starts queued calls while the concurrency cap and the rate allow; when
  // only the rate holds them back, comes back when the next token is due.
  void drain() {
    while (!queue_.empty() && in_flight_ < env_.max_in_flight) {
      if (!take_token())
        return;
      auto next = std::move(queue_.front());
      queue_.pop_front();
      start_call(std::move(next));
    }
  }

  // The account's own rate limit (env_.rate_per_s, burst env_.rate_burst),
  // on the actor's clock: monotonic (a wall clock set back would empty the
  // bucket), the one its delayed wake-up uses, and the one the
  // deterministic scheduler advances in tests.
  bool take_token() {
    if (env_.rate_per_s <= 0)
      return true;
    auto now = this->clock().now();
    if (!refilled_)
      tokens_ = env_.rate_burst, last_refill_ = now, refilled_ = true;
    auto elapsed_s = std::chrono::duration<double>(now - last_refill_).count();
    tokens_ = std::min<double>(env_.rate_burst, tokens_ + elapsed_s * env_.rate_per_s);
    last_refill_ = now;
    if (tokens_ >= 1) {
      tokens_ -= 1;
      return true;
    }
    if (!drain_scheduled_) {
      drain_scheduled_ = true;
      auto wait_ms = static_cast<int64_t>((1 - tokens_) * 1000.0 / env_.rate_per_s) + 1;
      delayed_send(this, std::chrono::milliseconds{wait_ms}, actor_task{[this] {
                     drain_scheduled_ = false;
                     drain();
                   }});
    }
    return false;
  }

  void start_call(pending_call pc) {
    ++in_flight_;
    auto self_handle = caf::actor_cast<caf::actor>(this);
    auto shared = std::make_shared<pending_call>(std::move(pc));
    shared->start(*client_, [self_handle, shared, this](caf::expected<caf::message> r) {
      caf::anon_send(self_handle, actor_task{[this, shared, r = std::move(r)]() mutable {
        finished(*shared, std::move(r));
      }});
    });
  }

  void finished(pending_call& pc, caf::expected<caf::message> r) {
    --in_flight_;
    if (r) {
      if (pc.kind == call_kind::create && r->match_elements<vm_info>())
        live_vms_.insert(r->get_as<vm_info>(0).vm_id);
      else if (pc.kind == call_kind::destroy)
        live_vms_.erase(pc.vm_id);
      pc.rp.deliver(std::move(*r));
    } else {
      auto err = annotate(r.error(), acct_.name + ": " + pc.what);
      // A quota or rate limit says so, with what this account has running:
      // the user decides whether to stop sessions or raise the limit.
      if (code_of(err) == errc::resource_exhausted)
        err = annotate(err, "provider quota or rate limit (account " + acct_.name + " has "
                              + std::to_string(live_vms_.size()) + " live VMs)");
      auto d = decide_retry(err, pc.attempt, env_.retry, jitter_(rng_));
      if (d.retry) {
        auto next = std::make_shared<pending_call>(std::move(pc));
        ++next->attempt;
        delayed_send(this, std::chrono::milliseconds{d.delay_ms},
                     actor_task{[this, next] { enqueue(std::move(*next)); }});
      } else {
        pc.rp.deliver(std::move(err));
      }
    }
    drain();
  }

  // What the provider lists for this account's own sessions is what is live.
  void count_live(const reconcile_plan& plan, const session_records& sessions) {
    std::set<std::string> mine;
    for (auto& rec : sessions)
      if (rec.account == acct_.name)
        mine.insert(rec.id);
    live_vms_.clear();
    for (auto& vm : plan.keep)
      if (mine.count(vm.session_id) != 0)
        live_vms_.insert(vm.vm_id);
    for (auto& a : plan.adopt)
      live_vms_.insert(a.vm.vm_id);
  }

  void apply(const reconcile_plan& plan) {
    for (size_t i = 0; i < plan.destroy.size(); ++i) {
      auto vm = plan.destroy[i];
      auto reason = plan.reasons[i];
      publish("reconcile", vm.session_id,
              "destroying VM " + vm.vm_id + " of account " + acct_.name + ": " + reason);
      this->request(caf::actor_cast<caf::actor>(this), caf::infinite, destroy_atom::value,
                    vm.vm_id)
        .then(
          [=](done_atom) {
            publish("reconcile", vm.session_id, "destroyed unowned VM " + vm.vm_id);
          },
          [=](caf::error& err) {
            publish("error", vm.session_id,
                    "could not destroy unowned VM " + vm.vm_id + ": " + describe(err));
          });
    }
    for (auto& a : plan.adopt)
      publish("reconcile", a.session_id,
              "VM " + a.vm.vm_id + " belongs to session " + a.session_id + ": adopting it");
  }

  void publish(const std::string& kind, const std::string& session,
               const std::string& message) {
    if (!env_.registry)
      return;
    event e;
    e.kind = kind;
    e.session = session;
    e.message = message;
    send(env_.registry, publish_atom::value, std::move(e));
  }

  account acct_;
  std::shared_ptr<provider> client_;
  account_env env_;
  size_t in_flight_ = 0;
  double tokens_ = 0;
  bool refilled_ = false;
  caf::actor_clock::time_point last_refill_;
  bool drain_scheduled_ = false;
  std::set<std::string> live_vms_; // created or listed, not yet destroyed
  std::deque<pending_call> queue_;
  std::mt19937 rng_{std::random_device{}()};
  std::uniform_real_distribution<double> jitter_{0.0, 1.0};
};

} // namespace

caf::actor spawn_account(caf::actor_system& sys, account acct,
                         std::shared_ptr<provider> client, account_env env) {
  return sys.spawn<account_actor>(std::move(acct), std::move(client), std::move(env));
}

} // namespace aloft
