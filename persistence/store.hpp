// The store seam: Aloft's durable state.
//
// A store holds records in families (RocksDB column families in the real
// one). Writes are batches committed atomically and durably (synced) before
// their callback runs; a store may combine batches that arrive while a sync
// is in flight into one synced write (group commit), so durability does not
// cap throughput. Reads see every committed batch.
//
// Secrets are never written here.
//
// Thread-safe. Commit callbacks run on the store's writer thread (or inline,
// for the in-memory store): keep them short and do not call back into the
// store from them.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace aloft {

enum class family : uint8_t {
  meta,      // schema_version, installation_id
  sessions,  // session id -> session_record JSON
  accounts,  // account name -> account JSON (reserved for the accounts work)
  sync_jobs, // job id -> sync job JSON (reserved for the sync work)
  events,    // event_key(seq) -> event JSON
  quarantine // session id -> the raw bytes of a record that did not decode
};

const char* to_string(family f);

struct write_op {
  aloft::family family;
  std::string key;
  std::string value;
  bool erase = false;
};

using write_batch = std::vector<write_op>;

struct store_stats {
  uint64_t batches = 0;      // batches committed
  uint64_t synced_writes = 0; // synced writes (fsyncs) that carried them
};

class store {
public:
  virtual ~store() = default;

  /// Commits `batch` atomically and durably, then calls `done` with the
  /// outcome. REQUIRES: `done` is not empty.
  virtual void commit(write_batch batch, std::function<void(caf::error)> done) = 0;

  /// Commits and waits. Not for actors.
  caf::error commit_and_wait(write_batch batch);

  /// Reads one value; `not_found` when absent.
  virtual caf::expected<std::string> get(family f, const std::string& key) = 0;

  /// Calls `fn` for every key of `f` in key order.
  virtual caf::error scan(family f,
                          const std::function<void(const std::string& key,
                                                   const std::string& value)>& fn) = 0;

  virtual store_stats stats() const = 0;
};

/// Current schema version, stored under meta/schema_version.
constexpr int schema_version = 2;

/// Reads the installation id and checks the schema version, writing both on
/// first use. Errors: `failed_precondition` when the store was written by a
/// newer schema.
caf::expected<std::string> open_meta(store& s);

/// Opens (creating if needed) a RocksDB store in `dir`.
caf::expected<std::unique_ptr<store>> open_rocksdb_store(const std::string& dir);

/// An in-memory store whose commits complete inline. For tests.
std::unique_ptr<store> make_memory_store();

} // namespace aloft
