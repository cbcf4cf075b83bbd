// Manifest parsing: what an operator's mistakes look like (each names the model and the field).
#include <catch2/catch.hpp>

#include <string>

#include "connectors/registry/model_manifest.hpp"

using namespace scigate::registry;

namespace {

const char* kGood = R"(
description = "two models"

[[models]]
id = "llama-3.1-8b-instruct"
revision = "0e9e39f"
name = "Llama 3.1 8B Instruct"
family = "llama-3.1"
modality = "text"
tasks = ["chat", "tool-use"]
parameters = 8_030_000_000
context_length = 131072
quantization = "bf16"
license = "llama3.1"
source = "https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct"
gpu_memory_gib = 18
description = "General chat model."

[[models]]
id = "BAAI/bge-m3"
family = "bge"
modality = "embedding"
tasks = ["embedding", "retrieval"]
parameters = 568_000_000
context_length = 8192
license = "mit"
weights_sha256 = "ABCDEF0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789"
[models.rates]
tokens_in = "tokens_in:bge"
)";

std::string problems_of(const std::string& text, ManifestFormat f = ManifestFormat::kToml) {
  try {
    parse_manifest(text, f, "m.toml");
  } catch (const ManifestError& e) {
    return e.what();
  }
  return "";
}

std::string one_model(const std::string& extra_or_replacement) {
  return "[[models]]\nid = \"m1\"\nfamily = \"f\"\nmodality = \"text\"\ntasks = [\"chat\"]\nparameters = 1000\n"
         "license = \"mit\"\n" + extra_or_replacement;
}

}  // namespace

TEST_CASE("registry manifest: a valid TOML manifest becomes records, with default and explicit rates") {
  auto models = parse_manifest(kGood, ManifestFormat::kToml, "m.toml");
  REQUIRE(models.size() == 2);
  const auto& l = models[0];
  CHECK(l.id == "llama-3.1-8b-instruct");
  CHECK(l.revision == "0e9e39f");
  CHECK(l.parameters == 8'030'000'000);
  CHECK(l.context_length == 131072);
  CHECK(l.tasks == std::vector<std::string>{"chat", "tool-use"});
  CHECK(l.gpu_memory_mib == 18 * 1024);
  CHECK(l.rates.at("tokens_in") == "tokens_in:llama-3.1-8b-instruct");
  CHECK(l.rates.at("tokens_out") == "tokens_out:llama-3.1-8b-instruct");
  const auto& b = models[1];
  CHECK(b.id == "BAAI/bge-m3");
  CHECK(b.rates.size() == 1);
  CHECK(b.rates.at("tokens_in") == "tokens_in:bge");
  CHECK(b.weights_sha256 == "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789");
}

TEST_CASE("registry manifest: embedding models default to input tokens only, speech to audio seconds") {
  auto e = parse_manifest(one_model("context_length = 10\n") , ManifestFormat::kToml, "m");
  CHECK(e[0].rates.size() == 2);
  auto rates = default_rates("whisper", "speech");
  CHECK(rates.at("audio_second") == "audio_second:whisper");
  CHECK(default_rates("bge", "embedding").size() == 1);
}

TEST_CASE("registry manifest: JSON manifests are read the same way") {
  auto models = parse_manifest(R"({"models": [{"id": "m1", "family": "f", "modality": "ocr", "tasks": ["ocr"],
      "parameters": 580000000, "context_length": 8192, "license": "apache-2.0"}]})",
                               ManifestFormat::kJson, "m.json");
  REQUIRE(models.size() == 1);
  CHECK(models[0].modality == "ocr");
  CHECK(problems_of(R"({"models": [{"id": "m1", "family": "f", "modality": "ocr", "tasks": ["ocr"],
      "parameters": 5.5, "context_length": 8192, "license": "apache-2.0"}]})", ManifestFormat::kJson)
            .find("model m1: parameters must be a positive integer") != std::string::npos);
  CHECK(problems_of("{not json", ManifestFormat::kJson) == "m.toml: not valid JSON");
}

TEST_CASE("registry manifest: errors name the model and the field") {
  CHECK(problems_of(one_model("context_length = 0\n")) == "m.toml: model m1: context_length must be a positive integer");
  CHECK(problems_of(one_model("context_length = \"128k\"\n")) ==
        "m.toml: model m1: context_length must be a positive integer");
  CHECK(problems_of(one_model("")) == "m.toml: model m1: context_length is required: a positive integer");
  CHECK(problems_of(one_model("context_length = 8\nmodality2 = \"x\"\n")).find("model m1: unknown key \"modality2\"") !=
        std::string::npos);
  CHECK(problems_of(one_model("context_length = 8\nweights_sha256 = \"abc\"\n")) ==
        "m.toml: model m1: weights_sha256 must be 64 hexadecimal digits (a SHA-256)");
  CHECK(problems_of(one_model("context_length = 8\n[models.rates]\ntokens_in = \"tokens_out:m1\"\n")) ==
        "m.toml: model m1: rates.tokens_in must be a credit resource named \"tokens_in:<name>\" (docs/CREDITS.md)");
  CHECK(problems_of(one_model("context_length = 8\n[models.rates]\ngpu_hour = \"gpu_hour:a100\"\n"))
            .find("model m1: rates.gpu_hour is not a usage kind") != std::string::npos);
  CHECK(problems_of(one_model("context_length = 8\ngpu_memory_gib = -1\n")) ==
        "m.toml: model m1: gpu_memory_gib must be a positive number of GiB (at most 1000000)");
  CHECK(problems_of(one_model("context_length = 8\ntasks = []\n")).find("tasks") != std::string::npos);
}

TEST_CASE("registry manifest: a bad modality, task or duplicate id is refused, and all problems are listed") {
  std::string text = one_model("context_length = 8\n");
  std::string bad_modality = text;
  bad_modality.replace(bad_modality.find("\"text\""), 6, "\"audio\"");
  CHECK(problems_of(bad_modality) ==
        "m.toml: model m1: modality must be one of text, vision, ocr, embedding, speech");
  std::string bad_task = text;
  bad_task.replace(bad_task.find("[\"chat\"]"), 8, "[\"Chat Completion\"]");
  CHECK(problems_of(bad_task).find("model m1: tasks must hold lowercase names") != std::string::npos);
  CHECK(problems_of(text + text) == "m.toml: model m1: appears twice in the manifest");

  std::string two_bad = one_model("context_length = -5\n") +
                        "[[models]]\nid = \"m2\"\nfamily = \"f\"\nmodality = \"text\"\ntasks = [\"chat\"]\n"
                        "parameters = 0\ncontext_length = 5\nlicense = \"mit\"\n";
  try {
    parse_manifest(two_bad, ManifestFormat::kToml, "m.toml");
    FAIL("accepted");
  } catch (const ManifestError& e) {
    REQUIRE(e.problems().size() == 2);
    CHECK(e.problems()[0] == "m.toml: model m1: context_length must be a positive integer");
    CHECK(e.problems()[1] == "m.toml: model m2: parameters must be a positive integer");
  }
}

TEST_CASE("registry manifest: a model without a usable id is named by its position") {
  CHECK(problems_of("[[models]]\nfamily = \"f\"\n") ==
        "m.toml: models[0]: id is required (the name agents pass as `model`, as the backends serve it)");
  CHECK(problems_of("[[models]]\nid = \"../etc\"\n").find("models[0]: id must be") != std::string::npos);
  CHECK(problems_of("models = 3\n") ==
        "m.toml: top level: models is required: a list of models ([[models]] tables in TOML)");
  CHECK(problems_of("[server]\nx = 1\n[[models]]\n").find("top level: unknown key \"server\"") != std::string::npos);
  CHECK(problems_of("[[models]\n").rfind("m.toml:1:", 0) == 0);  // TOML syntax: line and column
  CHECK(problems_of(one_model("context_length = 8\nrevision = 1979-05-27\n")).find("dates and times") !=
        std::string::npos);
}
