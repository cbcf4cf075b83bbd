#include <catch2/catch.hpp>

#include "server/protocol/jsonrpc.hpp"

using namespace scigate::jsonrpc;

TEST_CASE("jsonrpc: a request with an integer id parses") {
  auto r = parse(R"({"jsonrpc":"2.0","id":7,"method":"ping"})", {});
  REQUIRE(r.message);
  CHECK(r.message->kind == Kind::kRequest);
  CHECK(r.message->id == 7);
  CHECK(r.message->method == "ping");
  CHECK(r.message->params == nlohmann::json::object());
}

TEST_CASE("jsonrpc: notifications and responses are told apart") {
  auto n = parse(R"({"jsonrpc":"2.0","method":"notifications/initialized"})", {});
  REQUIRE(n.message);
  CHECK(n.message->kind == Kind::kNotification);
  auto resp = parse(R"({"jsonrpc":"2.0","id":"a","result":{}})", {});
  REQUIRE(resp.message);
  CHECK(resp.message->kind == Kind::kResponse);
}

TEST_CASE("jsonrpc: malformed input gets the standard codes") {
  Limits l;
  SECTION("truncated JSON is a parse error") {
    auto r = parse(R"({"jsonrpc":"2.0","id":1,"method":"pi)", l);
    REQUIRE(r.error);
    CHECK(r.error->code == kParseError);
  }
  SECTION("invalid UTF-8 inside a string is a parse error") {
    auto r = parse("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"p\xff\xfe\"}", l);
    REQUIRE(r.error);
    CHECK(r.error->code == kParseError);
  }
  SECTION("a batch is rejected with invalid request") {
    auto r = parse(R"([{"jsonrpc":"2.0","id":1,"method":"ping"}])", l);
    REQUIRE(r.error);
    CHECK(r.error->code == kInvalidRequest);
    CHECK(r.error->message.find("batch") != std::string::npos);
  }
  SECTION("a null id is rejected") {
    auto r = parse(R"({"jsonrpc":"2.0","id":null,"method":"ping"})", l);
    REQUIRE(r.error);
    CHECK(r.error->code == kInvalidRequest);
  }
  SECTION("a fractional id is rejected") {
    auto r = parse(R"({"jsonrpc":"2.0","id":1.5,"method":"ping"})", l);
    REQUIRE(r.error);
    CHECK(r.error->code == kInvalidRequest);
  }
  SECTION("a missing jsonrpc member is rejected and keeps the id") {
    auto r = parse(R"({"id":4,"method":"ping"})", l);
    REQUIRE(r.error);
    CHECK(r.error->code == kInvalidRequest);
    CHECK(r.error->id == 4);
  }
  SECTION("positional params are invalid params") {
    auto r = parse(R"({"jsonrpc":"2.0","id":1,"method":"tools/call","params":[1,2]})", l);
    REQUIRE(r.error);
    CHECK(r.error->code == kInvalidParams);
  }
  SECTION("a scalar is not a message") {
    auto r = parse("42", l);
    REQUIRE(r.error);
    CHECK(r.error->code == kInvalidRequest);
  }
}

TEST_CASE("jsonrpc: depth and size limits hold before parsing") {
  Limits l{1024, 64};
  std::string deep = R"({"jsonrpc":"2.0","id":1,"method":"x","params":{"a":)" + std::string(100, '[') +
                     std::string(100, ']') + "}}";
  auto r = parse(deep, l);
  REQUIRE(r.error);
  CHECK(r.error->code == kInvalidRequest);
  CHECK(r.error->message.find("nests deeper") != std::string::npos);

  // Brackets inside strings (escaped quotes included) do not count towards depth.
  std::string quoted = R"({"jsonrpc":"2.0","id":1,"method":"x","params":{"s":"\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}})";
  CHECK(parse(quoted, l).message);

  std::string big = R"({"jsonrpc":"2.0","id":1,"method":")" + std::string(2000, 'a') + "\"}";
  auto b = parse(big, l);
  REQUIRE(b.error);
  CHECK(b.error->message.find("exceeds the limit") != std::string::npos);
}

TEST_CASE("jsonrpc: errors without a known id omit the id member") {
  auto e = make_error(nullptr, kParseError, "Parse error");
  CHECK_FALSE(e.contains("id"));
  auto e2 = make_error(3, kMethodNotFound, "nope");
  CHECK(e2["id"] == 3);
  CHECK(e2["error"]["code"] == kMethodNotFound);
}

TEST_CASE("jsonrpc: dump never throws on invalid UTF-8 from a tool") {
  nlohmann::json j{{"text", std::string("bad \xff byte")}};
  std::string s;
  REQUIRE_NOTHROW(s = dump(j));
  CHECK(s.find("bad") != std::string::npos);
}
