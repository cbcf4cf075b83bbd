#include <catch2/catch.hpp>

#include <string>

#include "server/common/utf8.hpp"

using scigate::utf8_prefix;

TEST_CASE("utf8_prefix cuts at a character boundary, never inside one") {
  std::string e_acute;
  for (int i = 0; i < 100; ++i) e_acute += "\xc3\xa9";  // é, two bytes each
  CHECK(utf8_prefix(e_acute, 127).size() == 126);      // not 127: that would split an é
  CHECK(utf8_prefix(e_acute, 128).size() == 128);
  CHECK(utf8_prefix("\xf0\x9f\x98\x80" "abc", 3).empty());  // a 4-byte emoji does not fit in 3
  CHECK(utf8_prefix("short", 128) == "short");
}
