// The model registry through the real binary: `scigate init` imports the example catalog, the
// tools answer over HTTP, policy decides which models a project sees, the CLI imports and lists.
#include <catch2/catch.hpp>
#include <sqlite3.h>

#include <fstream>
#include <set>

#include "server_process.hpp"
#include "tool_call.hpp"

using namespace scigate::itest;
using http::verb;

namespace {

// A tools/call for a chosen project (X-Scigate-Project).
json call_for(Client& c, const std::string& key, const std::string& project, const std::string& tool, json args) {
  auto req = modern_request(1, "tools/call", {{"name", tool}, {"arguments", std::move(args)}});
  auto h = modern_headers(key, "tools/call", tool);
  h["X-Scigate-Project"] = project;
  auto r = c.request(verb::post, "/mcp", h, req.dump());
  REQUIRE(r.status == 200);
  auto body = r.json_body();
  REQUIRE(body.contains("result"));
  return body["result"];
}

std::set<std::string> ids_of(const json& result) {
  std::set<std::string> out;
  for (const auto& m : result["structuredContent"]["models"]) out.insert(m["id"].get<std::string>());
  return out;
}

const std::set<std::string> kExample = {"bge-m3",          "got-ocr-2.0",          "llama-3.1-8b-instruct",
                                        "nomic-embed-text-v1.5", "qwen2.5-vl-7b-instruct", "whisper-large-v3"};

// A command with its stderr folded into `out` (run_command reads stdout only).
int run_merged(const std::vector<std::string>& argv, std::string* out) {
  std::string cmd;
  for (const auto& a : argv) cmd += "'" + a + "' ";
  return run_command({"/bin/sh", "-c", cmd + "2>&1"}, out);
}

std::string error_code(const json& result) { return result["_meta"]["io.scigate/error"]["code"].get<std::string>(); }

}  // namespace

TEST_CASE("models: the demo project sees only the models its policy names") {
  ServerProcess s;
  Client c(s.port());
  auto all = call_tool(c, s.user_key(), "query_model_registry", json::object());
  REQUIRE(all["isError"] == false);
  // demo.toml permits call_inference/embed for five of the six example models, not the vision one.
  std::set<std::string> expected = kExample;
  expected.erase("qwen2.5-vl-7b-instruct");
  CHECK(ids_of(all) == expected);
  CHECK(all["structuredContent"]["hidden_by_policy"] == 1);
  CHECK(all["structuredContent"]["next_cursor"].is_null());
  auto first = all["structuredContent"]["models"][0];
  CHECK(first["id"] == "bge-m3");
  CHECK(first["modality"] == "embedding");
  CHECK(first["parameters"] == 568000000);
  CHECK(first["served"] == false);
  CHECK_FALSE(first.contains("description"));  // compact

  auto hidden = call_tool(c, s.user_key(), "get_model", {{"model", "qwen2.5-vl-7b-instruct"}});
  CHECK(hidden["isError"] == true);
  CHECK(error_code(hidden) == "not_found");
  auto missing = call_tool(c, s.user_key(), "get_model", {{"model", "no-such-model"}});
  CHECK(error_code(missing) == "not_found");

  auto bge = call_tool(c, s.user_key(), "get_model", {{"model", "bge-m3"}});
  REQUIRE(bge["isError"] == false);
  auto rec = bge["structuredContent"];
  CHECK(rec["license"] == "mit");
  CHECK(rec["context_length"] == 8192);
  CHECK(rec["source"] == "https://huggingface.co/BAAI/bge-m3");
  CHECK(rec["rates"] == json{{"tokens_in", "tokens_in:bge-m3"}});
  CHECK(rec["served_by"] == json::array());
  CHECK(rec["description"].get<std::string>().find("Multilingual") != std::string::npos);

  // The service account is a member too: the same view.
  CHECK(ids_of(call_tool(c, s.service_key(), "query_model_registry", json::object())) == expected);
}

TEST_CASE("models: filters, full-text search and pages through the server") {
  ServerProcess s;
  Client c(s.port());
  auto q = [&](json args) { return call_tool(c, s.user_key(), "query_model_registry", std::move(args)); };
  CHECK(ids_of(q({{"modality", "embedding"}})) == std::set<std::string>{"bge-m3", "nomic-embed-text-v1.5"});
  CHECK(ids_of(q({{"task", "transcription"}})) == std::set<std::string>{"whisper-large-v3"});
  CHECK(ids_of(q({{"license", "Apache-2.0"}})) ==
        std::set<std::string>{"got-ocr-2.0", "nomic-embed-text-v1.5", "whisper-large-v3"});
  CHECK(ids_of(q({{"min_context", 100000}})) == std::set<std::string>{"llama-3.1-8b-instruct"});
  CHECK(ids_of(q({{"max_parameters", 600000000}})) ==
        std::set<std::string>{"bge-m3", "got-ocr-2.0", "nomic-embed-text-v1.5"});
  CHECK(ids_of(q({{"text", "scanned pages"}})) == std::set<std::string>{"got-ocr-2.0"});
  CHECK(ids_of(q({{"text", "speech translation"}})) == std::set<std::string>{"whisper-large-v3"});
  // The vision model matches "charts" but is not this project's to see.
  auto charts = q({{"text", "charts"}});
  CHECK(ids_of(charts).empty());
  CHECK(charts["structuredContent"]["hidden_by_policy"] == 1);
  CHECK(charts["content"][0]["text"].get<std::string>().find("not available to project demo") != std::string::npos);

  std::set<std::string> seen;
  json args = {{"limit", 2}};
  int pages = 0;
  for (;;) {
    auto page = q(args);
    REQUIRE(page["isError"] == false);
    ++pages;
    CHECK(page["structuredContent"]["models"].size() <= 2);
    for (const auto& id : ids_of(page)) CHECK(seen.insert(id).second);
    if (page["structuredContent"]["next_cursor"].is_null()) break;
    args["cursor"] = page["structuredContent"]["next_cursor"];
    REQUIRE(pages < 10);
  }
  CHECK(pages == 3);
  CHECK(seen.size() == 5);

  // A cursor with other filters, or a page size over the bound, is the caller's to fix.
  auto p1 = q({{"limit", 2}});
  auto bad = q({{"limit", 2}, {"modality", "text"}, {"cursor", p1["structuredContent"]["next_cursor"]}});
  CHECK(bad["isError"] == true);
  CHECK(error_code(bad) == "invalid_arguments");
  CHECK(error_code(q({{"limit", 1000}})) == "invalid_arguments");
  CHECK(error_code(q({{"text", "--"}})) == "invalid_arguments");
}

TEST_CASE("models: availability written to model_backends shows as served") {
  ServerProcess s;
  Client c(s.port());
  // The inference connector's health poll calls ModelCatalog::set_served (end to end:
  // inference_test.cpp); here the table is written from outside the server process, with no
  // backend configured, to show the tools read it as it is.
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open((s.dir() / "scigate.db").c_str(), &db) == SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  REQUIRE(sqlite3_exec(db, "INSERT INTO model_backends VALUES ('llama-3.1-8b-instruct', 'vllm-1', 1700000000000)",
                       nullptr, nullptr, nullptr) == SQLITE_OK);
  sqlite3_close(db);
  auto served = call_tool(c, s.user_key(), "query_model_registry", {{"served_now", true}});
  CHECK(ids_of(served) == std::set<std::string>{"llama-3.1-8b-instruct"});
  CHECK(served["structuredContent"]["models"][0]["served"] == true);
  auto llama = call_tool(c, s.user_key(), "get_model", {{"model", "llama-3.1-8b-instruct"}});
  CHECK(llama["structuredContent"]["served_by"] == json::parse(R"([{"backend": "vllm-1", "seen_ms": 1700000000000}])"));
}

TEST_CASE("models: a project without a policy file sees every model, one whose policy has no inference rule none") {
  ServerProcess s("[[projects]]\nid = \"open\"\nmembers = [\"demo\"]\n", false);
  s.merge_config("[[projects]]\nid = \"closed\"\nmembers = [\"demo\"]\npolicy = \"policies/closed.toml\"\n");
  std::ofstream(s.dir() / "policies" / "closed.toml")
      << "[[rules]]\nid = \"find\"\neffect = \"permit\"\ntools = [\"query_model_registry\", \"get_model\"]\n";
  s.start();
  Client c(s.port());
  auto open = call_for(c, s.user_key(), "open", "query_model_registry", json::object());
  REQUIRE(open["isError"] == false);
  CHECK(ids_of(open) == kExample);
  CHECK(call_for(c, s.user_key(), "open", "get_model", {{"model", "qwen2.5-vl-7b-instruct"}})["isError"] == false);

  auto closed = call_for(c, s.user_key(), "closed", "query_model_registry", json::object());
  REQUIRE(closed["isError"] == false);
  CHECK(ids_of(closed).empty());
  CHECK(closed["structuredContent"]["hidden_by_policy"] == 6);
  CHECK(error_code(call_for(c, s.user_key(), "closed", "get_model", {{"model", "bge-m3"}})) == "not_found");
}

TEST_CASE("cli: models import validates and upserts, models list shows the catalog or one principal's view") {
  ServerProcess s("", false);
  std::string out;
  // init imported the example catalog.
  REQUIRE(run_command({binary(), "models", "list", "--config", s.config_path()}, &out) == 0);
  for (const auto& id : kExample) CHECK(out.find(id + "\t") != std::string::npos);
  CHECK(out.find("bge-m3\tembedding\t568M\t8192\tmit\t-\n") != std::string::npos);

  std::string bad = (s.dir() / "bad.toml").string();
  std::ofstream(bad) << "[[models]]\nid = \"tiny\"\nfamily = \"t\"\nmodality = \"text\"\ntasks = [\"chat\"]\n"
                        "parameters = 1000\ncontext_length = 0\nlicense = \"mit\"\n";
  CHECK(run_merged({binary(), "models", "import", "--config", s.config_path(), bad}, &out) == 1);
  CHECK(out.find(bad + ": model tiny: context_length must be a positive integer") != std::string::npos);
  CHECK(out.find("nothing imported") != std::string::npos);

  std::string good = (s.dir() / "good.json").string();
  std::ofstream(good) << R"({"models": [{"id": "tiny", "family": "t", "modality": "text", "tasks": ["chat"],
      "parameters": 1000, "context_length": 512, "license": "mit", "description": "A tiny test model."}]})";
  CHECK(run_command({binary(), "models", "import", "--config", s.config_path(), good}, &out) == 0);
  CHECK(out.find("1 added, 0 updated, 0 unchanged") != std::string::npos);
  CHECK(run_command({binary(), "models", "import", "--config", s.config_path(), good}, &out) == 0);
  CHECK(out.find("0 added, 0 updated, 1 unchanged") != std::string::npos);
  std::string example = std::string(SCIGATE_SOURCE_DIR) + "/examples/models/manifest.toml";
  CHECK(run_command({binary(), "models", "import", "--config", s.config_path(), example}, &out) == 0);
  CHECK(out.find("imported 6 models: 0 added, 0 updated, 6 unchanged") != std::string::npos);

  REQUIRE(run_command({binary(), "models", "list", "--config", s.config_path(), "--format", "json"}, &out) == 0);
  auto list = json::parse(out);
  CHECK(list.size() == 7);
  CHECK(list[5]["id"] == "tiny");
  CHECK(list[5]["description"] == "A tiny test model.");

  // What demo sees in project demo: the policy's five, not the vision model or tiny.
  REQUIRE(run_merged({binary(), "models", "list", "--config", s.config_path(), "--as", "demo", "--project", "demo"},
                     &out) == 0);
  CHECK(out.find("llama-3.1-8b-instruct\t") != std::string::npos);
  CHECK(out.find("qwen2.5-vl-7b-instruct") == std::string::npos);
  CHECK(out.find("tiny\t") == std::string::npos);
  CHECK(out.find("note: 2 models of the catalog not shown to demo in project demo") != std::string::npos);
  // Not valid UTF-8: a usage error, not a crash.
  CHECK(run_merged({binary(), "models", "list", "--config", s.config_path(), "--text", "\xff"}, &out) == 2);
  CHECK(out.find("--text is not valid UTF-8") != std::string::npos);

  CHECK(run_command({binary(), "models", "list", "--config", s.config_path(), "--text", "embeddings"}, &out) == 0);
  CHECK(out.find("bge-m3\t") != std::string::npos);
  CHECK(out.find("whisper") == std::string::npos);

  CHECK(run_command({binary(), "models"}, &out) == 2);
  CHECK(run_command({binary(), "models", "import", "--config", s.config_path()}, &out) == 2);
  CHECK(run_command({binary(), "models", "list", "--config", s.config_path(), "--bogus"}, &out) == 2);
  CHECK(run_command({binary(), "models", "frobnicate", "--config", s.config_path()}, &out) == 2);
  CHECK(run_command({binary(), "models", "import", "--config", s.config_path(), "/nonexistent.toml"}, &out) == 1);
}
