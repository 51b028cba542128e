// A GoogleTest fixture for Aloft's actors on CAF's deterministic scheduler.
//
// CAF's own test framework does not mix with GoogleTest, so this drives
// `caf::scheduler::test_coordinator` directly: `run()` processes every
// message, `advance(ms)` moves the virtual CAF clock and the manual wall
// clock together and fires due timers. `restart()` drops the whole actor
// system (as a crash would: nothing more is written) and builds a new one on
// the same store and provider, then rehydrates.
#pragma once

#include <memory>
#include <string>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>
#include <gtest/gtest.h>

#include "actors/registry.hpp"
#include "engine/event.hpp"
#include "engine/clock.hpp"
#include "engine/executor.hpp"
#include "persistence/store.hpp"
#include "providers/fake/fake_provider.hpp"

namespace aloft::testing {

/// Forwards to a store until `cut()`, after which commits vanish unanswered,
/// as in a power cut.
class crashable_store final : public store {
public:
  explicit crashable_store(store& inner) : inner_(inner) {}
  void commit(write_batch batch, std::function<void(caf::error)> done) override {
    if (!cut_)
      inner_.commit(std::move(batch), std::move(done));
  }
  caf::expected<std::string> get(family f, const std::string& key) override {
    return inner_.get(f, key);
  }
  caf::error scan(family f, const std::function<void(const std::string&,
                                                     const std::string&)>& fn) override {
    return inner_.scan(f, fn);
  }
  store_stats stats() const override { return inner_.stats(); }
  bool cut_ = false;

private:
  store& inner_;
};

class actor_fixture : public ::testing::Test {
protected:
  actor_fixture();
  ~actor_fixture() override;

  /// Builds the actor system and the registry, and rehydrates what the store
  /// holds.
  void start();
  /// Drops the actor system without letting it write anything more.
  void crash();
  void restart() {
    crash();
    start();
  }

  void run();
  void advance(int64_t ms);

  /// Puts `client` (a real provider) behind the `local` account instead of
  /// the fake one, with per-session SSH keys; restarts the (empty) graph.
  void use_client(std::shared_ptr<provider> client);

  /// Sends a request to the registry, runs the scheduler, returns the reply.
  template <class T, class... Ts>
  caf::expected<T> ask(Ts&&... xs) {
    caf::expected<T> result{caf::error{}};
    auto h = (*self_)->request(registry_, caf::infinite, std::forward<Ts>(xs)...);
    run();
    bool got = false;
    h.receive([&](T& x) { result = std::move(x), got = true; },
              [&](caf::error& err) { result = std::move(err), got = true; });
    EXPECT_TRUE(got);
    return result;
  }

  /// Launches a session with the given guards and returns its record.
  session_record launch(int64_t idle_s = 800, int64_t hard_s = 8 * 3600,
                        bool auto_destroy = true);
  session_record stored(const std::string& id);
  session_record snapshot(const std::string& id);

  manual_clock clock_;
  std::unique_ptr<store> db_ = make_memory_store();
  std::unique_ptr<crashable_store> gate_;
  std::shared_ptr<fake_provider> provider_ = std::make_shared<fake_provider>();
  std::shared_ptr<provider> client_; // when set, used instead of provider_
  bool ssh_keys_ = false;
  inline_executor blocking_;
  std::string home_;
  std::vector<event> events_;

  caf::actor_system_config cfg_;
  std::unique_ptr<caf::actor_system> sys_;
  std::unique_ptr<caf::scoped_actor> self_;
  caf::actor registry_;
};

} // namespace aloft::testing
