// The store contract, run against every store: the in-memory one and the
// RocksDB one. What one store does here, all stores must do.

#include <atomic>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "engine/base/error.hpp"
#include "engine/session_record.hpp"
#include "persistence/store.hpp"
#include "tests/persistence/stored_value.hpp"
#include "tests/persistence/temp_dir.hpp"

namespace aloft {
namespace {

constexpr family all_families[] = {family::meta,     family::sessions,
                                   family::accounts, family::sync_jobs,
                                   family::events,   family::quarantine};

struct memory_kind {
  static std::unique_ptr<store> open(const std::string&) { return make_memory_store(); }
};

struct rocksdb_kind {
  static std::unique_ptr<store> open(const std::string& dir) {
    auto opened = open_rocksdb_store(dir);
    if (!opened) {
      ADD_FAILURE() << describe(opened.error());
      return nullptr;
    }
    return std::move(*opened);
  }
};

template <class Kind> class store_contract : public ::testing::Test {
protected:
  void SetUp() override {
    store_ = Kind::open(dir_.sub("store"));
    ASSERT_NE(store_, nullptr);
  }

  void put(family f, std::string key, std::string value) {
    write_batch batch;
    batch.push_back({f, std::move(key), std::move(value)});
    ASSERT_FALSE(store_->commit_and_wait(std::move(batch)));
  }

  std::vector<std::pair<std::string, std::string>> scan_all(family f) {
    std::vector<std::pair<std::string, std::string>> out;
    auto err = store_->scan(f, [&out](const std::string& k, const std::string& v) {
      out.emplace_back(k, v);
    });
    EXPECT_FALSE(err) << describe(err);
    return out;
  }

  // Declared first so that it outlives the store in it.
  test::temp_dir dir_;
  std::unique_ptr<store> store_;
};

using store_kinds = ::testing::Types<memory_kind, rocksdb_kind>;

class store_kind_names {
public:
  template <class T> static std::string GetName(int) {
    return std::is_same_v<T, memory_kind> ? "memory" : "rocksdb";
  }
};

TYPED_TEST_SUITE(store_contract, store_kinds, store_kind_names);

TYPED_TEST(store_contract, put_then_get_in_each_family) {
  for (auto f : all_families)
    this->put(f, "key", std::string{"value in "} + to_string(f));
  for (auto f : all_families) {
    auto value = this->store_->get(f, "key");
    ASSERT_TRUE(value) << describe(value.error());
    EXPECT_EQ(*value, std::string{"value in "} + to_string(f));
  }
}

TYPED_TEST(store_contract, families_do_not_share_keys) {
  this->put(family::sessions, "only-here", "x");
  auto elsewhere = this->store_->get(family::events, "only-here");
  ASSERT_FALSE(elsewhere);
  EXPECT_EQ(code_of(elsewhere.error()), errc::not_found);
  EXPECT_TRUE(this->scan_all(family::accounts).empty());
}

TYPED_TEST(store_contract, get_of_a_missing_key_is_not_found) {
  auto value = this->store_->get(family::meta, "absent");
  ASSERT_FALSE(value);
  EXPECT_EQ(code_of(value.error()), errc::not_found);
}

TYPED_TEST(store_contract, scan_visits_keys_in_order_per_family) {
  write_batch batch;
  batch.push_back({family::events, "b", "2"});
  batch.push_back({family::events, "a", "1"});
  batch.push_back({family::events, "c", "3"});
  batch.push_back({family::sync_jobs, "z", "other family"});
  ASSERT_FALSE(this->store_->commit_and_wait(std::move(batch)));
  using kv = std::pair<std::string, std::string>;
  EXPECT_EQ(this->scan_all(family::events),
            (std::vector<kv>{{"a", "1"}, {"b", "2"}, {"c", "3"}}));
  EXPECT_EQ(this->scan_all(family::sync_jobs), (std::vector<kv>{{"z", "other family"}}));
}

TYPED_TEST(store_contract, erase_removes_a_key_and_tolerates_absent_ones) {
  for (auto f : all_families)
    this->put(f, "doomed", "x");
  for (auto f : all_families) {
    write_batch batch;
    batch.push_back({f, "doomed", "", true});
    batch.push_back({f, "never-written", "", true});
    ASSERT_FALSE(this->store_->commit_and_wait(std::move(batch)));
    auto value = this->store_->get(f, "doomed");
    ASSERT_FALSE(value) << to_string(f);
    EXPECT_EQ(code_of(value.error()), errc::not_found);
    EXPECT_TRUE(this->scan_all(f).empty());
  }
}

TYPED_TEST(store_contract, a_batch_puts_and_erases_together) {
  this->put(family::sessions, "old", "1");
  write_batch batch;
  batch.push_back({family::sessions, "old", "", true});
  batch.push_back({family::sessions, "new", "2"});
  batch.push_back({family::events, "e1", "moved"});
  ASSERT_FALSE(this->store_->commit_and_wait(std::move(batch)));
  using kv = std::pair<std::string, std::string>;
  EXPECT_EQ(this->scan_all(family::sessions), (std::vector<kv>{{"new", "2"}}));
  EXPECT_EQ(this->scan_all(family::events), (std::vector<kv>{{"e1", "moved"}}));
}

TYPED_TEST(store_contract, a_batch_naming_an_unknown_family_is_refused_whole) {
  write_batch batch;
  batch.push_back({family::sessions, "good", "1"});
  batch.push_back({static_cast<family>(99), "bad", "2"});
  auto err = this->store_->commit_and_wait(std::move(batch));
  EXPECT_EQ(code_of(err), errc::invalid_argument) << describe(err);
  EXPECT_FALSE(this->store_->get(family::sessions, "good"));
  // The store still works afterwards.
  this->put(family::sessions, "after", "ok");
  EXPECT_TRUE(this->store_->get(family::sessions, "after"));
}

TYPED_TEST(store_contract, reads_of_an_unknown_family_are_invalid_argument) {
  auto value = this->store_->get(static_cast<family>(42), "k");
  ASSERT_FALSE(value);
  EXPECT_EQ(code_of(value.error()), errc::invalid_argument);
  auto err = this->store_->scan(static_cast<family>(42),
                                [](const std::string&, const std::string&) {});
  EXPECT_EQ(code_of(err), errc::invalid_argument);
}

TYPED_TEST(store_contract, an_empty_batch_commits) {
  EXPECT_FALSE(this->store_->commit_and_wait({}));
}

TYPED_TEST(store_contract, callbacks_run_in_commit_order_and_the_last_write_wins) {
  constexpr int count = 300;
  std::vector<int> order;
  std::mutex order_mtx;
  std::atomic<int> failures{0};
  std::promise<void> all_done;
  for (int i = 0; i < count; ++i) {
    write_batch batch;
    batch.push_back({family::sessions, "same-key", std::to_string(i)});
    this->store_->commit(std::move(batch), [&, i](caf::error err) {
      if (err)
        ++failures;
      std::lock_guard<std::mutex> guard{order_mtx};
      order.push_back(i);
      if (order.size() == static_cast<size_t>(count))
        all_done.set_value();
    });
  }
  all_done.get_future().wait();
  EXPECT_EQ(failures.load(), 0);
  for (int i = 0; i < count; ++i)
    ASSERT_EQ(order[i], i);
  auto value = this->store_->get(family::sessions, "same-key");
  ASSERT_TRUE(value);
  EXPECT_EQ(*value, std::to_string(count - 1));
}

TYPED_TEST(store_contract, stats_count_every_committed_batch) {
  for (int i = 0; i < 10; ++i)
    this->put(family::events, "e" + std::to_string(i), "x");
  auto stats = this->store_->stats();
  EXPECT_EQ(stats.batches, 10u);
  EXPECT_GE(stats.synced_writes, 1u);
  EXPECT_LE(stats.synced_writes, stats.batches);
}

// The store does not interpret values: decoding, and quarantining what does
// not decode, is the caller's job.
TYPED_TEST(store_contract, a_corrupt_session_value_is_returned_raw) {
  static const char raw[] = "{\"v\":1,\"id\":\"s-0\0\xff trunc";
  const std::string garbage{raw, sizeof(raw) - 1}; // keeps the NUL byte
  this->put(family::sessions, "s-000000000000", garbage);
  auto rows = this->scan_all(family::sessions);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].first, "s-000000000000");
  EXPECT_EQ(rows[0].second, garbage);
  auto decoded = decode_session_record(rows[0].second);
  ASSERT_FALSE(decoded);
  EXPECT_EQ(code_of(decoded.error()), errc::data_loss);
}

TYPED_TEST(store_contract, open_meta_writes_version_and_id_on_first_open) {
  auto id = open_meta(*this->store_);
  ASSERT_TRUE(id) << describe(id.error());
  EXPECT_EQ(id->rfind("i-", 0), 0u) << *id;
  auto version = this->store_->get(family::meta, "schema_version");
  ASSERT_TRUE(version);
  EXPECT_EQ(*version, std::to_string(schema_version));
  auto stored = this->store_->get(family::meta, "installation_id");
  ASSERT_TRUE(stored);
  EXPECT_EQ(*stored, *id);
}

TYPED_TEST(store_contract, open_meta_returns_the_same_id_every_time) {
  auto first = open_meta(*this->store_);
  ASSERT_TRUE(first);
  auto second = open_meta(*this->store_);
  ASSERT_TRUE(second);
  EXPECT_EQ(*first, *second);
}

TYPED_TEST(store_contract, open_meta_refuses_a_newer_schema) {
  this->put(family::meta, "schema_version", std::to_string(schema_version + 1));
  this->put(family::meta, "installation_id", "i-0000000000000001");
  auto id = open_meta(*this->store_);
  ASSERT_FALSE(id);
  EXPECT_EQ(code_of(id.error()), errc::failed_precondition) << describe(id.error());
  // Refusing must not rewrite what the newer build stored.
  EXPECT_EQ(test::stored_value(*this->store_, family::meta, "schema_version"),
            std::to_string(schema_version + 1));
}

TYPED_TEST(store_contract, open_meta_upgrades_an_older_schema_and_keeps_the_id) {
  this->put(family::meta, "schema_version", "1");
  this->put(family::meta, "installation_id", "i-00000000000000aa");
  auto id = open_meta(*this->store_);
  ASSERT_TRUE(id) << describe(id.error());
  EXPECT_EQ(*id, "i-00000000000000aa");
  EXPECT_EQ(test::stored_value(*this->store_, family::meta, "schema_version"),
            std::to_string(schema_version));
}

} // namespace
} // namespace aloft
