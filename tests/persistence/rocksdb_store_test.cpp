// What only the RocksDB store promises: durability across close, crash and
// kill; group commit; the writer thread; exclusive ownership of a directory.

#include <poll.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <future>
#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "engine/base/error.hpp"
#include "persistence/store.hpp"
#include "tests/persistence/stored_value.hpp"
#include "tests/persistence/temp_dir.hpp"

namespace aloft {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<store> open_or_fail(const std::string& dir) {
  auto opened = open_rocksdb_store(dir);
  if (!opened) {
    ADD_FAILURE() << describe(opened.error());
    return nullptr;
  }
  return std::move(*opened);
}

std::string numbered(const char* prefix, uint32_t n) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%s%08u", prefix, n);
  return buf;
}

// -- child processes ---------------------------------------------------------

// A forked child with a pipe each way. The child runs `body` and _exit()s
// with its result: no destructors, no atexit handlers, no store close, which
// is exactly what a crash looks like to the store.
//
// fork() copies only the calling thread. Every store of the parent is closed
// (its writer joined) before a fork, and RocksDB's shared background threads
// are idle between tests, so no lock is held mid-update in the child. Those
// pool threads do not exist in the child; it writes far too little to need
// a flush or compaction from them.
struct child_process {
  pid_t pid = -1;
  int from_child = -1;
  int to_child = -1;

  ~child_process() {
    if (from_child >= 0)
      close(from_child);
    if (to_child >= 0)
      close(to_child);
    if (pid > 0) {
      // Only reached when a test failed before reaping: do not leave it behind.
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }

  /// Waits for the child; returns its exit status as waitpid reports it.
  int wait() {
    int status = 0;
    waitpid(pid, &status, 0);
    pid = -1;
    return status;
  }
};

void start_child(child_process& child, const std::function<int(int up, int down)>& body) {
  int up[2];
  int down[2];
  ASSERT_EQ(pipe(up), 0);
  ASSERT_EQ(pipe(down), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(up[0]);
    close(down[1]);
    _exit(body(up[1], down[0]));
  }
  close(up[1]);
  close(down[0]);
  child.pid = pid;
  child.from_child = up[0];
  child.to_child = down[1];
}

enum class read_result { ok, eof, timeout };

// Reads exactly `n` bytes, waiting at most `limit` for each chunk, so a
// wedged child fails the test instead of hanging it.
read_result read_exact(int fd, void* buf, size_t n, std::chrono::milliseconds limit) {
  auto* out = static_cast<char*>(buf);
  size_t got = 0;
  while (got < n) {
    pollfd p{fd, POLLIN, 0};
    int ready = poll(&p, 1, static_cast<int>(limit.count()));
    if (ready == 0)
      return read_result::timeout;
    if (ready < 0)
      continue; // EINTR
    auto r = read(fd, out + got, n - got);
    if (r == 0)
      return read_result::eof;
    if (r > 0)
      got += static_cast<size_t>(r);
  }
  return read_result::ok;
}

bool write_all(int fd, const void* buf, size_t n) {
  // Writes of at most PIPE_BUF bytes to a pipe are atomic, so concurrent
  // writers never interleave within one record.
  return write(fd, buf, n) == static_cast<ssize_t>(n);
}

write_batch numbered_batch(uint32_t n) {
  write_batch batch;
  batch.push_back({family::sessions, numbered("s-", n), "value " + std::to_string(n)});
  batch.push_back({family::events, numbered("e-", n), "event " + std::to_string(n)});
  return batch;
}

void expect_numbered_batch(store& s, uint32_t n) {
  auto session = s.get(family::sessions, numbered("s-", n));
  ASSERT_TRUE(session) << "acknowledged batch " << n
                       << " lost: " << describe(session.error());
  EXPECT_EQ(*session, "value " + std::to_string(n));
  auto event = s.get(family::events, numbered("e-", n));
  ASSERT_TRUE(event) << "acknowledged batch " << n << " half lost";
  EXPECT_EQ(*event, "event " + std::to_string(n));
}

// -- tests -------------------------------------------------------------------

TEST(rocksdb_store, creates_missing_parent_directories) {
  test::temp_dir dir;
  auto s = open_or_fail(dir.sub("a/b/store"));
  ASSERT_NE(s, nullptr);
  EXPECT_FALSE(s->commit_and_wait(numbered_batch(1)));
}

TEST(rocksdb_store, opening_a_regular_file_is_an_error) {
  test::temp_dir dir;
  std::ofstream{dir.sub("not-a-dir")} << "x";
  auto opened = open_rocksdb_store(dir.sub("not-a-dir"));
  ASSERT_FALSE(opened);
  EXPECT_NE(code_of(opened.error()), errc::ok);
}

TEST(rocksdb_store, reopen_after_close_keeps_everything) {
  test::temp_dir dir;
  {
    auto s = open_or_fail(dir.sub("store"));
    ASSERT_NE(s, nullptr);
    for (uint32_t i = 0; i < 50; ++i)
      ASSERT_FALSE(s->commit_and_wait(numbered_batch(i)));
    write_batch batch;
    batch.push_back({family::accounts, "local", "{\"provider\":\"local\"}"});
    batch.push_back({family::sync_jobs, "j-1", "{}"});
    batch.push_back({family::quarantine, "s-bad", "\x01\x02"});
    batch.push_back({family::meta, "schema_version", "2"});
    batch.push_back({family::sessions, numbered("s-", 7), "", true});
    ASSERT_FALSE(s->commit_and_wait(std::move(batch)));
  }
  auto s = open_or_fail(dir.sub("store"));
  ASSERT_NE(s, nullptr);
  for (uint32_t i = 0; i < 50; ++i) {
    if (i == 7)
      continue;
    expect_numbered_batch(*s, i);
  }
  EXPECT_EQ(code_of(s->get(family::sessions, numbered("s-", 7)).error()),
            errc::not_found);
  EXPECT_EQ(test::stored_value(*s, family::accounts, "local"),
            "{\"provider\":\"local\"}");
  EXPECT_EQ(test::stored_value(*s, family::sync_jobs, "j-1"), "{}");
  EXPECT_EQ(test::stored_value(*s, family::quarantine, "s-bad"), "\x01\x02");
  EXPECT_EQ(test::stored_value(*s, family::meta, "schema_version"), "2");
}

TEST(rocksdb_store, every_acknowledged_batch_survives_exit_without_close) {
  test::temp_dir dir;
  const auto path = dir.sub("store");
  constexpr uint32_t count = 300;
  child_process child;
  ASSERT_NO_FATAL_FAILURE(start_child(child, [&](int up, int) {
    auto opened = open_rocksdb_store(path);
    if (!opened)
      return 2;
    for (uint32_t i = 0; i < count; ++i) {
      if ((*opened)->commit_and_wait(numbered_batch(i)))
        return 3;
      if (!write_all(up, &i, sizeof(i)))
        return 4;
    }
    // Leak the store on purpose: _exit follows, as after a crash.
    opened->release();
    return 0;
  }));
  std::vector<uint32_t> acked;
  uint32_t n = 0;
  read_result r;
  while ((r = read_exact(child.from_child, &n, sizeof(n), 60s)) == read_result::ok)
    acked.push_back(n);
  ASSERT_EQ(r, read_result::eof) << "child stopped answering";
  int status = child.wait();
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);
  ASSERT_EQ(acked.size(), count);

  auto s = open_or_fail(path);
  ASSERT_NE(s, nullptr);
  for (auto i : acked)
    expect_numbered_batch(*s, i);
}

TEST(rocksdb_store, every_acknowledged_batch_survives_sigkill_mid_stream) {
  test::temp_dir dir;
  const auto path = dir.sub("store");
  constexpr uint32_t threads = 4;
  constexpr uint32_t per_thread = 1'000'000; // never reached: the child is killed
  child_process child;
  ASSERT_NO_FATAL_FAILURE(start_child(child, [&](int up, int) {
    auto opened = open_rocksdb_store(path);
    if (!opened)
      return 2;
    store& s = **opened;
    std::vector<std::thread> workers;
    for (uint32_t t = 0; t < threads; ++t)
      workers.emplace_back([&s, up, t] {
        for (uint32_t i = 0; i < per_thread; ++i) {
          uint32_t n = t * per_thread + i;
          if (s.commit_and_wait(numbered_batch(n)) || !write_all(up, &n, sizeof(n)))
            return;
        }
      });
    for (auto& w : workers)
      w.join();
    return 0;
  }));
  std::set<uint32_t> acked;
  uint32_t n = 0;
  while (acked.size() < 400) {
    ASSERT_EQ(read_exact(child.from_child, &n, sizeof(n), 60s), read_result::ok);
    acked.insert(n);
  }
  // Kill it while commits are in flight, then collect the acknowledgements
  // it managed to send before dying.
  ASSERT_EQ(kill(child.pid, SIGKILL), 0);
  int status = child.wait();
  ASSERT_TRUE(WIFSIGNALED(status));
  while (read_exact(child.from_child, &n, sizeof(n), 60s) == read_result::ok)
    acked.insert(n);

  auto s = open_or_fail(path);
  ASSERT_NE(s, nullptr);
  for (auto i : acked)
    expect_numbered_batch(*s, i);
}

TEST(rocksdb_store, concurrent_commits_share_fsyncs) {
  test::temp_dir dir;
  auto s = open_or_fail(dir.sub("store"));
  ASSERT_NE(s, nullptr);
  constexpr uint32_t threads = 64;
  constexpr uint32_t per_thread = 200;
  std::atomic<uint32_t> callbacks{0};
  std::atomic<uint32_t> failures{0};
  std::atomic<uint32_t> timeouts{0};
  std::atomic<uint32_t> on_caller_thread{0};
  std::vector<std::thread> workers;
  for (uint32_t t = 0; t < threads; ++t)
    workers.emplace_back([&, t] {
      for (uint32_t i = 0; i < per_thread; ++i) {
        // Shared so that a late callback after a timed-out wait stays safe.
        auto done = std::make_shared<std::promise<void>>();
        auto caller = std::this_thread::get_id();
        s->commit(numbered_batch(t * per_thread + i), [&, done, caller](caf::error err) {
          if (err)
            ++failures;
          if (std::this_thread::get_id() == caller)
            ++on_caller_thread;
          ++callbacks;
          done->set_value();
        });
        if (done->get_future().wait_for(60s) != std::future_status::ready) {
          ++timeouts;
          return;
        }
      }
    });
  for (auto& w : workers)
    w.join();
  ASSERT_EQ(timeouts.load(), 0u);
  EXPECT_EQ(callbacks.load(), threads * per_thread);
  EXPECT_EQ(failures.load(), 0u);
  EXPECT_EQ(on_caller_thread.load(), 0u) << "callbacks must run on the writer thread";

  auto stats = s->stats();
  std::cout << "[ group    ] batches=" << stats.batches
            << " synced_writes=" << stats.synced_writes << " ("
            << static_cast<double>(stats.batches)
                   / static_cast<double>(stats.synced_writes)
            << " batches per fsync)\n";
  ::testing::Test::RecordProperty("batches", std::to_string(stats.batches));
  ::testing::Test::RecordProperty("synced_writes", std::to_string(stats.synced_writes));
  EXPECT_EQ(stats.batches, uint64_t{threads} * per_thread);
  EXPECT_LT(stats.synced_writes, stats.batches);

  uint32_t sessions = 0;
  ASSERT_FALSE(
      s->scan(family::sessions,
              [&sessions](const std::string&, const std::string&) { ++sessions; }));
  EXPECT_EQ(sessions, threads * per_thread);
  for (uint32_t n = 0; n < threads * per_thread; n += 97)
    expect_numbered_batch(*s, n);
}

TEST(rocksdb_store, destruction_drains_queued_commits) {
  test::temp_dir dir;
  constexpr uint32_t count = 500;
  std::atomic<uint32_t> ok{0};
  std::atomic<uint32_t> failed{0};
  {
    auto s = open_or_fail(dir.sub("store"));
    ASSERT_NE(s, nullptr);
    for (uint32_t i = 0; i < count; ++i)
      s->commit(numbered_batch(i), [&](caf::error err) { ++(err ? failed : ok); });
  }
  EXPECT_EQ(ok.load(), count);
  EXPECT_EQ(failed.load(), 0u);
  auto s = open_or_fail(dir.sub("store"));
  ASSERT_NE(s, nullptr);
  for (uint32_t i = 0; i < count; ++i)
    expect_numbered_batch(*s, i);
}

TEST(rocksdb_store, a_second_open_in_this_process_is_unavailable) {
  test::temp_dir dir;
  auto first = open_or_fail(dir.sub("store"));
  ASSERT_NE(first, nullptr);
  auto second = open_rocksdb_store(dir.sub("store"));
  ASSERT_FALSE(second);
  EXPECT_EQ(code_of(second.error()), errc::unavailable) << describe(second.error());
  EXPECT_NE(message_of(second.error()).find("another Aloft daemon"), std::string::npos)
      << describe(second.error());
  EXPECT_TRUE(is_retryable(second.error()));
  // The first one is unharmed, and the directory opens again once it closes.
  EXPECT_FALSE(first->commit_and_wait(numbered_batch(1)));
  first.reset();
  auto third = open_or_fail(dir.sub("store"));
  ASSERT_NE(third, nullptr);
  expect_numbered_batch(*third, 1);
}

TEST(rocksdb_store, an_open_while_another_process_holds_the_store_is_unavailable) {
  test::temp_dir dir;
  const auto path = dir.sub("store");
  child_process child;
  ASSERT_NO_FATAL_FAILURE(start_child(child, [&](int up, int down) {
    auto opened = open_rocksdb_store(path);
    char ready = opened ? 'y' : 'n';
    if (!write_all(up, &ready, 1))
      return 2;
    char release = 0;
    // Hold the store until the parent has tried, then die holding it.
    if (read(down, &release, 1) != 1)
      return 3;
    opened->release();
    return 0;
  }));
  char ready = 0;
  ASSERT_EQ(read_exact(child.from_child, &ready, 1, 60s), read_result::ok);
  ASSERT_EQ(ready, 'y');
  auto second = open_rocksdb_store(path);
  ASSERT_FALSE(second);
  EXPECT_EQ(code_of(second.error()), errc::unavailable) << describe(second.error());
  EXPECT_NE(message_of(second.error()).find("another Aloft daemon"), std::string::npos)
      << describe(second.error());
  ASSERT_TRUE(write_all(child.to_child, "x", 1));
  int status = child.wait();
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  // The lock dies with its holder.
  auto third = open_or_fail(path);
  EXPECT_NE(third, nullptr);
}

} // namespace
} // namespace aloft
