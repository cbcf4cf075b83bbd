// The canonical form must be RFC 8785 exactly, so auditors can use any JCS library. The number
// and ordering vectors are the RFC's own (Appendix B and section 3.2.3).
#include <catch2/catch.hpp>

#include <cstring>

#include "policies/canonical_json.hpp"

using namespace scigate;
using nlohmann::json;

namespace {
double from_bits(uint64_t bits) {
  double d;
  std::memcpy(&d, &bits, sizeof d);
  return d;
}
std::string num(double d) {
  std::string s;
  canonical::append_double(s, d);
  return s;
}
}  // namespace

TEST_CASE("canonical json: numbers as ECMAScript writes them (RFC 8785 appendix B)") {
  struct Case {
    uint64_t bits;
    const char* text;
  };
  const Case cases[] = {
      {0x0000000000000000, "0"},
      {0x8000000000000000, "0"},
      {0x0000000000000001, "5e-324"},
      {0x8000000000000001, "-5e-324"},
      {0x7fefffffffffffff, "1.7976931348623157e+308"},
      {0xffefffffffffffff, "-1.7976931348623157e+308"},
      {0x4340000000000000, "9007199254740992"},
      {0xc340000000000000, "-9007199254740992"},
      {0x4430000000000000, "295147905179352830000"},
      {0x44b52d02c7e14af5, "9.999999999999997e+22"},
      {0x44b52d02c7e14af6, "1e+23"},
      {0x44b52d02c7e14af7, "1.0000000000000001e+23"},
      {0x444b1ae4d6e2ef4e, "999999999999999700000"},
      {0x444b1ae4d6e2ef4f, "999999999999999900000"},
      {0x444b1ae4d6e2ef50, "1e+21"},
      {0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"},
      {0x3eb0c6f7a0b5ed8d, "0.000001"},
      {0x41b3de4355555553, "333333333.3333332"},
      {0x41b3de4355555554, "333333333.33333325"},
      {0x41b3de4355555555, "333333333.3333333"},
      {0x41b3de4355555556, "333333333.3333334"},
      {0x41b3de4355555557, "333333333.33333343"},
      {0xbecbf647612f3696, "-0.0000033333333333333333"},
      {0x43143ff3c1cb0959, "1424953923781206.2"},
  };
  for (const auto& c : cases) {
    INFO(c.text);
    CHECK(num(from_bits(c.bits)) == c.text);
  }
  CHECK(num(1.0) == "1");
  CHECK(num(100.0) == "100");
  CHECK(num(0.1 + 0.2) == "0.30000000000000004");
  CHECK(num(1e-7) == "1e-7");
  CHECK(num(-1.5) == "-1.5");
  CHECK(canonical::dump(json(std::numeric_limits<double>::quiet_NaN())) == "null");
  // Integers: exact up to 2^53, then as the double they round to (what JCS requires).
  CHECK(canonical::dump(json(int64_t{-42})) == "-42");
  CHECK(canonical::dump(json(int64_t{9007199254740992})) == "9007199254740992");
  CHECK(canonical::dump(json(uint64_t{12345678901234567890u})) == "12345678901234567000");
  CHECK(canonical::dump(json(int64_t{-9007199254740993})) == "-9007199254740992");
}

TEST_CASE("canonical json: strings escape only what JSON requires") {
  // RFC 8785 section 3.2.2.2.
  json s = "\u20ac$\x0f\nA'B\"\\\\\"/";
  CHECK(canonical::dump(s) == "\"\u20ac$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"");
  CHECK(canonical::dump(json("\b\t\f\r\x01\x1f\x7f")) == "\"\\b\\t\\f\\r\\u0001\\u001f\x7f\"");
  CHECK(canonical::dump(json("caf\xc3\xa9 \xf0\x9f\x98\x80")) == "\"caf\xc3\xa9 \xf0\x9f\x98\x80\"");
  // Invalid UTF-8 (a lone continuation byte, a truncated sequence, an encoded surrogate, an
  // overlong form) becomes U+FFFD, so the canonical text is always valid UTF-8.
  std::string bad = "a\x80" "b\xe2\x82" "c\xed\xa0\x80" "d\xc0\xaf";
  std::string out = canonical::dump(json(bad));
  CHECK(out.find("a\xef\xbf\xbd") != std::string::npos);
  CHECK(out.find("\x80" "b") == std::string::npos);
  CHECK(canonical::dump(json::parse(out)) == out);
}

TEST_CASE("canonical json: members sorted by UTF-16 code units, no whitespace") {
  // RFC 8785 section 3.2.3.
  json o = json::object();
  o["\u20ac"] = "Euro Sign";
  o["\r"] = "Carriage Return";
  o["\ufb33"] = "Hebrew Letter Dalet With Dagesh";
  o["1"] = "One";
  o["\U0001F600"] = "Emoji: Grinning Face";
  o["\u0080"] = "Control";
  o["\u00f6"] = "Latin Small Letter O With Diaeresis";
  std::string expected = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u0080\":\"Control\",\"\u00f6\":\"Latin Small "
                         "Letter O With Diaeresis\",\"\u20ac\":\"Euro Sign\",\"\U0001F600\":\"Emoji: Grinning Face\","
                         "\"\ufb33\":\"Hebrew Letter Dalet With Dagesh\"}";
  CHECK(canonical::dump(o) == expected);
  CHECK(canonical::dump(json::parse(R"( { "b" : [ 1 , { "d" : true , "c" : null } ] , "a" : "x" } )")) ==
        R"({"a":"x","b":[1,{"c":null,"d":true}]})");
}

TEST_CASE("canonical json: canonicalising canonical text changes nothing") {
  const char* samples[] = {
      R"({"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000001,1e-7,-0,12345678901234567890]})",
      R"({"literals":[null,true,false],"string":"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/"})",
      R"({"nested":{"z":{"y":{"x":[{"b":1,"a":2}]}}},"empty":{},"list":[]})",
  };
  for (const char* s : samples) {
    INFO(s);
    std::string once = canonical::dump(json::parse(s));
    CHECK(canonical::dump(json::parse(once)) == once);
  }
  CHECK(canonical::dump(json::parse(samples[0])) ==
        R"({"numbers":[333333333.3333333,1e+30,4.5,0.002,0.000001,1e-7,0,12345678901234567000]})");
}
