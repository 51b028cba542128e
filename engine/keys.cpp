#include "engine/keys.hpp"

#include <cerrno>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <vector>

#include "engine/base/error.hpp"
#include "engine/base/ids.hpp"

extern char** environ;

namespace aloft {

namespace {

const char* keygen_program = "ssh-keygen";

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0;
}

caf::expected<std::string> read_file(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  if (!in)
    return from_errno(errno ? errno : ENOENT, "cannot read " + path);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' '))
    s.pop_back();
  return s;
}

// "ssh-ed25519 AAAA... comment" -> "ssh-ed25519 AAAA...".
std::string without_comment(const std::string& line) {
  auto first = line.find(' ');
  if (first == std::string::npos)
    return line;
  auto second = line.find(' ', first + 1);
  return second == std::string::npos ? line : line.substr(0, second);
}

caf::error make_private_dir(const std::string& dir) {
  std::string partial;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = dir.find('/', pos + 1);
    partial = dir.substr(0, pos);
    if (partial.empty())
      continue;
    if (::mkdir(partial.c_str(), 0700) != 0 && errno != EEXIST)
      return from_errno(errno, "cannot create directory " + partial);
  }
  // An existing directory may have been made with a looser umask.
  if (::chmod(dir.c_str(), 0700) != 0)
    return from_errno(errno, "cannot chmod " + dir);
  return {};
}

void fsync_path(const std::string& path, int flags) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// Runs ssh-keygen without a shell; its stderr is captured for the error
// message (ssh-keygen never prints key material there).
caf::error run_keygen(const std::string& path) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0)
    return from_errno(errno, "ssh-keygen: pipe");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 1);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 2);
  std::vector<std::string> args{keygen_program, "-q", "-t", "ed25519", "-N", "",
                                "-C", "aloft", "-f", path};
  std::vector<char*> argv;
  for (auto& a : args)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawnp(&pid, keygen_program, &actions, nullptr, argv.data(),
                          environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(pipe_fds[1]);
  if (rc != 0) {
    ::close(pipe_fds[0]);
    return annotate(from_errno(rc, "cannot run ssh-keygen"), "make session keys");
  }
  std::string output;
  char buf[512];
  for (;;) {
    auto n = ::read(pipe_fds[0], buf, sizeof(buf));
    if (n > 0) {
      if (output.size() < 4096)
        output.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    break;
  }
  ::close(pipe_fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR)
      return from_errno(errno, "ssh-keygen: waitpid");
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return make_error(errc::internal, "ssh-keygen -f " + path + " failed (status "
                                        + std::to_string(status)
                                        + "): " + trim(output));
  return {};
}

// Makes the pair `dir/name` + `dir/name.pub` unless both exist. ssh-keygen
// writes to temporary names that are renamed public-first, so a present
// private key always has its public half.
caf::error ensure_pair(const std::string& dir, const std::string& name) {
  auto priv = dir + "/" + name;
  auto pub = priv + ".pub";
  if (file_exists(priv) && file_exists(pub))
    return {};
  ::unlink(priv.c_str());
  ::unlink(pub.c_str());
  auto tmp = dir + "/." + name + ".tmp-" + random_hex(4);
  if (auto err = run_keygen(tmp)) {
    ::unlink(tmp.c_str());
    ::unlink((tmp + ".pub").c_str());
    return err;
  }
  ::chmod(tmp.c_str(), 0600);
  ::chmod((tmp + ".pub").c_str(), 0600);
  fsync_path(tmp, O_RDONLY);
  fsync_path(tmp + ".pub", O_RDONLY);
  if (::rename((tmp + ".pub").c_str(), pub.c_str()) != 0
      || ::rename(tmp.c_str(), priv.c_str()) != 0) {
    auto err = from_errno(errno, "cannot rename key into " + priv);
    ::unlink(tmp.c_str());
    ::unlink((tmp + ".pub").c_str());
    return err;
  }
  fsync_path(dir, O_RDONLY | O_DIRECTORY);
  return {};
}

} // namespace

caf::expected<session_keys> make_session_keys(const std::string& dir) {
  if (dir.empty())
    return make_error(errc::invalid_argument, "make session keys: empty directory");
  if (auto err = make_private_dir(dir))
    return annotate(err, "make session keys");
  for (auto name : {"client", "host"})
    if (auto err = ensure_pair(dir, name))
      return annotate(err, "make session keys in " + dir);
  return load_session_keys(dir);
}

caf::expected<session_keys> load_session_keys(const std::string& dir) {
  session_keys keys;
  keys.dir = dir;
  keys.client_key_path = dir + "/client";
  keys.host_key_path = dir + "/host";
  for (auto& path : {keys.client_key_path, keys.host_key_path})
    if (!file_exists(path) || !file_exists(path + ".pub"))
      return make_error(errc::not_found, "session keys: no key pair at " + path);
  auto client_pub = read_file(keys.client_key_path + ".pub");
  if (!client_pub)
    return client_pub.error();
  auto host_priv = read_file(keys.host_key_path);
  if (!host_priv)
    return host_priv.error();
  auto host_pub = read_file(keys.host_key_path + ".pub");
  if (!host_pub)
    return host_pub.error();
  keys.client_public_key = trim(std::move(*client_pub));
  keys.host_private_key = std::move(*host_priv);
  keys.host_public_key = without_comment(trim(std::move(*host_pub)));
  if (keys.client_public_key.rfind("ssh-ed25519 ", 0) != 0
      || keys.host_public_key.rfind("ssh-ed25519 ", 0) != 0)
    return make_error(errc::data_loss, "session keys in " + dir
                                         + ": public key files are malformed");
  return keys;
}

void remove_session_keys(const std::string& dir) {
  if (dir.empty())
    return;
  for (auto name : {"client", "client.pub", "host", "host.pub"})
    ::unlink((dir + "/" + name).c_str());
  // Temporaries of a key generation that crashed.
  if (DIR* d = ::opendir(dir.c_str())) {
    std::vector<std::string> stale;
    while (auto e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name.size() > 1 && name[0] == '.' && name.find(".tmp-") != std::string::npos)
        stale.push_back(dir + "/" + name);
    }
    ::closedir(d);
    for (auto& path : stale)
      ::unlink(path.c_str());
  }
  ::rmdir(dir.c_str());
}

} // namespace aloft
