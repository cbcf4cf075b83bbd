#include "connectors/registry/model_record.hpp"

#include <cstdio>

namespace scigate::registry {

using nlohmann::json;

std::map<std::string, std::string> default_rates(const std::string& id, const std::string& modality) {
  std::map<std::string, std::string> r;
  if (modality == "speech") {
    r["audio_second"] = "audio_second:" + id;
    r["tokens_out"] = "tokens_out:" + id;
  } else {
    r["tokens_in"] = "tokens_in:" + id;
    if (modality != "embedding") r["tokens_out"] = "tokens_out:" + id;
  }
  return r;
}

std::string_view inference_tool_for(const std::string& modality) {
  return modality == "embedding" ? "embed" : "call_inference";
}

std::string size_text(int64_t parameters) {
  char buf[32];
  if (parameters >= 1'000'000'000)
    std::snprintf(buf, sizeof buf, "%.1fB", static_cast<double>(parameters) / 1e9);
  else if (parameters >= 1'000'000)
    std::snprintf(buf, sizeof buf, "%.0fM", static_cast<double>(parameters) / 1e6);
  else
    std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(parameters));
  return buf;
}

json compact_json(const ModelRecord& m) {
  json j = json::object();
  j["id"] = m.id;
  j["family"] = m.family;
  j["modality"] = m.modality;
  j["tasks"] = m.tasks;
  j["parameters"] = m.parameters;
  j["size"] = size_text(m.parameters);
  j["context_length"] = m.context_length;
  j["license"] = m.license;
  j["served"] = !m.served_by.empty();
  return j;
}

json full_json(const ModelRecord& m) {
  json j = compact_json(m);  // the compact fields, then the rest
  j["revision"] = m.revision;
  j["name"] = m.name;
  j["quantization"] = m.quantization;
  j["license"] = m.license;
  j["source"] = m.source;
  j["weights_sha256"] = m.weights_sha256;
  j["gpu_memory_gib"] = static_cast<double>(m.gpu_memory_mib) / 1024.0;
  j["description"] = m.description;
  json rates = json::object();
  for (const auto& [kind, resource] : m.rates) rates[kind] = resource;
  j["rates"] = std::move(rates);
  json served = json::array();
  for (const auto& s : m.served_by) {
    json b = json::object();
    b["backend"] = s.backend;
    b["seen_ms"] = s.seen_ms;
    served.push_back(std::move(b));
  }
  j["served_by"] = std::move(served);
  j["updated_ms"] = m.updated_ms;
  return j;
}

}  // namespace scigate::registry
