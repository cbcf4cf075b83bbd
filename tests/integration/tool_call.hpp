#pragma once
// One tools/call over HTTP (2026-07-28 era) that must get a JSON-RPC result; returns the
// CallToolResult (isError, structuredContent, _meta). For integration tests with Catch.
#include <catch2/catch.hpp>

#include <string>

#include "server_process.hpp"

namespace scigate::itest {

inline json call_tool(Client& c, const std::string& key, const std::string& tool, json args) {
  auto req = modern_request(1, "tools/call", {{"name", tool}, {"arguments", std::move(args)}});
  auto r = c.request(http::verb::post, "/mcp", modern_headers(key, "tools/call", tool), req.dump());
  INFO(tool << ": " << r.body);
  REQUIRE(r.status == 200);
  auto body = r.json_body();
  REQUIRE(body.contains("result"));
  return body["result"];
}

}  // namespace scigate::itest
