// The in-memory store: a std::map per family under one mutex. For tests and
// for embedding without durability.
//
// Concurrency: every call is thread-safe. commit() applies the batch
// atomically under the mutex and then runs the callback inline on the
// calling thread, after releasing the mutex (so a callback that reads the
// store does not deadlock). scan() iterates a snapshot copy taken under the
// mutex, so `fn` may call back into the store.

#include "persistence/store.hpp"

#include <array>
#include <map>
#include <mutex>

#include "engine/base/error.hpp"

namespace aloft {

namespace {

constexpr size_t family_count = static_cast<size_t>(family::quarantine) + 1;

bool is_known(family f) {
  return static_cast<size_t>(f) < family_count;
}

class memory_store final : public store {
public:
  void commit(write_batch batch, std::function<void(caf::error)> done) override {
    caf::error result;
    {
      std::lock_guard<std::mutex> guard{mtx_};
      // Validate first: a batch is applied whole or not at all.
      for (auto& op : batch)
        if (!is_known(op.family))
          result = make_error(errc::invalid_argument,
                              "store: commit: batch names an unknown family");
      if (!result) {
        for (auto& op : batch) {
          auto& table = tables_[static_cast<size_t>(op.family)];
          if (op.erase)
            table.erase(op.key);
          else
            table[std::move(op.key)] = std::move(op.value);
        }
        ++stats_.batches;
        // One "synced write" per batch: nothing is grouped here.
        ++stats_.synced_writes;
      }
    }
    if (done)
      done(std::move(result));
  }

  caf::expected<std::string> get(family f, const std::string& key) override {
    if (!is_known(f))
      return make_error(errc::invalid_argument, "store: get: unknown family");
    std::lock_guard<std::mutex> guard{mtx_};
    auto& table = tables_[static_cast<size_t>(f)];
    auto i = table.find(key);
    if (i == table.end())
      return make_error(errc::not_found,
                        std::string{"store: "} + to_string(f) + "/" + key + " not found");
    return i->second;
  }

  caf::error
  scan(family f,
       const std::function<void(const std::string& key, const std::string& value)>& fn)
      override {
    if (!is_known(f))
      return make_error(errc::invalid_argument, "store: scan: unknown family");
    std::map<std::string, std::string> snapshot;
    {
      std::lock_guard<std::mutex> guard{mtx_};
      snapshot = tables_[static_cast<size_t>(f)];
    }
    for (auto& [key, value] : snapshot)
      fn(key, value);
    return {};
  }

  store_stats stats() const override {
    std::lock_guard<std::mutex> guard{mtx_};
    return stats_;
  }

private:
  mutable std::mutex mtx_;
  std::array<std::map<std::string, std::string>, family_count> tables_; // guarded by mtx_
  store_stats stats_;                                                   // guarded by mtx_
};

} // namespace

std::unique_ptr<store> make_memory_store() {
  return std::make_unique<memory_store>();
}

} // namespace aloft
