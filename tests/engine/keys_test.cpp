#include "engine/keys.hpp"

#include <sys/stat.h>

#include <gtest/gtest.h>

#include "engine/base/error.hpp"
#include "tests/support/local_vm.hpp"

namespace aloft {
namespace {

mode_t mode_of(const std::string& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0)
    return 0;
  return st.st_mode & 07777;
}

TEST(session_keys, made_private_and_reused) {
  test::temp_dir tmp;
  auto dir = tmp.path() + "/keys/s-0123456789ab";
  auto keys = make_session_keys(dir);
  ASSERT_TRUE(keys) << describe(keys.error());
  EXPECT_EQ(mode_of(dir), 0700u);
  for (auto& path : {keys->client_key_path, keys->client_key_path + ".pub",
                     keys->host_key_path, keys->host_key_path + ".pub"})
    EXPECT_EQ(mode_of(path), 0600u) << path;
  EXPECT_EQ(keys->client_public_key.rfind("ssh-ed25519 AAAA", 0), 0u);
  EXPECT_NE(keys->client_public_key.find(" aloft"), std::string::npos);
  EXPECT_EQ(keys->host_public_key.rfind("ssh-ed25519 AAAA", 0), 0u);
  EXPECT_EQ(keys->host_public_key.find(' ', 12), std::string::npos)
    << "host public key carries no comment";
  EXPECT_NE(keys->host_private_key.find("BEGIN OPENSSH PRIVATE KEY"), std::string::npos);
  EXPECT_NE(keys->client_public_key, keys->host_public_key);

  auto again = make_session_keys(dir);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->client_public_key, keys->client_public_key);
  EXPECT_EQ(again->host_private_key, keys->host_private_key);

  auto loaded = load_session_keys(dir);
  ASSERT_TRUE(loaded);
  EXPECT_EQ(loaded->host_public_key, keys->host_public_key);

  remove_session_keys(dir);
  EXPECT_EQ(code_of(load_session_keys(dir).error()), errc::not_found);
}

TEST(session_keys, half_written_pair_is_replaced) {
  test::temp_dir tmp;
  auto dir = tmp.path() + "/k";
  auto keys = make_session_keys(dir);
  ASSERT_TRUE(keys);
  // A crash between the two renames leaves a public half only.
  ASSERT_EQ(::unlink(keys->host_key_path.c_str()), 0);
  auto again = make_session_keys(dir);
  ASSERT_TRUE(again) << describe(again.error());
  EXPECT_NE(again->host_public_key, keys->host_public_key);
  EXPECT_EQ(again->client_public_key, keys->client_public_key);
}

TEST(session_keys, load_of_missing_keys_is_not_found) {
  test::temp_dir tmp;
  auto r = load_session_keys(tmp.path() + "/none");
  ASSERT_FALSE(r);
  EXPECT_EQ(code_of(r.error()), errc::not_found);
}

} // namespace
} // namespace aloft
