// The governance stages of the pipeline, with the recording doubles of tests/support/harness.hpp:
// role gates, rate-limit errors, idempotent replay, and what the audit record keeps.
#include "support/harness.hpp"

using namespace scigate;
using namespace scigate::test;

namespace {

json call_tool(Harness& h, const std::string& name, json args, json extra_meta = json::object()) {
  json params{{"name", name}, {"arguments", std::move(args)}};
  auto msg = Harness::modern(1, "tools/call", std::move(params));
  for (auto it = extra_meta.begin(); it != extra_meta.end(); ++it) msg["params"]["_meta"][it.key()] = it.value();
  auto out = h.call(msg);
  REQUIRE(out.response);
  return *out.response;
}

struct AuditorTool : Tool {
  ToolDescriptor d{"audit_only", "", "for auditors", json::parse(R"({"type":"object"})"), nullptr, {},
                   TaskSupport::kForbidden};
  AuditorTool() { d.required_role = "auditor"; }
  const ToolDescriptor& descriptor() const override { return d; }
  boost::asio::awaitable<ToolResult> call(const json&, CallContext&) override {
    co_return ToolResult::success(nullptr, "audited");
  }
};

}  // namespace

TEST_CASE("governance: a tool needing a role the caller lacks is neither listed nor callable") {
  Harness h;
  h.registry.add(std::make_unique<AuditorTool>());
  auto list = h.call(Harness::modern(1, "tools/list"));
  for (const auto& t : (*list.response)["result"]["tools"]) CHECK(t["name"] != "audit_only");
  auto r = call_tool(h, "audit_only", json::object());
  CHECK(r["error"]["code"] == -32602);  // unknown to this caller

  // The same principal made auditor of "demo" sees and may call it there.
  h.config.projects[0].auditors = {"alice"};
  auth::assign_projects(h.alice, h.config);
  list = h.call(Harness::modern(1, "tools/list"));
  bool listed = false;
  for (const auto& t : (*list.response)["result"]["tools"]) listed = listed || t["name"] == "audit_only";
  CHECK(listed);
  r = call_tool(h, "audit_only", json::object());
  CHECK(r["result"]["isError"] == false);
  // ... but not for a project where it is only a member.
  r = call_tool(h, "audit_only", json::object(), {{"io.scigate/project", "other"}});
  CHECK(r["result"]["isError"] == true);
  CHECK(r["result"]["_meta"]["io.scigate/error"]["code"] == "forbidden");
  CHECK(r["result"]["content"][0]["text"].get<std::string>().find("needs the auditor role in project other") !=
        std::string::npos);
}

TEST_CASE("governance: an auditor-only member cannot call ordinary tools in that project") {
  Harness h;
  h.config.projects[0].members.clear();
  h.config.projects[0].auditors = {"alice"};
  auth::assign_projects(h.alice, h.config);
  auto r = call_tool(h, "echo", {{"text", "hi"}}, {{"io.scigate/project", "demo"}});
  CHECK(r["result"]["isError"] == true);
  CHECK(r["result"]["_meta"]["io.scigate/error"]["code"] == "forbidden");
  REQUIRE(h.audit.records.size() == 1);
  CHECK(h.audit.records[0].outcome == "denied");
  CHECK(h.ledger.holds == 0);
}

TEST_CASE("governance: a project the caller does not belong to is refused before policy and credits") {
  Harness h;
  auto r = call_tool(h, "echo", {{"text", "hi"}}, {{"io.scigate/project", "secret"}});
  CHECK(r["result"]["_meta"]["io.scigate/error"]["code"] == "forbidden");
  std::string text = r["result"]["content"][0]["text"];
  CHECK(text.find("not a member of project secret") != std::string::npos);
  CHECK(text.find("demo, other") != std::string::npos);  // the hint names the caller's projects
  CHECK(h.ledger.holds == 0);
  CHECK(h.audit.records.at(0).project == "secret");
}

TEST_CASE("governance: a rate-limited call says when to retry, as an isError result") {
  Harness h;
  h.policy.limited_tool = "echo";
  auto r = call_tool(h, "echo", {{"text", "hi"}});
  auto& err = r["result"]["_meta"]["io.scigate/error"];
  CHECK(err["code"] == "rate_limited");
  CHECK(err["retry_after_ms"] == 4200);
  CHECK(err["message"] == "rate limit test-rate: 1 call per minute (rule test-rate)");
  CHECK(h.audit.records.at(0).outcome == "rate_limited");
  CHECK(h.audit.records.at(0).decision_rules == "test-rate");
  CHECK(h.ledger.holds == 0);
}

TEST_CASE("governance: a retried call with the same idempotency key is answered again and charged once") {
  Harness h;
  h.ledger.rates["call:echo"] = 250;
  json meta{{"io.scigate/idempotency_key", "retry-1"}};
  auto first = call_tool(h, "echo", {{"text", "once"}}, meta);
  CHECK(first["result"]["isError"] == false);
  CHECK(h.ledger.balance == 1'000'000 - 250);
  auto second = call_tool(h, "echo", {{"text", "once"}}, meta);
  CHECK(second["result"] == first["result"]);
  CHECK(h.ledger.balance == 1'000'000 - 250);
  CHECK(h.ledger.holds == 1);
  REQUIRE(h.audit.records.size() == 2);
  CHECK(h.audit.records[0].outcome == "ok");
  CHECK(h.audit.records[0].cost == 250);
  CHECK(h.audit.records[1].outcome == "replayed");
  CHECK(h.audit.records[1].cost == 0);
  CHECK(h.audit.records[1].details["idempotency_key"] == "retry-1");
}

TEST_CASE("governance: the flat per-call rate is held and posted, the audit keeps held and charged") {
  Harness h;
  h.ledger.rates["call:echo"] = 1000;
  auto r = call_tool(h, "echo", {{"text", "x"}});
  CHECK(r["result"]["isError"] == false);
  CHECK(h.ledger.balance == 1'000'000 - 1000);
  REQUIRE(h.audit.records.size() == 1);
  CHECK(h.audit.records[0].cost == 1000);
  CHECK(h.audit.records[0].details["held"] == 1000);
  CHECK(h.audit.records[0].details["auth"] == "api_key");
}

TEST_CASE("governance: a service account and a user of one name are told apart in the audit") {
  Harness h;
  h.config.projects[0].service_accounts = {"alice"};
  call_tool(h, "echo", {{"text", "as the user"}});
  h.alice.kind = "service";
  auth::assign_projects(h.alice, h.config);
  call_tool(h, "echo", {{"text", "as the service account"}});
  REQUIRE(h.audit.records.size() == 2);
  CHECK(h.audit.records[0].principal == "alice");
  CHECK_FALSE(h.audit.records[0].details.contains("principal_kind"));
  CHECK(h.audit.records[1].principal == "alice");
  CHECK(h.audit.records[1].outcome == "ok");
  CHECK(h.audit.records[1].details["principal_kind"] == "service");

  // A request refused at the edge says it as well.
  EdgeRefusal e;
  e.transport = "http";
  e.http_status = 403;
  e.reason = "refused";
  e.principal = &h.alice;
  AuditRecord r = edge_refusal_record(e);
  CHECK(r.principal == "alice");
  CHECK(r.details["principal_kind"] == "service");
}

TEST_CASE("governance: audited arguments keep ordinary values and redact credentials") {
  Harness h;
  std::string key = "sgk_abcdef12_" + std::string(40, 'x');
  call_tool(h, "echo", {{"text", "use " + key + " please"}});
  REQUIRE(h.audit.records.size() == 1);
  CHECK(h.audit.records[0].details["arguments"]["text"] == "[redacted]");
  call_tool(h, "echo", {{"text", "/scratch/run1/input.h5"}});
  CHECK(h.audit.records[1].details["arguments"]["text"] == "/scratch/run1/input.h5");
}

TEST_CASE("governance: a client's unknown tool name and client name are audited cut to 128 bytes") {
  Harness h;
  // A megabyte of tool name and of clientInfo.name went into the hash-chained log whole.
  const std::string tool = std::string(1 << 20, 'x');
  json params{{"name", tool}, {"arguments", json::object()}};
  auto msg = Harness::modern(1, "tools/call", std::move(params));
  msg["params"]["_meta"]["io.modelcontextprotocol/clientInfo"] = {{"name", "é" + std::string(1 << 20, 'c')},
                                                                 {"version", "1"}};
  auto out = h.call(msg);
  REQUIRE(out.response);
  REQUIRE(h.audit.records.size() == 1);
  CHECK(h.audit.records[0].tool.size() <= 128);
  CHECK(h.audit.records[0].tool.rfind("xxxx", 0) == 0);
  const std::string client = h.audit.records[0].details.value("client", "");
  CHECK(!client.empty());
  CHECK(client.size() <= 128);
  CHECK(h.audit.records[0].details.dump().size() < 4096);
}
