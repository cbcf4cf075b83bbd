#include <catch2/catch.hpp>

#include "server/protocol/jsonrpc.hpp"

using namespace scigate::jsonrpc;

TEST_CASE("parse accepts a request with an integer id") {
  auto r = parse(R"({"jsonrpc":"2.0","id":7,"method":"ping"})", {});
  REQUIRE(r.message);
  CHECK(r.message->kind == Kind::kRequest);
  CHECK(r.message->id == 7);
  CHECK(r.message->method == "ping");
}
