// End-to-end tests of the SSH transport against a real sshd on loopback
// (a local sandbox each test starts and destroys).
#include "engine/ssh_transport.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <set>

#include "engine/base/error.hpp"
#include "engine/keys.hpp"
#include "tests/support/local_vm.hpp"

namespace aloft {
namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

double ms_since(steady::time_point t0) {
  return std::chrono::duration<double, std::milli>(steady::now() - t0).count();
}

class ssh_transport_test : public ::testing::Test {
protected:
  void SetUp() override {
    auto vm = test::local_vm::start(tmp_.path());
    ASSERT_TRUE(vm) << describe(vm.error());
    vm_ = std::move(*vm);
    loop_ = std::make_unique<ssh_io_loop>();
  }

  void TearDown() override {
    loop_.reset();
    if (vm_) {
      auto sandbox = vm_->sandbox_dir();
      auto err = vm_->destroy();
      EXPECT_FALSE(err) << describe(err);
      EXPECT_TRUE(test::processes_matching(sandbox).empty());
    }
  }

  std::shared_ptr<transport> connect_ok() {
    auto t = test::connect(*loop_, vm_->endpoint());
    EXPECT_TRUE(t) << describe(t.error());
    return t ? *t : nullptr;
  }

  test::temp_dir tmp_;
  std::unique_ptr<test::local_vm> vm_;
  std::unique_ptr<ssh_io_loop> loop_;
};

TEST_F(ssh_transport_test, exec_streams_output_and_exit_code) {
  auto t0 = steady::now();
  auto t = connect_ok();
  ASSERT_TRUE(t);
  auto connect_ms = ms_since(t0);
  EXPECT_TRUE(t->is_open());
  auto t1 = steady::now();
  auto r = test::run(*t, "echo hi; echo err >&2; exit 3");
  auto exec_ms = ms_since(t1);
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->error) << describe(r->error);
  EXPECT_EQ(r->out, "hi\n");
  EXPECT_EQ(r->err, "err\n");
  EXPECT_EQ(r->exit_code, 3);
  // A second command on the same session: the cost of a channel alone.
  auto t2 = steady::now();
  auto r2 = test::run(*t, "true");
  auto second_ms = ms_since(t2);
  ASSERT_TRUE(r2);
  EXPECT_EQ(r2->exit_code, 0);
  std::printf("[ measure ] connect+kex+auth %.1f ms; first exec round trip %.1f ms; "
              "next exec round trip %.1f ms\n",
              connect_ms, exec_ms, second_ms);
}

TEST_F(ssh_transport_test, exit_by_signal_reads_as_128_plus_signal) {
  auto t = connect_ok();
  ASSERT_TRUE(t);
  auto r = test::run(*t, "kill -TERM $$");
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->error);
  EXPECT_EQ(r->exit_code, 128 + 15);
}

TEST_F(ssh_transport_test, stdin_streams_8_mib_and_back) {
  auto t = connect_ok();
  ASSERT_TRUE(t);
  constexpr size_t total = 8u << 20;
  std::string input(total, '\0');
  std::mt19937_64 gen{42};
  for (size_t i = 0; i < total; i += 8) {
    auto v = gen();
    std::memcpy(&input[i], &v, 8);
  }
  struct state {
    std::mutex mtx;
    std::string out;
  };
  auto st = std::make_shared<state>();
  auto done = std::make_shared<test::slot<std::pair<caf::error, int>>>();
  exec_callbacks cb;
  cb.on_stdout = [st](std::string_view s) {
    std::lock_guard<std::mutex> g{st->mtx};
    st->out.append(s);
  };
  cb.on_exit = [done](const caf::error& err, int code) { done->set({err, code}); };
  auto t0 = steady::now();
  auto ch = t->exec("cat", std::move(cb));
  for (size_t off = 0; off < total; off += 1u << 20)
    ch->write(input.substr(off, 1u << 20));
  ch->close_stdin();
  auto exit = done->take(60s);
  auto elapsed_ms = ms_since(t0);
  ASSERT_TRUE(exit);
  EXPECT_FALSE(exit->first) << describe(exit->first);
  EXPECT_EQ(exit->second, 0);
  std::lock_guard<std::mutex> g{st->mtx};
  ASSERT_EQ(st->out.size(), total);
  EXPECT_TRUE(st->out == input) << "bytes differ";
  EXPECT_EQ(ch->bytes_out(), total);
  EXPECT_EQ(ch->bytes_in(), total);
  std::printf("[ measure ] 8 MiB through cat and back: %.1f ms, %.1f MB/s each way\n",
              elapsed_ms, total / 1e6 / (elapsed_ms / 1000));
}

// Not a timing assertion: prints one-way stream rates (from the first byte,
// so the remote shell's start-up is left out) for the report.
TEST_F(ssh_transport_test, one_way_stream_rates) {
  auto t = connect_ok();
  ASSERT_TRUE(t);
  constexpr size_t total = 64u << 20;
  // Down: the VM writes, we read.
  {
    auto first = std::make_shared<std::atomic<int64_t>>(0);
    auto got = std::make_shared<std::atomic<size_t>>(0);
    auto done = std::make_shared<test::slot<std::pair<caf::error, int>>>();
    exec_callbacks cb;
    cb.on_stdout = [first, got](std::string_view s) {
      if (*got == 0)
        *first = steady::now().time_since_epoch().count();
      *got += s.size();
    };
    cb.on_exit = [done](const caf::error& err, int code) { done->set({err, code}); };
    auto ch = t->exec("head -c " + std::to_string(total) + " /dev/zero", std::move(cb));
    auto exit = done->take(60s);
    ASSERT_TRUE(exit);
    EXPECT_EQ(exit->second, 0);
    EXPECT_EQ(got->load(), total);
    auto secs = std::chrono::duration<double>(
                  steady::now() - steady::time_point{steady::duration{first->load()}})
                  .count();
    std::printf("[ measure ] down 64 MiB: %.1f MB/s\n", total / 1e6 / secs);
  }
  // Up: we write, the VM discards (then reports the count).
  {
    auto out = std::make_shared<test::slot<std::string>>();
    auto done = std::make_shared<test::slot<std::pair<caf::error, int>>>();
    exec_callbacks cb;
    cb.on_stdout = [out](std::string_view s) { out->set(std::string{s}); };
    cb.on_exit = [done](const caf::error& err, int code) { done->set({err, code}); };
    auto ch = t->exec("echo ready; wc -c", std::move(cb));
    auto ready = out->take(30s);
    ASSERT_TRUE(ready);
    auto t0 = steady::now();
    std::string chunk(1u << 20, 'x');
    for (size_t off = 0; off < total; off += chunk.size())
      ch->write(chunk);
    ch->close_stdin();
    auto exit = done->take(60s);
    auto secs = std::chrono::duration<double>(steady::now() - t0).count();
    ASSERT_TRUE(exit);
    EXPECT_EQ(exit->second, 0);
    EXPECT_EQ(ch->bytes_out(), total);
    std::printf("[ measure ] up 64 MiB: %.1f MB/s\n", total / 1e6 / secs);
  }
}

TEST_F(ssh_transport_test, many_channels_and_connections_share_one_thread) {
  auto threads_before = test::thread_count();
  auto io_thread = loop_->io_thread_id();
  std::vector<std::shared_ptr<transport>> conns;
  auto t0 = steady::now();
  for (int i = 0; i < 10; ++i) {
    auto t = connect_ok();
    ASSERT_TRUE(t);
    conns.push_back(t);
  }
  std::printf("[ measure ] 10 sequential connects: %.1f ms\n", ms_since(t0));
  EXPECT_EQ(loop_->session_count(), 10u);

  struct state {
    std::mutex mtx;
    std::map<int, std::string> out;
    std::set<std::thread::id> callback_threads;
  };
  auto st = std::make_shared<state>();
  std::atomic<int> exited{0};
  std::atomic<int> failures{0};
  std::vector<std::shared_ptr<channel>> chans;
  // 20 channels held open at once on the first connection (each waits for
  // its stdin), plus one on each of the other nine.
  auto start = [&](transport& t, int key) {
    exec_callbacks cb;
    cb.on_stdout = [st, key](std::string_view s) {
      std::lock_guard<std::mutex> g{st->mtx};
      st->out[key].append(s);
      st->callback_threads.insert(std::this_thread::get_id());
    };
    cb.on_exit = [st, &exited, &failures](const caf::error& err, int code) {
      {
        std::lock_guard<std::mutex> g{st->mtx};
        st->callback_threads.insert(std::this_thread::get_id());
      }
      if (err || code != 0)
        ++failures;
      ++exited;
    };
    chans.push_back(t.exec("cat; echo done-" + std::to_string(key), std::move(cb)));
  };
  auto t1 = steady::now();
  for (int i = 0; i < 20; ++i)
    start(*conns[0], i);
  for (int i = 1; i < 10; ++i)
    start(*conns[i], 100 + i);
  EXPECT_TRUE(test::wait_until([&] { return loop_->channel_count() == 29u; }));
  // Every channel is open and running before any of them finishes: prove
  // it by a round trip through each `cat`.
  for (size_t i = 0; i < chans.size(); ++i)
    chans[i]->write("ping\n");
  ASSERT_TRUE(test::wait_until(
    [&] {
      std::lock_guard<std::mutex> g{st->mtx};
      size_t n = 0;
      for (auto& [k, v] : st->out)
        n += v == "ping\n";
      return n == chans.size();
    },
    30000ms));
  std::printf("[ measure ] 29 channels opened and answering: %.1f ms\n", ms_since(t1));
  EXPECT_EQ(exited.load(), 0);
  EXPECT_EQ(test::thread_count(), threads_before)
    << "threads must not grow with sessions or channels";
  for (auto& ch : chans)
    ch->close_stdin();
  ASSERT_TRUE(test::wait_until([&] { return exited.load() == 29; }, 30000ms));
  EXPECT_EQ(failures.load(), 0);
  std::lock_guard<std::mutex> g{st->mtx};
  for (int i = 0; i < 20; ++i)
    EXPECT_EQ(st->out[i], "ping\ndone-" + std::to_string(i) + "\n");
  for (int i = 1; i < 10; ++i)
    EXPECT_EQ(st->out[100 + i], "ping\ndone-" + std::to_string(100 + i) + "\n");
  EXPECT_EQ(st->callback_threads, std::set<std::thread::id>{io_thread});
  EXPECT_EQ(loop_->channel_count(), 0u);
}

TEST_F(ssh_transport_test, host_key_mismatch_is_refused) {
  auto other = make_session_keys(tmp_.path() + "/other-keys");
  ASSERT_TRUE(other);
  auto ep = vm_->endpoint();
  ep.host_public_key = other->host_public_key;
  auto t = test::connect(*loop_, ep);
  ASSERT_FALSE(t);
  EXPECT_EQ(code_of(t.error()), errc::permission_denied) << describe(t.error());
  auto msg = message_of(t.error());
  EXPECT_NE(msg.find("does not match the key pinned for this session"), std::string::npos)
    << msg;
  EXPECT_NE(msg.find("refusing to connect"), std::string::npos) << msg;
  EXPECT_NE(msg.find(ep.host + ":" + std::to_string(ep.port)), std::string::npos) << msg;
  EXPECT_EQ(loop_->session_count(), 0u);
}

TEST_F(ssh_transport_test, no_pinned_host_key_is_refused) {
  auto ep = vm_->endpoint();
  ep.host_public_key.clear();
  auto t = test::connect(*loop_, ep);
  ASSERT_FALSE(t);
  EXPECT_EQ(code_of(t.error()), errc::invalid_argument);
}

TEST_F(ssh_transport_test, wrong_client_key_is_unauthenticated) {
  auto other = make_session_keys(tmp_.path() + "/other-keys");
  ASSERT_TRUE(other);
  auto ep = vm_->endpoint();
  ep.client_key_path = other->client_key_path;
  auto t = test::connect(*loop_, ep);
  ASSERT_FALSE(t);
  EXPECT_EQ(code_of(t.error()), errc::unauthenticated) << describe(t.error());
  // The message names the key file, never its contents.
  EXPECT_NE(message_of(t.error()).find(other->client_key_path), std::string::npos);
  EXPECT_EQ(message_of(t.error()).find("PRIVATE KEY"), std::string::npos);
}

TEST_F(ssh_transport_test, refused_port_is_unavailable) {
  auto ep = vm_->endpoint();
  ep.port = 1; // nothing listens there
  auto t = test::connect(*loop_, ep);
  ASSERT_FALSE(t);
  EXPECT_EQ(code_of(t.error()), errc::unavailable) << describe(t.error());
  EXPECT_NE(message_of(t.error()).find("ssh 127.0.0.1:1"), std::string::npos);
}

TEST_F(ssh_transport_test, killing_sshd_mid_channel_ends_it_unavailable) {
  auto t = connect_ok();
  ASSERT_TRUE(t);
  auto started = std::make_shared<std::atomic<bool>>(false);
  auto done = std::make_shared<test::slot<std::pair<caf::error, int>>>();
  exec_callbacks cb;
  cb.on_stdout = [started](std::string_view) { *started = true; };
  cb.on_exit = [done](const caf::error& err, int code) { done->set({err, code}); };
  auto ch = t->exec("echo started; sleep 600", std::move(cb));
  ASSERT_TRUE(test::wait_until([&] { return started->load(); }));
  auto pid = vm_->sshd_pid();
  ASSERT_GT(pid, 0);
  test::kill_process_tree(pid);
  auto exit = done->take(20s);
  ASSERT_TRUE(exit) << "the channel did not end";
  EXPECT_EQ(code_of(exit->first), errc::unavailable) << describe(exit->first);
  EXPECT_EQ(exit->second, -1);
  EXPECT_TRUE(test::wait_until([&] { return !t->is_open(); }));
  // Nothing more can run there.
  auto r = test::run(*t, "true");
  ASSERT_TRUE(r);
  EXPECT_EQ(code_of(r->error), errc::unavailable);
}

TEST_F(ssh_transport_test, idle_connection_notices_the_server_going_away) {
  auto t = connect_ok();
  ASSERT_TRUE(t);
  test::kill_process_tree(vm_->sshd_pid());
  EXPECT_TRUE(test::wait_until([&] { return !t->is_open(); }));
}

TEST_F(ssh_transport_test, cancel_ends_the_command_and_the_session_goes_on) {
  auto t = connect_ok();
  ASSERT_TRUE(t);
  auto done = std::make_shared<test::slot<std::pair<caf::error, int>>>();
  auto exits = std::make_shared<std::atomic<int>>(0);
  exec_callbacks cb;
  cb.on_exit = [done, exits](const caf::error& err, int code) {
    ++*exits;
    done->set({err, code});
  };
  auto ch = t->exec("cat", std::move(cb));
  ch->write("x");
  ch->cancel();
  ch->cancel();
  auto exit = done->take(10s);
  ASSERT_TRUE(exit);
  EXPECT_EQ(code_of(exit->first), errc::cancelled);
  auto r = test::run(*t, "echo still here");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->out, "still here\n");
  EXPECT_EQ(exits->load(), 1) << "on_exit runs exactly once";
}

TEST_F(ssh_transport_test, close_and_loop_shutdown_end_channels_cancelled) {
  auto t = connect_ok();
  ASSERT_TRUE(t);
  auto d1 = std::make_shared<test::slot<caf::error>>();
  exec_callbacks cb1;
  cb1.on_exit = [d1](const caf::error& err, int) { d1->set(err); };
  auto ch1 = t->exec("sleep 600", std::move(cb1));
  t->close();
  auto e1 = d1->take(10s);
  ASSERT_TRUE(e1);
  EXPECT_EQ(code_of(*e1), errc::cancelled);
  EXPECT_FALSE(t->is_open());

  auto t2 = connect_ok();
  ASSERT_TRUE(t2);
  auto d2 = std::make_shared<test::slot<caf::error>>();
  exec_callbacks cb2;
  cb2.on_exit = [d2](const caf::error& err, int) { d2->set(err); };
  auto ch2 = t2->exec("sleep 600", std::move(cb2));
  loop_.reset(); // joins the I/O thread
  auto e2 = d2->take(1s);
  ASSERT_TRUE(e2);
  EXPECT_EQ(code_of(*e2), errc::cancelled);
  // Calls after shutdown still answer, on the caller's thread.
  auto d3 = std::make_shared<test::slot<caf::error>>();
  exec_callbacks cb3;
  cb3.on_exit = [d3](const caf::error& err, int) { d3->set(err); };
  t2->exec("true", std::move(cb3));
  auto e3 = d3->take(1s);
  ASSERT_TRUE(e3);
  EXPECT_EQ(code_of(*e3), errc::cancelled);
}

} // namespace
} // namespace aloft
