#include "engine/session_record.hpp"

#include <gtest/gtest.h>

#include "engine/base/error.hpp"
#include "engine/base/ids.hpp"

namespace aloft {
namespace {

TEST(session_record, encodes_and_decodes_every_field) {
  session_record r;
  r.id = make_session_id();
  r.account = "local";
  r.provider = "local";
  r.state = session_state::running;
  r.idempotency_key = make_idempotency_key();
  r.vm_id = "vm-1";
  r.host = "127.0.0.1";
  r.port = 40022;
  r.agent_status = agent_status::failed;
  r.exit_code = 3;
  r.log_offset = 1234;
  r.auto_destroy = false;
  r.idle_deadline = 100;
  r.hard_deadline = 200;
  r.last_activity = "cpu";
  r.transitions = 4;
  auto back = decode_session_record(encode_session_record(r));
  ASSERT_TRUE(back) << describe(back.error());
  EXPECT_EQ(to_json(*back), to_json(r));
}

TEST(session_record, corrupt_values_are_data_loss) {
  for (auto text : {"not json", "[]", R"({"v":9,"id":"s-1"})", R"({"v":2})",
                    R"({"v":2,"id":"s-1","state":"flying"})",
                    R"({"v":2,"id":"s-1","state":"running","port":70000})"}) {
    auto r = decode_session_record(text);
    ASSERT_FALSE(r) << text;
    EXPECT_EQ(code_of(r.error()), errc::data_loss) << text;
  }
}

TEST(session_state, transitions_follow_the_vm_life) {
  using st = session_state;
  EXPECT_TRUE(is_allowed_transition(st::pending, st::provisioning));
  EXPECT_TRUE(is_allowed_transition(st::provisioning, st::booting));
  EXPECT_TRUE(is_allowed_transition(st::booting, st::running));
  EXPECT_TRUE(is_allowed_transition(st::running, st::stopping));
  EXPECT_TRUE(is_allowed_transition(st::stopping, st::destroyed));
  EXPECT_TRUE(is_allowed_transition(st::running, st::lost));
  EXPECT_TRUE(is_allowed_transition(st::lost, st::stopping));
  EXPECT_TRUE(is_allowed_transition(st::booting, st::failed));
  EXPECT_FALSE(is_allowed_transition(st::pending, st::running));
  EXPECT_FALSE(is_allowed_transition(st::destroyed, st::running));
  EXPECT_FALSE(is_allowed_transition(st::failed, st::stopping));
  EXPECT_FALSE(is_allowed_transition(st::running, st::booting));
}

TEST(ids, session_ids_are_validated_before_use) {
  auto id = make_session_id();
  EXPECT_TRUE(is_valid_session_id(id));
  EXPECT_NE(id, make_session_id());
  for (auto bad : {"", "s-", "x-abc", "s-../etc", "s-ABC", "s-12 3"})
    EXPECT_FALSE(is_valid_session_id(bad)) << bad;
}

} // namespace
} // namespace aloft
