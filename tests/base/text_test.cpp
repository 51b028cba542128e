// The shared ASCII and base64 helpers, against known answers.
#include <gtest/gtest.h>

#include "engine/base/base64.hpp"
#include "engine/base/text.hpp"

namespace aloft {
namespace {

TEST(base64, encodes_the_rfc_4648_vectors) {
  EXPECT_EQ(base64_encode(""), "");
  EXPECT_EQ(base64_encode("f"), "Zg==");
  EXPECT_EQ(base64_encode("fo"), "Zm8=");
  EXPECT_EQ(base64_encode("foo"), "Zm9v");
  EXPECT_EQ(base64_encode("foob"), "Zm9vYg==");
  EXPECT_EQ(base64_encode("fooba"), "Zm9vYmE=");
  EXPECT_EQ(base64_encode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(base64_encode(std::string("\xff\xfe\0", 3)), "//4A");
}

TEST(base64, unpadded_as_openssh_prints_fingerprints) {
  EXPECT_EQ(base64_encode("f", false), "Zg");
  EXPECT_EQ(base64_encode("fo", false), "Zm8");
  EXPECT_EQ(base64_encode("foo", false), "Zm9v");
}

TEST(base64, digit_values) {
  EXPECT_EQ(base64_value('A'), 0);
  EXPECT_EQ(base64_value('z'), 51);
  EXPECT_EQ(base64_value('/'), 63);
  EXPECT_EQ(base64_value('='), -1);
}

TEST(text, ascii_case_and_hex) {
  EXPECT_TRUE(iequals("Content-Length", "content-length"));
  EXPECT_FALSE(iequals("Content-Length", "content-lengt"));
  EXPECT_EQ(ascii_lower("API_Key"), "api_key");
  EXPECT_EQ(hex_value('7'), 7);
  EXPECT_EQ(hex_value('b'), 11);
  EXPECT_EQ(hex_value('F'), 15);
  EXPECT_EQ(hex_value('g'), -1);
}

} // namespace
} // namespace aloft
