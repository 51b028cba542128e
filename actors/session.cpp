#include "actors/session.hpp"

#include <chrono>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/message_handler.hpp>
#include <caf/response_promise.hpp>
#include <caf/send.hpp>

#include "actors/atoms.hpp"
#include "actors/messages.hpp"
#include "actors/sync.hpp"
#include "actors/watchdog.hpp"
#include "engine/agent_script.hpp"
#include "engine/base/error.hpp"
#include "engine/clock.hpp"
#include "engine/executor.hpp"
#include "engine/keys.hpp"
#include "engine/resident_shell.hpp"
#include "engine/transport.hpp"
#include "engine/watchdog_policy.hpp"
#include "persistence/store.hpp"

namespace aloft {

namespace {

using std::chrono::milliseconds;

class session_actor : public caf::event_based_actor {
public:
  session_actor(caf::actor_config& cfg, session_record rec, caf::actor account,
                std::shared_ptr<const session_env> env)
    : caf::event_based_actor(cfg),
      rec_(std::move(rec)),
      account_(std::move(account)),
      env_(std::move(env)) {
    // nop
  }

  void on_exit() override {
    close_log();
    drop_transport();
    // A normal quit does not travel along links: end the watchdog
    // explicitly, or the actor system would wait for it forever.
    if (watchdog_)
      caf::anon_send_exit(watchdog_, caf::exit_reason::user_shutdown);
  }

  caf::behavior make_behavior() override {
    watchdog_ = spawn_watchdog(system(), caf::actor_cast<caf::actor>(this), env_->clock);
    link_to(watchdog_);
    // What every state answers; a state's own behavior comes first and
    // overrides these.
    common_ = caf::message_handler{
      [=](actor_task& t) { t.fn(); },
      [=](rehydrate_atom) { rehydrate(); },
      [=](get_atom) { return rec_; },
      [=](extend_atom, int64_t seconds) -> caf::result<session_record> {
        return extend(seconds);
      },
      [=](guards_atom, const guards& g) { apply_guards(g); },
      [=](stop_atom) -> caf::result<done_atom> {
        return make_error(errc::failed_precondition,
                          "session " + rec_.id + " has no running agent (state "
                            + to_string(rec_.state) + ")");
      },
      [=](destroy_atom) -> caf::result<done_atom> {
        if (is_terminal(rec_.state) && rec_.state != session_state::lost)
          return make_error(errc::failed_precondition,
                            "session " + rec_.id + " is already " + to_string(rec_.state));
        auto rp = make_response_promise();
        finish("destroyed on request", session_state::destroyed,
               [rp]() mutable { rp.deliver(done_atom::value); });
        return rp;
      },
      [=](sync_up_atom) -> caf::result<sync_outcome> { return not_syncable(); },
      [=](sync_state_atom) -> caf::result<sync_state> { return sync_state_of(); },
      [=](sync_down_atom, sync::apply_mode, const std::string&)
        -> caf::result<sync_outcome> { return not_syncable(); },
      // Only a running session has an agent whose activity counts and a
      // watchdog whose verdicts apply.
      [=](activity_atom, const std::string&) {},
      [=](timeout_atom, watchdog_action) {},
    };
    return behavior_for(rec_.state);
  }

private:
  // -- named behaviors, one per state ---------------------------------------

  caf::behavior behavior_for(session_state s) {
    switch (s) {
      case session_state::pending: return pending_();
      case session_state::running: return running_();
      case session_state::stopping: return stopping_();
      default: return caf::behavior{common_};
    }
  }

  // Waits for the first durable write of the record.
  caf::behavior pending_() {
    return caf::message_handler{
      [=](launch_atom) -> caf::result<session_record> {
        auto rp = make_response_promise();
        persist([=]() mutable {
          rp.deliver(rec_);
          publish_state("session created");
          provision();
        });
        return rp;
      },
    }.or_else(common_);
  }

  // The agent runs: its activity pushes the idle deadline, the watchdog's
  // verdicts apply, and it can be stopped.
  caf::behavior running_() {
    return caf::message_handler{
      [=](stop_atom) -> caf::result<done_atom> { return stop_agent(); },
      [=](sync_up_atom) -> caf::result<sync_outcome> {
        return run_sync(true, false, sync::apply_mode::apply, {});
      },
      [=](sync_down_atom, sync::apply_mode mode, const std::string& branch)
        -> caf::result<sync_outcome> { return run_sync(false, false, mode, branch); },
      [=](activity_atom, const std::string& source) { activity(source); },
      [=](timeout_atom, watchdog_action action) { on_watchdog(action); },
    }.or_else(common_);
  }

  // Waits for the provider to confirm the VM is gone.
  caf::behavior stopping_() {
    return caf::message_handler{
      [=](destroy_atom) -> caf::result<done_atom> { return done_atom::value; },
    }.or_else(common_);
  }

  // -- persistence and events ----------------------------------------------

  // Writes the record durably, then runs `then` inside the actor. A failed
  // write is retried: nothing is acted on before it is durable.
  void persist(std::function<void()> then) {
    write_batch batch;
    batch.push_back({family::sessions, rec_.id, encode_session_record(rec_)});
    persisted_idle_deadline_ = rec_.idle_deadline;
    auto self_handle = caf::actor_cast<caf::actor>(this);
    env_->db->commit(std::move(batch), [this, self_handle, then](caf::error err) {
      caf::anon_send(self_handle, actor_task{[this, err, then] {
        if (err) {
          publish("error", "cannot persist session: " + describe(err) + "; retrying");
          delayed_send(this, milliseconds{env_->retry_delay_ms},
                       actor_task{[this, then] { persist(then); }});
          return;
        }
        if (then)
          then();
      }});
    });
  }

  void transition(session_state to, const std::string& reason, std::function<void()> then) {
    if (!is_allowed_transition(rec_.state, to)) {
      publish("error", std::string{"refused transition "} + to_string(rec_.state) + " -> "
                         + to_string(to));
      return;
    }
    rec_.state = to;
    become(behavior_for(to));
    if (!reason.empty())
      rec_.reason = reason;
    ++rec_.transitions;
    persist([=] {
      publish_state(reason);
      if (then)
        then();
    });
  }

  void publish_state(const std::string& message) {
    event e;
    e.kind = "state";
    e.state = to_string(rec_.state);
    e.message = message;
    send(env_->registry, publish_atom::value, rec_, std::move(e));
  }

  void publish(const std::string& kind, const std::string& message, std::string data = {},
               uint64_t offset = 0) {
    event e;
    e.kind = kind;
    e.state = to_string(rec_.state);
    e.message = message;
    e.data = std::move(data);
    e.offset = offset;
    send(env_->registry, publish_atom::value, rec_, std::move(e));
  }

  // -- provisioning ---------------------------------------------------------

  void provision() {
    ensure_keys([=] {
      transition(session_state::provisioning, "creating VM", [=] { create_vm(); });
    });
  }

  void ensure_keys(std::function<void()> then) {
    if (!env_->ssh_keys || !keys_.client_key_path.empty()) {
      then();
      return;
    }
    auto dir = env_->home.keys_dir(rec_.id);
    auto self_handle = caf::actor_cast<caf::actor>(this);
    env_->blocking->post([this, self_handle, dir, then] {
      auto keys = make_session_keys(dir);
      caf::anon_send(self_handle, actor_task{[this, keys, then] {
        if (!keys) {
          fail("cannot make SSH keys: " + describe(keys.error()));
          return;
        }
        keys_ = *keys;
        then();
      }});
    });
  }

  vm_request make_vm_request() const {
    vm_request req;
    req.installation_id = env_->installation_id;
    req.session_id = rec_.id;
    req.idempotency_key = rec_.idempotency_key;
    req.client_public_key = keys_.client_public_key;
    req.host_private_key = keys_.host_private_key;
    req.host_public_key = keys_.host_public_key;
    req.hard_deadline_ms = rec_.hard_deadline;
    return req;
  }

  void create_vm() {
    create_in_flight_ = true;
    request(account_, caf::infinite, create_atom::value, make_vm_request())
      .then([=](const vm_info& vm) { create_settled(&vm, {}); },
            [=](caf::error& err) {
              // The outcome of a timed-out create is unknown: look before
              // deciding, so the session never gets two VMs. The create is
              // in flight until the look decides: a destroy asked meanwhile
              // waits for it, and destroys what it finds.
              if (code_of(err) == errc::deadline_exceeded
                  || code_of(err) == errc::unavailable)
                find_by_key([=](const vm_info* vm) { create_settled(vm, err); });
              else
                create_settled(nullptr, err);
            });
  }

  // The create ended with `vm` (null: none was made; `err` says why). A
  // destroy asked meanwhile destroys it (when nothing was found, there is
  // nothing to destroy: the session just ends).
  void create_settled(const vm_info* vm, const caf::error& err) {
    create_in_flight_ = false;
    if (finishing_) {
      if (!vm) {
        finished();
        return;
      }
      adopt_fields(*vm);
      destroy_vm();
    } else if (vm) {
      adopt(*vm);
    } else {
      fail("create VM: " + describe(err));
    }
  }

  // Looks for a VM carrying this session's idempotency key.
  void find_by_key(std::function<void(const vm_info*)> then) {
    request(account_, caf::infinite, list_atom::value)
      .then(
        [=](const vm_infos& vms) {
          for (auto& vm : vms)
            if (vm.idempotency_key == rec_.idempotency_key && vm.session_id == rec_.id) {
              then(&vm);
              return;
            }
          then(nullptr);
        },
        [=](caf::error& err) {
          publish("error", "cannot list VMs: " + describe(err) + "; retrying");
          delayed_send(this, milliseconds{env_->retry_delay_ms},
                       actor_task{[=] { find_by_key(then); }});
        });
  }

  void adopt_fields(const vm_info& vm) {
    rec_.vm_id = vm.vm_id;
    rec_.host = vm.host;
    rec_.port = vm.port;
    rec_.user = vm.user;
    rec_.workdir = vm.workdir;
  }

  void adopt(const vm_info& vm) {
    adopt_fields(vm);
    transition(session_state::booting, "VM " + vm.vm_id + " created", [=] { boot(); });
  }

  void boot() {
    request(account_, caf::infinite, ready_atom::value, rec_.vm_id)
      .then(
        [=](const vm_info& vm) {
          // What a ready VM reports wins over what its create said (a
          // machine may only know its address, user or workdir once up).
          if (!vm.host.empty()) {
            rec_.host = vm.host;
            rec_.port = vm.port;
          }
          if (!vm.user.empty())
            rec_.user = vm.user;
          if (!vm.workdir.empty())
            rec_.workdir = vm.workdir;
          connect_and_launch();
        },
        [=](caf::error& err) { fail("VM did not become reachable: " + describe(err)); });
  }

  // -- the agent --------------------------------------------------------------

  void connect_and_launch() {
    if (env_->transports == nullptr) {
      // No agent to run (bench fakes): the VM being up is the whole job.
      if (rec_.state == session_state::booting)
        enter_running();
      return;
    }
    ensure_keys([=] {
      ssh_endpoint ep;
      ep.host = rec_.host;
      ep.port = rec_.port;
      ep.user = rec_.user;
      ep.client_key_path = keys_.client_key_path;
      ep.host_public_key = keys_.host_public_key;
      auto self_handle = caf::actor_cast<caf::actor>(this);
      auto gen = ++transport_gen_;
      env_->transports->connect(ep, [this, self_handle, gen](caf::expected<std::shared_ptr<transport>> t) {
        caf::anon_send(self_handle, actor_task{[this, gen, t]() mutable {
          if (gen != transport_gen_)
            return;
          if (!t) {
            on_connection_lost("connect: " + describe(t.error()));
            return;
          }
          transport_ = std::move(*t);
          if (rec_.state == session_state::booting && rec_.synced_up.empty()
              && !rec_.worktree.empty())
            initial_sync_up();
          else
            launch_agent();
        }});
      });
    });
  }

  // Hands the agent its secrets (if it takes any) in a file the runner
  // reads and deletes, then starts it. The values come from the credential
  // store now: they are never part of the record. Reading them may wait on
  // a file or the Secret Service (a locked keyring), so it runs on the
  // blocking executor, never on the scheduler's few threads.
  void launch_agent() {
    // A running session's agent has its secrets: a reconnect neither reads
    // them again (a keyring locked since must not fail a running VM) nor
    // sends them.
    if (rec_.agent_secrets.empty() || !env_->agent_secrets
        || rec_.state != session_state::booting) {
      start_agent();
      return;
    }
    auto self_handle = caf::actor_cast<caf::actor>(this);
    auto gen = transport_gen_;
    auto read = env_->agent_secrets;
    env_->blocking->post([this, self_handle, gen, read, rec = rec_] {
      auto vars = read(rec);
      caf::anon_send(self_handle, actor_task{[this, gen, vars = std::move(vars)] {
        if (gen != transport_gen_ || !transport_)
          return; // the connection it was for is gone; its successor starts over
        if (!vars) {
          fail("agent secrets: " + describe(vars.error()));
          return;
        }
        hand_secrets(*vars);
      }});
    });
  }

  void hand_secrets(const std::vector<std::pair<std::string, std::string>>& vars) {
    auto self_handle = caf::actor_cast<caf::actor>(this);
    auto gen = transport_gen_;
    exec_callbacks cb;
    cb.on_exit = [this, self_handle, gen](const caf::error& err, int code) {
      caf::anon_send(self_handle, actor_task{[this, gen, err, code] {
        if (gen != transport_gen_)
          return;
        if (err) {
          on_connection_lost("hand the agent its secrets: " + describe(err));
          return;
        }
        if (code != 0) {
          fail("could not write the agent's environment on the VM (exit code "
               + std::to_string(code) + ")");
          return;
        }
        start_agent();
      }});
    };
    auto ch = transport_->exec(agent_env_command(rec_.workdir), std::move(cb));
    ch->write(agent_env_file(vars));
    ch->close_stdin();
  }

  void start_agent() {
    auto self_handle = caf::actor_cast<caf::actor>(this);
    auto gen = transport_gen_;
    auto out = std::make_shared<std::string>();
    exec_callbacks cb;
    cb.on_stdout = [out](std::string_view s) { out->append(s); };
    cb.on_stderr = [out](std::string_view s) { out->append(s); };
    cb.on_exit = [this, self_handle, gen, out](const caf::error& err, int code) {
      caf::anon_send(self_handle, actor_task{[this, gen, out, err, code] {
        if (gen != transport_gen_)
          return;
        if (err) {
          on_connection_lost("launch agent: " + describe(err));
          return;
        }
        if (code != 0) {
          fail("agent launch failed with exit code " + std::to_string(code) + ": "
               + out->substr(0, 512));
          return;
        }
        if (rec_.state == session_state::booting)
          enter_running();
        else
          watch_agent();
      }});
    };
    auto ch = transport_->exec(agent_launch_command(rec_.workdir), std::move(cb));
    ch->write(rec_.agent_cmd + "\n");
    ch->close_stdin();
  }

  void enter_running() {
    auto now = env_->clock->now_ms();
    rec_.idle_deadline = push_idle_deadline(0, now, rec_.idle_timeout_ms);
    rec_.last_activity = "start";
    rec_.last_activity_at = now;
    if (env_->transports != nullptr)
      rec_.agent_status = agent_status::running;
    transition(session_state::running, "agent started", [=] {
      publish("agent", "agent started: " + rec_.agent_cmd);
      watch_agent();
    });
  }

  void watch_agent() {
    if (agent_done())
      catching_up_ = false;
    arm_watchdog();
    if (!transport_ || agent_done())
      return;
    open_log();
    start_tail();
    start_status();
  }

  bool agent_done() const {
    return rec_.agent_status == agent_status::exited
           || rec_.agent_status == agent_status::failed
           || rec_.agent_status == agent_status::stopped;
  }

  void start_tail() {
    auto self_handle = caf::actor_cast<caf::actor>(this);
    auto gen = transport_gen_;
    exec_callbacks cb;
    cb.on_stdout = [this, self_handle, gen](std::string_view s) {
      caf::anon_send(self_handle, actor_task{[this, gen, chunk = std::string{s}] {
        if (gen == transport_gen_)
          on_output(chunk);
      }});
    };
    cb.on_stderr = [](std::string_view) {};
    cb.on_exit = [this, self_handle, gen](const caf::error& err, int) {
      caf::anon_send(self_handle, actor_task{[this, gen, err] {
        if (gen != transport_gen_)
          return;
        tail_.reset();
        if (err && code_of(err) != errc::cancelled)
          on_connection_lost("log stream: " + describe(err));
      }});
    };
    tail_ = transport_->exec(agent_tail_command(rec_.workdir, rec_.log_offset), std::move(cb));
  }

  void start_status() {
    auto self_handle = caf::actor_cast<caf::actor>(this);
    auto gen = transport_gen_;
    auto buf = std::make_shared<std::string>();
    exec_callbacks cb;
    cb.on_stdout = [this, self_handle, gen, buf](std::string_view s) {
      buf->append(s);
      size_t pos;
      while ((pos = buf->find('\n')) != std::string::npos) {
        auto line = buf->substr(0, pos);
        buf->erase(0, pos + 1);
        caf::anon_send(self_handle, actor_task{[this, gen, line] {
          if (gen == transport_gen_)
            on_probe(line);
        }});
      }
      if (buf->size() > 4096) // a status line is short: anything else is noise
        buf->clear();
    };
    cb.on_stderr = [](std::string_view) {};
    cb.on_exit = [this, self_handle, gen](const caf::error& err, int) {
      caf::anon_send(self_handle, actor_task{[this, gen, err] {
        if (gen != transport_gen_)
          return;
        status_.reset();
        if (err && code_of(err) != errc::cancelled)
          on_connection_lost("status stream: " + describe(err));
      }});
    };
    status_ = transport_->exec(agent_status_command(rec_.workdir, env_->status_interval_s),
                               std::move(cb));
  }

  void on_output(const std::string& chunk) {
    auto offset = rec_.log_offset;
    if (log_fd_ >= 0) {
      // Local log first: its size is the truth about what was delivered.
      size_t done = 0;
      while (done < chunk.size()) {
        auto n = ::write(log_fd_, chunk.data() + done, chunk.size() - done);
        if (n <= 0)
          break;
        done += static_cast<size_t>(n);
      }
    }
    rec_.log_offset += chunk.size();
    publish("output", {}, chunk, offset);
    activity("output");
    maybe_finish_tail();
  }

  void on_probe(const std::string& line) {
    auto p = parse_agent_probe(line);
    if (!p)
      return;
    if (catching_up_) {
      catching_up_ = false;
      // Output written while the engine was away is activity.
      if (p->log_size > rec_.log_offset)
        activity("output");
      arm_watchdog();
    }
    if (p->terminal_activity > last_terminal_activity_) {
      if (last_terminal_activity_ != 0)
        activity("terminal");
      last_terminal_activity_ = p->terminal_activity;
    }
    if (have_cpu_ && p->cpu_ticks >= last_cpu_ticks_ + env_->cpu_activity_ticks)
      activity("cpu");
    last_cpu_ticks_ = p->cpu_ticks;
    have_cpu_ = true;
    if (p->exit_code && !agent_done()) {
      final_log_size_ = p->log_size;
      rec_.exit_code = *p->exit_code;
      if (rec_.agent_status != agent_status::stopped)
        rec_.agent_status = *p->exit_code == 0 ? agent_status::exited : agent_status::failed;
      persist([=] {
        publish("agent", "agent exited with code " + std::to_string(rec_.exit_code));
      });
      maybe_finish_tail();
    }
  }

  // Once the agent is done and its whole log has arrived, the tail is over.
  void maybe_finish_tail() {
    if (agent_done() && final_log_size_ >= 0
        && rec_.log_offset >= static_cast<uint64_t>(final_log_size_) && tail_) {
      tail_->cancel();
      tail_.reset();
      persist(nullptr); // the final log offset
    }
  }

  caf::result<done_atom> stop_agent() {
    if (!transport_)
      return make_error(errc::failed_precondition,
                        "session " + rec_.id + " has no running agent (state "
                          + to_string(rec_.state) + ")");
    if (agent_done())
      return done_atom::value;
    auto rp = make_response_promise();
    auto self_handle = caf::actor_cast<caf::actor>(this);
    exec_callbacks cb;
    cb.on_stdout = [](std::string_view) {};
    cb.on_stderr = [](std::string_view) {};
    cb.on_exit = [this, self_handle, rp](const caf::error& err, int code) mutable {
      caf::anon_send(self_handle, actor_task{[this, rp, err, code]() mutable {
        if (err || code != 0) {
          rp.deliver(make_error(errc::unavailable, "could not stop the agent: "
                                                     + (err ? describe(err) : "exit code "
                                                        + std::to_string(code))));
          return;
        }
        rec_.agent_status = agent_status::stopped;
        persist([=]() mutable {
          publish("agent", "agent stopped on request");
          rp.deliver(done_atom::value);
        });
      }});
    };
    transport_->exec(agent_stop_command(rec_.workdir), std::move(cb));
    return rp;
  }

  // A transport failed: ask the provider what became of the VM before doing
  // anything. Only a VM the provider reports running is reconnected to.
  void on_connection_lost(const std::string& why) {
    if (finishing_ || is_terminal(rec_.state) || checking_vm_)
      return;
    drop_transport();
    checking_vm_ = true;
    request(account_, caf::infinite, get_atom::value, rec_.vm_id)
      .then(
        [=](const vm_info& vm) {
          checking_vm_ = false;
          if (finishing_ || is_terminal(rec_.state))
            return;
          if (vm.status == vm_status::running || vm.status == vm_status::starting) {
            publish("error", why + "; reconnecting");
            delayed_send(this, milliseconds{env_->retry_delay_ms},
                         actor_task{[=] { connect_and_launch(); }});
            return;
          }
          mark_lost(vm.status, why);
        },
        [=](caf::error& err) {
          checking_vm_ = false;
          publish("error", why + "; cannot ask the provider: " + describe(err));
          delayed_send(this, milliseconds{env_->retry_delay_ms},
                       actor_task{[=] { on_connection_lost(why); }});
        });
  }

  void mark_lost(vm_status status, const std::string& detail) {
    watchdog_disarm();
    transition(session_state::lost,
               "VM " + rec_.vm_id + " is " + to_string(status)
                 + (detail.empty() ? "" : " (" + detail + ")")
                 + "; the session keeps its last synced state; `aloft destroy "
                 + rec_.id + "` removes what is left",
               [=] { quit(); });
  }

  // -- watchdog ---------------------------------------------------------------

  void arm_watchdog() {
    if (rec_.state != session_state::running)
      return;
    watchdog_input in;
    // Until the first look at the VM after a restart, only the hard deadline
    // counts: the engine cannot know whether the agent was busy while it was
    // away, and the idle window must measure observed inactivity.
    in.idle_deadline = catching_up_ ? 0 : rec_.idle_deadline;
    in.hard_deadline = rec_.hard_deadline;
    in.hard_warning_ms = env_->hard_warning_ms;
    in.auto_destroy = rec_.auto_destroy;
    in.hard_warned = rec_.hard_warned;
    in.idle_reported = idle_reported_;
    send(watchdog_, arm_atom::value, in);
  }

  void watchdog_disarm() {
    watchdog_input in; // no deadlines: nothing armed
    send(watchdog_, arm_atom::value, in);
  }

  void activity(const std::string& source) {
    if (rec_.state != session_state::running)
      return;
    auto now = env_->clock->now_ms();
    rec_.idle_deadline = push_idle_deadline(rec_.idle_deadline, now, rec_.idle_timeout_ms);
    rec_.last_activity = source;
    rec_.last_activity_at = now;
    idle_reported_ = false;
    arm_watchdog();
    // Persisting every push would cost an fsync per output chunk: persist
    // when the deadline moved by a twentieth of the timeout (at least 1 s).
    // After a crash the idle timer may then fire that much early, never late.
    auto slack = std::max<int64_t>(1000, rec_.idle_timeout_ms / 20);
    if (rec_.idle_deadline - persisted_idle_deadline_ >= slack) {
      persist(nullptr);
      publish("activity", "idle deadline pushed by " + source);
    }
  }

  void on_watchdog(watchdog_action action) {
    // While the work is being saved before a timed destroy, the verdict is
    // already in.
    if (rec_.state != session_state::running || saving_)
      return;
    switch (action) {
      case watchdog_action::warn_hard: {
        rec_.hard_warned = true;
        auto left_s = (rec_.hard_deadline - env_->clock->now_ms()) / 1000;
        persist([=] {
          publish("warning", "hard deadline in " + std::to_string(left_s)
                               + " s; `aloft extend " + rec_.id
                               + " DURATION` moves it");
        });
        break;
      }
      case watchdog_action::report_idle:
        idle_reported_ = true;
        publish("warning", "idle since the last activity (" + rec_.last_activity
                             + "); auto-destroy is off, so the VM keeps running");
        break;
      case watchdog_action::finish_idle:
        save_then_finish("idle timeout: no activity for "
                         + std::to_string(rec_.idle_timeout_ms / 1000) + " s (last: "
                         + rec_.last_activity + ")");
        break;
      case watchdog_action::finish_hard:
        save_then_finish("hard timeout reached");
        break;
      case watchdog_action::none:
        break;
    }
  }

  // The account's guards changed and the user asked to apply them to live
  // sessions: the idle window is measured from the last activity, the hard
  // limit from the session's creation.
  void apply_guards(const guards& g) {
    if (is_terminal(rec_.state) || rec_.state == session_state::stopping)
      return;
    auto last_active = rec_.idle_deadline - rec_.idle_timeout_ms;
    rec_.idle_timeout_ms = g.idle_timeout_s * 1000;
    rec_.idle_deadline = last_active + rec_.idle_timeout_ms;
    auto hard = rec_.created_at + g.hard_timeout_s * 1000;
    if (hard > rec_.hard_deadline)
      rec_.hard_warned = false;
    rec_.hard_deadline = hard;
    rec_.auto_destroy = g.auto_destroy_on_idle;
    idle_reported_ = false;
    persist([=] {
      arm_watchdog();
      push_deadline_to_vm();
      publish("activity", "guards of account " + rec_.account + " applied: idle "
                            + std::to_string(g.idle_timeout_s) + " s, hard "
                            + std::to_string(g.hard_timeout_s) + " s, auto-destroy "
                            + (g.auto_destroy_on_idle ? "on" : "off"));
    });
  }

  caf::result<session_record> extend(int64_t seconds) {
    if (seconds <= 0 || seconds > 30L * 24 * 3600)
      return make_error(errc::invalid_argument,
                        "extend takes a positive duration of at most 30 days");
    if (is_terminal(rec_.state) || rec_.state == session_state::stopping)
      return make_error(errc::failed_precondition,
                        "session " + rec_.id + " is " + to_string(rec_.state)
                          + "; only a live session can be extended");
    auto rp = make_response_promise();
    auto base = std::max(rec_.hard_deadline, env_->clock->now_ms());
    rec_.hard_deadline = base + seconds * 1000;
    rec_.hard_warned = false;
    persist([=]() mutable {
      arm_watchdog();
      push_deadline_to_vm();
      publish("activity", "hard deadline extended by " + std::to_string(seconds) + " s");
      rp.deliver(rec_);
    });
    return rp;
  }

  // A VM that guards its own lifetime (Fly's init) reads the hard deadline
  // from the state directory: tell it when the deadline moves. Without a
  // connection now, the VM keeps the older deadline and the engine's own
  // watchdog still honours the new one.
  void push_deadline_to_vm() {
    if (!transport_ || rec_.workdir.empty())
      return;
    auto self_handle = caf::actor_cast<caf::actor>(this);
    exec_callbacks cb;
    cb.on_exit = [this, self_handle](const caf::error& err, int code) {
      if (err || code != 0)
        caf::anon_send(self_handle, actor_task{[this, err, code] {
          publish("warning", "could not tell the VM its new hard deadline ("
                               + (err ? describe(err) : "exit code " + std::to_string(code))
                               + "); the engine still enforces it");
        }});
    };
    transport_->exec(agent_deadline_command(rec_.workdir, rec_.hard_deadline / 1000),
                     std::move(cb));
  }

  // -- sync -------------------------------------------------------------------

  caf::error not_syncable() {
    return make_error(errc::failed_precondition,
                      "session " + rec_.id + " is " + to_string(rec_.state)
                        + "; syncing needs its VM running");
  }

  sync_job make_job(bool up, bool safety, sync::apply_mode mode, const std::string& branch) {
    sync_job job;
    job.session = rec_.id;
    job.up = up;
    job.safety = safety;
    job.worktree = rec_.worktree;
    job.workdir = rec_.workdir;
    job.base = rec_.synced_up;
    // After a sync down the VM's worktree matches that snapshot, not the
    // last one sent up.
    if (rec_.vm_synced_down)
      job.vm_now = rec_.synced_down;
    job.mode = mode;
    job.branch = branch;
    job.limits = sync_limits();
    return job;
  }

  sync::limits sync_limits() const {
    return env_->sync_limits ? env_->sync_limits() : sync::limits{};
  }

  // Runs one sync job and records what it moved. One job at a time.
  caf::result<sync_outcome> run_sync(bool up, bool safety, sync::apply_mode mode,
                                     const std::string& branch) {
    if (!transport_)
      return make_error(errc::unavailable, "session " + rec_.id
                                             + " is reconnecting to its VM; try again");
    if (sync_in_flight_)
      return make_error(errc::unavailable,
                        "a sync of session " + rec_.id + " is running; try again when it ends");
    auto rp = make_response_promise();
    start_sync(make_job(up, safety, mode, branch),
               [rp](caf::expected<sync_outcome> r) mutable {
                 if (r)
                   rp.deliver(std::move(*r));
                 else
                   rp.deliver(std::move(r.error()));
               });
    return rp;
  }

  void start_sync(sync_job job, std::function<void(caf::expected<sync_outcome>)> done) {
    sync_in_flight_ = true;
    // A safety sync is the engine's own doing on the way out, not activity.
    if (!job.safety)
      activity("sync");
    auto up = job.up;
    auto safety = job.safety;
    auto mode = job.mode;
    auto sh = shell(job.limits.max_download_bytes);
    auto s = spawn_sync(system(), std::move(job), std::move(sh), env_->blocking, env_->registry);
    request(s, caf::infinite, sync_atom::value)
      .then(
        [=](sync_outcome& out) {
          sync_in_flight_ = false;
          if (!safety)
            activity("sync");
          if (!out.commit.empty()) {
            if (up) {
              rec_.synced_up = out.commit;
              rec_.vm_synced_down = false;
            } else if (safety) {
              rec_.safety_ref = out.ref;
            } else {
              rec_.synced_down = out.commit;
              // Only a clean apply puts the agent's changes in the local
              // worktree, so that later snapshots hold them: then the VM may
              // start the next update from its own snapshot. Otherwise (a
              // branch, a dry run, conflicts) it must keep treating the
              // agent's changes as its own, or an update would revert them.
              rec_.vm_synced_down = mode == sync::apply_mode::apply
                                    && out.applied.conflicts.empty();
            }
          }
          persist([=]() mutable {
            // The event carries the record, so listings see the new snapshots.
            if (!out.commit.empty())
              publish("sync", std::string{up ? "synced up " : safety ? "saved to " + out.ref + ": "
                                                                   : "synced down "}
                                + out.commit.substr(0, 12));
            done(std::move(out));
          });
        },
        [=](caf::error& err) {
          sync_in_flight_ = false;
          done(std::move(err));
        });
  }

  // The session's resident shell on the VM, (re)started on demand: sync
  // scripts run there instead of paying for a channel and a login shell each.
  // Its output is bounded by `max_download_bytes` (the job's own bound, so
  // the shell never cuts a pack the job would take) as it was at its start;
  // a raised bound needs a new shell.
  std::shared_ptr<resident_shell> shell(uint64_t max_download_bytes) {
    auto cap = max_download_bytes + (1u << 20);
    if (!shell_ || !shell_->alive() || shell_cap_ < cap) {
      shell_ = resident_shell::start(transport_, cap);
      shell_cap_ = cap;
    }
    return shell_;
  }

  // Compares both sides with the last snapshots: the local worktree on the
  // executor, the VM's worktree through the transport (nothing is kept).
  caf::result<sync_state> sync_state_of() {
    // A snapshot of the worktree must not race an apply writing into it.
    if (sync_in_flight_)
      return make_error(errc::unavailable,
                        "a sync of session " + rec_.id + " is running; ask again when it ends");
    sync_state none;
    if (rec_.synced_up.empty()) {
      none.local_note = none.vm_note = "never synced up";
      return none;
    }
    auto rp = make_response_promise();
    auto st = std::make_shared<sync_state>();
    auto trees = std::make_shared<std::pair<std::string, std::string>>(); // up, last
    auto vm_tree = std::make_shared<std::string>();
    auto pending = std::make_shared<int>(transport_ && rec_.state == session_state::running
                                           ? 2 : 1);
    if (*pending == 1)
      st->vm_note = "the VM is not connected";
    auto done = [=]() mutable {
      if (--*pending > 0)
        return;
      if (!vm_tree->empty() && !trees->second.empty())
        st->vm_changed = *vm_tree != trees->second ? 1 : 0;
      rp.deliver(*st);
    };
    auto self_handle = caf::actor_cast<caf::actor>(this);
    auto worktree = rec_.worktree;
    auto up = rec_.synced_up;
    auto last = rec_.synced_down.empty() ? rec_.synced_up : rec_.synced_down;
    env_->blocking->post([self_handle, worktree, up, last, st, trees, done]() mutable {
      // The snapshot checks the worktree itself: a failed check is its error.
      sync_state local;
      std::string last_tree;
      auto snap = sync::snapshot_worktree(worktree, "", "aloft: status");
      if (!snap) {
        local.local_note = message_of(snap.error());
      } else {
        auto t_up = sync::tree_of(snap->top, up);
        auto t_last = sync::tree_of(snap->top, last);
        if (t_up)
          local.local_changed = snap->tree != *t_up ? 1 : 0;
        else
          local.local_note = describe(t_up.error());
        if (t_last)
          last_tree = *t_last;
      }
      caf::anon_send(self_handle, actor_task{[=]() mutable {
        st->local_changed = local.local_changed;
        st->local_note = local.local_note;
        trees->second = last_tree;
        done();
      }});
    });
    if (*pending == 2) {
      shell(sync_limits().max_download_bytes)
        ->run(sync::vm_tree_command(rec_.workdir, rec_.synced_up), {},
                   [self_handle, st, vm_tree, done](const caf::error& err, int code,
                                                    std::string out, std::string) mutable {
                     caf::anon_send(self_handle, actor_task{[=]() mutable {
                       auto line = out.substr(0, out.find('\n'));
                       bool hex = line.size() == 40
                                  && line.find_first_not_of("0123456789abcdef")
                                       == std::string::npos;
                       if (!err && code == 0 && hex)
                         *vm_tree = line;
                       else
                         st->vm_note = err ? describe(err)
                                           : "the VM could not tell (exit "
                                               + std::to_string(code) + ")";
                       done();
                     }});
                   });
    }
    return rp;
  }

  void initial_sync_up() {
    start_sync(make_job(true, false, sync::apply_mode::apply, {}),
               [=](caf::expected<sync_outcome> r) {
                 if (!r) {
                   fail("initial sync up: " + describe(r.error()));
                   return;
                 }
                 for (auto& note : r->notes)
                   publish("warning", note);
                 if (!r->commit.empty())
                   publish("sync", "worktree synced up: " + std::to_string(r->files)
                                     + " files, " + std::to_string(r->bytes)
                                     + " pack bytes, snapshot " + r->commit.substr(0, 12));
                 launch_agent();
               });
  }

  // Before a timed destroy, the agent's work goes to the safety ref (never
  // into the worktree). A failure is reported; the VM is destroyed anyway,
  // since a timed destroy is what keeps it from running away.
  void save_then_finish(const std::string& reason) {
    if (!transport_ || rec_.synced_up.empty() || sync_in_flight_) {
      finish(reason, session_state::destroyed, nullptr);
      return;
    }
    watchdog_disarm();
    saving_ = true;
    start_sync(make_job(false, true, sync::apply_mode::apply, {}),
               [=](caf::expected<sync_outcome> r) {
                 if (r)
                   finish(reason + "; the agent's work is saved in " + r->ref,
                          session_state::destroyed, nullptr);
                 else
                   finish(reason + "; saving the agent's work failed: " + describe(r.error()),
                          session_state::destroyed, nullptr);
               });
  }

  // -- finishing --------------------------------------------------------------

  void finish(const std::string& reason, session_state final_state,
              std::function<void()> on_stopping) {
    if (finishing_) {
      if (on_stopping)
        on_stopping();
      return;
    }
    finishing_ = true;
    final_state_ = final_state;
    watchdog_disarm();
    if (rec_.state == session_state::pending) {
      // Nothing was asked of the provider yet.
      transition(final_state == session_state::failed ? session_state::failed
                                                      : session_state::stopping,
                 reason, [=] {
                   if (on_stopping)
                     on_stopping();
                   if (rec_.state == session_state::stopping)
                     transition(session_state::destroyed, reason, [=] { quit(); });
                   else
                     quit();
                 });
      return;
    }
    // An agent still running when its VM goes is stopped with it.
    if (rec_.agent_status == agent_status::running)
      rec_.agent_status = agent_status::stopped;
    transition(session_state::stopping, reason, [=] {
      if (on_stopping)
        on_stopping();
      drop_transport();
      if (!create_in_flight_)
        destroy_vm();
      // else: create_vm's reply destroys what it created
    });
  }

  void destroy_vm() {
    if (rec_.vm_id.empty()) {
      // A crash may have hidden a create: look by key before concluding that
      // there is nothing to destroy.
      find_by_key([=](const vm_info* vm) {
        if (vm) {
          adopt_fields(*vm);
          destroy_vm();
        } else {
          finished();
        }
      });
      return;
    }
    request(account_, milliseconds{env_->provider_timeout_ms}, destroy_atom::value,
            rec_.vm_id)
      .then([=](done_atom) { finished(); },
            [=](caf::error& err) {
              publish("error", "destroy VM " + rec_.vm_id + ": " + describe(err)
                                 + "; retrying");
              delayed_send(this, milliseconds{env_->retry_delay_ms},
                           actor_task{[=] { destroy_vm(); }});
            });
  }

  void finished() {
    transition(final_state_, rec_.reason, [=] { quit(); });
  }

  void fail(const std::string& reason) {
    publish("error", reason);
    // The prefix tells a restarted engine which final state a stopping
    // session is headed for.
    finish("failed: " + reason, session_state::failed, nullptr);
  }

  // -- rehydration ------------------------------------------------------------

  void rehydrate() {
    auto now = env_->clock->now_ms();
    rec_.log_offset = local_log_size(rec_.log_offset);
    switch (rec_.state) {
      case session_state::pending:
        provision();
        return;
      case session_state::provisioning:
        ensure_keys([=] {
          if (!rec_.vm_id.empty()) {
            check_and_resume();
            return;
          }
          find_by_key([=](const vm_info* vm) {
            if (vm)
              adopt(*vm);
            else
              create_vm();
          });
        });
        return;
      case session_state::booting:
      case session_state::running:
        catching_up_ = env_->transports != nullptr;
        if (rec_.hard_deadline > 0 && now >= rec_.hard_deadline) {
          finish("hard timeout reached while the engine was away", session_state::destroyed,
                 nullptr);
          return;
        }
        check_and_resume();
        return;
      case session_state::stopping:
        finishing_ = true;
        final_state_ = rec_.reason.rfind("failed", 0) == 0 ? session_state::failed
                                                           : session_state::destroyed;
        destroy_vm();
        return;
      default:
        quit();
        return;
    }
  }

  void check_and_resume() {
    request(account_, caf::infinite, get_atom::value, rec_.vm_id)
      .then(
        [=](const vm_info& vm) {
          if (vm.status == vm_status::gone || vm.status == vm_status::stopped) {
            mark_lost(vm.status, "found at restart");
            return;
          }
          if (rec_.state == session_state::provisioning) {
            adopt(vm);
            return;
          }
          if (rec_.state == session_state::booting) {
            boot();
            return;
          }
          arm_watchdog();
          connect_and_launch();
        },
        [=](caf::error& err) {
          publish("error", "cannot ask the provider about VM " + rec_.vm_id + ": "
                             + describe(err) + "; retrying");
          delayed_send(this, milliseconds{env_->retry_delay_ms},
                       actor_task{[=] { check_and_resume(); }});
        });
  }

  // -- local log ----------------------------------------------------------------

  uint64_t local_log_size(uint64_t fallback) const {
    struct stat st;
    if (::stat(env_->home.log_path(rec_.id).c_str(), &st) == 0)
      return static_cast<uint64_t>(st.st_size);
    return fallback;
  }

  void open_log() {
    if (log_fd_ >= 0)
      return;
    log_fd_ = ::open(env_->home.log_path(rec_.id).c_str(),
                     O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  }

  void close_log() {
    if (log_fd_ >= 0)
      ::close(log_fd_);
    log_fd_ = -1;
  }

  void drop_transport() {
    ++transport_gen_;
    if (tail_)
      tail_->cancel();
    if (status_)
      status_->cancel();
    tail_.reset();
    status_.reset();
    if (shell_)
      shell_->close();
    shell_.reset();
    if (transport_)
      transport_->close();
    transport_.reset();
  }

  session_record rec_;
  caf::actor account_;
  std::shared_ptr<const session_env> env_;
  caf::actor watchdog_;
  caf::message_handler common_;
  session_keys keys_;
  std::shared_ptr<transport> transport_;
  std::shared_ptr<channel> tail_;
  std::shared_ptr<channel> status_;
  std::shared_ptr<resident_shell> shell_;
  uint64_t shell_cap_ = 0; // the output bound shell_ was started with
  uint64_t transport_gen_ = 0; // callbacks of older connections are ignored
  int log_fd_ = -1;
  int64_t final_log_size_ = -1;
  int64_t last_terminal_activity_ = 0;
  uint64_t last_cpu_ticks_ = 0;
  bool have_cpu_ = false;
  bool idle_reported_ = false;
  bool catching_up_ = false; // rehydrated; the VM not looked at yet
  int64_t persisted_idle_deadline_ = 0;
  bool create_in_flight_ = false;
  bool sync_in_flight_ = false;
  bool saving_ = false; // syncing to the safety ref before a timed destroy
  bool finishing_ = false;
  bool checking_vm_ = false;
  session_state final_state_ = session_state::destroyed;
};

} // namespace

caf::actor spawn_session(caf::actor_system& sys, session_record rec, caf::actor account,
                         std::shared_ptr<const session_env> env) {
  return sys.spawn<session_actor>(std::move(rec), std::move(account), std::move(env));
}

} // namespace aloft
