#include "engine/base/files.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "engine/base/error.hpp"
#include "tests/support/local_vm.hpp"

namespace aloft {
namespace {

using test::temp_dir;
using ::testing::AllOf;
using ::testing::HasSubstr;

std::string read_text(const std::string& path) {
  auto text = files::read_file(path);
  EXPECT_TRUE(text) << describe(text.error());
  return text ? *text : std::string{};
}

std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr)
    return out;
  while (auto* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name != "." && name != "..")
      out.push_back(name);
  }
  ::closedir(d);
  return out;
}

mode_t mode_of(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

// More than one read(2) or write(2) buffer, so the loops go round.
std::string big_text() {
  std::string out;
  for (int i = 0; out.size() < 300 * 1024; ++i)
    out += "line " + std::to_string(i) + "\n";
  return out;
}

TEST(files, write_file_atomically_replaces_the_whole_file) {
  temp_dir dir;
  auto path = dir.path() + "/state.json";
  auto big = big_text();
  ASSERT_FALSE(files::write_file_atomically(path, big, 0600));
  EXPECT_EQ(read_text(path), big);

  // A shorter file leaves nothing of the longer one behind.
  ASSERT_FALSE(files::write_file_atomically(path, "short\n", 0600));
  EXPECT_EQ(read_text(path), "short\n");
  ASSERT_FALSE(files::write_file_atomically(path, "", 0600));
  EXPECT_EQ(read_text(path), "");
  EXPECT_EQ(names_in(dir.path()), std::vector<std::string>{"state.json"});
}

TEST(files, write_file_atomically_gives_the_mode_asked_whatever_the_umask_or_old_file) {
  temp_dir dir;
  auto path = dir.path() + "/secret";
  ASSERT_EQ(::close(::open(path.c_str(), O_WRONLY | O_CREAT, 0666)), 0);
  ASSERT_EQ(::chmod(path.c_str(), 0666), 0);
  ASSERT_FALSE(files::write_file_atomically(path, "s3cr3t", 0600));
  EXPECT_EQ(mode_of(path), 0600u);

  auto old_umask = ::umask(077);
  auto err = files::write_file_atomically(path, "public", 0644);
  ::umask(old_umask);
  ASSERT_FALSE(err) << describe(err);
  EXPECT_EQ(mode_of(path), 0644u);
}

TEST(files, write_file_atomically_calls_before_rename_with_the_new_file_complete) {
  temp_dir dir;
  auto path = dir.path() + "/settings.json";
  ASSERT_FALSE(files::write_file_atomically(path, "old", 0600));
  bool called = false;
  auto err = files::write_file_atomically(path, "new", 0600, [&] {
    called = true;
    // `path` is still the old file; the temporary one beside it holds the
    // new text in full.
    EXPECT_EQ(read_text(path), "old");
    auto names = names_in(dir.path());
    ASSERT_EQ(names.size(), 2u);
    auto tmp = names[0] == "settings.json" ? names[1] : names[0];
    EXPECT_EQ(tmp.rfind("settings.json.tmp-", 0), 0u) << tmp;
    EXPECT_EQ(read_text(dir.path() + "/" + tmp), "new");
  });
  ASSERT_FALSE(err) << describe(err);
  EXPECT_TRUE(called);
  EXPECT_EQ(read_text(path), "new");
}

TEST(files, write_file_atomically_under_a_file_names_the_path_and_the_errno_text) {
  temp_dir dir;
  auto blocker = dir.path() + "/not-a-dir";
  ASSERT_FALSE(files::write_file_atomically(blocker, "old", 0600));
  auto err = files::write_file_atomically(blocker + "/file", "new", 0600);
  ASSERT_TRUE(err);
  EXPECT_THAT(message_of(err), AllOf(HasSubstr("cannot create " + blocker + "/file.tmp-"),
                                     HasSubstr(std::strerror(ENOTDIR))));
  EXPECT_EQ(read_text(blocker), "old");
}

// The write itself fails halfway (RLIMIT_FSIZE with SIGXFSZ ignored makes
// write(2) fail with EFBIG): the old file is untouched and the partial
// temporary file removed. In a child, so the limit does not outlive it.
TEST(files, write_file_atomically_failing_mid_write_leaves_the_old_file_untouched) {
  temp_dir dir;
  auto path = dir.path() + "/settings.json";
  ASSERT_FALSE(files::write_file_atomically(path, "old", 0600));
  auto big = big_text();
  constexpr rlim_t limit = 64 * 1024;
  ASSERT_GT(big.size(), 2 * limit);

  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(pipe_fds[0]);
    ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit fsize {
      limit, limit
    };
    ::setrlimit(RLIMIT_FSIZE, &fsize);
    auto message = message_of(files::write_file_atomically(path, big, 0600));
    ignore_error(files::write_all(pipe_fds[1], message, "the pipe"));
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  auto message = files::read_all(pipe_fds[0], "the pipe");
  ::close(pipe_fds[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_TRUE(message);
  EXPECT_THAT(*message, AllOf(HasSubstr("cannot write " + path + ".tmp-"),
                              HasSubstr(std::strerror(EFBIG))));

  EXPECT_EQ(read_text(path), "old");
  EXPECT_EQ(names_in(dir.path()), std::vector<std::string>{"settings.json"});
}

TEST(files, write_all_and_read_all_carry_everything_over_short_transfers) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  auto big = big_text();
  caf::error write_err;
  // A socket takes much less than `big` at once: write(2) returns short.
  std::thread writer{[&] {
    write_err = files::write_all(fds[0], big, "the socket");
    ::shutdown(fds[0], SHUT_WR);
  }};
  auto got = files::read_all(fds[1], "the socket");
  writer.join();
  ::close(fds[0]);
  ::close(fds[1]);
  EXPECT_FALSE(write_err) << describe(write_err);
  ASSERT_TRUE(got) << describe(got.error());
  EXPECT_EQ(*got, big);
}

TEST(files, write_all_errors_name_what_and_the_errno_text) {
  temp_dir dir;
  auto path = dir.path() + "/read-only";
  ASSERT_FALSE(files::write_file_atomically(path, "x", 0600));
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  auto err = files::write_all(fd, "data", path);
  ::close(fd);
  EXPECT_EQ(message_of(err), "cannot write " + path + ": " + std::strerror(EBADF));
}

TEST(files, read_file_of_a_missing_file_is_not_found_naming_it) {
  temp_dir dir;
  auto path = dir.path() + "/missing";
  auto text = files::read_file(path);
  ASSERT_FALSE(text);
  EXPECT_EQ(code_of(text.error()), errc::not_found);
  EXPECT_EQ(message_of(text.error()),
            "cannot read " + path + ": " + std::strerror(ENOENT));
}

} // namespace
} // namespace aloft
