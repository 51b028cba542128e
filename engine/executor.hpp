// Where blocking work runs: a bounded pool of threads, never the actor
// scheduler.
//
// Actors hand blocking calls (a process spawn, a provider call that has no
// non-blocking form) to an executor and receive the result as a message. The
// pool's size is fixed at construction, so threads do not grow with the
// number of sessions. `inline_executor` runs work on the caller's thread, for
// deterministic tests.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace aloft {

class executor {
public:
  virtual ~executor() = default;
  /// Runs `fn` eventually. Thread-safe.
  virtual void post(std::function<void()> fn) = 0;
};

class thread_pool final : public executor {
public:
  explicit thread_pool(size_t threads);
  /// Finishes queued work, then joins the threads.
  ~thread_pool() override;
  void post(std::function<void()> fn) override;
  size_t size() const { return threads_.size(); }

private:
  void run();

  std::mutex mtx_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

class inline_executor final : public executor {
public:
  void post(std::function<void()> fn) override { fn(); }
};

} // namespace aloft
