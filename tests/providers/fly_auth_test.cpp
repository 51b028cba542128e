// How a Fly token is presented: scheme stripped, FlyV1 for macaroons.
#include "providers/fly/fly_auth.hpp"

#include <gtest/gtest.h>

namespace aloft {
namespace {

TEST(fly_auth_test, normalize_strips_whitespace_and_one_scheme) {
  EXPECT_EQ(normalize_fly_token("  fo1_abc\n"), "fo1_abc");
  EXPECT_EQ(normalize_fly_token("Bearer fo1_abc"), "fo1_abc");
  EXPECT_EQ(normalize_fly_token("bearer   fo1_abc"), "fo1_abc");
  EXPECT_EQ(normalize_fly_token("FlyV1 fm2_abc,fm2_def"), "fm2_abc,fm2_def");
  EXPECT_EQ(normalize_fly_token("flyv1\tfm2_abc"), "fm2_abc");
  EXPECT_EQ(normalize_fly_token("FlyV1 "), "");
  // A token that merely starts with the letters of a scheme is left alone.
  EXPECT_EQ(normalize_fly_token("Bearerish_token"), "Bearerish_token");
}

TEST(fly_auth_test, macaroons_go_out_as_flyv1_others_as_bearer) {
  EXPECT_EQ(fly_authorization("fm1r_abc"), "FlyV1 fm1r_abc");
  EXPECT_EQ(fly_authorization("fm1a_abc"), "FlyV1 fm1a_abc");
  EXPECT_EQ(fly_authorization("fm2_abc"), "FlyV1 fm2_abc");
  EXPECT_EQ(fly_authorization("fo1_abc,fm2_def"), "FlyV1 fo1_abc,fm2_def");
  EXPECT_EQ(fly_authorization("fo1_abc"), "Bearer fo1_abc");
  EXPECT_EQ(fly_authorization("fm3_abc"), "Bearer fm3_abc");
  EXPECT_EQ(fly_authorization("personal-access-token"), "Bearer personal-access-token");
}

} // namespace
} // namespace aloft
