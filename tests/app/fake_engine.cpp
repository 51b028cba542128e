#include "tests/app/fake_engine.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/base/error.hpp"
#include "engine/base/ids.hpp"

namespace aloft::testing {

temp_dir::temp_dir() {
  char tmpl[] = "/tmp/aloft-app-XXXXXX";
  if (!::mkdtemp(tmpl))
    throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

temp_dir::~temp_dir() {
  std::string cmd = "rm -rf '" + path_ + "'";
  if (std::system(cmd.c_str()) != 0)
    std::fprintf(stderr, "could not remove %s\n", path_.c_str());
}

fake_engine::fake_engine(std::string log_dir) : log_dir_(std::move(log_dir)) {}

caf::expected<session_record> fake_engine::launch(const launch_request& req) {
  if (req.agent_cmd.empty())
    return make_error(errc::invalid_argument, "launch: no agent command");
  if (!req.account.empty() && req.account != "local" && req.account != "team")
    return make_error(errc::invalid_argument, "unknown account '" + req.account + "'");
  session_record r;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    last_launch_ = req;
    r.id = make_session_id();
    r.account = req.account.empty() ? "local" : req.account;
    r.provider = "local";
    r.agent_cmd = req.agent_cmd;
    r.worktree = req.worktree;
    r.created_at = now_ms;
    r.auto_destroy = req.auto_destroy != 0;
    auto idle = req.idle_timeout_s > 0 ? req.idle_timeout_s : 800;
    auto hard = req.hard_timeout_s > 0 ? req.hard_timeout_s : 8 * 3600;
    r.idle_timeout_ms = idle * 1000;
    r.idle_deadline = now_ms + idle * 1000;
    r.hard_deadline = now_ms + hard * 1000;
    sessions_[r.id] = r;
  }
  event ev;
  ev.session = r.id;
  ev.kind = "state";
  ev.state = "pending";
  publish(ev);
  return r;
}

std::vector<session_record> fake_engine::list() {
  std::lock_guard<std::mutex> guard{mtx_};
  std::vector<session_record> out;
  for (auto& [id, r] : sessions_)
    out.push_back(r);
  std::stable_sort(out.begin(), out.end(), [](auto& a, auto& b) {
    return a.created_at > b.created_at;
  });
  return out;
}

caf::expected<session_view> fake_engine::show(const std::string& id) {
  std::lock_guard<std::mutex> guard{mtx_};
  auto i = sessions_.find(id);
  if (i == sessions_.end())
    return make_error(errc::not_found, "no session " + id);
  session_view v;
  v.record = i->second;
  if (!is_terminal(v.record.state)) {
    bool idle_first = v.record.idle_deadline < v.record.hard_deadline;
    v.next_timer = idle_first ? "idle" : "hard";
    v.next_timer_at = idle_first ? v.record.idle_deadline : v.record.hard_deadline;
  }
  return v;
}

caf::error fake_engine::stop(const std::string& id) {
  {
    std::lock_guard<std::mutex> guard{mtx_};
    auto i = sessions_.find(id);
    if (i == sessions_.end())
      return make_error(errc::not_found, "no session " + id);
    if (is_terminal(i->second.state))
      return make_error(errc::failed_precondition,
                        "session " + id + " is " + to_string(i->second.state));
    i->second.agent_status = agent_status::stopped;
  }
  event ev;
  ev.session = id;
  ev.kind = "agent";
  ev.message = "stopped";
  publish(ev);
  return {};
}

caf::error fake_engine::destroy(const std::string& id) {
  {
    std::lock_guard<std::mutex> guard{mtx_};
    auto i = sessions_.find(id);
    if (i == sessions_.end())
      return make_error(errc::not_found, "no session " + id);
    if (is_terminal(i->second.state))
      return make_error(errc::failed_precondition,
                        "session " + id + " is already " + to_string(i->second.state));
  }
  set_state(id, session_state::stopping);
  return {};
}

caf::expected<session_record> fake_engine::extend(const std::string& id,
                                                  int64_t seconds) {
  std::lock_guard<std::mutex> guard{mtx_};
  auto i = sessions_.find(id);
  if (i == sessions_.end())
    return make_error(errc::not_found, "no session " + id);
  if (is_terminal(i->second.state))
    return make_error(errc::failed_precondition, "session " + id + " has finished");
  if (seconds <= 0)
    return make_error(errc::invalid_argument, "extend by a positive duration");
  i->second.hard_deadline += seconds * 1000;
  return i->second;
}

caf::expected<attach_info> fake_engine::attach(const std::string& id) {
  std::lock_guard<std::mutex> guard{mtx_};
  auto i = sessions_.find(id);
  if (i == sessions_.end())
    return make_error(errc::not_found, "no session " + id);
  if (i->second.state != session_state::running)
    return make_error(errc::failed_precondition,
                      "session " + id + " is " + to_string(i->second.state)
                        + ", not running");
  attach_info a;
  a.endpoint.host = "127.0.0.1";
  a.endpoint.port = 2222;
  a.endpoint.user = "agent";
  a.endpoint.client_key_path = log_dir_ + "/id_ed25519";
  a.endpoint.host_public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeHostKey";
  a.command = "tmux attach -t aloft";
  return a;
}

void fake_engine::activity(const std::string& id, const std::string& source) {
  std::lock_guard<std::mutex> guard{mtx_};
  activities_.emplace_back(id, source);
  auto i = sessions_.find(id);
  if (i != sessions_.end()) {
    i->second.last_activity = source;
    i->second.last_activity_at = now_ms;
  }
}

caf::expected<std::string> fake_engine::log_path(const std::string& id) {
  std::lock_guard<std::mutex> guard{mtx_};
  if (!sessions_.count(id))
    return make_error(errc::not_found, "no session " + id);
  return log_dir_ + "/" + id + ".log";
}

caf::expected<sync_result> fake_engine::sync_up(const std::string& id) {
  return run_sync("up", id, nullptr);
}

caf::expected<sync_result> fake_engine::sync_down(const sync_down_request& req) {
  return run_sync("down", req.id, &req);
}

caf::expected<sync_result> fake_engine::run_sync(const std::string& direction,
                                                 const std::string& id,
                                                 const sync_down_request* down) {
  std::vector<sync_step> steps;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (!sessions_.count(id))
      return make_error(errc::not_found, "no session " + id);
    if (down)
      down_requests_.push_back(*down);
    steps = custom_steps_
              ? sync_steps_
              : std::vector<sync_step>{{"snapshot", 0, 0},
                                       {direction == "up" ? "send" : "receive", 2048, 4096},
                                       {direction == "up" ? "send" : "receive", 4096, 4096},
                                       {"done", 4096, 4096}};
    ++syncs_started_;
    ++syncs_inside_;
    max_syncs_inside_ = std::max(max_syncs_inside_, syncs_inside_);
  }
  sync_cv_.notify_all();
  for (auto& step : steps) {
    event ev;
    ev.session = id;
    ev.kind = "sync";
    ev.data = json::object()
                .set("direction", direction)
                .set("phase", step.phase)
                .set("done", static_cast<long long>(step.done))
                .set("total", static_cast<long long>(step.total))
                .dump();
    ev.message = direction + ": " + step.phase + " " + std::to_string(step.done) + " of "
                 + std::to_string(step.total) + " bytes";
    publish(ev);
  }
  std::unique_lock<std::mutex> lock{mtx_};
  // Bounded, so a test that forgets to release cannot hang the suite.
  sync_cv_.wait_for(lock, std::chrono::seconds(30), [this] { return !syncs_held_; });
  --syncs_inside_;
  if (sync_error_)
    return sync_error_;
  sync_result r;
  if (direction == "up") {
    if (custom_up_) {
      r = up_result_;
    } else {
      r.direction = "up";
      r.commit = std::string(40, 'a');
      r.ref = "refs/aloft/sessions/" + id + "/up";
      r.bytes = 1234;
      r.files = 3;
    }
    return r;
  }
  if (custom_down_) {
    r = down_result_;
  } else {
    r.direction = "down";
    r.commit = std::string(40, 'b');
    r.base = std::string(40, 'a');
    r.ref = "refs/aloft/sessions/" + id + "/down";
    r.changed = {"src/main.c"};
    r.diffstat = " src/main.c | 2 +-\n 1 file changed, 1 insertion(+), 1 deletion(-)\n";
    if (down->mode == sync_down_mode::apply)
      r.saved_ref = "refs/aloft/sessions/" + id + "/saved";
  }
  if (down->mode == sync_down_mode::branch)
    r.branch = down->branch;
  return r;
}

caf::expected<sync_status> fake_engine::sync_state(const std::string& id) {
  std::lock_guard<std::mutex> guard{mtx_};
  if (!sessions_.count(id))
    return make_error(errc::not_found, "no session " + id);
  return sync_status_;
}

void fake_engine::set_sync_status(caf::expected<sync_status> st) {
  std::lock_guard<std::mutex> guard{mtx_};
  sync_status_ = std::move(st);
}

void fake_engine::set_sync_steps(std::vector<sync_step> steps) {
  std::lock_guard<std::mutex> guard{mtx_};
  sync_steps_ = std::move(steps);
  custom_steps_ = true;
}

void fake_engine::set_sync_up_result(sync_result r) {
  std::lock_guard<std::mutex> guard{mtx_};
  up_result_ = std::move(r);
  custom_up_ = true;
}

void fake_engine::set_sync_down_result(sync_result r) {
  std::lock_guard<std::mutex> guard{mtx_};
  down_result_ = std::move(r);
  custom_down_ = true;
}

void fake_engine::set_sync_error(caf::error err) {
  std::lock_guard<std::mutex> guard{mtx_};
  sync_error_ = std::move(err);
}

void fake_engine::hold_syncs() {
  std::lock_guard<std::mutex> guard{mtx_};
  syncs_held_ = true;
}

void fake_engine::release_syncs() {
  {
    std::lock_guard<std::mutex> guard{mtx_};
    syncs_held_ = false;
  }
  sync_cv_.notify_all();
}

bool fake_engine::wait_for_syncs_started(size_t n, int timeout_ms) {
  std::unique_lock<std::mutex> lock{mtx_};
  return sync_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                           [&] { return syncs_started_ >= n; });
}

size_t fake_engine::max_concurrent_syncs() {
  std::lock_guard<std::mutex> guard{mtx_};
  return max_syncs_inside_;
}

std::vector<sync_down_request> fake_engine::sync_down_requests() {
  std::lock_guard<std::mutex> guard{mtx_};
  return down_requests_;
}

std::vector<event> fake_engine::events(size_t n) {
  std::lock_guard<std::mutex> guard{mtx_};
  auto start = journal_.size() > n ? journal_.size() - n : 0;
  return {journal_.begin() + static_cast<std::ptrdiff_t>(start), journal_.end()};
}

uint64_t fake_engine::subscribe(subscriber fn) {
  std::function<void()> hook;
  uint64_t handle;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    handle = next_handle_++;
    subs_[handle] = std::move(fn);
    hook.swap(on_subscribe_);
  }
  if (hook)
    hook();
  return handle;
}

void fake_engine::unsubscribe(uint64_t handle) {
  std::lock_guard<std::mutex> guard{mtx_};
  subs_.erase(handle);
}

std::string fake_engine::add_session(session_state state, const std::string& account) {
  session_record r;
  r.id = make_session_id();
  r.account = account;
  r.provider = "local";
  r.state = state;
  r.agent_cmd = "claude --dangerously-skip-permissions";
  r.worktree = "/home/dev/project";
  r.created_at = now_ms - 125'000;
  r.idle_deadline = now_ms + 600'000;
  r.hard_deadline = now_ms + 7 * 3600'000LL;
  r.last_activity = "output";
  r.last_activity_at = now_ms - 30'000;
  if (state == session_state::running) {
    r.agent_status = agent_status::running;
    r.vm_id = "vm-1";
    r.host = "127.0.0.1";
    r.port = 2222;
    r.user = "agent";
  }
  std::lock_guard<std::mutex> guard{mtx_};
  // Keep `ls` order deterministic: each new session is a little newer.
  r.created_at += static_cast<int64_t>(sessions_.size());
  sessions_[r.id] = r;
  return r.id;
}

void fake_engine::publish(event ev) {
  std::vector<subscriber> targets;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (ev.at_ms == 0)
      ev.at_ms = now_ms;
    if (ev.kind != "output") {
      ev.seq = next_seq_++;
      journal_.push_back(ev);
    }
    for (auto& [h, fn] : subs_)
      targets.push_back(fn);
  }
  for (auto& fn : targets)
    fn(ev);
}

void fake_engine::append_output(const std::string& id, const std::string& data,
                                bool publish_event) {
  auto path = log_dir_ + "/" + id + ".log";
  uint64_t offset = 0;
  struct stat st;
  if (::stat(path.c_str(), &st) == 0)
    offset = static_cast<uint64_t>(st.st_size);
  {
    std::ofstream f{path, std::ios::app | std::ios::binary};
    f << data;
  }
  if (publish_event)
    publish_output(id, offset, data);
}

void fake_engine::publish_output(const std::string& id, uint64_t offset,
                                 const std::string& data) {
  event ev;
  ev.session = id;
  ev.kind = "output";
  ev.data = data;
  ev.offset = offset;
  publish(ev);
}

void fake_engine::set_state(const std::string& id, session_state state) {
  {
    std::lock_guard<std::mutex> guard{mtx_};
    sessions_[id].state = state;
  }
  event ev;
  ev.session = id;
  ev.kind = "state";
  ev.state = to_string(state);
  publish(ev);
}

size_t fake_engine::subscriber_count() {
  std::lock_guard<std::mutex> guard{mtx_};
  return subs_.size();
}

launch_request fake_engine::last_launch() {
  std::lock_guard<std::mutex> guard{mtx_};
  return last_launch_;
}

std::vector<std::pair<std::string, std::string>> fake_engine::activities() {
  std::lock_guard<std::mutex> guard{mtx_};
  return activities_;
}

void fake_engine::on_next_subscribe(std::function<void()> fn) {
  std::lock_guard<std::mutex> guard{mtx_};
  on_subscribe_ = std::move(fn);
}

} // namespace aloft::testing
