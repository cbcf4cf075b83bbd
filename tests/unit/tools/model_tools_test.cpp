// query_model_registry and get_model in-process: output shapes, prices, and the policy filter
// choosing the inference tool by modality.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include "connectors/registry/model_catalog.hpp"
#include "connectors/registry/model_registry.hpp"
#include "policies/project_policies.hpp"
#include "server/common/crypto.hpp"
#include "server/state/database.hpp"
#include "support/run_blocking.hpp"
#include "tools/models/model_tools.hpp"

using namespace scigate;
using namespace scigate::registry;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

ModelRecord model(const std::string& id, const std::string& modality) {
  ModelRecord m;
  m.id = id;
  m.family = "f";
  m.modality = modality;
  m.tasks = {modality == "embedding" ? "embedding" : "chat"};
  m.parameters = 1'000'000'000;
  m.context_length = 4096;
  m.license = "mit";
  m.description = "model " + id;
  m.rates = default_rates(id, modality);
  return m;
}

struct Fixture {
  Fixture() {
    dir = fs::temp_directory_path() / ("scigate-model-tools-" + crypto::random_hex(6));
    fs::create_directories(dir);
    {
      state::Database db(dir / "db.sqlite");
      db.migrate(state::schema_migrations());
      ModelCatalog(db).import({model("chat-a", "text"), model("chat-b", "text"), model("emb-a", "embedding")}, 1);
    }
    // Project p permits call_inference with chat-a and embed with emb-a only; chat-b is hidden, and
    // emb-a is visible through `embed` although no call_inference rule names it.
    std::ofstream(dir / "p.toml") << R"(
[[rules]]
id = "find"
effect = "permit"
tools = ["query_model_registry", "get_model"]
[[rules]]
id = "chat"
effect = "permit"
tools = ["call_inference"]
[rules.when]
model = { in = ["chat-a", "emb-a-not-via-chat"] }
[[rules]]
id = "embed"
effect = "permit"
tools = ["embed"]
[rules.when]
model = { in = ["emb-a"] }
)";
    policy = std::make_unique<ProjectPolicies>(std::vector<ProjectPolicies::Source>{{"p", dir / "p.toml"}});
    models = std::make_unique<ModelRegistry>(dir / "db.sqlite");
    ctx.principal.name = "alice";
    ctx.principal.projects = {"p"};
    ctx.principal.roles["p"] = {"member"};
    ctx.project = "p";
  }
  ~Fixture() {
    models->join();
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  fs::path dir;
  std::unique_ptr<ProjectPolicies> policy;
  std::unique_ptr<ModelRegistry> models;
  credits::RateTable rates{{credits::Rate{"tokens_in:chat-a", 200'000, "token"}}};  // 0.0000002 credits
  CallContext ctx;
};

}  // namespace

TEST_CASE("model tools: the query shows what the policy admits, per modality's inference tool") {
  Fixture f;
  tools::QueryModelRegistryTool tool(tools::ModelToolDeps{*f.models, *f.policy, &f.rates});
  CHECK(tool.descriptor().annotations.read_only);
  auto r = test::run_blocking(tool.call(json::object(), f.ctx));
  REQUIRE_FALSE(r.error);
  REQUIRE(r.structured["models"].size() == 2);
  CHECK(r.structured["models"][0]["id"] == "chat-a");
  CHECK(r.structured["models"][1]["id"] == "emb-a");
  CHECK(r.structured["hidden_by_policy"] == 1);
  CHECK(r.structured["next_cursor"].is_null());
  CHECK(r.text.find("chat-a — text, 1.0B, 4096 ctx, mit") != std::string::npos);

  json bad = json::object();
  bad["text"] = "!!";
  auto e = test::run_blocking(tool.call(bad, f.ctx));
  REQUIRE(e.error);
  CHECK(e.error->code == ErrorCode::kInvalidArguments);
}

TEST_CASE("model tools: get_model gives the record with prices, and not_found for a hidden model") {
  Fixture f;
  tools::GetModelTool tool(tools::ModelToolDeps{*f.models, *f.policy, &f.rates});
  json args = json::object();
  args["model"] = "chat-a";
  auto r = test::run_blocking(tool.call(args, f.ctx));
  REQUIRE_FALSE(r.error);
  CHECK(r.structured["rates"]["tokens_out"] == "tokens_out:chat-a");
  CHECK(r.structured["prices"]["tokens_in"]["credits_per_unit"] == "0.0000002");
  CHECK(r.structured["prices"]["tokens_in"]["unit"] == "token");
  CHECK_FALSE(r.structured["prices"].contains("tokens_out"));  // no rate configured: free
  CHECK(r.structured["served_by"] == json::array());

  args["model"] = "chat-b";
  auto hidden = test::run_blocking(tool.call(args, f.ctx));
  REQUIRE(hidden.error);
  CHECK(hidden.error->code == ErrorCode::kNotFound);
  args["model"] = "nope";
  auto missing = test::run_blocking(tool.call(args, f.ctx));
  REQUIRE(missing.error);
  CHECK(missing.error->message == "no model nope in the registry for project p");
  CHECK(hidden.error->message == "no model chat-b in the registry for project p");  // the same answer

  // Outside the project nothing is visible.
  f.ctx.project = "other";
  args["model"] = "chat-a";
  CHECK(test::run_blocking(tool.call(args, f.ctx)).error);
}
