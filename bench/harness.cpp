#include "bench/harness.hpp"

#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include "bench/scenarios.hpp"
#include "engine/app/engine_impl.hpp"
#include "engine/base/error.hpp"
#include "engine/home.hpp"
#include "providers/local/local_provider.hpp"

namespace aloft::bench {

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

long proc_status(const char* key) {
  std::ifstream in{"/proc/self/status"};
  std::string line;
  auto len = std::strlen(key);
  while (std::getline(in, line))
    if (line.compare(0, len, key) == 0)
      return std::atol(line.c_str() + len + 1);
  return -1;
}

double cpu_seconds() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  auto s = [](const timeval& tv) {
    return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
  };
  return s(ru.ru_utime) + s(ru.ru_stime);
}

std::string temp_home() {
  char tmpl[] = "/tmp/aloft-bench-XXXXXX";
  return ::mkdtemp(tmpl);
}

void remove_tree(const std::string& dir) {
  std::string cmd = "rm -rf '" + dir + "'";
  ignore_error(std::system(cmd.c_str()) == 0 ? caf::error{} : caf::error{});
}

bool wait_for(const std::function<bool()>& pred, double limit_s) {
  auto t0 = clock_type::now();
  while (!pred()) {
    if (seconds_since(t0) > limit_s)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

size_t count_state(engine& e, session_state s) {
  size_t n = 0;
  for (auto& r : e.list())
    if (r.state == s)
      ++n;
  return n;
}

std::string describe_states(engine& e, session_state expected) {
  std::map<std::string, size_t> counts;
  std::string odd;
  for (auto& r : e.list()) {
    ++counts[to_string(r.state)];
    if (r.state != expected && odd.empty())
      odd = r.id + ": " + r.reason;
  }
  std::string out;
  for (auto& [state, n] : counts)
    out += (out.empty() ? "" : ", ") + state + " " + std::to_string(n);
  if (!odd.empty())
    out += " (" + odd + ")";
  return out;
}

caf::expected<std::unique_ptr<engine>> open_fake_engine(const std::string& home,
                                                       std::shared_ptr<fake_provider> client) {
  engine_overrides ov;
  account acct;
  acct.name = "bench";
  acct.provider = "fake";
  acct.max_concurrent_vms = 1 << 30;
  ov.accounts.emplace_back(acct, std::move(client));
  ov.no_agent = true;
  engine_options opts;
  opts.home = home;
  return open_engine_with(opts, ov);
}

caf::expected<std::unique_ptr<engine>> open_local_engine(const std::string& home,
                                                        size_t sessions) {
  engine_options opts;
  opts.home = home;
  auto e = open_engine(opts);
  if (!e)
    return e;
  if (auto cap = (*e)->set_account("local", "max_concurrent_vms",
                                   std::to_string(sessions + 1), false);
      !cap)
    return annotate(cap.error(), "raise the local account's cap");
  return e;
}

bool destroy_all(engine& e, double limit_s) {
  for (auto& r : e.list())
    ignore_error(e.destroy(r.id));
  return wait_for([&] {
    for (auto& r : e.list())
      if (!is_terminal(r.state))
        return false;
    return true;
  }, limit_s);
}

fleet launch_fleet(engine& e, size_t n, size_t clients, const std::string& worktree,
                   const std::string& agent_cmd, double limit_s) {
  fleet out;
  // Shared with the subscriber, which may still run after `unsubscribe`
  // (both are messages to the registry).
  auto running = std::make_shared<std::atomic<size_t>>(0);
  auto sub = e.subscribe([running](const event& ev) {
    if (ev.kind == "state" && ev.state == "running")
      ++*running;
  });
  auto t0 = clock_type::now();
  std::mutex mtx;
  std::atomic<size_t> next{0}, failed{0};
  std::vector<std::thread> threads;
  for (size_t c = 0; c < std::max<size_t>(clients, 1); ++c)
    threads.emplace_back([&] {
      launch_request req;
      req.agent_cmd = agent_cmd;
      req.worktree = worktree;
      while (next++ < n) {
        auto rec = e.launch(req);
        if (!rec) {
          ++failed;
          continue;
        }
        std::lock_guard<std::mutex> guard{mtx};
        out.ids.push_back(rec->id);
      }
    });
  for (auto& t : threads)
    t.join();
  out.launch_s = seconds_since(t0);
  out.all_running = wait_for([&] { return running->load() >= n; }, limit_s);
  out.running_s = seconds_since(t0);
  e.unsubscribe(sub);
  out.failed = failed;
  return out;
}

std::string program_dir() {
  char buf[PATH_MAX];
  auto n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0)
    return ".";
  std::string path{buf, static_cast<size_t>(n)};
  auto slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

std::vector<std::string> child_argv(const std::vector<std::string>& args) {
  std::vector<std::string> argv{"/proc/self/exe", "--child"};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

// -- subprocess -------------------------------------------------------------------

subprocess::subprocess(const std::vector<std::string>& argv) {
  int fds[2];
  if (argv.empty() || ::pipe2(fds, O_CLOEXEC) != 0)
    return;
  std::vector<char*> cargv;
  for (auto& a : argv)
    cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  auto pid = ::fork();
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec.
    ::dup2(fds[1], STDOUT_FILENO);
    ::execv(cargv[0], cargv.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  if (pid < 0) {
    ::close(fds[0]);
    return;
  }
  pid_ = pid;
  out_fd_ = fds[0];
}

subprocess::~subprocess() {
  if (pid_ > 0)
    stop(SIGKILL, 30);
  if (out_fd_ >= 0)
    ::close(out_fd_);
}

bool subprocess::read_line(std::string& line, double limit_s) {
  auto t0 = clock_type::now();
  for (;;) {
    auto nl = buf_.find('\n');
    if (nl != std::string::npos) {
      line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      return true;
    }
    if (out_fd_ < 0)
      return false;
    auto left_ms = static_cast<int>((limit_s - seconds_since(t0)) * 1000);
    if (left_ms <= 0)
      return false;
    pollfd p{out_fd_, POLLIN, 0};
    auto r = ::poll(&p, 1, left_ms);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return false;
    char chunk[4096];
    auto n = ::read(out_fd_, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      ::close(out_fd_);
      out_fd_ = -1;
      continue; // a last line without its newline is dropped
    }
    buf_.append(chunk, static_cast<size_t>(n));
  }
}

int subprocess::stop(int sig, double limit_s) {
  if (pid_ <= 0)
    return -1;
  ::kill(pid_, sig);
  int status = 0;
  auto t0 = clock_type::now();
  for (;;) {
    auto r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_ || (r < 0 && errno != EINTR))
      break;
    if (seconds_since(t0) > limit_s) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// -- children ----------------------------------------------------------------------

int run_child(const std::vector<std::string>& args) {
  if (!args.empty() && args[0] == "steady_state")
    return steady_state_child(args);
  if (!args.empty() && args[0] == "restart")
    return restart_child(args);
  if (!args.empty() && args[0] == "local")
    return local_child(args);
  std::fprintf(stderr, "aloft-bench: unknown child %s\n",
               args.empty() ? "(none)" : args[0].c_str());
  return 2;
}

// Destroys every sandbox left under `home` (its sshd, agent and whatever
// else runs in it) through the local provider, which knows how to find
// them; how many there were. A failure to destroy one fails a check.
size_t destroy_leftover_sandboxes(report& out, const std::string& home) {
  local_provider_options o;
  o.sandboxes_dir = resolve_home(home).sandboxes_dir();
  std::vector<std::string> vm_ids;
  if (DIR* d = ::opendir(o.sandboxes_dir.c_str())) {
    while (auto entry = ::readdir(d))
      if (std::string name = entry->d_name; name.rfind("local-", 0) == 0)
        vm_ids.push_back(name);
    ::closedir(d);
  }
  if (vm_ids.empty())
    return 0;
  auto provider = make_local_provider(o);
  for (auto& id : vm_ids) {
    std::promise<caf::error> destroyed;
    auto result = destroyed.get_future();
    provider->destroy(id, [&destroyed](caf::error err) { destroyed.set_value(std::move(err)); });
    if (auto err = result.get())
      out.check(false, "destroy a sandbox left behind: " + describe(err));
  }
  return vm_ids.size();
}


} // namespace aloft::bench
