#include "providers/local/local_provider.hpp"

#include "engine/base/proc_table.hpp"

#include <algorithm>
#include <arpa/inet.h>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pwd.h>
#include <shadow.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "engine/base/error.hpp"
#include "engine/process.hpp"
#include "engine/base/files.hpp"
#include "engine/base/ids.hpp"
#include "engine/base/json.hpp"
#include "engine/executor.hpp"

namespace aloft {

namespace {

using steady = std::chrono::steady_clock;

// Polling interval while waiting for sshd or for processes to exit: short
// enough that a create or destroy is not slowed noticeably.
constexpr auto poll_interval = std::chrono::milliseconds(5);
constexpr int max_port_attempts = 5;
constexpr const char* loopback = "127.0.0.1";
// Set in every session sshd starts, so destroy finds the sandbox's processes
// even when they left its directory.
constexpr const char* sandbox_env = "ALOFT_SANDBOX";

// -- files ----------------------------------------------------------------------

bool exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

caf::error make_dirs(const std::string& path, mode_t mode) {
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    auto partial = path.substr(0, pos);
    if (partial.empty())
      continue;
    if (::mkdir(partial.c_str(), mode) != 0 && errno != EEXIST)
      return from_errno(errno, "cannot create directory " + partial);
  }
  return {};
}

// Removes the entries of the open directory `dir_fd`, never following
// symlinks; read-only directories (as some tools leave them) are opened up.
caf::error remove_contents(int dir_fd, const std::string& where) {
  int list_fd = ::dup(dir_fd);
  if (list_fd < 0)
    return from_errno(errno, "cannot list " + where);
  DIR* d = ::fdopendir(list_fd);
  if (d == nullptr) {
    ::close(list_fd);
    return from_errno(errno, "cannot list " + where);
  }
  caf::error result;
  std::vector<std::string> names;
  while (auto e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name != "." && name != "..")
      names.push_back(std::move(name));
  }
  ::closedir(d);
  for (auto& name : names) {
    if (::unlinkat(dir_fd, name.c_str(), 0) == 0 || errno == ENOENT)
      continue;
    if (errno == EACCES) {
      ::fchmod(dir_fd, 0700);
      if (::unlinkat(dir_fd, name.c_str(), 0) == 0)
        continue;
    }
    if (errno != EISDIR && errno != EPERM) {
      result = from_errno(errno, "cannot remove " + where + "/" + name);
      continue;
    }
    int sub = ::openat(dir_fd, name.c_str(),
                       O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (sub < 0 && errno == EACCES) {
      ::fchmodat(dir_fd, name.c_str(), 0700, 0);
      sub = ::openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    }
    if (sub < 0) {
      result = from_errno(errno, "cannot open " + where + "/" + name);
      continue;
    }
    ::fchmod(sub, 0700);
    auto err = remove_contents(sub, where + "/" + name);
    ::close(sub);
    if (err) {
      result = err;
      continue;
    }
    if (::unlinkat(dir_fd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT)
      result = from_errno(errno, "cannot remove " + where + "/" + name);
  }
  return result;
}

caf::error remove_tree(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT)
      return {};
    return from_errno(errno, "cannot open " + path);
  }
  auto err = remove_contents(fd, path);
  ::close(fd);
  if (err)
    return err;
  if (::rmdir(path.c_str()) != 0 && errno != ENOENT)
    return from_errno(errno, "cannot remove " + path);
  return {};
}

// -- processes ------------------------------------------------------------------

std::string current_user() {
  struct passwd pw;
  struct passwd* result = nullptr;
  std::vector<char> buf(16384);
  if (::getpwuid_r(::geteuid(), &pw, buf.data(), buf.size(), &result) == 0 && result)
    return pw.pw_name;
  return "root";
}

// sshd refuses locked accounts ("!" in the shadow file) unless PAM decides.
bool account_locked(const std::string& user) {
  if (::geteuid() != 0)
    return false; // cannot read the shadow file; sshd cannot either
  struct spwd sp;
  struct spwd* result = nullptr;
  std::vector<char> buf(16384);
  if (::getspnam_r(user.c_str(), &sp, buf.data(), buf.size(), &result) != 0 || !result)
    return false;
  return result->sp_pwdp != nullptr && result->sp_pwdp[0] == '!';
}

caf::expected<uint16_t> pick_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return from_errno(errno, "socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0
      || ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    auto err = from_errno(errno, "cannot pick a loopback port");
    ::close(fd);
    return err;
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

// Whether an SSH server answers on 127.0.0.1:port within `timeout`.
bool ssh_banner_ok(uint16_t port, std::chrono::milliseconds timeout) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return false;
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  bool ok = false;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    std::string banner;
    char buf[256];
    while (banner.size() < 255 && banner.find('\n') == std::string::npos) {
      auto n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0)
        break;
      banner.append(buf, static_cast<size_t>(n));
    }
    ok = banner.rfind("SSH-2.0", 0) == 0;
  }
  ::close(fd);
  return ok;
}

// -- the sandbox ------------------------------------------------------------------

struct sandbox {
  std::string dir;
  std::string path(const char* name) const { return dir + "/" + name; }
  std::string tags() const { return path("tags.json"); }
  std::string config() const { return path("sshd_config"); }
  std::string host_key() const { return path("host_key"); }
  std::string authorized_keys() const { return path("authorized_keys"); }
  std::string pid_file() const { return path("sshd.pid"); }
  std::string log() const { return path("sshd.log"); }
  std::string work() const { return path("work"); }
  std::string agent_dir() const { return path("aloft"); }
  std::string home() const { return path("home"); }
  std::string creating() const { return path("creating"); }
};

bool valid_vm_id(const std::string& id) {
  if (id.size() < 7 || id.size() > 120 || id.rfind("local-", 0) != 0)
    return false;
  for (char c : id)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
          || c == '-' || c == '_'))
      return false;
  return true;
}

bool valid_session_id(const std::string& id) {
  if (id.empty() || id.size() > 64)
    return false;
  for (char c : id)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
          || c == '-' || c == '_'))
      return false;
  return true;
}

// sshd_config takes double-quoted arguments; `%` is a token in some keywords.
std::string quoted(const std::string& path, bool escape_percent = false) {
  std::string out = "\"";
  for (char c : path) {
    if (escape_percent && c == '%')
      out += "%%";
    else
      out += c;
  }
  return out + "\"";
}

std::string sshd_config_text(const sandbox& sb, uint16_t port, const std::string& user) {
  std::ostringstream out;
  out << "# Written by Aloft's local provider; this sshd plays the sandbox's VM.\n"
      << "Port " << port << "\n"
      << "ListenAddress " << loopback << "\n"
      << "AddressFamily inet\n"
      << "HostKey " << quoted(sb.host_key()) << "\n"
      << "AuthorizedKeysFile " << quoted(sb.authorized_keys(), true) << "\n"
      << "PidFile " << quoted(sb.pid_file()) << "\n"
      << "PubkeyAuthentication yes\n"
      << "PasswordAuthentication no\n"
      << "KbdInteractiveAuthentication no\n"
      // Without PAM, sshd also logs in as a non-root user (it cannot run PAM's
      // account stack unprivileged); with a locked root account only PAM
      // lets a key login through.
      << "UsePAM " << (account_locked(user) ? "yes" : "no") << "\n"
      << "PermitRootLogin prohibit-password\n"
      << "AllowUsers " << user << "\n"
      // The sandbox may sit under a home directory with group-writable
      // parents; the keys' own modes are set by us.
      << "StrictModes no\n"
      // The engine multiplexes many channels (sync, agent, tail) over one
      // connection, and tests open many connections at once.
      << "MaxSessions 256\n"
      << "MaxStartups 200:30:400\n"
      << "UseDNS no\n"
      << "PrintMotd no\n"
      << "PrintLastLog no\n"
      << "X11Forwarding no\n"
      // The VM has a home of its own: logins read its (empty) startup files,
      // not the host user's, which may be slow or take locks (a login shell
      // killed mid-way could then hang every later one).
      << "SetEnv " << sandbox_env << "=" << quoted(sb.dir) << " HOME=" << quoted(sb.home())
      << "\n"
      << "Subsystem sftp internal-sftp\n"
      << "LogLevel ERROR\n";
  return out.str();
}

// Starts `sshd -D -f config -E log` detached: a double fork puts it in its own
// session and process group, re-parented away from the engine, with only
// /dev/null on its standard descriptors and a minimal environment (the
// engine's environment may hold provider credentials). Returns its pid.
caf::expected<pid_t> spawn_sshd(const std::string& sshd_path, const sandbox& sb) {
  std::vector<std::string> args{sshd_path, "-D", "-f", sb.config(), "-E", sb.log()};
  std::vector<char*> argv;
  for (auto& a : args)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  std::string path_env = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  char* envp[] = {path_env.data(), nullptr};
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    return from_errno(errno, "pipe");
  // Everything the children need is prepared above: after fork only
  // async-signal-safe calls.
  pid_t child = ::fork();
  if (child < 0) {
    auto err = from_errno(errno, "fork");
    ::close(fds[0]);
    ::close(fds[1]);
    return err;
  }
  if (child == 0) {
    ::setsid();
    pid_t grandchild = ::fork();
    if (grandchild == 0) {
      int devnull = ::open("/dev/null", O_RDWR);
      ::dup2(devnull, 0);
      ::dup2(devnull, 1);
      ::dup2(devnull, 2);
      ::close_range(3, ~0u, 0);
      reset_signals_in_child();
      if (::chdir("/") != 0)
        ::_exit(126);
      ::execve(sshd_path.c_str(), argv.data(), envp);
      ::_exit(127);
    }
    auto n = ::write(fds[1], &grandchild, sizeof(grandchild));
    ::_exit(n == sizeof(grandchild) && grandchild > 0 ? 0 : 1);
  }
  ::close(fds[1]);
  pid_t sshd_pid = -1;
  ssize_t n;
  do
    n = ::read(fds[0], &sshd_pid, sizeof(sshd_pid));
  while (n < 0 && errno == EINTR);
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  if (n != sizeof(sshd_pid) || sshd_pid <= 0)
    return make_error(errc::internal, "cannot start " + sshd_path + ": fork failed");
  return sshd_pid;
}

pid_t read_pid_file(const std::string& path) {
  auto text = files::read_file(path);
  if (!text)
    return -1;
  char* end = nullptr;
  auto v = std::strtol(text->c_str(), &end, 10);
  return end != text->c_str() && v > 0 ? static_cast<pid_t>(v) : -1;
}

// The pid of the sandbox's sshd if it runs: the pid file names a live
// process whose command line is sshd with this sandbox's config (so a reused
// pid is never mistaken for it).
pid_t running_sshd(const sandbox& sb) {
  auto pid = read_pid_file(sb.pid_file());
  if (!proc::alive(pid))
    return -1;
  auto cmd = proc::cmdline(pid);
  if (cmd.find("sshd") == std::string::npos || cmd.find(sb.config()) == std::string::npos)
    return -1;
  return pid;
}

std::string log_tail(const sandbox& sb) {
  auto text = files::read_file(sb.log());
  if (!text || text->empty())
    return "no log";
  auto s = *text;
  while (!s.empty() && s.back() == '\n')
    s.pop_back();
  if (s.size() > 400)
    s = "..." + s.substr(s.size() - 400);
  for (auto& ch : s)
    if (ch == '\n')
      ch = ';';
  return s;
}

// -- the provider ---------------------------------------------------------------

// The sandboxes themselves: blocking operations, each safe to run on any
// thread. The provider below runs them on the executor.
class sandbox_host {
public:
  explicit sandbox_host(local_provider_options opts) : opts_(std::move(opts)) {
    user_ = current_user();
  }

  sandbox sandbox_of(const std::string& vm_id) const {
    return sandbox{opts_.sandboxes_dir + "/" + vm_id};
  }

  vm_info info_of(const std::string& vm_id) const {
    vm_info info;
    info.vm_id = vm_id;
    auto sb = sandbox_of(vm_id);
    if (!exists(sb.dir)) {
      info.status = vm_status::gone;
      return info;
    }
    if (auto text = files::read_file(sb.tags())) {
      if (auto tags = json::parse(*text)) {
        info.installation_id = tags->get_string("installation_id");
        info.session_id = tags->get_string("session_id");
        info.idempotency_key = tags->get_string("idempotency_key");
        info.port = static_cast<uint16_t>(tags->get_int("port"));
      }
    }
    info.host = loopback;
    info.user = user_;
    info.workdir = sb.work();
    if (running_sshd(sb) > 0) {
      info.status = vm_status::running;
    } else {
      // A create in progress (or one that crashed less than a boot timeout
      // ago) is starting; anything else without its sshd is stopped.
      struct stat st;
      bool creating = ::stat(sb.creating().c_str(), &st) == 0
                      && std::chrono::system_clock::now()
                             - std::chrono::system_clock::from_time_t(st.st_mtime)
                           < opts_.boot_timeout + std::chrono::seconds(1);
      info.status = creating ? vm_status::starting : vm_status::stopped;
    }
    return info;
  }

  caf::error write_tags(const sandbox& sb, const std::string& vm_id,
                        const vm_request& req, uint16_t port) {
    auto tags = json::object();
    tags.set("installation_id", req.installation_id)
      .set("session_id", req.session_id)
      .set("idempotency_key", req.idempotency_key)
      .set("vm_id", vm_id)
      .set("port", static_cast<int>(port))
      .set("hard_deadline_ms", static_cast<long long>(req.hard_deadline_ms));
    return files::write_file_atomically(sb.tags(), tags.pretty() + "\n", 0600);
  }

  caf::expected<vm_info> do_create(const vm_request& req) {
    auto fail = [](const caf::error& err) { return annotate(err, "local: create"); };
    if (!valid_session_id(req.session_id))
      return fail(make_error(errc::invalid_argument,
                             "malformed session id '" + req.session_id + "'"));
    if (req.host_private_key.empty() || req.client_public_key.empty())
      return fail(make_error(errc::invalid_argument, "the request carries no keys"));
    if (opts_.sandboxes_dir.empty() || opts_.sandboxes_dir[0] != '/'
        || opts_.sandboxes_dir.find_first_of("\"\n") != std::string::npos)
      return fail(make_error(errc::invalid_argument,
                             "sandboxes_dir must be an absolute path without quotes"));
    if (opts_.sshd_path.empty() || opts_.sshd_path[0] != '/'
        || ::access(opts_.sshd_path.c_str(), X_OK) != 0)
      return fail(make_error(errc::failed_precondition,
                             "no executable sshd at '" + opts_.sshd_path
                               + "' (an absolute path is required; install "
                                 "openssh-server)"));
    if (auto err = make_dirs(opts_.sandboxes_dir, 0700))
      return fail(err);
    ::chmod(opts_.sandboxes_dir.c_str(), 0700);
    std::string vm_id;
    sandbox sb;
    {
      // The idempotency check and the claim of the directory are one step,
      // so two creates with one key make one sandbox.
      std::lock_guard<std::mutex> guard{create_mtx_};
      if (!req.idempotency_key.empty()) {
        auto existing = do_list(req.installation_id);
        if (existing)
          for (auto& vm : *existing)
            if (vm.idempotency_key == req.idempotency_key)
              return vm;
      }
      for (int attempt = 0;; ++attempt) {
        vm_id = "local-" + req.session_id + "-" + random_hex(2);
        sb = sandbox_of(vm_id);
        if (::mkdir(sb.dir.c_str(), 0700) == 0)
          break;
        if (errno != EEXIST || attempt > 16)
          return fail(from_errno(errno, "cannot create " + sb.dir));
      }
      // Tags first: from here on `list` finds the sandbox, so a crash
      // mid-create leaks nothing that reconcile cannot see.
      if (auto err = files::write_file_atomically(sb.creating(), "", 0600))
        return fail(err);
      if (auto err = write_tags(sb, vm_id, req, 0))
        return fail(err);
    }
    auto err = start_vm(sb, vm_id, req);
    if (err) {
      ignore_error(do_destroy(vm_id));
      return fail(annotate(err, vm_id));
    }
    ::unlink(sb.creating().c_str());
    return info_of(vm_id);
  }

  caf::error start_vm(const sandbox& sb, const std::string& vm_id, const vm_request& req) {
    for (auto dir : {sb.work(), sb.agent_dir(), sb.home()})
      if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
        return from_errno(errno, "cannot create " + dir);
    auto host_key = req.host_private_key;
    if (host_key.back() != '\n')
      host_key += '\n';
    if (auto err = files::write_file_atomically(sb.host_key(), host_key, 0600))
      return err;
    if (auto err = files::write_file_atomically(sb.authorized_keys(),
                                                req.client_public_key + "\n", 0600))
      return err;
    if (::geteuid() == 0 && ::mkdir("/run/sshd", 0755) != 0 && errno != EEXIST)
      return from_errno(errno, "cannot create sshd's privilege separation directory "
                               "/run/sshd");
    caf::error last;
    for (int attempt = 0; attempt < max_port_attempts; ++attempt) {
      auto port = pick_port();
      if (!port)
        return port.error();
      if (auto err = files::write_file_atomically(
              sb.config(), sshd_config_text(sb, *port, user_), 0600))
        return err;
      if (auto err = write_tags(sb, vm_id, req, *port))
        return err;
      ::unlink(sb.pid_file().c_str());
      ::unlink(sb.log().c_str());
      auto pid = spawn_sshd(opts_.sshd_path, sb);
      if (!pid)
        return pid.error();
      // sshd writes its pid file once it listens; if it dies instead, its
      // log says why (a port taken in the meantime is retried).
      auto deadline = steady::now() + opts_.boot_timeout;
      for (;;) {
        if (read_pid_file(sb.pid_file()) == *pid && proc::alive(*pid))
          return {};
        if (!proc::alive(*pid))
          break;
        if (steady::now() >= deadline) {
          ::kill(*pid, SIGKILL);
          return make_error(errc::deadline_exceeded,
                            "sshd did not listen within "
                              + std::to_string(opts_.boot_timeout.count())
                              + " ms: " + log_tail(sb));
        }
        std::this_thread::sleep_for(poll_interval);
      }
      auto tail = log_tail(sb);
      last = make_error(errc::unavailable, "sshd exited: " + tail);
      if (tail.find("Address already in use") == std::string::npos
          && tail.find("Cannot bind") == std::string::npos)
        return make_error(errc::failed_precondition, "sshd exited: " + tail);
    }
    return last;
  }

  caf::expected<vm_info> do_get(const std::string& vm_id) const {
    if (!valid_vm_id(vm_id))
      return make_error(errc::invalid_argument, "local: get: malformed vm id " + vm_id);
    return info_of(vm_id);
  }

  caf::expected<vm_info> do_wait_ready(const std::string& vm_id) {
    auto context = "local: wait for " + vm_id;
    if (!valid_vm_id(vm_id))
      return make_error(errc::invalid_argument, context + ": malformed vm id");
    auto deadline = steady::now() + opts_.boot_timeout;
    for (;;) {
      auto info = info_of(vm_id);
      if (info.status == vm_status::gone)
        return make_error(errc::not_found, context + ": no such sandbox");
      if (info.status == vm_status::stopped)
        return make_error(errc::failed_precondition,
                          context + ": its sshd is not running: "
                            + log_tail(sandbox_of(vm_id)));
      if (info.status == vm_status::running && info.port != 0
          && ssh_banner_ok(info.port, std::chrono::milliseconds(500)))
        return info;
      if (steady::now() >= deadline)
        return make_error(errc::deadline_exceeded,
                          context + ": sshd on port " + std::to_string(info.port)
                            + " did not answer within "
                            + std::to_string(opts_.boot_timeout.count()) + " ms");
      std::this_thread::sleep_for(poll_interval);
    }
  }

  caf::expected<std::vector<vm_info>> do_list(const std::string& installation_id) const {
    std::vector<vm_info> out;
    DIR* d = ::opendir(opts_.sandboxes_dir.c_str());
    if (d == nullptr) {
      if (errno == ENOENT)
        return out;
      return from_errno(errno, "local: list " + opts_.sandboxes_dir);
    }
    std::vector<std::string> names;
    while (auto e = ::readdir(d))
      if (valid_vm_id(e->d_name))
        names.emplace_back(e->d_name);
    ::closedir(d);
    for (auto& name : names) {
      auto text = files::read_file(sandbox_of(name).tags());
      if (!text)
        continue;
      auto tags = json::parse(*text);
      if (!tags || tags->get_string("installation_id") != installation_id)
        continue;
      auto info = info_of(name);
      if (info.status != vm_status::gone)
        out.push_back(std::move(info));
    }
    return out;
  }

  // Every process that belongs to the sandbox: its sshd and that sshd's
  // descendants, anything started by its sshd (marked by ALOFT_SANDBOX in the
  // environment), anything whose working directory or command line is
  // inside it, and their descendants. Never this process or its ancestors.
  // Maps pid to start time.
  std::map<pid_t, uint64_t> sandbox_processes(const sandbox& sb, pid_t sshd_pid) const {
    auto exclude = proc::self_and_ancestors();
    auto env_entry = std::string{sandbox_env} + "=" + sb.dir;
    auto prefix = sb.dir + "/";
    std::map<pid_t, proc::stat_fields> live;
    std::map<pid_t, uint64_t> members;
    for (auto pid : proc::all_pids()) {
      if (exclude.count(pid))
        continue;
      auto st = proc::stat(pid);
      if (!st || st->state == 'Z' || st->state == 'X')
        continue;
      live[pid] = *st;
      if (pid == sshd_pid) {
        members[pid] = st->start_time;
        continue;
      }
      auto cwd = proc::cwd(pid);
      auto env = proc::environ(pid);
      if (cwd == sb.dir || cwd.rfind(prefix, 0) == 0
          || proc::cmdline(pid).find(sb.dir) != std::string::npos
          || std::find(env.begin(), env.end(), env_entry) != env.end())
        members[pid] = st->start_time;
    }
    for (bool grew = true; grew;) {
      grew = false;
      for (auto& [pid, st] : live)
        if (!members.count(pid) && members.count(st.ppid))
          grew = members.emplace(pid, st.start_time).second || grew;
    }
    return members;
  }

  // Signals the sandbox's processes: SIGTERM, then SIGKILL for those still
  // alive after the stop timeout. A process once found stays tracked until it
  // is gone (sshd's per-connection processes stop being its descendants when
  // the listener dies first). Returns the pids that survived both.
  std::vector<pid_t> stop_processes(const sandbox& sb, pid_t sshd_pid) const {
    std::map<pid_t, uint64_t> tracked;
    // Adds newly found processes (signalling them with `sig`), forgets the
    // ones that are gone; returns whether any remain.
    auto refresh = [&](int sig) {
      for (auto& [pid, start] : sandbox_processes(sb, sshd_pid))
        if (tracked.emplace(pid, start).second)
          ::kill(pid, sig);
      for (auto i = tracked.begin(); i != tracked.end();) {
        auto st = proc::stat(i->first);
        bool same = st && st->start_time == i->second && st->state != 'Z'
                    && st->state != 'X';
        i = same ? std::next(i) : tracked.erase(i);
      }
      return !tracked.empty();
    };
    auto wait_gone = [&](int sig, std::chrono::milliseconds bound) {
      auto deadline = steady::now() + bound;
      while (refresh(sig)) {
        if (steady::now() >= deadline)
          return false;
        std::this_thread::sleep_for(poll_interval);
      }
      return true;
    };
    if (!refresh(SIGTERM) || wait_gone(SIGTERM, opts_.stop_timeout))
      return {};
    for (auto& [pid, start] : tracked)
      ::kill(pid, SIGKILL);
    if (wait_gone(SIGKILL, std::chrono::milliseconds(2000)))
      return {};
    std::vector<pid_t> out;
    for (auto& [pid, start] : tracked)
      out.push_back(pid);
    return out;
  }

  caf::error do_destroy(const std::string& vm_id) {
    auto context = "local: destroy " + vm_id;
    if (!valid_vm_id(vm_id))
      return make_error(errc::invalid_argument, context + ": malformed vm id");
    auto sb = sandbox_of(vm_id);
    if (!exists(sb.dir))
      return {};
    auto sshd_pid = running_sshd(sb);
    auto survivors = stop_processes(sb, sshd_pid);
    if (!survivors.empty()) {
      std::string list;
      for (auto pid : survivors)
        list += (list.empty() ? "" : ", ") + std::to_string(pid);
      return make_error(errc::unavailable,
                        context + ": processes still alive after SIGKILL: " + list);
    }
    if (auto err = remove_tree(sb.dir))
      return annotate(err, context);
    if (exists(sb.dir))
      return make_error(errc::internal, context + ": " + sb.dir + " still exists");
    return {};
  }

private:
  local_provider_options opts_;
  std::string user_;
  std::mutex create_mtx_;
};

// Each call posts its blocking work; the work holds the host, not the
// provider, so a provider dropped while work is queued is harmless.
class local_provider final : public provider {
public:
  explicit local_provider(local_provider_options opts) {
    exec_ = opts.exec ? std::move(opts.exec) : std::make_shared<thread_pool>(2);
    // The host must not own the executor: work running on a pool thread may
    // drop the host's last reference, and a pool cannot join itself.
    opts.exec.reset();
    host_ = std::make_shared<sandbox_host>(std::move(opts));
  }

  std::string kind() const override { return "local"; }
  bool remote_api() const override { return false; }

  void create(const vm_request& req, callback<vm_info> done) override {
    exec_->post([host = host_, req, done] { done(host->do_create(req)); });
  }

  void wait_ready(const std::string& vm_id, callback<vm_info> done) override {
    exec_->post([host = host_, vm_id, done] { done(host->do_wait_ready(vm_id)); });
  }

  void get(const std::string& vm_id, callback<vm_info> done) override {
    exec_->post([host = host_, vm_id, done] { done(host->do_get(vm_id)); });
  }

  void list(const std::string& installation_id,
            callback<std::vector<vm_info>> done) override {
    exec_->post([host = host_, installation_id, done] {
      done(host->do_list(installation_id));
    });
  }

  void destroy(const std::string& vm_id, done_callback done) override {
    exec_->post([host = host_, vm_id, done] { done(host->do_destroy(vm_id)); });
  }

private:
  std::shared_ptr<sandbox_host> host_;
  std::shared_ptr<executor> exec_;
};

} // namespace

std::shared_ptr<provider> make_local_provider(local_provider_options opts) {
  return std::make_shared<local_provider>(std::move(opts));
}

} // namespace aloft
