#include "engine/process.hpp"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/base/error.hpp"

extern char** environ;

namespace aloft {

namespace {

// Closes a descriptor once, on every path.
class fd_guard {
public:
  explicit fd_guard(int fd = -1) : fd_(fd) {}
  ~fd_guard() { reset(); }
  fd_guard(const fd_guard&) = delete;
  fd_guard& operator=(const fd_guard&) = delete;
  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0)
      ::close(fd_);
    fd_ = -1;
  }

private:
  int fd_;
};

// The spawn attributes and file actions, destroyed on every path.
struct spawn_setup {
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  spawn_setup() {
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attr);
  }
  ~spawn_setup() {
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
  }
};

void set_nonblocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0)
    ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

int wait_child(pid_t pid, int& status) {
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR)
      return errno;
  }
  return 0;
}

} // namespace

std::vector<std::string> environment_without(const std::vector<std::string>& prefixes) {
  std::vector<std::string> out;
  for (char** e = environ; e && *e; ++e) {
    std::string_view entry{*e};
    bool drop = false;
    for (auto& p : prefixes)
      if (entry.substr(0, p.size()) == p)
        drop = true;
    if (!drop)
      out.emplace_back(entry);
  }
  return out;
}

caf::expected<process_result> run_process(const process_spec& spec) {
  if (spec.argv.empty())
    return make_error(errc::invalid_argument, "run process: empty argv");
  const auto& program = spec.argv[0];
  // Stdin is a socket so that writing to a child that stopped reading gives
  // EPIPE through MSG_NOSIGNAL instead of a process-wide SIGPIPE.
  int in_pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in_pair) != 0)
    return from_errno(errno, program + ": socketpair");
  fd_guard in_parent{in_pair[0]}, in_child{in_pair[1]};
  int out_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0)
    return from_errno(errno, program + ": pipe");
  fd_guard out_parent{out_pipe[0]}, out_child{out_pipe[1]};
  int err_pipe[2];
  if (::pipe2(err_pipe, O_CLOEXEC) != 0)
    return from_errno(errno, program + ": pipe");
  fd_guard err_parent{err_pipe[0]}, err_child{err_pipe[1]};

  spawn_setup setup;
  posix_spawn_file_actions_adddup2(&setup.actions, in_child.get(), 0);
  posix_spawn_file_actions_adddup2(&setup.actions, out_child.get(), 1);
  posix_spawn_file_actions_adddup2(&setup.actions, err_child.get(), 2);
  if (!spec.cwd.empty())
    posix_spawn_file_actions_addchdir_np(&setup.actions, spec.cwd.c_str());
  // The engine may ignore or block signals on its threads; the child starts
  // with the defaults so that, e.g., a pipeline in a shell sees SIGPIPE.
  sigset_t defaults, empty;
  sigemptyset(&defaults);
  for (int sig : {SIGPIPE, SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGCHLD})
    sigaddset(&defaults, sig);
  sigemptyset(&empty);
  posix_spawnattr_setsigdefault(&setup.attr, &defaults);
  posix_spawnattr_setsigmask(&setup.attr, &empty);
  posix_spawnattr_setflags(&setup.attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);

  std::vector<std::string> args = spec.argv;
  std::vector<char*> argv;
  for (auto& a : args)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_strings;
  std::vector<char*> envp;
  char** env = environ;
  if (spec.env) {
    env_strings = *spec.env;
    for (auto& e : env_strings)
      envp.push_back(e.data());
    envp.push_back(nullptr);
    env = envp.data();
  }
  pid_t pid = -1;
  int rc = ::posix_spawnp(&pid, program.c_str(), &setup.actions, &setup.attr, argv.data(),
                          env);
  in_child.reset();
  out_child.reset();
  err_child.reset();
  if (rc != 0)
    return from_errno(rc, "cannot run " + program);

  process_result result;
  set_nonblocking(in_parent.get());
  set_nonblocking(out_parent.get());
  set_nonblocking(err_parent.get());
  size_t written = 0;
  if (spec.input.empty())
    in_parent.reset();
  std::vector<char> buf(1 << 16);
  int poll_errno = 0;
  while (in_parent.get() >= 0 || out_parent.get() >= 0 || err_parent.get() >= 0) {
    pollfd fds[3];
    nfds_t n = 0;
    int in_idx = -1, out_idx = -1, err_idx = -1;
    if (in_parent.get() >= 0) {
      in_idx = static_cast<int>(n);
      fds[n++] = pollfd{in_parent.get(), POLLOUT, 0};
    }
    if (out_parent.get() >= 0) {
      out_idx = static_cast<int>(n);
      fds[n++] = pollfd{out_parent.get(), POLLIN, 0};
    }
    if (err_parent.get() >= 0) {
      err_idx = static_cast<int>(n);
      fds[n++] = pollfd{err_parent.get(), POLLIN, 0};
    }
    if (::poll(fds, n, -1) < 0) {
      if (errno == EINTR)
        continue;
      poll_errno = errno;
      break;
    }
    if (in_idx >= 0 && fds[in_idx].revents != 0) {
      auto chunk = std::min<size_t>(spec.input.size() - written, 1 << 20);
      auto sent = ::send(in_parent.get(), spec.input.data() + written, chunk,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
      if (sent > 0) {
        written += static_cast<size_t>(sent);
        if (written == spec.input.size())
          in_parent.reset();
      } else if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        // The child closed its stdin: what it did not read it did not want.
        in_parent.reset();
      }
    }
    if (out_idx >= 0 && fds[out_idx].revents != 0) {
      auto got = ::read(out_parent.get(), buf.data(), buf.size());
      if (got > 0) {
        std::string_view piece{buf.data(), static_cast<size_t>(got)};
        if (spec.on_output) {
          if (!spec.on_output(piece)) {
            ::kill(pid, SIGKILL);
            result.stopped = true;
            in_parent.reset();
            out_parent.reset();
            err_parent.reset();
          }
        } else {
          result.output.append(piece);
        }
      } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
        out_parent.reset();
      }
    }
    if (err_idx >= 0 && err_parent.get() >= 0 && fds[err_idx].revents != 0) {
      auto got = ::read(err_parent.get(), buf.data(), buf.size());
      if (got > 0) {
        if (result.error.size() < spec.max_error_bytes)
          result.error.append(buf.data(),
                              std::min(static_cast<size_t>(got),
                                       spec.max_error_bytes - result.error.size()));
      } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
        err_parent.reset();
      }
    }
  }
  if (poll_errno != 0)
    ::kill(pid, SIGKILL);
  int status = 0;
  if (int err = wait_child(pid, status))
    return from_errno(err, program + ": waitpid");
  if (poll_errno != 0)
    return from_errno(poll_errno, program + ": poll");
  if (WIFEXITED(status))
    result.exit_code = WEXITSTATUS(status);
  else if (WIFSIGNALED(status))
    result.exit_code = 128 + WTERMSIG(status);
  else
    result.exit_code = 255;
  return result;
}

void reset_signals_in_child() {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig)
    ::sigaction(sig, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

} // namespace aloft
