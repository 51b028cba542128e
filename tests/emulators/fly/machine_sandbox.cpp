#include "tests/emulators/fly/machine_sandbox.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <filesystem>
#include <thread>

#include "engine/base/base64.hpp"
#include "engine/base/error.hpp"
#include "engine/base/ids.hpp"
#include "engine/process.hpp"
#include "engine/base/files.hpp"
#include "engine/executor.hpp"
#include "engine/keys.hpp"
#include "engine/vm.hpp"
#include "providers/local/local_provider.hpp"
#include "providers/provider.hpp"

namespace aloft::test {

namespace {

constexpr const char* authorized_keys_path = "/root/.ssh/authorized_keys";
constexpr const char* host_key_path = "/etc/ssh/ssh_host_ed25519_key";
constexpr const char* host_pub_path = "/etc/ssh/ssh_host_ed25519_key.pub";
constexpr const char* default_path =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

bool safe_guest_path(const std::string& p) {
  if (p.size() < 2 || p[0] != '/' || p.find('\0') != std::string::npos)
    return false;
  size_t start = 1;
  while (start <= p.size()) {
    auto end = p.find('/', start);
    auto part =
        p.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (part == ".." || part == ".")
      return false;
    if (end == std::string::npos)
      break;
    start = end + 1;
  }
  return p.back() != '/';
}

std::string trim_newlines(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r'))
    s.pop_back();
  return s;
}

caf::error write_file(const std::string& path, const std::string& content, int mode) {
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path{path}.parent_path(), ec);
  if (ec)
    return make_error(errc::internal,
                      "cannot create the directory of " + path + ": " + ec.message());
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
                  static_cast<mode_t>(mode));
  if (fd < 0)
    return from_errno(errno, "cannot write " + path);
  ::fchmod(fd, static_cast<mode_t>(mode));
  auto err = files::write_all(fd, content, path);
  ::close(fd);
  return err;
}

// The program `name` names: itself when it holds a slash, else the first
// executable of that name on `path`; empty when there is none.
std::string resolve_program(const std::string& name, const std::string& path) {
  if (name.find('/') != std::string::npos)
    return ::access(name.c_str(), X_OK) == 0 ? name : std::string{};
  size_t start = 0;
  while (start <= path.size()) {
    auto end = path.find(':', start);
    auto dir =
        path.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!dir.empty()) {
      auto candidate = dir + "/" + name;
      if (::access(candidate.c_str(), X_OK) == 0)
        return candidate;
    }
    if (end == std::string::npos)
      break;
    start = end + 1;
  }
  return {};
}

// Starts `program` with `argv` and `env` in its own session, in `cwd`, with
// stdin from /dev/null and stdout and stderr appended to `log`.
caf::expected<pid_t> spawn_init(const std::string& program,
                                const std::vector<std::string>& args,
                                const std::vector<std::string>& env,
                                const std::string& cwd, const std::string& log) {
  std::vector<std::string> a = args;
  std::vector<std::string> e = env;
  std::vector<char*> argv;
  for (auto& s : a)
    argv.push_back(s.data());
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (auto& s : e)
    envp.push_back(s.data());
  envp.push_back(nullptr);
  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (devnull < 0 || log_fd < 0) {
    auto err = from_errno(errno, "cannot open /dev/null or " + log);
    if (devnull >= 0)
      ::close(devnull);
    if (log_fd >= 0)
      ::close(log_fd);
    return err;
  }
  // Everything the child needs is prepared above: after fork only
  // async-signal-safe calls.
  pid_t pid = ::fork();
  if (pid == 0) {
    ::setsid();
    ::dup2(devnull, 0);
    ::dup2(log_fd, 1);
    ::dup2(log_fd, 2);
    ::close_range(3, ~0u, 0);
    reset_signals_in_child();
    if (::chdir(cwd.c_str()) != 0)
      ::_exit(126);
    ::execve(program.c_str(), argv.data(), envp.data());
    ::_exit(127);
  }
  int err = errno;
  ::close(devnull);
  ::close(log_fd);
  if (pid < 0)
    return from_errno(err, "fork");
  return pid;
}

} // namespace

bool base64_decode(const std::string& in, std::string& out) {
  out.clear();
  uint32_t acc = 0;
  int bits = 0;
  size_t padding = 0;
  for (char c : in) {
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t')
      continue;
    if (c == '=') {
      ++padding;
      continue;
    }
    int v = base64_value(c);
    if (v < 0 || padding > 0)
      return false;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xFF);
    }
  }
  // Leftover bits must be the zero padding of the last group.
  return padding <= 2 && bits < 6 && (acc & ((1u << bits) - 1)) == 0;
}

caf::expected<sandbox_spec> sandbox_spec_from_config(const std::string& machine_id,
                                                     const json& config) {
  auto bad = [](const std::string& what) {
    return make_error(errc::invalid_argument, "config." + what);
  };
  sandbox_spec spec;
  spec.machine_id = machine_id;
  if (auto md = config.find("metadata"); md != nullptr && md->is_object()) {
    spec.installation_id = md->get_string("aloft_installation");
    spec.session_id = md->get_string("aloft_session");
  }
  if (auto files = config.find("files"); files != nullptr && !files->is_null()) {
    if (!files->is_array())
      return bad("files must be a list");
    for (size_t i = 0; i < files->size(); ++i) {
      auto& f = files->at(i);
      auto where = "files[" + std::to_string(i) + "]";
      if (!f.is_object())
        return bad(where + " must be an object");
      machine_file mf;
      mf.guest_path = f.get_string("guest_path");
      if (!safe_guest_path(mf.guest_path))
        return bad(where
                   + ".guest_path must be an absolute path without . or .. "
                     "components");
      auto raw = f.find("raw_value");
      if (raw == nullptr || !raw->is_string())
        return bad(where + ".raw_value is required (the emulator takes no secret_name)");
      if (!base64_decode(raw->as_string(), mf.content))
        return bad(where + ".raw_value is not base64");
      if (auto mode = f.find("mode"); mode != nullptr && mode->is_integer()) {
        if (mode->as_int() < 0 || mode->as_int() > 07777)
          return bad(where + ".mode is out of range");
        mf.mode = static_cast<int>(mode->as_int());
      }
      spec.files.push_back(std::move(mf));
    }
  }
  if (auto init = config.find("init"); init != nullptr && init->is_object()) {
    if (auto exec = init->find("exec"); exec != nullptr && !exec->is_null()) {
      if (!exec->is_array() || exec->size() == 0)
        return bad("init.exec must be a non-empty list of strings");
      for (auto& item : exec->items()) {
        if (!item.is_string() || item.as_string().empty())
          return bad("init.exec must be a non-empty list of strings");
        spec.init_argv.push_back(item.as_string());
      }
    }
  }
  if (auto env = config.find("env"); env != nullptr && !env->is_null()) {
    if (!env->is_object())
      return bad("env must be an object");
    for (auto& key : env->keys()) {
      auto v = env->find(key);
      if (!v->is_string() || key.empty() || key.find('=') != std::string::npos)
        return bad("env." + key + " must be a string");
      spec.env.emplace_back(key, v->as_string());
    }
  }
  return spec;
}

machine_sandboxes::machine_sandboxes(std::string sandboxes_dir, std::string sshd_path,
                                     std::chrono::milliseconds boot_timeout)
    : dir_(std::move(sandboxes_dir)) {
  local_provider_options opts;
  opts.sandboxes_dir = dir_;
  // The emulator's workers are where blocking is allowed: the provider's
  // work runs inline on them.
  opts.exec = std::make_shared<inline_executor>();
  opts.sshd_path = std::move(sshd_path);
  opts.boot_timeout = boot_timeout;
  local_ = make_local_provider(std::move(opts));
}

machine_sandboxes::~machine_sandboxes() {
  std::error_code ec;
  std::filesystem::remove_all(dir_ + "/.fly-emulator-keys", ec);
}

caf::error machine_sandboxes::ensure_default_keys() {
  std::lock_guard<std::mutex> guard{keys_mtx_};
  if (!default_host_private_.empty())
    return {};
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  auto keys = make_session_keys(dir_ + "/.fly-emulator-keys");
  if (!keys)
    return annotate(keys.error(), "default host key");
  default_host_private_ = keys->host_private_key;
  default_host_public_ = keys->host_public_key;
  return {};
}

caf::expected<sandbox_run> machine_sandboxes::launch(const sandbox_spec& spec) {
  auto fail = [&](const caf::error& err) {
    return annotate(err, "emulator: launch machine " + spec.machine_id);
  };
  vm_request req;
  req.installation_id = spec.installation_id;
  req.session_id = is_valid_session_id(spec.session_id) ? spec.session_id : spec.machine_id;
  req.idempotency_key = spec.machine_id;
  for (auto& f : spec.files) {
    if (f.guest_path == authorized_keys_path)
      req.client_public_key = trim_newlines(f.content);
    else if (f.guest_path == host_key_path)
      req.host_private_key = f.content;
    else if (f.guest_path == host_pub_path)
      req.host_public_key = trim_newlines(f.content);
  }
  // Without an injected key nobody can log in, as on a machine whose image
  // has no authorized_keys; without a host key the emulator's own is used.
  if (req.client_public_key.empty())
    req.client_public_key = "# no authorized key was injected";
  if (req.host_private_key.empty()) {
    if (auto err = ensure_default_keys())
      return fail(err);
    std::lock_guard<std::mutex> guard{keys_mtx_};
    req.host_private_key = default_host_private_;
    req.host_public_key = default_host_public_;
  }
  caf::expected<vm_info> made{caf::error{}};
  local_->create(req, [&](caf::expected<vm_info> x) { made = std::move(x); });
  if (!made)
    return fail(made.error());
  auto vm_id = made->vm_id;
  auto undo = [&](const caf::error& err) {
    local_->destroy(vm_id, [](caf::error e) { ignore_error(e); });
    return fail(err);
  };
  caf::expected<vm_info> ready{caf::error{}};
  local_->wait_ready(vm_id, [&](caf::expected<vm_info> x) { ready = std::move(x); });
  if (!ready)
    return undo(ready.error());
  sandbox_run run;
  run.vm_id = vm_id;
  run.dir = dir_ + "/" + vm_id;
  run.workdir = ready->workdir;
  run.user = ready->user;
  run.sshd_port = ready->port;
  auto fs = run.dir + "/fs";
  if (::mkdir(fs.c_str(), 0755) != 0 && errno != EEXIST)
    return undo(from_errno(errno, "cannot create " + fs));
  for (auto& f : spec.files)
    if (auto err = write_file(fs + f.guest_path, f.content, f.mode))
      return undo(err);
  if (spec.init_argv.empty())
    return run;
  std::vector<std::string> argv = spec.init_argv;
  for (auto& item : argv)
    for (auto& f : spec.files)
      if (item == f.guest_path)
        item = fs + f.guest_path;
  std::vector<std::string> env;
  bool has_path = false;
  bool has_home = false;
  std::string path = default_path;
  for (auto& [k, v] : spec.env) {
    if (k == "ALOFT_SKIP_SSHD" || k == "ALOFT_WORKDIR" || k == "ALOFT_SANDBOX")
      continue;
    has_path = has_path || k == "PATH";
    has_home = has_home || k == "HOME";
    if (k == "PATH")
      path = v;
    env.push_back(k + "=" + v);
  }
  if (!has_path)
    env.push_back(std::string{"PATH="} + default_path);
  if (!has_home)
    env.push_back("HOME=" + run.dir + "/home");
  env.push_back("ALOFT_SKIP_SSHD=1");
  env.push_back("ALOFT_WORKDIR=" + run.workdir);
  // The local provider finds a sandbox's processes by this entry when it
  // destroys the sandbox.
  env.push_back("ALOFT_SANDBOX=" + run.dir);
  auto program = resolve_program(argv[0], path);
  if (program.empty())
    return undo(make_error(errc::invalid_argument,
                           "config.init.exec: no executable '" + argv[0] + "'"));
  auto pid = spawn_init(program, argv, env, fs, run.dir + "/init.log");
  if (!pid)
    return undo(pid.error());
  run.init_pid = *pid;
  return run;
}

caf::error machine_sandboxes::teardown(const sandbox_run& run, int signal,
                                       std::chrono::milliseconds grace,
                                       const std::function<bool()>& init_reaped) {
  if (run.init_pid > 0) {
    ::kill(-run.init_pid, signal);
    auto deadline = std::chrono::steady_clock::now() + grace;
    while (!init_reaped() && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  if (run.vm_id.empty())
    return {};
  caf::error result;
  local_->destroy(run.vm_id, [&](caf::error err) { result = std::move(err); });
  return result ? annotate(result, "emulator: tear down " + run.vm_id) : result;
}

} // namespace aloft::test
