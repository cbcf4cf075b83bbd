// The audit trail through the real binary: the auditor API and tool, the command line (export,
// offline verify, tail, pubkey), refused requests at the edge, and crashes.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>

#include <atomic>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "server_process.hpp"

using namespace scigate::itest;
using http::verb;

namespace {

// demo and lab-controller (from scigate init) work in project demo; a second project, physics,
// has demo as a member, ann as its auditor and root as its admin.
constexpr const char* kProjects = R"([[projects]]
id = "physics"
members = ["demo"]
auditors = ["ann"]
admins = ["root"]
)";

json call_tool(Client& c, const std::string& key, const std::string& tool, json args, const std::string& project = "",
               int id = 1) {
  json params{{"name", tool}, {"arguments", std::move(args)}};
  if (!project.empty()) params["_meta"]["io.scigate/project"] = project;
  auto req = modern_request(id, "tools/call", params);
  auto r = c.request(verb::post, "/mcp", modern_headers(key, "tools/call", tool), req.dump());
  return r.json_body();
}

std::vector<json> jsonl(const std::string& text) {
  std::vector<json> v;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) v.push_back(json::parse(line));
  return v;
}

// Every record of the log, through `scigate audit export` (the server must be stopped or the
// records flushed).
std::vector<json> export_records(const ServerProcess& s) {
  std::string out;
  REQUIRE(run_command({binary(), "audit", "export", "--config", s.config_path()}, &out) == 0);
  auto lines = jsonl(out);
  REQUIRE(!lines.empty());
  REQUIRE(lines[0].contains("scigate_audit_export"));
  lines.erase(lines.begin());
  return lines;
}

std::map<std::string, std::string> bearer(const std::string& key) { return {{"Authorization", "Bearer " + key}}; }

}  // namespace

TEST_CASE("audit api: GET /audit/events for auditors, with filters and pages, 401 and 403 for the rest") {
  ServerProcess s(kProjects);
  std::string ann = create_key(s, "ann"), root = create_key(s, "root");
  Client c(s.port());
  for (int i = 0; i < 5; ++i)
    REQUIRE(call_tool(c, s.user_key(), "echo", {{"text", "physics " + std::to_string(i)}}, "physics")["result"]["isError"] == false);
  REQUIRE(call_tool(c, s.user_key(), "echo", {{"text", "demo only"}}, "demo")["result"]["isError"] == false);
  // A call the schema refuses: audited as invalid.
  REQUIRE(call_tool(c, s.user_key(), "echo", {{"txt", 1}}, "physics")["result"]["isError"] == true);

  SECTION("an auditor sees its project only, newest first") {
    auto r = c.request(verb::get, "/audit/events", bearer(ann));
    REQUIRE(r.status == 200);
    auto body = r.json_body();
    auto& events = body["events"];
    REQUIRE(events.size() == 6);
    for (auto& e : events) CHECK(e["project"] == "physics");
    CHECK(events[0]["outcome"] == "invalid");
    CHECK(events[0]["error_code"] == "invalid_arguments");
    CHECK(events[1]["details"]["arguments"]["text"] == "physics 4");
    CHECK(events[0]["seq"].get<int>() > events[1]["seq"].get<int>());
    CHECK(events[1]["hash"].get<std::string>().size() == 64);
    CHECK(events[1]["time"].get<std::string>().back() == 'Z');
    CHECK(body["next_cursor"].is_null());
  }
  SECTION("filters and pagination") {
    auto r = c.request(verb::get, "/audit/events?project=physics&outcome=ok&tool=echo&principal=demo&limit=2&order=asc",
                       bearer(ann));
    REQUIRE(r.status == 200);
    auto page1 = r.json_body();
    REQUIRE(page1["events"].size() == 2);
    CHECK(page1["events"][0]["details"]["arguments"]["text"] == "physics 0");
    REQUIRE(page1["next_cursor"].is_string());
    std::vector<std::string> texts;
    std::string cursor = page1["next_cursor"];
    for (auto& e : page1["events"]) texts.push_back(e["details"]["arguments"]["text"]);
    for (int guard = 0; !cursor.empty() && guard < 10; ++guard) {
      auto next = c.request(verb::get,
                            "/audit/events?project=physics&outcome=ok&tool=echo&limit=2&order=asc&cursor=" + cursor, bearer(ann))
                      .json_body();
      for (auto& e : next["events"]) texts.push_back(e["details"]["arguments"]["text"]);
      cursor = next["next_cursor"].is_string() ? next["next_cursor"].get<std::string>() : "";
    }
    CHECK(texts == std::vector<std::string>{"physics 0", "physics 1", "physics 2", "physics 3", "physics 4"});
    CHECK(c.request(verb::get, "/audit/events?outcome=denied", bearer(ann)).json_body()["events"].empty());
    CHECK(c.request(verb::get, "/audit/events?since=1h&tool=echo", bearer(ann)).json_body()["events"].size() == 6);
    CHECK(c.request(verb::get, "/audit/events?until=2001-01-01", bearer(ann)).json_body()["events"].empty());
    // Reads of the audit trail are recorded in it: ann's own queries so far.
    auto reads = c.request(verb::get, "/audit/events?principal=ann", bearer(ann)).json_body()["events"];
    CHECK(reads.size() >= 4);
    CHECK(c.request(verb::get, "/audit/events?since=2001-01-01T00:00:00Z&limit=5000", bearer(ann)).status == 200);
  }
  SECTION("an admin holds the auditor role too") {
    auto r = c.request(verb::get, "/audit/events?project=physics&tool=echo", bearer(root));
    CHECK(r.status == 200);
    CHECK(r.json_body()["events"].size() == 6);
  }
  SECTION("members, strangers and the unauthenticated are refused") {
    auto member = c.request(verb::get, "/audit/events", bearer(s.user_key()));
    CHECK(member.status == 403);
    CHECK(member.json_body()["error"]["code"] == "forbidden");
    CHECK(c.request(verb::get, "/audit/events?project=physics", bearer(s.user_key())).status == 403);
    CHECK(c.request(verb::get, "/audit/events?project=demo", bearer(ann)).status == 403);
    auto anon = c.request(verb::get, "/audit/events", {});
    CHECK(anon.status == 401);
    CHECK(anon.header("www-authenticate").rfind("Bearer", 0) == 0);
    CHECK(c.request(verb::get, "/audit/events", bearer("sgk_000000000000_nope")).status == 401);
    CHECK(c.request(verb::post, "/audit/events", bearer(ann), "{}").status == 405);
  }
  SECTION("malformed queries get 400 and say why") {
    for (std::string q : {"projet=physics", "limit=0", "limit=abc", "cursor=x", "since=yesterday", "order=up",
                          "tool=a&tool=b"}) {
      INFO(q);
      auto r = c.request(verb::get, "/audit/events?" + q, bearer(ann));
      CHECK(r.status == 400);
      CHECK(r.json_body()["error"]["message"].get<std::string>().size() > 10);
    }
  }
  SECTION("reading the audit trail is itself recorded, and so are the refusals") {
    REQUIRE(c.request(verb::get, "/audit/events?project=physics&limit=1", bearer(ann)).status == 200);
    REQUIRE(c.request(verb::get, "/audit/events?project=demo", bearer(ann)).status == 403);
    REQUIRE(c.request(verb::get, "/audit/events", {}).status == 401);
    REQUIRE(s.stop() == 0);
    auto records = export_records(s);
    REQUIRE(records.size() == 10);
    CHECK(records[7]["principal"] == "ann");
    CHECK(records[7]["outcome"] == "ok");
    CHECK(records[7]["project"] == "physics");
    CHECK(records[7]["details"]["returned"] == 1);
    CHECK(records[7]["details"]["path"] == "/audit/events?project=physics&limit=1");
    CHECK(records[8]["outcome"] == "denied");
    CHECK(records[8]["error_code"] == "forbidden");
    CHECK(records[9]["outcome"] == "unauthenticated");
  }
}

TEST_CASE("audit tool: query_audit_log is listed to auditors only and reads their projects") {
  ServerProcess s(kProjects);
  std::string ann = create_key(s, "ann");
  Client c(s.port());
  for (int i = 0; i < 3; ++i) call_tool(c, s.user_key(), "echo", {{"text", "p" + std::to_string(i)}}, "physics");
  call_tool(c, s.user_key(), "echo", {{"text", "d"}}, "demo");

  auto names = [&](const std::string& key) {
    auto r = c.request(verb::post, "/mcp", modern_headers(key, "tools/list"), modern_request(1, "tools/list").dump());
    REQUIRE(r.status == 200);
    json body = r.json_body();
    std::set<std::string> out;
    for (auto& t : body["result"]["tools"]) out.insert(t["name"]);
    return out;
  };
  CHECK(names(ann).count("query_audit_log") == 1);
  CHECK(names(ann).count("echo") == 0);  // ann is no member anywhere
  CHECK(names(s.user_key()).count("query_audit_log") == 0);
  CHECK(names(s.service_key()).count("query_audit_log") == 0);

  auto r = call_tool(c, ann, "query_audit_log", {{"tool", "echo"}, {"limit", 2}});
  REQUIRE(r["result"]["isError"] == false);
  auto& out = r["result"]["structuredContent"];
  CHECK(out["projects"] == json::array({"physics"}));
  REQUIRE(out["events"].size() == 2);
  CHECK(out["events"][0]["project"] == "physics");
  CHECK_FALSE(out["events"][0].contains("details"));
  CHECK_FALSE(out["events"][0].contains("hash"));
  REQUIRE(out.contains("next_cursor"));
  auto more = call_tool(c, ann, "query_audit_log",
                        {{"tool", "echo"}, {"cursor", out["next_cursor"]}, {"include_details", true}}, "", 2);
  auto& rest = more["result"]["structuredContent"]["events"];
  REQUIRE(rest.size() == 1);
  CHECK(rest[0]["details"]["arguments"]["text"] == "p0");
  CHECK(more["result"]["content"][0]["text"].get<std::string>().find("echo ok") != std::string::npos);

  auto other = call_tool(c, ann, "query_audit_log", {{"project", "demo"}}, "", 3);
  CHECK(other["result"]["isError"] == true);
  CHECK(other["result"]["_meta"]["io.scigate/error"]["code"] == "forbidden");
  auto bad_time = call_tool(c, ann, "query_audit_log", {{"since", "last tuesday"}}, "", 4);
  CHECK(bad_time["result"]["_meta"]["io.scigate/error"]["code"] == "invalid_arguments");
  // Not listed, so not callable by a member.
  auto member = call_tool(c, s.user_key(), "query_audit_log", json::object(), "physics", 5);
  CHECK(member["error"]["code"] == -32602);
}

TEST_CASE("audit cli: export, offline verify, tail and pubkey through the real binary") {
  ServerProcess s(std::string(kProjects) + "[audit]\ncheckpoint_every_records = 3\n");
  Client c(s.port());
  int64_t mid_ms = 0;  // between the 4th and 5th records' arrival
  for (int i = 0; i < 8; ++i) {
    if (i == 4) {
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
      mid_ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
    }
    call_tool(c, s.user_key(), "echo", {{"text", "t" + std::to_string(i)}}, i % 2 ? "physics" : "demo");
  }
  c.request(verb::get, "/nope", {});
  REQUIRE(s.stop() == 0);
  const auto dir = s.dir();
  const std::string cfg = s.config_path(), export_file = (dir / "export.jsonl").string(),
                    pub = (dir / "pub.pem").string(), cps = (dir / "audit-checkpoints.jsonl").string();
  std::string out;

  REQUIRE(run_command({binary(), "audit", "pubkey", "--config", cfg}, &out) == 0);
  CHECK(out.rfind("-----BEGIN PUBLIC KEY-----", 0) == 0);
  std::ofstream(pub) << out;

  REQUIRE(run_command({binary(), "audit", "verify", "--config", cfg, "--pubkey", pub}, &out) == 0);
  CHECK(out.find("audit log intact: 9 records") != std::string::npos);
  CHECK(out.find("signatures verified") != std::string::npos);

  REQUIRE(run_command({binary(), "audit", "export", "--config", cfg, "--output", export_file}, &out) == 0);
  // Offline: no config, no database, no server.
  REQUIRE(run_command({binary(), "audit", "verify", "--export", export_file, "--checkpoints", cps, "--pubkey", pub},
                      &out) == 0);
  CHECK(out.find("audit log intact: 9 records (seq 1..9)") != std::string::npos);
  CHECK(out.find("4 matched their records") == std::string::npos);  // 3, 6, 9: three checkpoints
  CHECK(out.find("3 matched their records") != std::string::npos);

  // A time window: --since/--until cut the chain at the records that arrived then, and each
  // half verifies on its own against the signed checkpoints.
  const std::string late_file = (dir / "late.jsonl").string(), early_file = (dir / "early.jsonl").string();
  REQUIRE(run_command({binary(), "audit", "export", "--config", cfg, "--since", std::to_string(mid_ms), "--format", "jsonl",
                       "--output", late_file},
                      &out) == 0);
  {
    std::ifstream in(late_file);
    std::stringstream ss;
    ss << in.rdbuf();
    auto late = jsonl(ss.str());
    REQUIRE(late.size() == 6);  // the header, then seq 5..9
    CHECK(late[0]["scigate_audit_export"]["since"].get<std::string>().size() == 24);
    CHECK(late[1]["seq"] == 5);
    CHECK(late[1]["details"]["arguments"]["text"] == "t4");
    CHECK(late[5]["seq"] == 9);
  }
  REQUIRE(run_command({binary(), "audit", "verify", "--export", late_file, "--checkpoints", cps, "--pubkey", pub}, &out) == 0);
  CHECK(out.find("audit log intact: 5 records (seq 5..9)") != std::string::npos);
  REQUIRE(run_command({binary(), "audit", "export", "--config", cfg, "--until", std::to_string(mid_ms), "--output", early_file},
                      &out) == 0);
  REQUIRE(run_command({binary(), "audit", "verify", "--export", early_file, "--checkpoints", cps, "--pubkey", pub}, &out) == 0);
  CHECK(out.find("audit log intact: 4 records (seq 1..4)") != std::string::npos);
  CHECK(run_command({binary(), "audit", "export", "--config", cfg, "--format", "csv"}, &out) == 2);  // jsonl only

  // One project's export: each record verifies; the gaps are said out loud.
  std::string physics_file = (dir / "physics.jsonl").string();
  REQUIRE(run_command({binary(), "audit", "export", "--config", cfg, "--project", "physics", "--output", physics_file},
                      &out) == 0);
  REQUIRE(run_command({binary(), "audit", "verify", "--export", physics_file, "--checkpoints", cps, "--pubkey", pub},
                      &out) == 0);
  CHECK(out.find("audit log intact: 4 records") != std::string::npos);
  CHECK(out.find("cannot be verified") != std::string::npos);

  // A tampered line fails and is named.
  {
    std::ifstream in(export_file);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string text = ss.str();
    auto p = text.find("\"t4\"");
    REQUIRE(p != std::string::npos);
    text.replace(p, 4, "\"T4\"");
    std::ofstream(export_file, std::ios::trunc) << text;
  }
  CHECK(run_command({binary(), "audit", "verify", "--export", export_file, "--checkpoints", cps, "--pubkey", pub},
                    &out) == 1);
  CHECK(out.find("BROKEN at record 5") != std::string::npos);

  // A checkpoint forged with another key is reported.
  std::string other_cfg_dir = (dir / "other").string();
  REQUIRE(run_command({binary(), "init", other_cfg_dir}, nullptr) == 0);
  std::string other_pub = (dir / "other.pem").string();
  REQUIRE(run_command({binary(), "audit", "pubkey", "--config", other_cfg_dir + "/scigate.toml"}, &out) == 0);
  std::ofstream(other_pub) << out;
  CHECK(run_command({binary(), "audit", "verify", "--config", cfg, "--pubkey", other_pub}, &out) == 1);
  CHECK(out.find("not by the given key") != std::string::npos);

  REQUIRE(run_command({binary(), "audit", "tail", "--config", cfg, "-n", "2"}, &out) == 0);
  auto tail = jsonl(out);
  REQUIRE(tail.size() == 2);
  CHECK(tail[0]["seq"] == 8);
  CHECK(tail[1]["seq"] == 9);
  CHECK(tail[1]["error_code"] == "not_found");
  REQUIRE(run_command({binary(), "audit", "tail", "--config", cfg, "-n", "1", "--format", "text"}, &out) == 0);
  CHECK(out.find("9\t") == 0);
  CHECK(out.find("invalid (not_found)") != std::string::npos);

  // Truncation: the newest records cut off behind the server's back.
  REQUIRE(run_command({"/usr/bin/sqlite3", (dir / "scigate.db").string(),
                       "DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE seq > 7;"}) == 0);
  CHECK(run_command({binary(), "audit", "verify", "--config", cfg, "--pubkey", pub}, &out) == 1);
  CHECK(out.find("BROKEN at record 8: records after seq 7 were removed: the checkpoint at seq 9") != std::string::npos);
  // ... and the checkpoint file removed with them: asked for by --checkpoints/--pubkey, its
  // absence (or emptiness) fails the verification instead of leaving a note ("intact", exit 0).
  const std::string gone = (dir / "no-such-checkpoints.jsonl").string();
  CHECK(run_command({binary(), "audit", "verify", "--config", cfg, "--checkpoints", gone, "--pubkey", pub}, &out) == 1);
  CHECK(out.find("holds no usable checkpoint") != std::string::npos);
  const std::string empty = (dir / "empty-checkpoints.jsonl").string();
  std::ofstream(empty).flush();
  CHECK(run_command({binary(), "audit", "verify", "--config", cfg, "--checkpoints", empty}, &out) == 1);
  CHECK(out.find("holds no usable checkpoint") != std::string::npos);

  CHECK(run_command({binary(), "audit", "frobnicate", "--config", cfg}, &out) == 2);
  CHECK(run_command({binary(), "audit", "export", "--config", cfg, "--since", "soon"}, &out) == 2);
}

TEST_CASE("audit tail --follow prints records as they are written") {
  ServerProcess s;
  Client c(s.port());
  call_tool(c, s.user_key(), "echo", {{"text", "before"}});
  Child tail = spawn({binary(), "audit", "tail", "--config", s.config_path(), "-n", "1", "--follow"});
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  call_tool(c, s.user_key(), "echo", {{"text", "after"}}, "", 2);
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  kill(tail.pid, SIGTERM);
  std::string out;
  CHECK(finish(tail, &out) == 0);
  auto lines = jsonl(out);
  REQUIRE(lines.size() == 2);
  CHECK(lines[0]["details"]["arguments"]["text"] == "before");
  CHECK(lines[1]["details"]["arguments"]["text"] == "after");
}

TEST_CASE("audit edge: every refused request leaves exactly one record with a clear reason") {
  ServerProcess s("[limits]\nmax_message_bytes = 4096\n[http]\nmax_header_bytes = 2048\n");
  auto h = modern_headers(s.user_key(), "tools/list");
  auto list = modern_request(1, "tools/list").dump();
  struct Expect {
    int status;
    std::string outcome, error_code;
  };
  std::vector<Expect> expected;
  auto expect = [&](int got, int status, const std::string& outcome, const std::string& code) {
    CHECK(got == status);
    expected.push_back({status, outcome, code});
  };
  {
    Client c(s.port());
    expect(c.request(verb::get, "/nope", {}).status, 404, "invalid", "not_found");
    expect(c.request(verb::put, "/mcp", bearer(s.user_key()), "x").status, 405, "invalid", "method_not_allowed");
    auto h2 = h;
    h2["Content-Type"] = "text/plain";
    expect(c.request(verb::post, "/mcp", h2, list).status, 415, "invalid", "unsupported_media_type");
    h2 = h;
    h2["Accept"] = "text/html";
    expect(c.request(verb::post, "/mcp", h2, list).status, 406, "invalid", "not_acceptable");
    expect(c.request(verb::post, "/mcp", h, "{nope").status, 400, "invalid", "parse_error");
    auto h3 = h;
    h3.erase("Authorization");
    expect(c.request(verb::post, "/mcp", h3, list).status, 401, "unauthenticated", "unauthenticated");
    auto h4 = h;
    h4["Origin"] = "https://evil.example";
    expect(c.request(verb::post, "/mcp", h4, list).status, 403, "denied", "forbidden");
    auto h5 = h;
    h5["Mcp-Method"] = "tools/call";
    expect(c.request(verb::post, "/mcp", h5, list).status, 400, "invalid", "header_mismatch");
    expect(c.request(verb::post, "/mcp", modern_headers(s.user_key(), "nope/nope"),
                     modern_request(2, "nope/nope").dump())
               .status,
           404, "invalid", "method_not_found");
    // A JSON-RPC error answered with 200 is a refusal too.
    json bad_cursor = modern_request(3, "tools/list", {{"cursor", "!!"}});
    expect(c.request(verb::post, "/mcp", h, bad_cursor.dump()).status, 200, "invalid", "invalid_params");
    // Not refusals: a successful list and a probe leave no record.
    REQUIRE(c.request(verb::post, "/mcp", h, list).status == 200);
    REQUIRE(c.request(verb::get, "/healthz", {}).status == 200);
  }
  {
    Client c(s.port());
    std::string big = R"({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"pad":")" + std::string(5000, 'x') + "\"}}";
    expect(c.request(verb::post, "/mcp", h, big).status, 413, "invalid", "payload_too_large");
  }
  {
    Client c(s.port());
    auto h6 = h;
    h6["X-Padding"] = std::string(3000, 'p');
    expect(c.request(verb::post, "/mcp", h6, list).status, 431, "invalid", "headers_too_large");
  }
  {
    Client c(s.port());
    c.send_raw("GARBAGE\r\n\r\n");
    CHECK(c.read_head().status == 400);
    expected.push_back({400, "invalid", "bad_request"});
  }
  REQUIRE(s.stop() == 0);
  auto records = export_records(s);
  REQUIRE(records.size() == expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    INFO(records[i].dump());
    CHECK(records[i]["outcome"] == expected[i].outcome);
    CHECK(records[i]["error_code"] == expected[i].error_code);
    CHECK(records[i]["details"]["http_status"] == expected[i].status);
    CHECK(records[i]["details"]["reason"].get<std::string>().size() > 5);
    CHECK(records[i]["details"]["transport"] == "http");
  }
  CHECK(records[0]["details"]["path"] == "/nope");
  CHECK(records[4]["principal"] == "demo");          // authenticated, then malformed
  CHECK(records[5]["principal"] == "");              // no credentials
  CHECK(records[7]["details"]["rpc_method"] == "tools/list");
  CHECK(records[8]["details"]["rpc_method"] == "nope/nope");
  CHECK(records[10]["details"]["method"] == "POST");  // the 413 knows its request line
}

TEST_CASE("audit edge: malformed stdio lines are recorded too") {
  ServerProcess s("[limits]\nmax_message_bytes = 4096\n", false);
  std::string input = "this is not json\n" + modern_request(1, "nope/nope").dump() + "\n" +
                      modern_request(2, "tools/call", {{"name", "echo"}, {"arguments", {{"text", "fine"}}}}).dump() + "\n" +
                      // Over the line limit (as HTTP's 413 is audited).
                      modern_request(3, "tools/call", {{"name", "echo"}, {"arguments", {{"text", std::string(5000, 'x')}}}}).dump() +
                      "\n";
  std::string out;
  REQUIRE(run_command({binary(), "serve", "--config", s.config_path(), "--stdio"}, &out, input) == 0);
  auto records = export_records(s);
  REQUIRE(records.size() == 4);
  std::map<std::string, json> by_outcome;
  int invalid = 0;
  for (auto& r : records) {
    CHECK(r["principal"] == "demo");
    if (r["outcome"] == "invalid") {
      ++invalid;
      CHECK(r["details"]["transport"] == "stdio");
    }
  }
  CHECK(invalid == 3);
  int over_limit = 0;
  for (auto& r : records)
    if (r["details"].value("reason", "").find("exceeds the limit of 4096 bytes") != std::string::npos) ++over_limit;
  CHECK(over_limit == 1);
}

TEST_CASE("audit crash: after SIGKILL at random points, verify passes and no acknowledged call is missing") {
  ServerProcess s("[audit]\ncheckpoint_every_records = 7\n");
  std::mt19937 rng(std::random_device{}());
  std::mutex mutex;
  std::set<std::string> acknowledged;
  std::atomic<int> counter{0};
  for (int round = 0; round < 4; ++round) {
    std::atomic<bool> stop{false};
    std::vector<std::thread> clients;
    for (int t = 0; t < 4; ++t)
      clients.emplace_back([&, port = s.port()] {
        try {
          Client c(port);
          while (!stop) {
            std::string text = "call-" + std::to_string(counter.fetch_add(1));
            auto r = call_tool(c, s.user_key(), "echo", {{"text", text}});
            if (r.is_object() && r.contains("result") && r["result"]["structuredContent"]["text"] == text) {
              std::lock_guard g(mutex);
              acknowledged.insert(text);
            }
          }
        } catch (const std::exception&) {
          // the server died under us: calls not answered are not acknowledged
        }
      });
    std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 400));
    kill(s.pid(), SIGKILL);
    int status = 0;
    waitpid(s.pid(), &status, 0);
    stop = true;
    for (auto& th : clients) th.join();
    s.start();  // a restart continues the chain (and repairs a torn checkpoint line)
  }
  REQUIRE(s.stop() == 0);
  std::string out;
  CHECK(run_command({binary(), "audit", "verify", "--config", s.config_path()}, &out) == 0);
  INFO(out);
  CHECK(out.find("audit log intact") != std::string::npos);
  CHECK(out.find("signatures verified") != std::string::npos);
  std::set<std::string> recorded;
  for (auto& r : export_records(s))
    if (r["tool"] == "echo" && r["outcome"] == "ok") recorded.insert(r["details"]["arguments"]["text"]);
  REQUIRE(acknowledged.size() > 20);
  std::vector<std::string> missing;
  for (const auto& a : acknowledged)
    if (!recorded.count(a)) missing.push_back(a);
  CHECK(missing.empty());
}

TEST_CASE("audit log_mirror: on, each record is also an audit line in the log, off, only the database has it") {
  auto run = [](bool mirror) {
    ServerProcess s(std::string("[audit]\nlog_mirror = ") + (mirror ? "true" : "false") + "\n");
    Client c(s.port());
    std::string text = std::string("mirror-") + (mirror ? "on" : "off");
    auto r = call_tool(c, s.user_key(), "echo", {{"text", text}});
    REQUIRE(r["result"]["structuredContent"]["text"] == text);
    REQUIRE(s.stop() == 0);  // the mirror runs after the answer; a clean stop has written it
    bool recorded = false;
    for (auto& rec : export_records(s))
      if (rec["tool"] == "echo" && rec["details"]["arguments"]["text"] == text) recorded = true;
    CHECK(recorded);
    std::string log = s.log();
    bool mirrored = log.find("\"event\":\"audit\"") != std::string::npos && log.find(text) != std::string::npos;
    CHECK(mirrored == mirror);
  };
  run(true);
  run(false);
}

TEST_CASE("audit api: with durability = commit, an auditor's query waits for the calls answered before it") {
  ServerProcess s(std::string(kProjects) + "[server]\ndurability = \"commit\"\n");
  std::string ann = create_key(s, "ann");
  Client c(s.port());
  // Another connection holds the write lock: calls are answered from the journal and cannot
  // commit until it lets go.
  sqlite3* blocker = nullptr;
  REQUIRE(sqlite3_open((s.dir() / "scigate.db").c_str(), &blocker) == SQLITE_OK);
  REQUIRE(sqlite3_exec(blocker, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK);
  REQUIRE(call_tool(c, s.user_key(), "echo", {{"text", "journaled"}}, "physics")["result"]["isError"] == false);
  std::thread release([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    sqlite3_exec(blocker, "ROLLBACK", nullptr, nullptr, nullptr);
  });
  auto r = c.request(verb::get, "/audit/events?project=physics&tool=echo", bearer(ann));
  release.join();
  sqlite3_close(blocker);
  REQUIRE(r.status == 200);
  auto events = r.json_body()["events"];
  REQUIRE(events.size() == 1);  // not an empty page read before the record was committed
  CHECK(events[0]["details"]["arguments"]["text"] == "journaled");
}
