#pragma once
// Model manifests (docs/MODELS.md): the files an operator imports with `scigate models import`.
// TOML, like the rest of the configuration, or the same structure as JSON. Validation is strict:
// unknown keys, wrong types and out-of-range values are refused, and every problem is reported
// with the model and the field ("model llama-3.1-8b: context_length must be a positive
// integer"), so that nothing half-right reaches the catalog.
#include <nlohmann/json.hpp>

#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "connectors/registry/model_record.hpp"

namespace scigate::registry {

// A manifest that cannot be imported. what() lists every problem found, one per line, each
// starting with the source ("models.toml: model x: ..."); problems() has them one by one.
class ManifestError : public std::runtime_error {
 public:
  explicit ManifestError(std::vector<std::string> problems);
  const std::vector<std::string>& problems() const { return problems_; }

 private:
  std::vector<std::string> problems_;
};

enum class ManifestFormat { kToml, kJson };

// Parses and validates a manifest; throws ManifestError. `source` names it in messages.
std::vector<ModelRecord> parse_manifest(std::string_view text, ManifestFormat format, const std::string& source);
// The manifest as JSON ({"models": [...]}), validated: the shared second half of both formats.
std::vector<ModelRecord> parse_manifest_json(const nlohmann::json& doc, const std::string& source);
// Reads a file: ".json" is JSON, anything else TOML. Throws ManifestError (also when unreadable).
std::vector<ModelRecord> load_manifest(const std::filesystem::path& file);

}  // namespace scigate::registry
