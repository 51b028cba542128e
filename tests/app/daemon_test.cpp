// The daemon over a real Unix socket in a temp directory.
#include "engine/app/daemon.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>

#include <gtest/gtest.h>

#include "engine/base/error.hpp"
#include "tests/app/fake_engine.hpp"
#include "tests/app/test_client.hpp"

namespace aloft {
namespace {

using testing::fake_engine;
using testing::running_daemon;
using testing::temp_dir;
using testing::test_client;

class daemon_test : public ::testing::Test {
protected:
  temp_dir dir;
  fake_engine eng{dir.path()};
  std::string sock = dir.path() + "/aloft.sock";

  // Everything the daemon read before this call has been handled once it
  // returns: requests on one connection are answered in order.
  static void round_trip(test_client& c) {
    auto r = c.call("hello", json::object(), 999);
    ASSERT_EQ(r.get_int("id"), 999) << r.dump();
  }

  // Collects `logs -f` items after `data` until the final reply, checking
  // that each item starts where the previous one ended.
  static std::string collect_log(test_client& c, std::string data, json* final_reply) {
    for (;;) {
      auto r = c.read();
      if (r.is_null())
        return data;
      if (!r.get_bool("more")) {
        *final_reply = r;
        return data;
      }
      auto& item = *r.find("result");
      EXPECT_EQ(static_cast<size_t>(item.get_int("offset")), data.size())
        << "bytes at " << item.get_int("offset") << " after " << data.size();
      data += item.get_string("data");
    }
  }
};

TEST_F(daemon_test, socket_is_created_with_mode_0600) {
  running_daemon d{eng, sock};
  struct stat st;
  ASSERT_EQ(::stat(sock.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(daemon_test, stop_closes_clients_and_removes_the_socket) {
  running_daemon d{eng, sock};
  test_client c{sock};
  round_trip(c);
  d.stop();
  EXPECT_FALSE(d.result()) << describe(d.result());
  EXPECT_TRUE(c.closed_by_peer());
  struct stat st;
  EXPECT_NE(::stat(sock.c_str(), &st), 0);
}

TEST_F(daemon_test, serves_two_clients_at_once) {
  auto id = eng.add_session(session_state::running);
  running_daemon d{eng, sock};
  test_client a{sock};
  test_client b{sock};
  // Both send before either reads: neither blocks the other.
  a.send("show", json::object().set("id", id), 1);
  b.send("list", json::object(), 2);
  auto rb = b.read();
  auto ra = a.read();
  EXPECT_TRUE(ra.get_bool("ok")) << ra.dump();
  EXPECT_EQ(ra.get_int("id"), 1);
  EXPECT_TRUE(rb.get_bool("ok")) << rb.dump();
  EXPECT_EQ(rb.get_int("id"), 2);
  EXPECT_EQ(rb.find("result")->find("sessions")->size(), 1u);
}

TEST_F(daemon_test, malformed_line_gets_an_error_and_the_connection_goes_on) {
  running_daemon d{eng, sock};
  test_client c{sock};
  c.send_raw("this is not json\n");
  auto err = c.read();
  EXPECT_FALSE(err.get_bool("ok"));
  EXPECT_EQ(err.find("error")->get_string("code"), "invalid_argument");
  c.send_raw("{\"id\":2,\"op\":\"nope\"}\r\n\n   \n");
  EXPECT_EQ(c.read().find("error")->get_string("code"), "unimplemented");
  auto ok = c.call("hello", json::object(), 3);
  EXPECT_TRUE(ok.get_bool("ok"));
  EXPECT_EQ(ok.get_int("id"), 3);
}

TEST_F(daemon_test, oversized_line_gets_an_error_and_the_rest_is_skipped) {
  running_daemon d{eng, sock};
  test_client c{sock};
  std::string big(max_request_bytes + 4096, 'x');
  // Send in pieces while reading: the daemon answers before the line ends.
  c.send_raw(big.substr(0, max_request_bytes / 2));
  c.send_raw(big.substr(max_request_bytes / 2));
  auto err = c.read();
  EXPECT_FALSE(err.get_bool("ok"));
  EXPECT_NE(err.find("error")->get_string("message").find("longer than the limit"),
            std::string::npos);
  c.send_raw("yyyy\n"); // the end of the oversized line: skipped silently
  auto ok = c.call("hello", json::object(), 4);
  EXPECT_TRUE(ok.get_bool("ok")) << ok.dump();
  EXPECT_EQ(ok.get_int("id"), 4);
}

TEST_F(daemon_test, events_follow_streams_backlog_then_live_events) {
  auto id = eng.add_session(session_state::running);
  eng.set_state(id, session_state::running); // seq 1, in the journal
  running_daemon d{eng, sock};
  test_client c{sock};
  c.send("events", json::object().set("follow", true).set("n", 10), 5);
  auto backlog = c.read();
  ASSERT_TRUE(backlog.get_bool("more")) << backlog.dump();
  EXPECT_EQ(backlog.get_int("id"), 5);
  EXPECT_EQ(backlog.find("result")->get_int("seq"), 1);
  round_trip(c); // the stream is set up

  eng.set_state(id, session_state::stopping);
  auto live = c.read();
  ASSERT_TRUE(live.get_bool("more")) << live.dump();
  EXPECT_EQ(live.get_int("id"), 5);
  EXPECT_EQ(live.find("result")->get_string("state"), "stopping");
  EXPECT_EQ(live.find("result")->get_string("session"), id);
  // Output is not part of the stream unless asked for.
  eng.append_output(id, "noise");
  eng.set_state(id, session_state::destroyed);
  EXPECT_EQ(c.read().find("result")->get_string("state"), "destroyed");
}

TEST_F(daemon_test, events_follow_from_another_thread) {
  running_daemon d{eng, sock};
  test_client c{sock};
  c.send("events", json::object().set("follow", true).set("n", 0), 1);
  round_trip(c);
  std::thread publisher([&] {
    for (int i = 0; i < 100; ++i) {
      event ev;
      ev.kind = "warning";
      ev.message = std::to_string(i);
      eng.publish(ev);
    }
  });
  for (int i = 0; i < 100; ++i) {
    auto r = c.read();
    ASSERT_TRUE(r.get_bool("more")) << r.dump();
    EXPECT_EQ(r.find("result")->get_string("message"), std::to_string(i));
  }
  publisher.join();
}

TEST_F(daemon_test, closing_a_client_ends_its_subscriptions) {
  running_daemon d{eng, sock};
  test_client watcher{sock};
  test_client other{sock};
  watcher.send("events", json::object().set("follow", true).set("n", 0), 1);
  round_trip(watcher);
  EXPECT_EQ(eng.subscriber_count(), 1u);
  watcher.close();
  // Two round trips on another connection: the first turn of the loop that
  // saw the hang-up has ended by the time the second is answered.
  round_trip(other);
  round_trip(other);
  EXPECT_EQ(eng.subscriber_count(), 0u);
}

TEST_F(daemon_test, logs_follow_sends_the_file_then_new_bytes_once) {
  auto id = eng.add_session(session_state::running);
  eng.append_output(id, "abcdef", false);
  running_daemon d{eng, sock};
  test_client c{sock};
  c.send("logs", json::object().set("id", id).set("follow", true), 9);
  auto first = c.read();
  ASSERT_TRUE(first.get_bool("more")) << first.dump();
  EXPECT_EQ(first.get_int("id"), 9);
  EXPECT_EQ(first.find("result")->get_string("data"), "abcdef");
  EXPECT_EQ(first.find("result")->get_int("offset"), 0);

  eng.publish_output(id, 3, "defghi");   // overlaps what the file gave
  eng.publish_output(id, 0, "abc");      // entirely old
  eng.append_output(id, "ghijkl", false); // the file catches up...
  eng.publish_output(id, 9, "jkl");      // ...and only "jkl" is new
  eng.append_output(id, "mno", false);   // written, but its event was missed
  eng.append_output(id, "pqr");          // a gap before it: filled from the file
  eng.append_output(id, "stu", false);   // after the last event
  eng.set_state(id, session_state::stopping);
  eng.set_state(id, session_state::destroyed);
  json final_reply;
  auto all = collect_log(c, "abcdef", &final_reply);
  EXPECT_EQ(all, "abcdefghijklmnopqrstu");
  EXPECT_TRUE(final_reply.get_bool("ok")) << final_reply.dump();
  EXPECT_EQ(final_reply.get_int("id"), 9);
  EXPECT_EQ(final_reply.find("result")->get_string("state"), "destroyed");
  EXPECT_EQ(final_reply.find("result")->get_int("next_offset"), 21);
  round_trip(c); // the connection outlives the stream
  EXPECT_EQ(eng.subscriber_count(), 0u);
}

TEST_F(daemon_test, logs_follow_drops_bytes_published_while_the_file_was_read) {
  auto id = eng.add_session(session_state::running);
  eng.append_output(id, "old.", false);
  // The worst moment: right after the daemon subscribed, before it reads
  // the file, output lands in both the file and an event.
  eng.on_next_subscribe([&] { eng.append_output(id, "new."); });
  running_daemon d{eng, sock};
  test_client c{sock};
  c.send("logs", json::object().set("id", id).set("follow", true), 1);
  // Whether these land before or after the daemon subscribes, each byte
  // must arrive exactly once.
  eng.append_output(id, "later.");
  eng.set_state(id, session_state::failed);
  json final_reply;
  auto got = collect_log(c, "", &final_reply);
  std::ifstream f{dir.path() + "/" + id + ".log"};
  std::string file{std::istreambuf_iterator<char>{f}, {}};
  EXPECT_EQ(file.size(), 14u);
  EXPECT_EQ(got, file);
  EXPECT_EQ(final_reply.find("result")->get_string("state"), "failed");
}

TEST_F(daemon_test, logs_follow_of_a_finished_session_ends_after_the_file) {
  auto id = eng.add_session(session_state::destroyed);
  std::string big(3 * 1024 * 1024, 'z'); // many chunks, past the pump's watermark
  eng.append_output(id, big, false);
  running_daemon d{eng, sock};
  test_client c{sock};
  c.send("logs", json::object().set("id", id).set("follow", true).set("offset", 100), 1);
  json final_reply;
  auto got = collect_log(c, std::string(100, 'z'), &final_reply);
  EXPECT_EQ(got.size(), big.size());
  EXPECT_EQ(final_reply.find("result")->get_string("state"), "destroyed");
}

TEST_F(daemon_test, logs_follow_of_an_unknown_session_is_an_error_reply) {
  running_daemon d{eng, sock};
  test_client c{sock};
  c.send("logs", json::object().set("id", "s-000000000000").set("follow", true), 1);
  auto r = c.read();
  EXPECT_FALSE(r.get_bool("ok"));
  EXPECT_EQ(r.find("error")->get_string("code"), "not_found");
  c.send("logs", json::object().set("id", "bad").set("follow", true), 2);
  EXPECT_EQ(c.read().find("error")->get_string("code"), "invalid_argument");
  EXPECT_EQ(eng.subscriber_count(), 0u);
}

TEST_F(daemon_test, stale_socket_file_is_replaced) {
  {
    // A socket file nobody listens on, as a killed daemon leaves behind.
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", sock.c_str());
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    ::close(fd);
  }
  std::string logged;
  daemon_options opts;
  opts.log = [&](const std::string& s) { logged += s; };
  running_daemon d{eng, sock, opts};
  EXPECT_NE(logged.find("stale"), std::string::npos);
  test_client c{sock};
  round_trip(c);
}

TEST_F(daemon_test, a_live_daemon_is_detected) {
  running_daemon first{eng, sock};
  daemon second{eng, sock};
  auto err = second.listen();
  EXPECT_EQ(code_of(err), errc::already_exists);
  EXPECT_NE(message_of(err).find("already listening"), std::string::npos);
  test_client c{sock}; // the first one still serves
  round_trip(c);
}

TEST_F(daemon_test, a_file_in_the_way_is_not_removed) {
  { std::ofstream f{sock}; f << "precious"; }
  daemon d{eng, sock};
  EXPECT_EQ(code_of(d.listen()), errc::failed_precondition);
  std::ifstream f{sock};
  std::string s;
  f >> s;
  EXPECT_EQ(s, "precious");
}

TEST_F(daemon_test, too_long_a_path_is_an_error) {
  daemon d{eng, dir.path() + "/" + std::string(200, 'p')};
  EXPECT_EQ(code_of(d.listen()), errc::invalid_argument);
}

TEST_F(daemon_test, connections_beyond_the_cap_are_told_why) {
  daemon_options opts;
  opts.max_clients = 1;
  running_daemon d{eng, sock, opts};
  test_client a{sock};
  round_trip(a);
  test_client b{sock};
  auto r = b.read();
  EXPECT_EQ(r.find("error")->get_string("code"), "resource_exhausted");
  EXPECT_TRUE(b.closed_by_peer());
  round_trip(a);
}

TEST_F(daemon_test, a_client_that_does_not_read_its_stream_is_dropped) {
  daemon_options opts;
  opts.max_output_bytes = 64 * 1024;
  std::string logged;
  opts.log = [&](const std::string& s) { logged += s; };
  running_daemon d{eng, sock, opts};
  test_client slow{sock};
  test_client other{sock};
  slow.send("events", json::object().set("follow", true).set("n", 0), 1);
  round_trip(slow);
  // Far more than the socket buffers and the cap hold together.
  for (int i = 0; i < 400; ++i) {
    event ev;
    ev.kind = "warning";
    ev.message = std::string(16 * 1024, 'w');
    eng.publish(ev);
  }
  round_trip(other);
  round_trip(other);
  EXPECT_EQ(eng.subscriber_count(), 0u);
  EXPECT_NE(logged.find("does not read its output"), std::string::npos);
  // What was already in the socket can still be read; then the end.
  while (!slow.eof() && !slow.read().is_null()) {
  }
  EXPECT_TRUE(slow.eof());
}

TEST_F(daemon_test, a_client_that_half_closes_still_gets_its_reply) {
  running_daemon d{eng, sock};
  test_client c{sock};
  c.send("hello", json::object(), 1);
  ::shutdown(c.fd(), SHUT_WR);
  auto r = c.read();
  EXPECT_TRUE(r.get_bool("ok")) << r.dump();
  EXPECT_TRUE(c.closed_by_peer());
}

// -- long ops (sync) on the worker pool ----------------------------------------

// What the daemon logs, collected from its thread, with a bounded wait.
class log_lines {
public:
  daemon_options options(daemon_options opts = {}) {
    opts.log = [this](const std::string& line) {
      std::function<void()> hook;
      {
        std::lock_guard<std::mutex> guard{mtx_};
        lines_ += line + "\n";
        if (line.find(hook_on_) != std::string::npos && !hook_on_.empty())
          hook.swap(hook_);
      }
      cv_.notify_all();
      if (hook)
        hook();
    };
    return opts;
  }

  bool wait_for(const std::string& text, int timeout_ms = 5000) {
    std::unique_lock<std::mutex> lock{mtx_};
    return cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                        [&] { return lines_.find(text) != std::string::npos; });
  }

  /// Runs `fn` on the daemon's thread when a line containing `text` is logged.
  void on(const std::string& text, std::function<void()> fn) {
    std::lock_guard<std::mutex> guard{mtx_};
    hook_on_ = text;
    hook_ = std::move(fn);
  }

  std::string all() {
    std::lock_guard<std::mutex> guard{mtx_};
    return lines_;
  }

private:
  std::mutex mtx_;
  std::condition_variable cv_;
  std::string lines_;
  std::string hook_on_;
  std::function<void()> hook_;
};

TEST_F(daemon_test, a_slow_sync_does_not_block_other_clients) {
  auto id = eng.add_session(session_state::running);
  eng.hold_syncs();
  running_daemon d{eng, sock};
  test_client syncing{sock};
  test_client other{sock};
  syncing.send("sync_up", json::object().set("id", id), 1);
  ASSERT_TRUE(eng.wait_for_syncs_started(1));
  // The sync is inside the engine and stays there: everyone else is served.
  auto ls = other.call("list", json::object(), 2);
  EXPECT_TRUE(ls.get_bool("ok")) << ls.dump();
  EXPECT_EQ(ls.find("result")->find("sessions")->size(), 1u);
  auto show = other.call("show", json::object().set("id", id), 3);
  EXPECT_TRUE(show.get_bool("ok")) << show.dump();
  // Even the syncing client's own later requests are answered first.
  auto hello = syncing.call("hello", json::object(), 4);
  EXPECT_EQ(hello.get_int("id"), 4) << hello.dump();
  eng.release_syncs();
  auto r = syncing.read();
  EXPECT_TRUE(r.get_bool("ok")) << r.dump();
  EXPECT_EQ(r.get_int("id"), 1);
  EXPECT_EQ(r.find("result")->get_string("commit"), std::string(40, 'a'));
}

TEST_F(daemon_test, sync_progress_reaches_an_events_follower) {
  auto id = eng.add_session(session_state::running);
  running_daemon d{eng, sock};
  test_client watcher{sock};
  test_client syncing{sock};
  watcher.send("events", json::object().set("follow", true).set("n", 0).set("session", id), 1);
  round_trip(watcher);
  auto r = syncing.call("sync_down", json::object().set("id", id).set("mode", "dry_run"), 2);
  ASSERT_TRUE(r.get_bool("ok")) << r.dump();
  std::vector<std::string> phases;
  for (int i = 0; i < 4; ++i) {
    auto item = watcher.read();
    ASSERT_TRUE(item.get_bool("more")) << item.dump();
    auto& ev = *item.find("result");
    EXPECT_EQ(ev.get_string("kind"), "sync");
    auto data = json::parse(ev.get_string("data"));
    ASSERT_TRUE(data);
    EXPECT_EQ(data->get_string("direction"), "down");
    phases.push_back(data->get_string("phase"));
  }
  EXPECT_EQ(phases, (std::vector<std::string>{"snapshot", "receive", "receive", "done"}));
}

TEST_F(daemon_test, at_most_worker_threads_syncs_run_at_once) {
  auto id = eng.add_session(session_state::running);
  eng.hold_syncs();
  daemon_options opts;
  opts.worker_threads = 2;
  running_daemon d{eng, sock, opts};
  test_client a{sock}, b{sock}, c{sock};
  a.send("sync_up", json::object().set("id", id), 1);
  b.send("sync_down", json::object().set("id", id), 2);
  c.send("sync_up", json::object().set("id", id), 3);
  // Two run side by side; the third waits for a worker.
  ASSERT_TRUE(eng.wait_for_syncs_started(2));
  round_trip(c); // c's sync was read and queued
  eng.release_syncs();
  EXPECT_TRUE(a.read().get_bool("ok"));
  EXPECT_TRUE(b.read().get_bool("ok"));
  EXPECT_TRUE(c.read().get_bool("ok"));
  EXPECT_EQ(eng.max_concurrent_syncs(), 2u);
}

TEST_F(daemon_test, a_full_sync_queue_is_refused_at_once) {
  auto id = eng.add_session(session_state::running);
  eng.hold_syncs();
  daemon_options opts;
  opts.worker_threads = 1;
  opts.max_queued_jobs = 1;
  running_daemon d{eng, sock, opts};
  test_client a{sock}, b{sock}, c{sock};
  a.send("sync_up", json::object().set("id", id), 1);
  ASSERT_TRUE(eng.wait_for_syncs_started(1));
  b.send("sync_up", json::object().set("id", id), 2);
  round_trip(b); // queued
  auto full = c.call("sync_up", json::object().set("id", id), 3);
  EXPECT_FALSE(full.get_bool("ok"));
  EXPECT_EQ(full.find("error")->get_string("code"), "resource_exhausted") << full.dump();
  EXPECT_EQ(full.get_int("id"), 3);
  // Bad arguments are answered at once too, without waiting for a worker.
  auto bad = c.call("sync_down", json::object().set("id", id).set("mode", "sideways"), 4);
  EXPECT_EQ(bad.find("error")->get_string("code"), "invalid_argument") << bad.dump();
  eng.release_syncs();
  EXPECT_TRUE(a.read().get_bool("ok"));
  EXPECT_TRUE(b.read().get_bool("ok"));
  EXPECT_EQ(eng.max_concurrent_syncs(), 1u);
}

TEST_F(daemon_test, a_sync_state_check_does_not_wait_behind_syncs) {
  auto id = eng.add_session(session_state::running);
  eng.hold_syncs();
  daemon_options opts;
  opts.worker_threads = 1;
  running_daemon d{eng, sock, opts};
  test_client a{sock}, b{sock}, c{sock};
  a.send("sync_up", json::object().set("id", id), 1);
  ASSERT_TRUE(eng.wait_for_syncs_started(1));
  b.send("sync_down", json::object().set("id", id), 2); // waits for the one worker
  round_trip(b);
  auto st = c.call("sync_state", json::object().set("id", id), 3);
  EXPECT_TRUE(st.get_bool("ok")) << st.dump();
  EXPECT_EQ(st.get_int("id"), 3);
  eng.release_syncs();
  EXPECT_TRUE(a.read().get_bool("ok"));
  EXPECT_TRUE(b.read().get_bool("ok"));
}

TEST_F(daemon_test, a_client_that_leaves_mid_sync_does_not_hurt_the_daemon) {
  auto id = eng.add_session(session_state::running);
  eng.hold_syncs();
  log_lines logged;
  running_daemon d{eng, sock, logged.options()};
  test_client other{sock};
  {
    test_client leaving{sock};
    leaving.send("sync_down", json::object().set("id", id), 1);
    ASSERT_TRUE(eng.wait_for_syncs_started(1));
  }
  round_trip(other);
  round_trip(other); // the hang-up has been seen
  eng.release_syncs();
  EXPECT_TRUE(logged.wait_for("left before its sync_down reply")) << logged.all();
  round_trip(other);
  // The next sync, from someone else, works as usual.
  auto r = other.call("sync_up", json::object().set("id", id), 5);
  EXPECT_TRUE(r.get_bool("ok")) << r.dump();
}

TEST_F(daemon_test, a_client_that_half_closes_still_gets_its_sync_reply) {
  auto id = eng.add_session(session_state::running);
  eng.hold_syncs();
  running_daemon d{eng, sock};
  test_client c{sock};
  test_client other{sock};
  c.send("sync_up", json::object().set("id", id), 1);
  ::shutdown(c.fd(), SHUT_WR);
  ASSERT_TRUE(eng.wait_for_syncs_started(1));
  round_trip(other);
  round_trip(other); // the half-close has been seen, and the client kept
  eng.release_syncs();
  auto r = c.read();
  EXPECT_TRUE(r.get_bool("ok")) << r.dump();
  EXPECT_TRUE(c.closed_by_peer());
}

TEST_F(daemon_test, stopping_waits_for_a_running_sync_and_drops_queued_ones) {
  auto id = eng.add_session(session_state::running);
  eng.hold_syncs();
  log_lines logged;
  daemon_options opts = logged.options();
  opts.worker_threads = 1;
  // The sync may end only once the daemon is waiting for it, on its way out.
  logged.on("waiting for 1 running sync", [&] { eng.release_syncs(); });
  running_daemon d{eng, sock, opts};
  test_client a{sock}, b{sock};
  a.send("sync_up", json::object().set("id", id), 1);
  ASSERT_TRUE(eng.wait_for_syncs_started(1));
  b.send("sync_up", json::object().set("id", id), 2);
  round_trip(b); // queued behind a's
  d.stop();
  EXPECT_FALSE(d.result()) << describe(d.result());
  auto text = logged.all();
  EXPECT_NE(text.find("waiting for 1 running sync to finish"), std::string::npos) << text;
  EXPECT_NE(text.find("dropped 1 queued sync"), std::string::npos) << text;
  EXPECT_EQ(eng.max_concurrent_syncs(), 1u);
  EXPECT_FALSE(eng.wait_for_syncs_started(2, 0)); // b's never started
  EXPECT_TRUE(a.closed_by_peer());
}

} // namespace
} // namespace aloft
