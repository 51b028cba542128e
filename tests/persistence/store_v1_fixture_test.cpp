// Upgrade from a stored schema-1 RocksDB store.
//
// tests/fixtures/persistence/store-v1.tar holds a directory `store-v1/` as a
// schema-1 Aloft left it: meta/schema_version = "1", an installation id, and
// two v1 session records. It is regenerated (rarely, and only on purpose) by
//   ./test_persistence --gtest_also_run_disabled_tests
//       --gtest_filter=store_v1_fixture.DISABLED_generate
// (one command line) which rewrites the tar in the source tree. The real
// test never writes it.

#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>

#include <gtest/gtest.h>

#include "engine/base/error.hpp"
#include "engine/session_record.hpp"
#include "persistence/store.hpp"
#include "tests/persistence/stored_value.hpp"
#include "tests/persistence/temp_dir.hpp"

namespace aloft {
namespace {

const std::string fixture_tar =
    std::string{ALOFT_SOURCE_DIR} + "/tests/fixtures/persistence/store-v1.tar";
const std::string fixture_installation_id = "i-0123456789abcdef";

// A live session of a v1 build: the agent is still running on its VM.
const char* const v1_running =
    R"({"v":1,"id":"s-00000000000a","account":"local","provider":"local",)"
    R"("state":"running","idempotency_key":"k-1111","vm_id":"vm-a","host":"127.0.0.1",)"
    R"("port":2222,"user":"aloft","workdir":"/home/aloft/work","agent_cmd":"claude",)"
    R"("worktree":"/src/app","exit_code":-1,"log_offset":4096,"idle_timeout_ms":600000,)"
    R"("created_at":1700000000000,"idle_deadline":1700000600000,)"
    R"("hard_deadline":1700028800000})";

// A finished session of a v1 build whose agent exited with code 2.
const char* const v1_destroyed =
    R"({"v":1,"id":"s-00000000000b","account":"fly-main","provider":"fly",)"
    R"("state":"destroyed","idempotency_key":"k-2222","vm_id":"vm-b","host":"10.0.0.7",)"
    R"("port":22,"user":"root","workdir":"/work","agent_cmd":"codex","worktree":"/src/lib",)"
    R"("exit_code":2,"log_offset":123,"idle_timeout_ms":800000,)"
    R"("created_at":1700000001000,"idle_deadline":1700000801000,)"
    R"("hard_deadline":1700028801000})";

std::string quoted(const std::string& s) {
  return "'" + s + "'";
}

TEST(store_v1_fixture, DISABLED_generate) {
  test::temp_dir dir;
  {
    auto opened = open_rocksdb_store(dir.sub("store-v1"));
    ASSERT_TRUE(opened) << describe(opened.error());
    write_batch batch;
    batch.push_back({family::meta, "schema_version", "1"});
    batch.push_back({family::meta, "installation_id", fixture_installation_id});
    batch.push_back({family::sessions, "s-00000000000a", v1_running});
    batch.push_back({family::sessions, "s-00000000000b", v1_destroyed});
    ASSERT_FALSE((*opened)->commit_and_wait(std::move(batch)));
  }
  // Keep the fixture small: the info LOGs are for people and the OPTIONS
  // files (32 KB each) only record settings; RocksDB needs neither to open.
  // What is left (CURRENT, IDENTITY, MANIFEST, the WAL) is the data.
  for (auto& entry : std::filesystem::directory_iterator(dir.sub("store-v1"))) {
    auto name = entry.path().filename().string();
    if (name.rfind("LOG", 0) == 0 || name.rfind("OPTIONS", 0) == 0)
      std::filesystem::remove(entry.path());
  }
  // Stable bytes: sorted names, no owner or time from this machine.
  auto cmd = "tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "
             + quoted(dir.path()) + " -cf " + quoted(fixture_tar) + " store-v1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

TEST(store_v1_fixture, opens_upgrades_meta_and_decodes_v1_sessions) {
  ASSERT_TRUE(std::filesystem::exists(fixture_tar)) << fixture_tar;
  test::temp_dir dir;
  auto cmd = "tar -xf " + quoted(fixture_tar) + " -C " + quoted(dir.path());
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;

  auto opened = open_rocksdb_store(dir.sub("store-v1"));
  ASSERT_TRUE(opened) << describe(opened.error());
  store& s = **opened;
  ASSERT_EQ(test::stored_value(s, family::meta, "schema_version"), "1");

  auto id = open_meta(s);
  ASSERT_TRUE(id) << describe(id.error());
  EXPECT_EQ(*id, fixture_installation_id);
  EXPECT_EQ(test::stored_value(s, family::meta, "schema_version"),
            std::to_string(schema_version));
  EXPECT_EQ(test::stored_value(s, family::meta, "installation_id"),
            fixture_installation_id);

  std::map<std::string, session_record> records;
  ASSERT_FALSE(
      s.scan(family::sessions, [&](const std::string& key, const std::string& value) {
        auto r = decode_session_record(value);
        ASSERT_TRUE(r) << key << ": " << describe(r.error());
        EXPECT_EQ(r->id, key);
        records.emplace(key, *r);
      }));
  ASSERT_EQ(records.size(), 2u);

  auto& running = records.at("s-00000000000a");
  EXPECT_EQ(running.version, session_record::current_version);
  EXPECT_EQ(running.state, session_state::running);
  EXPECT_TRUE(running.auto_destroy);
  EXPECT_EQ(running.exit_code, -1);
  EXPECT_EQ(running.agent_status, agent_status::running); // no exit code, VM running
  EXPECT_EQ(running.account, "local");
  EXPECT_EQ(running.idempotency_key, "k-1111");
  EXPECT_EQ(running.vm_id, "vm-a");
  EXPECT_EQ(running.host, "127.0.0.1");
  EXPECT_EQ(running.port, 2222);
  EXPECT_EQ(running.workdir, "/home/aloft/work");
  EXPECT_EQ(running.log_offset, 4096u);
  EXPECT_EQ(running.idle_timeout_ms, 600000);
  EXPECT_EQ(running.idle_deadline, 1700000600000);
  EXPECT_EQ(running.hard_deadline, 1700028800000);

  auto& destroyed = records.at("s-00000000000b");
  EXPECT_EQ(destroyed.state, session_state::destroyed);
  EXPECT_TRUE(destroyed.auto_destroy);
  EXPECT_EQ(destroyed.exit_code, 2);
  EXPECT_EQ(destroyed.agent_status, agent_status::failed); // non-zero exit code
  EXPECT_EQ(destroyed.provider, "fly");
  EXPECT_EQ(destroyed.agent_cmd, "codex");
  EXPECT_EQ(destroyed.created_at, 1700000001000);

  // The upgrade is durable and idempotent.
  opened->reset();
  auto reopened = open_rocksdb_store(dir.sub("store-v1"));
  ASSERT_TRUE(reopened) << describe(reopened.error());
  auto again = open_meta(**reopened);
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, fixture_installation_id);
  EXPECT_EQ(test::stored_value(**reopened, family::meta, "schema_version"),
            std::to_string(schema_version));
}

} // namespace
} // namespace aloft
