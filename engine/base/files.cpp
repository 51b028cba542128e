#include "engine/base/files.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

#include "engine/base/error.hpp"
#include "engine/base/ids.hpp"

namespace aloft::files {

caf::expected<std::string> read_all(int fd, const std::string& what) {
  std::string out;
  char buf[4096];
  for (;;) {
    auto n = ::read(fd, buf, sizeof(buf));
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n == 0)
      return out;
    if (errno != EINTR)
      return from_errno(errno, "cannot read " + what);
  }
}

caf::expected<std::string> read_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return from_errno(errno, "cannot read " + path);
  auto out = read_all(fd, path);
  ::close(fd);
  return out;
}

caf::error write_all(int fd, std::string_view data, const std::string& what) {
  while (!data.empty()) {
    auto n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return from_errno(errno, "cannot write " + what);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

caf::error write_file_atomically(const std::string& path, std::string_view data,
                                 mode_t mode,
                                 const std::function<void()>& before_rename) {
  // Unique among this process's threads (the counter) and among processes
  // sharing the directory (pid, and random for pid namespaces), so O_EXCL
  // never meets the leftover of a crashed writer.
  static std::atomic<unsigned> counter{0};
  auto tmp = path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++)
             + "-" + random_hex(4);
  int fd =
      ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0)
    return from_errno(errno, "cannot create " + tmp);
  auto fail = [&](caf::error err) {
    if (fd >= 0)
      ::close(fd);
    ::unlink(tmp.c_str());
    return err;
  };
  // The umask may have taken bits away from `mode`.
  if (::fchmod(fd, mode) != 0)
    return fail(from_errno(errno, "cannot chmod " + tmp));
  if (auto err = write_all(fd, data, tmp))
    return fail(err);
  if (::fsync(fd) != 0)
    return fail(from_errno(errno, "cannot fsync " + tmp));
  int closed = ::close(fd);
  fd = -1;
  if (closed != 0)
    return fail(from_errno(errno, "cannot close " + tmp));
  if (before_rename)
    before_rename();
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    return fail(from_errno(errno, "cannot rename " + tmp + " to " + path));
  // The rename is durable only once the directory entry is.
  auto slash = path.find_last_of('/');
  std::string dir = slash == std::string::npos ? "."
                    : slash == 0               ? "/"
                                               : path.substr(0, slash);
  int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0)
    return from_errno(errno, "cannot open directory " + dir);
  int synced = ::fsync(dir_fd);
  int err = errno;
  ::close(dir_fd);
  // Some file systems cannot fsync a directory; the rename is done either way.
  if (synced != 0 && err != EINVAL && err != ENOTSUP)
    return from_errno(err, "cannot fsync directory " + dir);
  return {};
}

} // namespace aloft::files
