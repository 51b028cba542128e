#include "engine/app/secret_input.hpp"

#include <cerrno>
#include <csignal>
#include <mutex>

#include <termios.h>
#include <unistd.h>

#include "engine/base/error.hpp"

namespace aloft {

namespace {

constexpr size_t max_secret_size = 64 * 1024;
constexpr int watched_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
constexpr size_t watched_count = sizeof(watched_signals) / sizeof(watched_signals[0]);

// What the signal handler needs while echo is off. Set before the handler
// is installed and cleared after it is removed; `tty_mutex` keeps two
// terminal reads from sharing it.
std::mutex tty_mutex;
volatile sig_atomic_t restore_fd = -1;
termios restore_settings;
struct sigaction previous_actions[watched_count];
volatile sig_atomic_t interrupted = 0;

// Restores the terminal, then hands the signal on: to the previous handler
// if there was one, else to the default action (which ends the process,
// now with a working terminal). Only async-signal-safe calls.
void on_signal(int sig, siginfo_t* info, void* context) {
  int saved_errno = errno;
  if (restore_fd >= 0)
    ::tcsetattr(restore_fd, TCSANOW, &restore_settings);
  interrupted = 1;
  for (size_t i = 0; i < watched_count; ++i) {
    if (watched_signals[i] != sig)
      continue;
    auto& prev = previous_actions[i];
    if (prev.sa_flags & SA_SIGINFO) {
      prev.sa_sigaction(sig, info, context);
    } else if (prev.sa_handler == SIG_DFL) {
      // Blocked while this handler runs: delivered as soon as it returns.
      ::sigaction(sig, &prev, nullptr);
      ::raise(sig);
    } else if (prev.sa_handler != SIG_IGN) {
      prev.sa_handler(sig);
    }
  }
  errno = saved_errno;
}

// Echo off for the lifetime of the object, with the signal handlers above;
// the destructor puts the terminal and the handlers back as they were.
class echo_off {
public:
  explicit echo_off(int fd) : fd_(fd) {}
  echo_off(const echo_off&) = delete;
  echo_off& operator=(const echo_off&) = delete;

  caf::error start() {
    if (::tcgetattr(fd_, &saved_) != 0)
      return from_errno(errno, "cannot read the terminal's settings");
    restore_settings = saved_;
    restore_fd = fd_;
    interrupted = 0;
    struct sigaction action = {};
    action.sa_sigaction = on_signal;
    action.sa_flags = SA_SIGINFO; // no SA_RESTART: the read must see EINTR
    sigemptyset(&action.sa_mask);
    for (size_t i = 0; i < watched_count; ++i) {
      struct sigaction prev;
      if (::sigaction(watched_signals[i], nullptr, &prev) != 0)
        continue;
      // An ignored signal (nohup) stays ignored.
      if (!(prev.sa_flags & SA_SIGINFO) && prev.sa_handler == SIG_IGN)
        continue;
      previous_actions[i] = prev;
      if (::sigaction(watched_signals[i], &action, nullptr) == 0)
        installed_[i] = true;
    }
    auto quiet = saved_;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO | ECHOE | ECHOK | ECHONL);
    // TCSAFLUSH drops what was typed before the prompt (and was echoed).
    if (::tcsetattr(fd_, TCSAFLUSH, &quiet) != 0)
      return from_errno(errno, "cannot turn off the terminal's echo");
    changed_ = true;
    return {};
  }

  ~echo_off() {
    if (changed_)
      while (::tcsetattr(fd_, TCSANOW, &saved_) != 0 && errno == EINTR) {
      }
    for (size_t i = 0; i < watched_count; ++i)
      if (installed_[i])
        ::sigaction(watched_signals[i], &previous_actions[i], nullptr);
    restore_fd = -1;
  }

private:
  int fd_;
  termios saved_{};
  bool changed_ = false;
  bool installed_[watched_count] = {};
};

// Reads up to and including '\n' (or the end of input), one byte at a time
// so that nothing after the line is consumed. `is_tty`: the caller
// installed the signal handlers of `echo_off`.
caf::expected<std::string> read_line(int fd, bool is_tty) {
  std::string line;
  for (;;) {
    // A signal that came before the read would otherwise go unnoticed.
    if (is_tty && interrupted)
      return make_error(errc::cancelled, "interrupted while reading the secret");
    char c;
    auto n = ::read(fd, &c, 1);
    if (n == 1) {
      if (c == '\n')
        return line;
      if (line.size() >= max_secret_size)
        return make_error(errc::invalid_argument,
                          "the secret is longer than 64 KiB: is this the right input?");
      line.push_back(c);
      continue;
    }
    if (n == 0)
      return line;
    if (errno == EINTR)
      continue; // the check above tells a watched signal from any other
    // A pseudo-terminal whose other side closed reads as EIO: end of input.
    if (errno == EIO && is_tty)
      return line;
    return from_errno(errno, "cannot read the secret");
  }
}

std::string trim(const std::string& s) {
  constexpr const char* space = " \t\r\n\v\f";
  auto begin = s.find_first_not_of(space);
  if (begin == std::string::npos)
    return {};
  auto end = s.find_last_not_of(space);
  return s.substr(begin, end - begin + 1);
}

} // namespace

caf::expected<std::string> read_secret(int fd, const std::string& prompt,
                                       std::ostream& err) {
  caf::expected<std::string> line = std::string{};
  if (::isatty(fd)) {
    std::lock_guard<std::mutex> guard{tty_mutex};
    echo_off quiet{fd};
    if (auto e = quiet.start())
      return e;
    err << prompt << std::flush;
    line = read_line(fd, true);
    // The Enter that ended the line was not echoed either.
    err << '\n' << std::flush;
    if (line && interrupted)
      line = make_error(errc::cancelled, "interrupted while reading the secret");
  } else {
    line = read_line(fd, false);
  }
  if (!line)
    return line.error();
  auto secret = trim(*line);
  if (secret.empty())
    return make_error(errc::invalid_argument,
                      "empty token: paste it at the prompt or pipe it on stdin");
  return secret;
}

} // namespace aloft
