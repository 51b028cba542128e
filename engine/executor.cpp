#include "engine/executor.hpp"

namespace aloft {

thread_pool::thread_pool(size_t threads) {
  if (threads == 0)
    threads = 1;
  for (size_t i = 0; i < threads; ++i)
    threads_.emplace_back([this] { run(); });
}

thread_pool::~thread_pool() {
  {
    std::lock_guard<std::mutex> guard{mtx_};
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_)
    t.join();
}

void thread_pool::post(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> guard{mtx_};
    queue_.push_back(std::move(fn));
  }
  cv_.notify_one();
}

void thread_pool::run() {
  for (;;) {
    std::function<void()> fn;
    {
      std::unique_lock<std::mutex> guard{mtx_};
      cv_.wait(guard, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty())
        return;
      fn = std::move(queue_.front());
      queue_.pop_front();
    }
    fn();
  }
}

} // namespace aloft
