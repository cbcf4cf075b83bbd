#include <catch2/catch.hpp>

#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "support/harness.hpp"

using namespace scigate;
using namespace scigate::test;

TEST_CASE("legacy: initialize negotiates the version") {
  Harness h;
  SECTION("a version we speak is echoed") {
    auto r = h.initialize("2025-06-18");
    CHECK(r["result"]["protocolVersion"] == "2025-06-18");
    CHECK(r["result"]["capabilities"]["tools"]["listChanged"] == true);
    CHECK(r["result"]["serverInfo"]["name"] == "scigate");
    CHECK_FALSE(r["result"].contains("resultType"));
  }
  SECTION("an unknown version gets our latest of that era") {
    auto r = h.initialize("1999-01-01");
    CHECK(r["result"]["protocolVersion"] == "2025-11-25");
  }
  SECTION("initialize without protocolVersion is invalid params") {
    auto out = h.call(Harness::request(1, "initialize", json::object()));
    CHECK((*out.response)["error"]["code"] == jsonrpc::kInvalidParams);
  }
}

TEST_CASE("legacy: requests before initialize are refused, ping is not") {
  Harness h;
  auto out = h.call(Harness::request(1, "tools/list"));
  CHECK((*out.response)["error"]["code"] == jsonrpc::kInvalidRequest);
  CHECK((*out.response)["error"]["message"].get<std::string>().find("initialize") != std::string::npos);
  auto ping = h.call(Harness::request(2, "ping"));
  CHECK((*ping.response)["result"] == json::object());
}

TEST_CASE("modern: server/discover advertises both eras and identifies the server") {
  Harness h;
  auto out = h.call(Harness::modern("d", "server/discover"));
  auto& r = (*out.response)["result"];
  CHECK(r["resultType"] == "complete");
  CHECK(r["supportedVersions"][0] == "2026-07-28");
  CHECK(r["supportedVersions"].size() == 4);
  CHECK(r["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "scigate");
  CHECK(r["ttlMs"].get<int>() >= 0);
  CHECK(r["cacheScope"] == "public");
}

TEST_CASE("modern: version and _meta problems get the specified errors") {
  Harness h;
  SECTION("unsupported version -> -32022 with the supported list") {
    json params{{"_meta", {{mcp::kMetaProtocolVersion, "1900-01-01"}, {mcp::kMetaClientCapabilities, json::object()}}}};
    auto out = h.call(Harness::request(1, "tools/list", params));
    CHECK(out.http_status == 400);
    auto& e = (*out.response)["error"];
    CHECK(e["code"] == mcp::kUnsupportedProtocolVersion);
    CHECK(e["data"]["requested"] == "1900-01-01");
    CHECK(e["data"]["supported"][0] == "2026-07-28");
  }
  SECTION("missing clientCapabilities -> -32602, HTTP 400") {
    json params{{"_meta", {{mcp::kMetaProtocolVersion, mcp::kModernVersion}}}};
    auto out = h.call(Harness::request(1, "tools/list", params));
    CHECK(out.http_status == 400);
    CHECK((*out.response)["error"]["code"] == jsonrpc::kInvalidParams);
  }
  SECTION("server/discover without _meta -> -32602") {
    auto out = h.call(Harness::request(1, "server/discover"));
    CHECK((*out.response)["error"]["code"] == jsonrpc::kInvalidParams);
  }
  SECTION("unknown method -> -32601 with HTTP 404") {
    auto out = h.call(Harness::modern(1, "resources/list"));
    CHECK(out.http_status == 404);
    CHECK((*out.response)["error"]["code"] == jsonrpc::kMethodNotFound);
  }
  SECTION("ping does not exist in the modern era") {
    auto out = h.call(Harness::modern(1, "ping"));
    CHECK((*out.response)["error"]["code"] == jsonrpc::kMethodNotFound);
  }
}

TEST_CASE("tools/list: deterministic, paginated, filtered by policy") {
  Harness h;
  h.dispatcher->page_size = 2;
  auto first = (*h.call(Harness::modern(1, "tools/list")).response)["result"];
  REQUIRE(first["tools"].size() == 2);
  CHECK(first["tools"][0]["name"] == "echo");
  CHECK(first["tools"][1]["name"] == "sleep");
  CHECK(first["cacheScope"] == "private");
  REQUIRE(first.contains("nextCursor"));
  auto second = (*h.call(Harness::modern(2, "tools/list", {{"cursor", first["nextCursor"]}})).response)["result"];
  REQUIRE(second["tools"].size() == 1);
  CHECK(second["tools"][0]["name"] == "whoami");
  CHECK_FALSE(second.contains("nextCursor"));
  auto& ann = second["tools"][0]["annotations"];
  CHECK(ann["readOnlyHint"] == true);
  CHECK(ann["destructiveHint"] == false);
  CHECK(second["tools"][0].contains("outputSchema"));

  auto bad = h.call(Harness::modern(3, "tools/list", {{"cursor", "bm9wZQ"}}));
  CHECK((*bad.response)["error"]["code"] == jsonrpc::kInvalidParams);

  h.policy.hidden_tool = "sleep";
  h.dispatcher->page_size = 50;
  auto filtered = (*h.call(Harness::modern(4, "tools/list")).response)["result"]["tools"];
  CHECK(filtered.size() == 2);
  for (auto& t : filtered) CHECK(t["name"] != "sleep");
  // A hidden tool is unknown to the caller, not "forbidden".
  auto call = h.call(Harness::modern(5, "tools/call", {{"name", "sleep"}, {"arguments", {{"seconds", 0}}}}));
  CHECK((*call.response)["error"]["code"] == jsonrpc::kInvalidParams);
}

TEST_CASE("tools/call: results, tool errors and protocol errors") {
  Harness h;
  SECTION("success carries structuredContent and text") {
    auto out = h.call(Harness::modern(1, "tools/call", {{"name", "echo"}, {"arguments", {{"text", "hello"}}}}));
    auto& r = (*out.response)["result"];
    CHECK(r["isError"] == false);
    CHECK(r["structuredContent"]["text"] == "hello");
    CHECK(r["content"][0]["text"] == "hello");
    CHECK(r["resultType"] == "complete");
    REQUIRE(h.audit.records.size() == 1);
    CHECK(h.audit.records[0].outcome == "ok");
    CHECK(h.audit.records[0].project == "demo");
    CHECK(h.ledger.settled == 1);
  }
  SECTION("arguments that break the schema are an isError result naming the field") {
    auto out = h.call(Harness::modern(1, "tools/call", {{"name", "echo"}, {"arguments", {{"text", 5}}}}));
    auto& r = (*out.response)["result"];
    CHECK(r["isError"] == true);
    std::string text = r["content"][0]["text"];
    CHECK(text.find("arguments.text") != std::string::npos);
    CHECK(r["_meta"]["io.scigate/error"]["code"] == "invalid_arguments");
    CHECK_FALSE(r.contains("structuredContent"));
    CHECK(h.audit.records.at(0).outcome == "invalid");
    CHECK(h.ledger.holds == 0);  // nothing held for a call that never ran
  }
  SECTION("unknown properties are refused") {
    auto out = h.call(Harness::modern(1, "tools/call", {{"name", "echo"}, {"arguments", {{"text", "a"}, {"x", 1}}}}));
    CHECK((*out.response)["result"]["isError"] == true);
  }
  SECTION("unknown tool is a protocol error") {
    auto out = h.call(Harness::modern(1, "tools/call", {{"name", "nope"}}));
    CHECK((*out.response)["error"]["code"] == jsonrpc::kInvalidParams);
    CHECK((*out.response)["error"]["message"] == "Unknown tool: nope");
  }
  SECTION("missing name and non-object arguments are invalid params") {
    CHECK((*h.call(Harness::modern(1, "tools/call")).response)["error"]["code"] == jsonrpc::kInvalidParams);
    auto out = h.call(Harness::modern(2, "tools/call", {{"name", "echo"}, {"arguments", "x"}}));
    CHECK((*out.response)["error"]["code"] == jsonrpc::kInvalidParams);
  }
  SECTION("a policy denial names the rule and the hint") {
    h.policy.denied_tool = "echo";
    auto out = h.call(Harness::modern(1, "tools/call", {{"name", "echo"}, {"arguments", {{"text", "a"}}}}));
    auto& r = (*out.response)["result"];
    CHECK(r["isError"] == true);
    std::string text = r["content"][0]["text"];
    CHECK(text.find("rule test-deny") != std::string::npos);
    CHECK(text.find("Hint: use another tool") != std::string::npos);
    CHECK(h.audit.records.at(0).outcome == "denied");
    CHECK(h.audit.records.at(0).decision_rules == "test-deny");
  }
  SECTION("the project can be chosen per call") {
    json params{{"name", "whoami"}};
    params["_meta"] = Harness::modern_meta();
    params["_meta"]["io.scigate/project"] = "other";
    auto out = h.call(Harness::request(1, "tools/call", params));
    CHECK((*out.response)["result"]["structuredContent"]["project"] == "other");
  }
  SECTION("a principal in no project may ask whoami but nothing that must be charged") {
    h.alice.projects.clear();
    auto who = h.call(Harness::modern(1, "tools/call", {{"name", "whoami"}}));
    CHECK((*who.response)["result"]["isError"] == false);
    CHECK((*who.response)["result"]["structuredContent"]["project"] == "");
    auto echo = h.call(Harness::modern(2, "tools/call", {{"name", "echo"}, {"arguments", {{"text", "a"}}}}));
    CHECK((*echo.response)["result"]["isError"] == true);
    CHECK((*echo.response)["result"]["_meta"]["io.scigate/error"]["code"] == "forbidden");
  }
  SECTION("a project the caller is not in is denied by the membership policy") {
    MembershipPolicy membership;
    PolicyQuery q{h.alice, "secret", "whoami", json::object()};
    auto d = membership.decide(q);
    CHECK_FALSE(d.permitted());
    CHECK(d.hint.find("demo") != std::string::npos);
  }
}

TEST_CASE("tools/call: progress is reported to the request's notifier") {
  Harness h;
  std::vector<json> notes;
  json params{{"name", "sleep"}, {"arguments", {{"seconds", 0.03}, {"steps", 3}}}};
  params["_meta"] = Harness::modern_meta();
  params["_meta"]["progressToken"] = "tok";
  auto in = h.inbound(Harness::request(1, "tools/call", params));
  in.notify = [&](const json& n) { notes.push_back(n); };
  auto out = run_blocking(h.io, h.dispatcher->handle(std::move(in)));
  REQUIRE(notes.size() == 3);
  CHECK(notes[0]["method"] == "notifications/progress");
  CHECK(notes[0]["params"]["progressToken"] == "tok");
  CHECK(notes[2]["params"]["progress"] == 3);
  CHECK(notes[2]["params"]["total"] == 3);
  CHECK((*out.response)["result"]["isError"] == false);
}

TEST_CASE("tools/call: 2.0 is an integer, 2.5 is not, and integers beyond int64 are refused by name") {
  Harness h;
  auto call = [&](json steps) {
    json params{{"name", "sleep"}, {"arguments", {{"seconds", 0}, {"steps", std::move(steps)}}}};
    params["_meta"] = Harness::modern_meta();
    return *run_blocking(h.io, h.dispatcher->handle(h.inbound(Harness::request(1, "tools/call", params)))).response;
  };
  // A Python client's json.dumps(3.0): an integer to JSON Schema 2020-12, which MCP uses.
  CHECK(call(3.0)["result"]["isError"] == false);
  CHECK(h.audit.records.back().outcome == "ok");
  auto frac = call(2.5)["result"];
  CHECK(frac["isError"] == true);
  CHECK(frac["_meta"]["io.scigate/error"]["code"] == "invalid_arguments");
  // 2^64 - 1 (nlohmann keeps it unsigned; valijson read it as -1).
  auto huge = call(json(std::numeric_limits<uint64_t>::max()))["result"];
  CHECK(huge["isError"] == true);
  CHECK(huge["content"][0]["text"].get<std::string>().find("the integer at /steps is too large") != std::string::npos);
}

TEST_CASE("tools/call: notifications/cancelled stops the handler and sends no response") {
  Harness h;
  h.initialize();
  boost::asio::cancellation_signal signal;
  auto in = h.inbound(Harness::request(42, "tools/call", {{"name", "sleep"}, {"arguments", {{"seconds", 30}}}}));
  auto flag = in.cancellation;
  in.cancel = [&] {
    flag->cancel();
    signal.emit(boost::asio::cancellation_type::terminal);
  };
  std::optional<mcp::Outbound> result;
  auto started = std::chrono::steady_clock::now();
  boost::asio::co_spawn(h.io, h.dispatcher->handle(std::move(in)),
                        boost::asio::bind_cancellation_slot(signal.slot(), [&](std::exception_ptr, mcp::Outbound o) {
                          result = std::move(o);
                        }));
  // The cancel notification arrives while the call runs.
  boost::asio::steady_timer t(h.io, std::chrono::milliseconds(50));
  t.async_wait([&](auto) {
    boost::asio::co_spawn(h.io,
                          h.dispatcher->handle(h.inbound(json{{"jsonrpc", "2.0"},
                                                              {"method", "notifications/cancelled"},
                                                              {"params", {{"requestId", 42}, {"reason", "test"}}}})),
                          boost::asio::detached);
  });
  h.io.restart();
  h.io.run();
  REQUIRE(result);
  CHECK_FALSE(result->response);
  CHECK(std::chrono::steady_clock::now() - started < std::chrono::seconds(5));
  REQUIRE(h.audit.records.size() == 1);
  CHECK(h.audit.records[0].outcome == "cancelled");
  CHECK(h.ledger.released == 1);
  CHECK(h.ledger.balance == 1'000'000);
}

TEST_CASE("tools/call: a call past its deadline is a timeout error and its hold is released") {
  Harness h(std::chrono::seconds(1));
  auto out = h.call(Harness::modern(1, "tools/call", {{"name", "sleep"}, {"arguments", {{"seconds", 20}}}}));
  auto& r = (*out.response)["result"];
  CHECK(r["isError"] == true);
  CHECK(r["_meta"]["io.scigate/error"]["code"] == "timeout");
  CHECK(h.audit.records.at(0).outcome == "timeout");
  CHECK(h.ledger.released == 1);
}

TEST_CASE("tools/call: a hold that cannot be made stops the call before it runs") {
  Harness h;
  struct Costly : Tool {
    ToolDescriptor d{"costly", "", "costs", json::parse(R"({"type":"object"})"), nullptr, {}, TaskSupport::kForbidden};
    const ToolDescriptor& descriptor() const override { return d; }
    Usage worst_case_usage(const json&) const override { return Usage().add("gpu_hour:test", 5); }
    boost::asio::awaitable<ToolResult> call(const json&, CallContext&) override {
      ran = true;
      co_return ToolResult::success(nullptr, "ran");
    }
    bool ran = false;
  };
  auto tool = std::make_unique<Costly>();
  auto* raw = tool.get();
  h.registry.add(std::move(tool));
  h.ledger.rates["gpu_hour:test"] = 1'000'000;
  auto out = h.call(Harness::modern(1, "tools/call", {{"name", "costly"}}));
  auto& r = (*out.response)["result"];
  CHECK(r["isError"] == true);
  CHECK(r["_meta"]["io.scigate/error"]["code"] == "insufficient_credits");
  CHECK_FALSE(raw->ran);
  CHECK(h.ledger.balance == 1'000'000);
}

TEST_CASE("tools/call: a tool that throws yields an internal error with a correlation id, not its text") {
  Harness h;
  struct Thrower : Tool {
    ToolDescriptor d{"thrower", "", "throws", json::parse(R"({"type":"object"})"), nullptr, {}, TaskSupport::kForbidden};
    const ToolDescriptor& descriptor() const override { return d; }
    boost::asio::awaitable<ToolResult> call(const json&, CallContext&) override {
      throw std::runtime_error("secret path /etc/shadow");
      co_return ToolResult::success(nullptr, "");
    }
  };
  h.registry.add(std::make_unique<Thrower>());
  auto out = h.call(Harness::modern(1, "tools/call", {{"name", "thrower"}}));
  std::string wire = out.response->dump();
  CHECK(wire.find("shadow") == std::string::npos);
  CHECK(wire.find("correlation id req-") != std::string::npos);
  CHECK(h.audit.records.at(0).outcome == "internal");
  CHECK(h.ledger.released == 1);
}

TEST_CASE("tools/call: a fault before the tool runs is an audited internal error, and the tool never runs") {
  Harness h;
  struct Fragile : Tool {
    ToolDescriptor d{"fragile", "", "estimates badly", json::parse(R"({"type":"object"})"), nullptr, {}, TaskSupport::kForbidden};
    const ToolDescriptor& descriptor() const override { return d; }
    Usage worst_case_usage(const json& args) const override {
      if (args.contains("boom")) throw std::runtime_error("estimate read /etc/shadow");
      return {};
    }
    boost::asio::awaitable<ToolResult> call(const json&, CallContext&) override {
      ran = true;
      co_return ToolResult::success(nullptr, "ran");
    }
    mutable bool ran = false;
  };
  auto tool = std::make_unique<Fragile>();
  auto* raw = tool.get();
  h.registry.add(std::move(tool));
  std::string wire;
  SECTION("the tool's own cost estimate throws") {
    auto out = h.call(Harness::modern(1, "tools/call", {{"name", "fragile"}, {"arguments", {{"boom", true}}}}));
    wire = out.response->dump();
    CHECK(h.ledger.holds == 0);
  }
  SECTION("the ledger fails while holding") {
    h.ledger.fail_reserve = true;
    auto out = h.call(Harness::modern(1, "tools/call", {{"name", "fragile"}}));
    wire = out.response->dump();
  }
  CHECK_FALSE(raw->ran);
  json r = json::parse(wire)["result"];
  CHECK(r["isError"] == true);
  CHECK(r["_meta"]["io.scigate/error"]["code"] == "internal");
  CHECK(wire.find("correlation id req-") != std::string::npos);
  CHECK(wire.find("shadow") == std::string::npos);    // the detail stays in the log
  CHECK(wire.find("/var/lib") == std::string::npos);
  REQUIRE(h.audit.records.size() == 1);               // audited like any other outcome
  CHECK(h.audit.records[0].outcome == "internal");
  CHECK(h.audit.records[0].tool == "fragile");
  CHECK(h.audit.records[0].project == "demo");
  CHECK(h.ledger.balance == 1'000'000);
}

TEST_CASE("tools/call: output that breaks the outputSchema never reaches the client") {
  Harness h;
  struct Liar : Tool {
    ToolDescriptor d{"liar", "", "lies", json::parse(R"({"type":"object"})"),
                     json::parse(R"({"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]})"),
                     {}, TaskSupport::kForbidden};
    const ToolDescriptor& descriptor() const override { return d; }
    boost::asio::awaitable<ToolResult> call(const json&, CallContext&) override {
      co_return ToolResult::success(json{{"n", "not a number"}}, "");
    }
  };
  h.registry.add(std::make_unique<Liar>());
  auto out = h.call(Harness::modern(1, "tools/call", {{"name", "liar"}}));
  CHECK((*out.response)["result"]["isError"] == true);
  CHECK(out.response->dump().find("not a number") == std::string::npos);
}

TEST_CASE("tools/call: a request id in use on the same channel is refused") {
  Harness h;
  h.initialize();
  boost::asio::cancellation_signal sig;
  std::optional<mcp::Outbound> first, second;
  auto in1 = h.inbound(Harness::request(7, "tools/call", {{"name", "sleep"}, {"arguments", {{"seconds", 0.2}}}}));
  boost::asio::co_spawn(h.io, h.dispatcher->handle(std::move(in1)), [&](std::exception_ptr, mcp::Outbound o) { first = o; });
  boost::asio::co_spawn(h.io, h.dispatcher->handle(h.inbound(Harness::request(7, "tools/call", {{"name", "whoami"}}))),
                        [&](std::exception_ptr, mcp::Outbound o) { second = o; });
  h.io.restart();
  h.io.run();
  REQUIRE(first);
  REQUIRE(second);
  CHECK((*first->response)["result"]["isError"] == false);
  CHECK((*second->response)["error"]["code"] == jsonrpc::kInvalidRequest);
}

TEST_CASE("subscriptions/listen acknowledges, delivers list_changed, and ends gracefully on close") {
  Harness h;
  std::vector<json> notes;
  auto in = h.inbound(Harness::modern("sub-1", "subscriptions/listen", {{"notifications", {{"toolsListChanged", true}, {"promptsListChanged", true}}}}));
  in.notify = [&](const json& n) { notes.push_back(n); };
  std::optional<mcp::Outbound> result;
  boost::asio::co_spawn(h.io, h.dispatcher->handle(std::move(in)), [&](std::exception_ptr, mcp::Outbound o) { result = o; });
  boost::asio::steady_timer t(h.io, std::chrono::milliseconds(20));
  t.async_wait([&](auto) {
    h.dispatcher->broadcast_tools_changed();
    h.dispatcher->close_subscriptions();
  });
  h.io.restart();
  h.io.run();
  REQUIRE(notes.size() == 2);
  CHECK(notes[0]["method"] == "notifications/subscriptions/acknowledged");
  CHECK(notes[0]["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "sub-1");
  CHECK(notes[0]["params"]["notifications"] == json{{"toolsListChanged", true}});  // prompts not offered
  CHECK(notes[1]["method"] == "notifications/tools/list_changed");
  REQUIRE(result);
  REQUIRE(result->response);
  CHECK((*result->response)["result"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "sub-1");
}
