#include "actors/sync.hpp"

#include <atomic>
#include <chrono>
#include <optional>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/response_promise.hpp>
#include <caf/send.hpp>

#include "actors/atoms.hpp"
#include "actors/messages.hpp"
#include "engine/base/error.hpp"
#include "engine/executor.hpp"
#include "engine/resident_shell.hpp"

namespace aloft {

namespace {

using std::chrono::milliseconds;

// What a VM prints on stderr is untrusted: keep it short and printable.
std::string printable_tail(const std::string& s, size_t max = 400) {
  auto start = s.size() > max ? s.size() - max : 0;
  std::string out;
  for (size_t i = start; i < s.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    out += (c == '\n' || (c >= 0x20 && c < 0x7f)) ? static_cast<char>(c) : '?';
  }
  while (!out.empty() && out.back() == '\n')
    out.pop_back();
  return out;
}

std::string human_bytes(uint64_t n) {
  char buf[32];
  if (n >= (1u << 20))
    std::snprintf(buf, sizeof(buf), "%.1f MB", static_cast<double>(n) / 1e6);
  else if (n >= 1024)
    std::snprintf(buf, sizeof(buf), "%.1f KB", static_cast<double>(n) / 1e3);
  else
    std::snprintf(buf, sizeof(buf), "%llu B", static_cast<unsigned long long>(n));
  return buf;
}

class sync_actor : public caf::event_based_actor {
public:
  sync_actor(caf::actor_config& cfg, sync_job job, std::shared_ptr<resident_shell> shell,
             executor* blocking, caf::actor registry)
    : caf::event_based_actor(cfg),
      job_(std::move(job)),
      shell_(std::move(shell)),
      blocking_(blocking),
      registry_(std::move(registry)) {
    // nop
  }

  caf::behavior make_behavior() override {
    return {
      [=](actor_task& t) { t.fn(); },
      [=](sync_atom) -> caf::result<sync_outcome> {
        rp_ = make_response_promise();
        if (job_.up)
          start_up();
        else
          start_down();
        return rp_;
      },
      [=](tick_atom) { report_transfer(); },
    };
  }

private:
  // -- up ---------------------------------------------------------------------

  void start_up() {
    progress("snapshot", "snapshot of the local worktree", 0, 0);
    auto job = job_;
    auto self_handle = caf::actor_cast<caf::actor>(this);
    blocking_->post([this, self_handle, job] {
      auto result = std::make_shared<caf::expected<prepared>>(prepare_up(job));
      caf::anon_send(self_handle, actor_task{[this, result] {
        if (!*result) {
          finish(std::move(result->error()));
          return;
        }
        auto& up = **result;
        if (up.out.commit.empty()) {
          finish(std::move(up.out));
          return;
        }
        send_pack(std::move(up.out), std::move(up.script), std::move(up.input));
      }});
    });
  }

  // A sync up ready to go: the VM's script and its stdin (the pack).
  struct prepared {
    sync_outcome out;
    std::string script;
    std::string input;
  };

  // Runs on the executor.
  static caf::expected<prepared> prepare_up(const sync_job& job) {
    sync_outcome out;
    auto snap = sync::snapshot_worktree(job.worktree, sync::up_ref(job.session),
                                        "aloft: worktree of session " + job.session);
    if (!snap) {
      // Not a git worktree: nothing to sync, which the session reports; the
      // agent still runs.
      if (code_of(snap.error()) == errc::failed_precondition) {
        out.notes.push_back(message_of(snap.error()));
        return prepared{std::move(out), {}, {}};
      }
      return snap.error();
    }
    out.notes = snap->notes;
    const auto& repo = snap->top;
    if (auto err = sync::check_upload_size(snap->stats, job.limits))
      return err;
    out.commit = snap->commit;
    out.base = job.base;
    out.ref = sync::up_ref(job.session);
    out.files = snap->stats.files;
    auto script = sync::vm_prepare_command(job.workdir) + "\n";
    if (job.base.empty()) {
      // The VM has nothing: it installs the pack with the index made here.
      auto pack = sync::make_indexed_pack(repo, snap->commit);
      if (!pack)
        return annotate(pack.error(), "pack of " + snap->commit);
      out.bytes = pack->bytes.size();
      script += sync::vm_install_command(job.workdir, snap->commit, *pack);
      return prepared{std::move(out), std::move(script), std::move(pack->bytes)};
    }
    std::vector<std::string> have{job.base};
    if (!job.vm_now.empty())
      have.push_back(job.vm_now);
    auto pack = sync::make_pack(repo, snap->commit, have);
    if (!pack)
      return annotate(pack.error(), "pack of " + snap->commit);
    out.bytes = pack->size();
    script += sync::vm_receive_command(job.workdir, snap->commit, job.base, job.vm_now);
    return prepared{std::move(out), std::move(script), std::move(*pack)};
  }

  void send_pack(sync_outcome out, std::string script, std::string pack) {
    auto total = pack.size();
    total_ = total;
    progress("send", "sending " + human_bytes(total) + " (" + std::to_string(out.files)
                       + " files in the snapshot)",
             0, total);
    auto self_handle = caf::actor_cast<caf::actor>(this);
    auto result = std::make_shared<sync_outcome>(std::move(out));
    start_bytes_ = shell_->bytes_out();
    running_ = true;
    shell_->run(std::move(script), std::move(pack),
                [this, self_handle, result](const caf::error& err, int code, std::string,
                                            std::string err_text) {
                  caf::anon_send(self_handle, actor_task{[=] {
                    running_ = false;
                    if (err) {
                      finish(annotate(err, "send pack to the VM"));
                      return;
                    }
                    if (code != 0) {
                      finish(make_error(errc::failed_precondition,
                                        "the VM could not take the snapshot (exit "
                                          + std::to_string(code)
                                          + "): " + printable_tail(err_text)));
                      return;
                    }
                    progress("done", "synced up " + result->commit.substr(0, 12), total_,
                             total_);
                    finish(std::move(*result));
                  }});
                });
    schedule_tick();
  }

  // -- down -------------------------------------------------------------------

  void start_down() {
    if (job_.base.empty()) {
      finish(make_error(errc::failed_precondition,
                        "session " + job_.session
                          + " has no synced-up snapshot to sync down against (its worktree "
                            "was not a git repository at launch)"));
      return;
    }
    progress("snapshot", "snapshot of the agent's worktree on the VM", 0, 0);
    auto self_handle = caf::actor_cast<caf::actor>(this);
    if (!job_.safety && job_.mode == sync::apply_mode::apply) {
      // The local state the apply merges into and saves is taken while the
      // VM takes its snapshot, not after.
      capturing_ = true;
      auto job = job_;
      blocking_->post([this, self_handle, job] {
        auto taken = std::make_shared<caf::expected<std::shared_ptr<const sync::local_state>>>(
          sync::capture_local_state(job.worktree, job.session, job.base));
        caf::anon_send(self_handle, actor_task{[this, taken] {
          capturing_ = false;
          if (!*taken) {
            finish(std::move(taken->error()));
            return;
          }
          local_ = std::move(**taken);
          store_when_ready();
        }});
      });
    }
    start_bytes_ = shell_->bytes_in();
    running_ = true;
    shell_->run(sync::vm_snapshot_command(job_.workdir, job_.base), {},
                [this, self_handle](const caf::error& err, int code, std::string out,
                                    std::string err_text) {
                  auto buf = std::make_shared<std::string>(std::move(out));
                  caf::anon_send(self_handle, actor_task{[=] {
                    running_ = false;
                    bool over = buf->size() > job_.limits.max_download_bytes + 256;
                    on_down_received(buf, err_text, over, err, code);
                  }});
                });
    schedule_tick();
  }

  void on_down_received(std::shared_ptr<std::string> buf, const std::string& err_text,
                        bool over, const caf::error& err, int code) {
    if (over) {
      finish(make_error(errc::failed_precondition,
                        "the VM sent more than sync.max_download_bytes ("
                          + human_bytes(job_.limits.max_download_bytes)
                          + "); nothing was written locally"));
      return;
    }
    if (err) {
      finish(annotate(err, "snapshot on the VM"));
      return;
    }
    if (code != 0) {
      finish(make_error(errc::failed_precondition,
                        "the VM's worktree cannot be synced down: " + printable_tail(err_text)
                          + "; nothing local was touched"));
      return;
    }
    auto nl = buf->find('\n');
    std::string commit;
    uint64_t pack_bytes = 0;
    if (nl == std::string::npos) {
      finish(make_error(errc::data_loss, "the VM's snapshot has no header"));
      return;
    }
    if (auto perr = sync::parse_snapshot_header(buf->substr(0, nl), commit, pack_bytes)) {
      finish(perr);
      return;
    }
    if (buf->size() - nl - 1 != pack_bytes) {
      finish(make_error(errc::data_loss, "the VM's snapshot announced "
                                           + std::to_string(pack_bytes) + " pack bytes and sent "
                                           + std::to_string(buf->size() - nl - 1)));
      return;
    }
    progress("apply", "checking and storing " + human_bytes(pack_bytes) + " from the VM",
             pack_bytes, pack_bytes);
    received_ = received{std::move(buf), nl, std::move(commit), pack_bytes};
    store_when_ready();
  }

  // Stores and applies what the VM sent once the local state (when the job
  // takes one) is there too.
  void store_when_ready() {
    if (!received_ || capturing_ || storing_)
      return;
    storing_ = true;
    auto job = job_;
    auto in = *received_;
    auto local = local_;
    auto self_handle = caf::actor_cast<caf::actor>(this);
    blocking_->post([this, self_handle, job, in, local] {
      auto result = std::make_shared<caf::expected<sync_outcome>>(
        store_down(job, std::string_view{*in.buf}.substr(in.nl + 1), in.commit,
                   in.pack_bytes, local));
      caf::anon_send(self_handle, actor_task{[this, result] {
        if (*result)
          progress("done", "synced down " + (*result)->commit.substr(0, 12), 0, 0);
        finish(std::move(*result));
      }});
    });
  }

  // Runs on the executor. `local`: the local state taken for an apply.
  static caf::expected<sync_outcome>
  store_down(const sync_job& job, std::string_view pack, const std::string& commit,
             uint64_t pack_bytes, std::shared_ptr<const sync::local_state> local) {
    sync_outcome out;
    std::string repo;
    if (local) {
      repo = sync::snapshot_of(*local).top;
      out.notes = sync::snapshot_of(*local).notes;
    } else {
      auto top = sync::check_worktree(job.worktree, out.notes);
      if (!top)
        return top.error();
      repo = std::move(*top);
    }
    if (auto err = sync::receive_untrusted_pack(repo, pack, commit, job.base, job.limits))
      return err;
    out.commit = commit;
    out.base = job.base;
    out.bytes = pack_bytes;
    out.ref = job.safety ? sync::safety_ref(job.session) : sync::down_ref(job.session);
    // An apply and a branch set the down ref themselves, each with what it
    // writes (the local state saved, the branch made).
    if (job.safety || job.mode == sync::apply_mode::dry_run)
      if (auto err = sync::update_ref(repo, out.ref, commit))
        return err;
    if (job.safety)
      return out;
    auto applied = sync::apply_down(job.worktree, job.session, job.base, commit, job.mode,
                                    job.branch, std::move(local));
    if (!applied)
      return applied.error();
    out.applied = std::move(*applied);
    return out;
  }

  // -- progress and the end -------------------------------------------------------

  void schedule_tick() {
    delayed_send(this, milliseconds{250}, tick_atom::value);
  }

  void report_transfer() {
    if (!running_)
      return;
    if (job_.up) {
      auto sent = std::min<uint64_t>(shell_->bytes_out() - start_bytes_, total_);
      progress("send", "sent " + human_bytes(sent) + " of " + human_bytes(total_), sent,
               total_);
    } else {
      auto got = shell_->bytes_in() - start_bytes_;
      progress("receive", "received " + human_bytes(got), got, 0);
    }
    schedule_tick();
  }

  void progress(const std::string& phase, const std::string& message, uint64_t done,
                uint64_t total) {
    event e;
    e.kind = "sync";
    e.session = job_.session;
    e.message = std::string{job_.up ? "up: " : "down: "} + message;
    auto j = json::object();
    j.set("direction", job_.up ? "up" : "down");
    j.set("phase", phase);
    j.set("done", static_cast<long long>(done));
    j.set("total", static_cast<long long>(total));
    e.data = j.dump();
    // Progress is for whoever watches now; the session journals the end,
    // with its record.
    e.transient = true;
    send(registry_, publish_atom::value, std::move(e));
  }

  void finish(caf::expected<sync_outcome> result) {
    if (finished_)
      return;
    finished_ = true;
    if (result)
      rp_.deliver(std::move(*result));
    else
      rp_.deliver(std::move(result.error()));
    quit();
  }

  sync_job job_;
  std::shared_ptr<resident_shell> shell_;
  executor* blocking_;
  caf::actor registry_;
  caf::response_promise rp_;
  // What the VM sent for a sync down, checked for size and framing.
  struct received {
    std::shared_ptr<std::string> buf;
    size_t nl = 0; // where the header ends
    std::string commit;
    uint64_t pack_bytes = 0;
  };
  std::optional<received> received_;
  std::shared_ptr<const sync::local_state> local_; // taken for an apply
  bool capturing_ = false;   // the local state is being taken
  bool storing_ = false;     // store_down was posted
  bool running_ = false;     // a request is on the VM
  uint64_t start_bytes_ = 0; // the shell's byte count when it was sent
  uint64_t total_ = 0;
  bool finished_ = false;
};

} // namespace

caf::actor spawn_sync(caf::actor_system& sys, sync_job job,
                      std::shared_ptr<resident_shell> shell, executor* blocking,
                      caf::actor registry) {
  return sys.spawn<sync_actor>(std::move(job), std::move(shell), blocking,
                               std::move(registry));
}

} // namespace aloft
