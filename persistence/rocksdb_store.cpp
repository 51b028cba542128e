// The RocksDB store: one column family per `family`, and one writer thread
// that group-commits.
//
// Why a writer thread: a synced write costs about 0.5 ms here, so one fsync
// per transition would cap the whole engine at ~2 k transitions/s. The writer
// takes every batch queued while the previous fsync was in flight, writes
// them as one rocksdb::WriteBatch with sync=true, then runs their callbacks.
// N concurrent commits therefore share one fsync, and each batch stays atomic
// because the combined batch is.
//
// Concurrency: commit() may be called from any thread; it only appends to a
// queue under a mutex. The writer thread is the only thread that writes to
// RocksDB and the only one that runs commit callbacks, in commit order.
// get() and scan() go straight to RocksDB, which is thread-safe for reads.
// The destructor drains the queue (every queued callback runs), stops the
// writer and closes the database; it must not race with other calls.
//
// This is the only file that includes RocksDB headers.

#include "persistence/store.hpp"

#include <pthread.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/status.h>
#include <rocksdb/write_batch.h>

#include "engine/base/error.hpp"

namespace aloft {

namespace {

constexpr size_t family_count = static_cast<size_t>(family::quarantine) + 1;

bool is_known(family f) {
  return static_cast<size_t>(f) < family_count;
}

/// Converts a RocksDB status into an Aloft error; the one place that knows
/// RocksDB's codes. `what` names the operation ("store: open /x").
caf::error from_rocksdb(const rocksdb::Status& s, const std::string& what) {
  if (s.ok())
    return {};
  auto text = what + ": " + s.ToString();
  // RocksDB reports a held LOCK file as a plain IOError: "lock hold by
  // current process" within this process, "While lock file" (EAGAIN) from
  // another one. Either way, retrying after the holder exits may succeed.
  auto state = s.getState() != nullptr ? std::string{s.getState()} : std::string{};
  bool lock_held = s.IsIOError()
                   && (state.find("lock hold by current process") != std::string::npos
                       || state.find("While lock file") != std::string::npos);
  if (lock_held || s.IsBusy() || s.IsLockLimit())
    return make_error(errc::unavailable,
                      text + " (another Aloft daemon may be using this store)");
  switch (s.code()) {
  case rocksdb::Status::kNotFound:
    return make_error(errc::not_found, text);
  case rocksdb::Status::kCorruption:
    return make_error(errc::data_loss, text);
  case rocksdb::Status::kNotSupported:
    return make_error(errc::unimplemented, text);
  case rocksdb::Status::kInvalidArgument:
    return make_error(errc::invalid_argument, text);
  case rocksdb::Status::kIOError:
    if (s.IsNoSpace() || s.subcode() == rocksdb::Status::kSpaceLimit)
      return make_error(errc::resource_exhausted, text);
    if (s.IsPathNotFound())
      return make_error(errc::not_found, text);
    return make_error(errc::internal, text);
  case rocksdb::Status::kTimedOut:
    return make_error(errc::deadline_exceeded, text);
  case rocksdb::Status::kShutdownInProgress:
  case rocksdb::Status::kTryAgain:
    return make_error(errc::unavailable, text);
  case rocksdb::Status::kAborted:
    if (s.IsMemoryLimit())
      return make_error(errc::resource_exhausted, text);
    return make_error(errc::aborted, text);
  case rocksdb::Status::kIncomplete:
  case rocksdb::Status::kMergeInProgress:
    return make_error(errc::aborted, text);
  case rocksdb::Status::kColumnFamilyDropped:
    return make_error(errc::failed_precondition, text);
  default:
    return make_error(errc::internal, text);
  }
}

class rocksdb_store final : public store {
public:
  rocksdb_store(rocksdb::DB* db, std::vector<rocksdb::ColumnFamilyHandle*> handles,
                std::array<rocksdb::ColumnFamilyHandle*, family_count> by_family)
      : db_(db), handles_(std::move(handles)), by_family_(by_family) {
    writer_ = std::thread{[this] { run_writer(); }};
  }

  ~rocksdb_store() override {
    {
      std::lock_guard<std::mutex> guard{mtx_};
      stopping_ = true;
    }
    wake_.notify_one();
    writer_.join();
    for (auto* handle : handles_)
      ignore_error(from_rocksdb(db_->DestroyColumnFamilyHandle(handle), "store: close"));
    // Every write was synced before its callback ran, so a failing close
    // loses nothing that was acknowledged.
    ignore_error(from_rocksdb(db_->Close(), "store: close"));
    delete db_;
  }

  void commit(write_batch batch, std::function<void(caf::error)> done) override {
    {
      std::lock_guard<std::mutex> guard{mtx_};
      if (!closed_) {
        queue_.push_back(pending{std::move(batch), std::move(done)});
        // Only the empty -> non-empty edge needs a wake-up: otherwise the
        // writer is busy and will look at the queue before it waits again.
        if (queue_.size() == 1)
          wake_.notify_one();
        return;
      }
    }
    // Only reachable when a commit races with destruction, which callers
    // must not do; answer rather than drop the callback.
    if (done)
      done(make_error(errc::cancelled, "store: commit after close"));
  }

  caf::expected<std::string> get(family f, const std::string& key) override {
    if (!is_known(f))
      return make_error(errc::invalid_argument, "store: get: unknown family");
    std::string value;
    auto s = db_->Get(rocksdb::ReadOptions{}, handle(f), key, &value);
    if (s.IsNotFound())
      return make_error(errc::not_found,
                        std::string{"store: "} + to_string(f) + "/" + key + " not found");
    if (!s.ok())
      return from_rocksdb(s, std::string{"store: get "} + to_string(f) + "/" + key);
    return value;
  }

  caf::error
  scan(family f,
       const std::function<void(const std::string& key, const std::string& value)>& fn)
      override {
    if (!is_known(f))
      return make_error(errc::invalid_argument, "store: scan: unknown family");
    // The iterator reads a consistent snapshot taken when it is created.
    std::unique_ptr<rocksdb::Iterator> it{
        db_->NewIterator(rocksdb::ReadOptions{}, handle(f))};
    std::string key;
    std::string value;
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      key.assign(it->key().data(), it->key().size());
      value.assign(it->value().data(), it->value().size());
      fn(key, value);
    }
    return from_rocksdb(it->status(), std::string{"store: scan "} + to_string(f));
  }

  store_stats stats() const override {
    store_stats result;
    result.batches = batches_.load(std::memory_order_relaxed);
    result.synced_writes = synced_writes_.load(std::memory_order_relaxed);
    return result;
  }

private:
  struct pending {
    write_batch batch;
    std::function<void(caf::error)> done;
  };

  rocksdb::ColumnFamilyHandle* handle(family f) const {
    return by_family_[static_cast<size_t>(f)];
  }

  // Adds `batch` to `out`; returns false (adding nothing) when an op names an
  // unknown family, so one bad batch cannot fail its neighbours.
  bool append(const write_batch& batch, rocksdb::WriteBatch& out) {
    for (auto& op : batch)
      if (!is_known(op.family))
        return false;
    for (auto& op : batch) {
      rocksdb::Status s = op.erase ? out.Delete(handle(op.family), op.key)
                                   : out.Put(handle(op.family), op.key, op.value);
      // Put/Delete into a batch only fail past WriteBatch's 4 GiB limit; that
      // error would surface again from Write.
      ignore_error(from_rocksdb(s, "store: batch"));
    }
    return true;
  }

  void run_writer() {
    pthread_setname_np(pthread_self(), "aloft-store");
    // Reused across rounds so the hot path keeps its buffers: `taken` keeps
    // its capacity through swap/clear, `combined` its string through Clear.
    std::vector<pending> taken;
    std::vector<bool> rejected;
    rocksdb::WriteBatch combined;
    rocksdb::WriteOptions sync_write;
    sync_write.sync = true;
    const caf::error bad_family = make_error(
        errc::invalid_argument, "store: commit: batch names an unknown family");
    for (;;) {
      {
        std::unique_lock<std::mutex> guard{mtx_};
        wake_.wait(guard, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) {
          // Stopping and drained: later commits are answered by commit().
          closed_ = true;
          return;
        }
        taken.swap(queue_);
      }
      combined.Clear();
      rejected.assign(taken.size(), false);
      uint64_t accepted = 0;
      for (size_t i = 0; i < taken.size(); ++i) {
        if (append(taken[i].batch, combined))
          ++accepted;
        else
          rejected[i] = true;
      }
      caf::error result;
      // An empty group (only empty or rejected batches) is trivially durable:
      // everything before it was synced before its own callback ran.
      if (combined.Count() > 0) {
        result = from_rocksdb(db_->Write(sync_write, &combined), "store: commit");
        if (!result)
          synced_writes_.fetch_add(1, std::memory_order_relaxed);
      }
      if (!result)
        batches_.fetch_add(accepted, std::memory_order_relaxed);
      for (size_t i = 0; i < taken.size(); ++i)
        if (taken[i].done)
          taken[i].done(rejected[i] ? bad_family : result);
      taken.clear();
    }
  }

  rocksdb::DB* db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_; // every open family, to close
  std::array<rocksdb::ColumnFamilyHandle*, family_count> by_family_;

  std::mutex mtx_;
  std::condition_variable wake_;
  std::vector<pending> queue_; // guarded by mtx_
  bool stopping_ = false;      // guarded by mtx_
  bool closed_ = false;        // guarded by mtx_; the writer has exited
  std::thread writer_;

  std::atomic<uint64_t> batches_{0};
  std::atomic<uint64_t> synced_writes_{0};
};

} // namespace

caf::expected<std::unique_ptr<store>> open_rocksdb_store(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    return from_errno(ec.value(), "store: create " + dir);

  rocksdb::Options options;
  options.create_if_missing = true;
  options.create_missing_column_families = true;
  // The info LOG is for people debugging; keep a few small ones.
  options.keep_log_file_num = 4;
  options.max_log_file_size = 1 << 20;

  // RocksDB refuses to open unless every existing column family is named,
  // so also open those this build does not know (written by a newer one).
  std::vector<std::string> names;
  if (std::filesystem::exists(std::filesystem::path{dir} / "CURRENT", ec)) {
    auto s = rocksdb::DB::ListColumnFamilies(options, dir, &names);
    if (!s.ok())
      return from_rocksdb(s, "store: open " + dir);
  }
  auto add_name = [&names](const std::string& name) {
    for (auto& existing : names)
      if (existing == name)
        return;
    names.push_back(name);
  };
  add_name(rocksdb::kDefaultColumnFamilyName);
  for (size_t i = 0; i < family_count; ++i)
    add_name(to_string(static_cast<family>(i)));

  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (auto& name : names)
    descriptors.emplace_back(name, rocksdb::ColumnFamilyOptions{options});
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  auto s =
      rocksdb::DB::Open(rocksdb::DBOptions{options}, dir, descriptors, &handles, &db);
  if (!s.ok())
    return from_rocksdb(s, "store: open " + dir);

  std::array<rocksdb::ColumnFamilyHandle*, family_count> by_family{};
  for (size_t i = 0; i < family_count; ++i)
    for (size_t j = 0; j < names.size(); ++j)
      if (names[j] == to_string(static_cast<family>(i)))
        by_family[i] = handles[j];
  return std::unique_ptr<store>{new rocksdb_store(db, std::move(handles), by_family)};
}

} // namespace aloft
