// End-to-end tests of the SSH transport against a real sshd on loopback
// (a local sandbox each test starts and destroys).
#include "engine/ssh_transport.hpp"

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <set>

#include "engine/base/error.hpp"
#include "engine/keys.hpp"
#include "tests/support/local_vm.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

// Fault injection: this definition of send(2) interposes libc's for libssh2
// (the executable's symbols come first). When armed for a thread, every
// other call fails with EAGAIN and the rest send only a few bytes, so every
// kind of packet (open, exec, data, EOF, close, window adjust) is left
// half-sent at some point and must be completed by the same libssh2 call.
namespace {
std::atomic<std::thread::id> chaos_thread{};
std::atomic<uint64_t> chaos_calls{0};
} // namespace

extern "C" ssize_t send(int fd, const void* buf, size_t len, int flags) {
  if (chaos_thread.load() == std::this_thread::get_id()) {
    auto n = chaos_calls++;
    if (n % 2 == 0) {
      errno = EAGAIN;
      return -1;
    }
    len = std::min<size_t>(len, 1 + n % 13);
  }
  return ::syscall(SYS_sendto, fd, buf, len, flags, nullptr, 0);
}

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

// Several channels of one session push more stdin than the socket takes, to
// readers that start late: sends block on a full socket mid-packet and must be
// completed by the same call before any other channel sends (libssh2's rule),
// including the EOF that follows each stream.
TEST_F(ssh_transport_test, concurrent_uploads_to_slow_readers_complete) {
  ssh_options opts;
  opts.socket_send_buffer = 4096; // the kernel doubles it; still far below a packet
  loop_ = std::make_unique<ssh_io_loop>(opts);
  auto t = connect_ok();
  ASSERT_TRUE(t);
  constexpr int channels = 4;
  constexpr size_t total = 2u << 20;
  auto outs = std::make_shared<std::array<test::slot<std::string>, channels>>();
  auto exits = std::make_shared<std::array<test::slot<std::pair<caf::error, int>>, channels>>();
  std::vector<std::shared_ptr<channel>> chans;
  for (int i = 0; i < channels; ++i) {
    exec_callbacks cb;
    auto acc = std::make_shared<std::string>();
    cb.on_stdout = [acc](std::string_view s) { acc->append(s); };
    cb.on_exit = [outs, exits, acc, i](const caf::error& err, int code) {
      (*outs)[i].set(*acc);
      (*exits)[i].set({err, code});
    };
    chans.push_back(t->exec("sleep 0.3; wc -c", std::move(cb)));
  }
  std::string chunk(64u << 10, 'y');
  for (size_t off = 0; off < total; off += chunk.size())
    for (auto& ch : chans)
      ch->write(chunk);
  for (auto& ch : chans)
    ch->close_stdin();
  for (int i = 0; i < channels; ++i) {
    auto exit = (*exits)[i].take(60s);
    ASSERT_TRUE(exit) << "channel " << i;
    EXPECT_FALSE(exit->first) << describe(exit->first);
    EXPECT_EQ(exit->second, 0);
    auto out = (*outs)[i].take(1s);
    ASSERT_TRUE(out);
    EXPECT_EQ(*out, std::to_string(total) + "\n");
  }
}

// Every send is cut short or refused (see `send` above), from the handshake
// on: the loop must finish each half-sent packet with the same call before
// anything else is sent, for every kind of packet, on concurrent channels.
TEST_F(ssh_transport_test, sends_cut_short_anywhere_are_completed_in_order) {
  chaos_thread = loop_->io_thread_id();
  struct reset {
    ~reset() { chaos_thread = std::thread::id{}; }
  } reset_chaos;
  auto t = connect_ok();
  ASSERT_TRUE(t);
  constexpr int channels = 5;
  constexpr size_t total = 64u << 10;
  auto exits = std::make_shared<std::array<test::slot<std::string>, channels>>();
  std::vector<std::shared_ptr<channel>> chans;
  for (int i = 0; i < channels; ++i) {
    auto acc = std::make_shared<std::string>();
    exec_callbacks cb;
    cb.on_stdout = [acc](std::string_view s) { acc->append(s); };
    cb.on_exit = [exits, acc, i](const caf::error& err, int code) {
      (*exits)[i].set(err ? describe(err) : *acc + "exit " + std::to_string(code));
    };
    chans.push_back(t->exec("wc -c", std::move(cb)));
  }
  // A download larger than the receive window, so that window adjustments
  // (sent from inside reads) are cut short too.
  constexpr size_t down = 40u << 20;
  auto got = std::make_shared<std::atomic<size_t>>(0);
  auto down_exit = std::make_shared<test::slot<std::pair<caf::error, int>>>();
  exec_callbacks dcb;
  dcb.on_stdout = [got](std::string_view s) { *got += s.size(); };
  dcb.on_exit = [down_exit](const caf::error& err, int code) { down_exit->set({err, code}); };
  auto dch = t->exec("head -c " + std::to_string(down) + " /dev/zero", std::move(dcb));
  // And an upload cancelled while its sends are cut short: the half-sent
  // packet must still be finished before the channel's close is sent.
  auto cancelled = std::make_shared<test::slot<caf::error>>();
  exec_callbacks ccb;
  ccb.on_exit = [cancelled](const caf::error& err, int) { cancelled->set(err); };
  auto cch = t->exec("cat >/dev/null", std::move(ccb));
  std::string chunk(8u << 10, 'z');
  for (size_t off = 0; off < total; off += chunk.size()) {
    for (auto& ch : chans)
      ch->write(chunk);
    cch->write(chunk);
  }
  ASSERT_TRUE(test::wait_until([&] { return cch->bytes_out() >= total / 4; }, 30000ms));
  cch->cancel();
  for (auto& ch : chans)
    ch->close_stdin();
  auto c = cancelled->take(60s);
  ASSERT_TRUE(c);
  EXPECT_EQ(code_of(*c), errc::cancelled);
  for (int i = 0; i < channels; ++i) {
    auto r = (*exits)[i].take(60s);
    ASSERT_TRUE(r) << "channel " << i;
    EXPECT_EQ(*r, std::to_string(total) + "\nexit 0");
  }
  auto d = down_exit->take(60s);
  ASSERT_TRUE(d);
  EXPECT_FALSE(d->first) << describe(d->first);
  EXPECT_EQ(got->load(), down);
  EXPECT_GT(chaos_calls.load(), 1000u);
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

TEST_F(ssh_transport_test, a_server_that_never_answers_times_out) {
  // A listener that never accepts: the kernel completes the TCP handshake,
  // and no SSH banner ever comes.
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(fd, 4), 0);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  ssh_options opts;
  opts.connect_timeout = 300ms;
  loop_ = std::make_unique<ssh_io_loop>(opts);
  auto ep = vm_->endpoint();
  ep.port = ntohs(addr.sin_port);
  auto t0 = steady::now();
  auto t = test::connect(*loop_, ep);
  ::close(fd);
  ASSERT_FALSE(t);
  EXPECT_EQ(code_of(t.error()), errc::deadline_exceeded) << describe(t.error());
  EXPECT_GE(ms_since(t0), 250);
  EXPECT_EQ(loop_->session_count(), 0u);
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
