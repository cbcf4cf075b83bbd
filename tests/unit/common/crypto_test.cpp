#include <catch2/catch.hpp>

#include <set>

#include "server/common/crypto.hpp"

using namespace scigate::crypto;

TEST_CASE("crypto: sha256 of a known vector") {
  CHECK(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_CASE("crypto: base64 round trips and rejects garbage") {
  for (const std::string& s : std::vector<std::string>{"", "f", "fo", "foo", "foob", "fooba", "foobar", std::string("\0\xff\x10", 3)}) {
    auto enc = base64_encode(s);
    auto dec = base64_decode(enc);
    REQUIRE(dec);
    CHECK(*dec == s);
  }
  CHECK(base64_encode("foobar") == "Zm9vYmFy");
  CHECK(*base64_decode("Zm9vYg") == "foob");  // padding optional
  CHECK_FALSE(base64_decode("Zm9v!mFy"));
  CHECK_FALSE(base64_decode("Z"));
}

TEST_CASE("crypto: random tokens are unique and URL-safe") {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    auto t = random_token(32);
    CHECK(t.size() == 43);
    CHECK(t.find_first_of("+/=") == std::string::npos);
    seen.insert(t);
  }
  CHECK(seen.size() == 1000);
  CHECK(random_hex(16).size() == 32);
}

TEST_CASE("crypto: constant_time_equal") {
  CHECK(constant_time_equal("abc", "abc"));
  CHECK_FALSE(constant_time_equal("abc", "abd"));
  CHECK_FALSE(constant_time_equal("abc", "abcd"));
}
