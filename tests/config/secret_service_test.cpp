// The secret-service store against a real Secret Service.
//
// The suite starts its own session bus (dbus-daemon with a config of its
// own: its socket in a temporary directory, no service activation) and its
// own gnome-keyring-daemon, whose HOME, XDG_DATA_HOME and XDG_RUNTIME_DIR
// are in that directory too, unlocked with a fake password; it points
// DBUS_SESSION_BUS_ADDRESS at that bus, and at the end stops both daemons
// and restores the variable. A user's real session bus and keyring are
// never touched.
//
// One bus per process: GLib keeps a process's session bus connection, even
// once closed, so libsecret cannot move to a second bus. The suite therefore
// starts the daemons once (SetUpTestSuite), not per test.
//
// The packages (libsecret-1-0, gnome-keyring, dbus-daemon, dbus-bin) come
// from scripts/setup; without them these tests fail, saying so.
#include "config/credentials.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "engine/base/error.hpp"
#include "tests/persistence/temp_dir.hpp"

namespace aloft {
namespace {

using clock_type = std::chrono::steady_clock;
constexpr auto start_timeout = std::chrono::seconds{15};

// The full path of `name` on PATH, or "" when it is not there.
std::string find_program(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs{path ? path : "/usr/local/bin:/usr/bin:/bin"};
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    auto candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0)
      return candidate;
  }
  return {};
}

std::string read_file(const std::string& path) {
  std::ifstream in{path};
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::optional<std::string> get_env(const char* name) {
  if (auto* value = std::getenv(name))
    return std::string{value};
  return std::nullopt;
}

// A child process with stdin and stdout as given (-1: /dev/null) and stderr
// appended to `log`; killed with the test process if that dies first.
// Everything the child needs is prepared before fork(): the test process
// has threads (GLib's, once libsecret ran).
pid_t spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env,
            int stdin_fd, int stdout_fd, const std::string& log) {
  std::vector<char*> args;
  for (auto& a : argv)
    args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<char*> envp;
  for (auto& e : env)
    envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  int null_fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent)
      ::_exit(127);
    ::dup2(stdin_fd >= 0 ? stdin_fd : null_fd, 0);
    ::dup2(stdout_fd >= 0 ? stdout_fd : null_fd, 1);
    ::dup2(log_fd >= 0 ? log_fd : null_fd, 2);
    ::execve(args[0], args.data(), envp.data());
    ::_exit(127);
  }
  ::close(null_fd);
  if (log_fd >= 0)
    ::close(log_fd);
  return pid;
}

// True when `pid` has exited (and reaps it).
bool exited(pid_t pid) {
  int status = 0;
  return ::waitpid(pid, &status, WNOHANG) == pid;
}

// SIGTERM, then SIGKILL if it has not gone within a few seconds.
void stop_process(pid_t& pid) {
  if (pid <= 0)
    return;
  ::kill(pid, SIGTERM);
  auto deadline = clock_type::now() + std::chrono::seconds{5};
  bool gone = false;
  while (!gone && clock_type::now() < deadline) {
    gone = exited(pid);
    if (!gone)
      std::this_thread::sleep_for(std::chrono::milliseconds{5});
  }
  if (!gone) {
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
  }
  pid = -1;
}

// Runs `argv` to its end; its stdout, or nullopt when it did not exit 0.
std::optional<std::string> run(const std::vector<std::string>& argv,
                               const std::vector<std::string>& env,
                               const std::string& log) {
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0)
    return std::nullopt;
  pid_t pid = spawn(argv, env, -1, out[1], log);
  ::close(out[1]);
  std::string text;
  char buf[512];
  for (;;) {
    auto n = ::read(out[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    text.append(buf, static_cast<size_t>(n));
  }
  ::close(out[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return std::nullopt;
  return text;
}

// A session bus and a gnome-keyring-daemon of our own, all in a temporary
// directory. Each step answers "" or what went wrong, with the daemons' logs.
class private_secret_service {
public:
  ~private_secret_service() { stop(); }

  // Checks the programs and libsecret are here, then starts both daemons.
  std::string start() {
    dbus_daemon_ = find_program("dbus-daemon");
    dbus_send_ = find_program("dbus-send");
    keyring_daemon_ = find_program("gnome-keyring-daemon");
    std::string missing;
    if (dbus_daemon_.empty())
      missing += " dbus-daemon";
    if (dbus_send_.empty())
      missing += " dbus-send";
    if (keyring_daemon_.empty())
      missing += " gnome-keyring-daemon";
    if (auto* lib = ::dlopen("libsecret-1.so.0", RTLD_NOW | RTLD_LOCAL))
      ::dlclose(lib);
    else
      missing += " libsecret-1.so.0";
    if (!missing.empty())
      return "the Secret Service tests need what is missing here:" + missing
             + "; run scripts/setup (it installs libsecret-1-0, gnome-keyring, "
               "dbus-daemon and dbus-bin)";
    for (auto* sub : {"home", "data", "config", "cache", "run"})
      if (::mkdir(tmp_.sub(sub).c_str(), 0700) != 0)
        return "cannot create " + tmp_.sub(sub);
    if (auto problem = start_bus(); !problem.empty())
      return problem;
    return start_keyring();
  }

  // gnome-keyring-daemon, unlocking (or first creating) its login keyring
  // with the password on stdin; ready once it owns org.freedesktop.secrets.
  std::string start_keyring() {
    int in[2];
    if (::pipe2(in, O_CLOEXEC) != 0)
      return "pipe failed";
    keyring_pid_ =
        spawn({keyring_daemon_, "--unlock", "--components=secrets", "--foreground"},
              child_env(), in[0], -1, tmp_.sub("keyring.log"));
    ::close(in[0]);
    const std::string password = "fake-password-of-a-throwaway-test-keyring";
    auto written = ::write(in[1], password.data(), password.size());
    ::close(in[1]);
    if (written != static_cast<ssize_t>(password.size()))
      return "cannot hand gnome-keyring-daemon its password" + logs();
    auto deadline = clock_type::now() + start_timeout;
    for (;;) {
      if (exited(keyring_pid_)) {
        keyring_pid_ = -1;
        return "gnome-keyring-daemon exited before it owned org.freedesktop.secrets"
               + logs();
      }
      if (secrets_owned())
        return {};
      if (clock_type::now() > deadline)
        return "org.freedesktop.secrets has no owner after "
               + std::to_string(start_timeout.count()) + " s" + logs();
      std::this_thread::sleep_for(std::chrono::milliseconds{10});
    }
  }

  void stop_keyring() { stop_process(keyring_pid_); }

  void stop() {
    stop_keyring();
    stop_process(bus_pid_);
  }

  bool secrets_owned() const {
    auto reply =
        run({dbus_send_, "--bus=" + address_, "--print-reply",
             "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
             "org.freedesktop.DBus.NameHasOwner", "string:org.freedesktop.secrets"},
            child_env(), tmp_.sub("dbus-send.log"));
    return reply && reply->find("boolean true") != std::string::npos;
  }

  const std::string& address() const { return address_; }
  std::string path(const std::string& name) const { return tmp_.sub(name); }

  std::string logs() const {
    return "\n-- dbus-daemon:\n" + read_file(tmp_.sub("bus.log"))
           + "\n-- gnome-keyring-daemon:\n" + read_file(tmp_.sub("keyring.log"))
           + "\n-- dbus-send:\n" + read_file(tmp_.sub("dbus-send.log"));
  }

private:
  // The daemons' environment: nothing of the user's session.
  std::vector<std::string> child_env() const {
    auto path = get_env("PATH");
    std::vector<std::string> env{
        "PATH=" + path.value_or("/usr/local/bin:/usr/bin:/bin"),
        "LANG=C",
        "HOME=" + tmp_.sub("home"),
        "XDG_DATA_HOME=" + tmp_.sub("data"),
        "XDG_CONFIG_HOME=" + tmp_.sub("config"),
        "XDG_CACHE_HOME=" + tmp_.sub("cache"),
        "XDG_RUNTIME_DIR=" + tmp_.sub("run"),
    };
    if (!address_.empty())
      env.push_back("DBUS_SESSION_BUS_ADDRESS=" + address_);
    return env;
  }

  // dbus-daemon with a config of its own: a socket in the temporary
  // directory, and no service directories, so nothing is activated on it.
  std::string start_bus() {
    auto config = tmp_.sub("bus.conf");
    {
      std::ofstream out{config};
      out << "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration "
             "1.0//EN\"\n"
             " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
             "<busconfig>\n"
             "  <type>session</type>\n"
             "  <listen>unix:path="
          << tmp_.sub("bus")
          << "</listen>\n"
             "  <auth>EXTERNAL</auth>\n"
             "  <policy context=\"default\">\n"
             "    <allow send_destination=\"*\" eavesdrop=\"true\"/>\n"
             "    <allow eavesdrop=\"true\"/>\n"
             "    <allow own=\"*\"/>\n"
             "  </policy>\n"
             "</busconfig>\n";
    }
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0)
      return "pipe failed";
    bus_pid_ =
        spawn({dbus_daemon_, "--config-file=" + config, "--print-address=1", "--nofork"},
              child_env(), -1, out[1], tmp_.sub("bus.log"));
    ::close(out[1]);
    // It prints its address once it listens.
    std::string text;
    auto deadline = clock_type::now() + start_timeout;
    while (text.find('\n') == std::string::npos && clock_type::now() < deadline) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - clock_type::now());
      pollfd p{out[0], POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count()) + 1) <= 0)
        continue;
      char buf[256];
      auto n = ::read(out[0], buf, sizeof(buf));
      if (n <= 0)
        break;
      text.append(buf, static_cast<size_t>(n));
    }
    ::close(out[0]);
    auto end = text.find('\n');
    if (end == std::string::npos)
      return "dbus-daemon printed no address" + logs();
    address_ = text.substr(0, end);
    return {};
  }

  test::temp_dir tmp_;
  std::string dbus_daemon_, dbus_send_, keyring_daemon_;
  std::string address_;
  pid_t bus_pid_ = -1;
  pid_t keyring_pid_ = -1;
};

class secret_service_test : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    saved_bus_ = get_env("DBUS_SESSION_BUS_ADDRESS");
    if (suites_started_++ > 0) {
      problem_ = "this process already had a private session bus, and libsecret "
                 "cannot move to another (GLib keeps the closed connection); run "
                 "the suite once per process, without --gtest_repeat";
      return;
    }
    service_ = std::make_unique<private_secret_service>();
    problem_ = service_->start();
    if (problem_.empty())
      ::setenv("DBUS_SESSION_BUS_ADDRESS", service_->address().c_str(), 1);
  }

  static void TearDownTestSuite() {
    service_.reset(); // stops both daemons; the directory goes with it
    if (saved_bus_)
      ::setenv("DBUS_SESSION_BUS_ADDRESS", saved_bus_->c_str(), 1);
    else
      ::unsetenv("DBUS_SESSION_BUS_ADDRESS");
    EXPECT_EQ(get_env("DBUS_SESSION_BUS_ADDRESS"), saved_bus_);
  }

  // Every test starts with an empty keyring (it is the suite's own).
  void SetUp() override {
    ASSERT_TRUE(problem_.empty()) << problem_;
    ASSERT_EQ(get_env("DBUS_SESSION_BUS_ADDRESS"), service_->address());
    store_ = open_store();
    ASSERT_TRUE(store_);
    for (auto& account : store_->accounts())
      ASSERT_FALSE(store_->erase(account)) << account;
    ASSERT_TRUE(store_->accounts().empty());
  }

  std::unique_ptr<credential_store> open_store() {
    auto store = open_credential_store("secret-service", service_->path("state"));
    if (!store) {
      ADD_FAILURE() << describe(store.error()) << service_->logs();
      return nullptr;
    }
    return std::move(*store);
  }

  static inline std::unique_ptr<private_secret_service> service_;
  static inline std::optional<std::string> saved_bus_;
  static inline std::string problem_;
  static inline int suites_started_ = 0;
  std::unique_ptr<credential_store> store_;
};

const secret_map modal_secrets{{"token_id", "ak-fake-0123456789"},
                               {"token_secret", "as-fake-abcdefghij"}};
const secret_map fly_secrets{{"token", "fo1_fake-fly-token-0123456789"}};

#define EXPECT_OK(expr)                                                                  \
  do {                                                                                   \
    auto err_ = (expr);                                                                  \
    EXPECT_FALSE(err_) << describe(err_);                                                \
  } while (false)

TEST_F(secret_service_test, round_trips_replaces_lists_and_erases) {
  EXPECT_EQ(store_->kind(), "secret-service");
  EXPECT_FALSE(store_->read_only());

  auto absent = store_->get("modal-test");
  ASSERT_FALSE(absent);
  EXPECT_EQ(code_of(absent.error()), errc::not_found) << describe(absent.error());

  EXPECT_OK(store_->put("modal-test", modal_secrets));
  auto got = store_->get("modal-test");
  ASSERT_TRUE(got) << describe(got.error());
  EXPECT_EQ(*got, modal_secrets);
  EXPECT_EQ(store_->accounts(), std::vector<std::string>{"modal-test"});
  // The item went to the keyring in the suite's directory.
  struct stat st;
  EXPECT_EQ(::stat(service_->path("data/keyrings/login.keyring").c_str(), &st), 0)
      << service_->logs();

  secret_map replaced{{"token_id", "ak-fake-replaced"}};
  EXPECT_OK(store_->put("modal-test", replaced));
  got = store_->get("modal-test");
  ASSERT_TRUE(got) << describe(got.error());
  EXPECT_EQ(*got, replaced);
  EXPECT_EQ(store_->accounts(), std::vector<std::string>{"modal-test"});

  EXPECT_OK(store_->erase("modal-test"));
  got = store_->get("modal-test");
  ASSERT_FALSE(got);
  EXPECT_EQ(code_of(got.error()), errc::not_found) << describe(got.error());
  EXPECT_TRUE(store_->accounts().empty());
  EXPECT_OK(store_->erase("modal-test")); // absent is not an error
}

TEST_F(secret_service_test, keeps_two_accounts_apart) {
  EXPECT_OK(store_->put("modal-test", modal_secrets));
  EXPECT_OK(store_->put("fly-test", fly_secrets));
  EXPECT_EQ(store_->accounts(), (std::vector<std::string>{"fly-test", "modal-test"}));
  auto modal = store_->get("modal-test");
  auto fly = store_->get("fly-test");
  ASSERT_TRUE(modal) << describe(modal.error());
  ASSERT_TRUE(fly) << describe(fly.error());
  EXPECT_EQ(*modal, modal_secrets);
  EXPECT_EQ(*fly, fly_secrets);

  EXPECT_OK(store_->erase("modal-test"));
  auto gone = store_->get("modal-test");
  ASSERT_FALSE(gone);
  EXPECT_EQ(code_of(gone.error()), errc::not_found);
  fly = store_->get("fly-test");
  ASSERT_TRUE(fly) << describe(fly.error());
  EXPECT_EQ(*fly, fly_secrets);
  EXPECT_EQ(store_->accounts(), std::vector<std::string>{"fly-test"});

  // Another store object sees the same items: they live in the service.
  auto other = open_store();
  ASSERT_TRUE(other);
  EXPECT_EQ(other->accounts(), std::vector<std::string>{"fly-test"});
}

TEST_F(secret_service_test, is_the_default_while_the_service_is_reachable) {
  EXPECT_EQ(default_credential_store_kind(), "secret-service");
  auto store = open_credential_store("", service_->path("state"));
  ASSERT_TRUE(store) << describe(store.error());
  EXPECT_EQ((*store)->kind(), "secret-service");
  EXPECT_OK((*store)->put("default-test", fly_secrets));
  auto got = store_->get("default-test");
  ASSERT_TRUE(got) << describe(got.error());
  EXPECT_EQ(*got, fly_secrets);
}

// With the bus up but nothing owning org.freedesktop.secrets (and nothing to
// activate), the store is unavailable and the default is the file; once the
// keyring is back, a store opened before keeps working.
TEST_F(secret_service_test, needs_the_service_on_the_bus_and_survives_its_restart) {
  EXPECT_OK(store_->put("fly-test", fly_secrets));
  service_->stop_keyring();
  ASSERT_FALSE(service_->secrets_owned());

  EXPECT_EQ(default_credential_store_kind(), "file");
  auto none = open_credential_store("secret-service", service_->path("state"));
  ASSERT_FALSE(none);
  EXPECT_EQ(code_of(none.error()), errc::unavailable);
  EXPECT_NE(message_of(none.error()).find("nothing on the session bus provides"),
            std::string::npos)
      << describe(none.error());

  ASSERT_EQ(service_->start_keyring(), "");
  EXPECT_EQ(default_credential_store_kind(), "secret-service");
  auto got = store_->get("fly-test"); // kept on disk, read by the new daemon
  ASSERT_TRUE(got) << describe(got.error()) << service_->logs();
  EXPECT_EQ(*got, fly_secrets);
  EXPECT_OK(store_->put("modal-test", modal_secrets));
  EXPECT_EQ(store_->accounts(), (std::vector<std::string>{"fly-test", "modal-test"}));
}

} // namespace
} // namespace aloft
