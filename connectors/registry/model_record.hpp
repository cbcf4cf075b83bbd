#pragma once
// One model of the registry (docs/MODELS.md), as a manifest declares it and the catalog stores
// it, plus the JSON shapes the tools and the CLI show. Plain data: no I/O, no locking.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace scigate::registry {

// The kinds of model the registry knows; what the inference tools do with each differs.
inline const std::vector<std::string>& known_modalities() {
  static const std::vector<std::string> kModalities = {"text", "vision", "ocr", "embedding", "speech"};
  return kModalities;
}

// The usage kinds a model may be priced by. The value of rates[kind] is the credit ledger's
// resource name, "<kind>:<something>" (docs/CREDITS.md), whose price comes from [credits.rates].
inline const std::vector<std::string>& known_rate_kinds() {
  static const std::vector<std::string> kKinds = {"tokens_in", "tokens_out", "audio_second"};
  return kKinds;
}

struct ServedBy {
  std::string backend;
  int64_t seen_ms = 0;
  bool operator==(const ServedBy&) const = default;
};

struct ModelRecord {
  std::string id;            // what agents pass as `model`; [A-Za-z0-9][A-Za-z0-9._:/-]{0,127}
  std::string revision;      // the weights' revision (a commit or tag of `source`); may be empty
  std::string name;          // display name; may be empty
  std::string family;
  std::string modality;      // one of known_modalities()
  std::vector<std::string> tasks;
  int64_t parameters = 0;
  int64_t context_length = 0;  // tokens
  std::string quantization;  // "bf16", "fp8", "awq-int4", ...; may be empty
  std::string license;       // SPDX id where there is one ("apache-2.0", "mit"), else the vendor's name
  std::string source;        // where the weights come from, e.g. an HF repository URL
  std::string weights_sha256;  // 64 lowercase hex digits, or empty
  int64_t gpu_memory_mib = 0;  // GPU memory serving it needs (weights plus a working KV cache); 0: unknown
  std::string description;
  std::map<std::string, std::string> rates;  // usage kind -> credit resource name
  // Filled by the catalog, never by a manifest.
  std::vector<ServedBy> served_by;
  int64_t updated_ms = 0;

  bool operator==(const ModelRecord&) const = default;
};

// The rates a model gets when its manifest entry has none: "tokens_in:<id>" and
// "tokens_out:<id>"; embeddings only tokens_in; speech audio_second and tokens_out.
std::map<std::string, std::string> default_rates(const std::string& id, const std::string& modality);

// The inference tool whose `model` argument governs this model: "embed" for embedding
// models, "call_inference" for the rest. The registry shows a project only the models for
// which its policy could permit that tool with model = id (docs/MODELS.md).
std::string_view inference_tool_for(const std::string& modality);

// One short object per model, for query_model_registry and `scigate models list`.
nlohmann::json compact_json(const ModelRecord& m);
// Everything, served_by included, for get_model.
nlohmann::json full_json(const ModelRecord& m);
// "8.0B", "568M": parameter counts for people.
std::string size_text(int64_t parameters);

}  // namespace scigate::registry
