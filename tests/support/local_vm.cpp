#include "tests/support/local_vm.hpp"

#include <csignal>
#include <cstdlib>
#include <dirent.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "engine/base/ids.hpp"
#include "engine/base/proc_table.hpp"
#include "providers/local/local_provider.hpp"

namespace aloft::test {

temp_dir::temp_dir() {
  auto base = std::getenv("TMPDIR");
  std::string tmpl = std::string{base && *base ? base : "/tmp"} + "/aloft-test-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr)
    std::abort();
  path_ = tmpl;
}

temp_dir::~temp_dir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds bound) {
  auto deadline = std::chrono::steady_clock::now() + bound;
  for (;;) {
    if (pred())
      return true;
    if (std::chrono::steady_clock::now() >= deadline)
      return pred();
    std::this_thread::sleep_for(1ms);
  }
}

size_t thread_count() {
  size_t n = 0;
  if (DIR* d = ::opendir("/proc/self/task")) {
    while (auto e = ::readdir(d))
      if (e->d_name[0] != '.')
        ++n;
    ::closedir(d);
  }
  return n;
}

bool process_running(pid_t pid) {
  return proc::alive(pid);
}

void kill_process_tree(pid_t root) {
  for (auto pid : proc::tree_of(root))
    ::kill(pid, SIGKILL);
}

std::vector<pid_t> processes_matching(const std::string& needle) {
  std::vector<pid_t> out;
  for (auto pid : proc::all_pids()) {
    if (pid == ::getpid() || !proc::alive(pid))
      continue;
    if (proc::cmdline(pid).find(needle) != std::string::npos)
      out.push_back(pid);
  }
  return out;
}

std::optional<exec_result> run(transport& t, const std::string& command,
                               std::chrono::milliseconds bound) {
  struct state {
    std::mutex mtx;
    exec_result r;
  };
  auto st = std::make_shared<state>();
  auto done = std::make_shared<slot<bool>>();
  exec_callbacks cb;
  cb.on_stdout = [st](std::string_view s) {
    std::lock_guard<std::mutex> g{st->mtx};
    st->r.out.append(s);
  };
  cb.on_stderr = [st](std::string_view s) {
    std::lock_guard<std::mutex> g{st->mtx};
    st->r.err.append(s);
  };
  cb.on_exit = [st, done](const caf::error& err, int code) {
    {
      std::lock_guard<std::mutex> g{st->mtx};
      st->r.error = err;
      st->r.exit_code = code;
    }
    done->set(true);
  };
  auto ch = t.exec(command, std::move(cb));
  if (!done->take(bound))
    return std::nullopt;
  std::lock_guard<std::mutex> g{st->mtx};
  return st->r;
}

caf::expected<std::shared_ptr<transport>>
connect(transport_factory& f, const ssh_endpoint& ep, std::chrono::milliseconds bound) {
  return await<std::shared_ptr<transport>>(
    [&](auto cb) { f.connect(ep, std::move(cb)); }, bound);
}

caf::expected<std::unique_ptr<local_vm>> local_vm::start(const std::string& root,
                                                         const std::string& installation_id) {
  std::unique_ptr<local_vm> vm{new local_vm};
  vm->root_ = root;
  auto session = make_session_id();
  auto keys = make_session_keys(root + "/keys/" + session);
  if (!keys)
    return keys.error();
  vm->keys_ = *keys;
  vm->pool_ = std::make_shared<thread_pool>(2);
  local_provider_options opts;
  opts.sandboxes_dir = root + "/sandboxes";
  opts.exec = vm->pool_;
  vm->provider_ = make_local_provider(opts);
  vm_request req;
  req.installation_id = installation_id;
  req.session_id = session;
  req.idempotency_key = make_idempotency_key();
  req.client_public_key = keys->client_public_key;
  req.host_private_key = keys->host_private_key;
  req.host_public_key = keys->host_public_key;
  auto created = await<vm_info>([&](auto cb) { vm->provider_->create(req, cb); });
  if (!created)
    return created.error();
  vm->info_ = *created;
  auto ready = await<vm_info>(
    [&](auto cb) { vm->provider_->wait_ready(created->vm_id, cb); });
  if (!ready) {
    ignore_error(vm->destroy());
    return ready.error();
  }
  vm->info_ = *ready;
  return vm;
}

local_vm::~local_vm() {
  if (!destroyed_)
    ignore_error(destroy());
}

std::string local_vm::sandbox_dir() const {
  return root_ + "/sandboxes/" + info_.vm_id;
}

pid_t local_vm::sshd_pid() const {
  std::ifstream in{sandbox_dir() + "/sshd.pid"};
  pid_t pid = -1;
  in >> pid;
  return in ? pid : -1;
}

ssh_endpoint local_vm::endpoint() const {
  ssh_endpoint ep;
  ep.host = info_.host;
  ep.port = info_.port;
  ep.user = info_.user;
  ep.client_key_path = keys_.client_key_path;
  ep.host_public_key = keys_.host_public_key;
  return ep;
}

caf::error local_vm::destroy() {
  destroyed_ = true;
  return await_done([&](auto cb) { provider_->destroy(info_.vm_id, cb); });
}

} // namespace aloft::test
