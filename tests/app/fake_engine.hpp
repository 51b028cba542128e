// A complete in-memory aloft::engine for the app tests: sessions in a map,
// an events journal, subscribers, log files in a temp directory. Tests also
// drive it from the side (add sessions, append output, change states) to
// play the engine's part in a conversation with the daemon or the CLI.
//
// Thread-safe: the daemon calls it from its poll thread while a test
// publishes from its own. Subscribers are called outside the lock, on the
// publishing thread, as the real engine calls them on its actor threads.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "engine/app/api.hpp"

namespace aloft::testing {

/// A fresh directory under /tmp, removed with everything in it at the end.
class temp_dir {
public:
  temp_dir();
  ~temp_dir();
  const std::string& path() const { return path_; }

private:
  std::string path_;
};

class fake_engine : public engine {
public:
  explicit fake_engine(std::string log_dir);

  // -- engine -----------------------------------------------------------------
  std::string installation_id() const override { return "i-0123456789abcdef"; }
  caf::expected<session_record> launch(const launch_request& req) override;
  std::vector<session_record> list() override;
  caf::expected<session_view> show(const std::string& id) override;
  caf::error stop(const std::string& id) override;
  caf::error destroy(const std::string& id) override;
  caf::expected<session_record> extend(const std::string& id, int64_t seconds) override;
  caf::expected<attach_info> attach(const std::string& id) override;
  void activity(const std::string& id, const std::string& source) override;
  caf::expected<std::string> log_path(const std::string& id) override;
  caf::expected<sync_result> sync_up(const std::string& id) override;
  caf::expected<sync_result> sync_down(const sync_down_request& req) override;
  caf::expected<sync_status> sync_state(const std::string& id) override;
  std::vector<event> events(size_t n) override;
  uint64_t subscribe(subscriber fn) override;
  void unsubscribe(uint64_t handle) override;

  // -- driving it from a test -------------------------------------------------
  /// Adds a session in `state` and returns its id.
  std::string add_session(session_state state, const std::string& account = "local");
  /// Publishes `ev` (seq assigned unless it is output; journaled unless
  /// output) to every subscriber.
  void publish(event ev);
  /// Appends `data` to the session's log file; with `publish_event`, also
  /// publishes the matching output event.
  void append_output(const std::string& id, const std::string& data,
                     bool publish_event = true);
  /// Publishes an output event without touching the file.
  void publish_output(const std::string& id, uint64_t offset, const std::string& data);
  /// Moves the session to `state` and publishes the state event.
  void set_state(const std::string& id, session_state state);

  size_t subscriber_count();
  launch_request last_launch();
  std::vector<std::pair<std::string, std::string>> activities();
  /// Runs inside the next subscribe(), after the subscriber is registered;
  /// lets a test publish at the worst moment.
  void on_next_subscribe(std::function<void()> fn);

  // -- syncs ------------------------------------------------------------------
  // sync_up and sync_down publish the scripted progress events for their
  // session, wait while syncs are held, then return the scripted result (or
  // error). They run on whatever thread calls them (a daemon worker).

  /// One progress step, published as a `sync` event (data is the JSON
  /// {"direction","phase","done","total"}, message a human line).
  struct sync_step {
    std::string phase;
    uint64_t done = 0;
    uint64_t total = 0;
  };
  /// Steps each sync publishes; the default is snapshot, send or receive
  /// half and all of 4096 bytes, done.
  void set_sync_steps(std::vector<sync_step> steps);
  /// What the next syncs return instead of the default result.
  void set_sync_up_result(sync_result r);
  void set_sync_down_result(sync_result r);
  /// The next syncs fail with `err` (after their progress); empty: succeed.
  void set_sync_error(caf::error err);
  /// What sync_state answers (default: neither side changed); an error
  /// makes it fail.
  void set_sync_status(caf::expected<sync_status> st);
  /// Syncs that start from now on wait (after publishing their progress)
  /// until `release_syncs`.
  void hold_syncs();
  void release_syncs();
  /// Waits up to `timeout_ms` until `n` syncs have started in total; returns
  /// whether they had.
  bool wait_for_syncs_started(size_t n, int timeout_ms = 5000);
  /// The most syncs that were inside the engine at the same time.
  size_t max_concurrent_syncs();
  std::vector<sync_down_request> sync_down_requests();

  int64_t now_ms = 1'800'000'000'000; // a fixed wall clock

private:
  std::string log_dir_;
  std::mutex mtx_;
  std::map<std::string, session_record> sessions_;
  std::vector<event> journal_;
  uint64_t next_seq_ = 1;
  uint64_t next_handle_ = 1;
  std::map<uint64_t, subscriber> subs_;
  launch_request last_launch_;
  std::vector<std::pair<std::string, std::string>> activities_;
  std::function<void()> on_subscribe_;

  caf::expected<sync_result> run_sync(const std::string& direction, const std::string& id,
                                      const sync_down_request* down);
  std::condition_variable sync_cv_;
  bool syncs_held_ = false;
  size_t syncs_started_ = 0;
  size_t syncs_inside_ = 0;
  size_t max_syncs_inside_ = 0;
  std::vector<sync_step> sync_steps_;
  bool custom_steps_ = false;
  bool custom_up_ = false;
  bool custom_down_ = false;
  sync_result up_result_;
  sync_result down_result_;
  caf::error sync_error_;
  caf::expected<sync_status> sync_status_ = sync_status{0, 0, "", ""};
  std::vector<sync_down_request> down_requests_;
};

} // namespace aloft::testing
