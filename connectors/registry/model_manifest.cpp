#include "connectors/registry/model_manifest.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

namespace scigate::registry {

using nlohmann::json;

namespace {

std::string joined_lines(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : "\n") + x;
  return s;
}

// Manifests stay small; a bound keeps a runaway file from filling the catalog by mistake.
constexpr std::size_t kMaxModels = 10000;
constexpr std::size_t kMaxProblems = 50;

bool id_char(char c, bool first) {
  bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
  return first ? alnum : alnum || c == '.' || c == '_' || c == '-' || c == ':' || c == '/';
}

bool valid_model_id(std::string_view s) {
  if (s.empty() || s.size() > 128) return false;
  for (std::size_t i = 0; i < s.size(); ++i)
    if (!id_char(s[i], i == 0)) return false;
  return s.find("..") == std::string_view::npos;
}

bool valid_word(std::string_view s, std::size_t max, std::string_view extra) {
  if (s.empty() || s.size() > max) return false;
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              extra.find(c) != std::string_view::npos;
    if (!ok) return false;
  }
  return true;
}

bool valid_task(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (i > 0 && c == '-');
    if (!ok) return false;
  }
  return true;
}

bool printable(std::string_view s, bool allow_newlines) {
  for (unsigned char c : s) {
    if (c == '\n' || c == '\t') {
      if (!allow_newlines) return false;
      continue;
    }
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

// Collects the problems of one manifest; every message names the model (or its position when
// it has no usable id) and the field.
class Validator {
 public:
  explicit Validator(std::string source) : source_(std::move(source)) {}

  void problem(const std::string& where, const std::string& what) {
    if (problems_.size() < kMaxProblems) problems_.push_back(source_ + ": " + where + ": " + what);
  }
  bool ok() const { return problems_.empty(); }
  std::vector<std::string> take() { return std::move(problems_); }

 private:
  std::string source_;
  std::vector<std::string> problems_;
};

const std::vector<std::string>& known_keys() {
  static const std::vector<std::string> kKeys = {
      "id",           "revision", "name",   "family",         "modality",      "tasks",       "parameters",
      "context_length", "quantization", "license", "source", "weights_sha256", "gpu_memory_gib", "description",
      "rates"};
  return kKeys;
}

std::string key_list(const std::vector<std::string>& keys) {
  std::string s;
  for (const auto& k : keys) s += (s.empty() ? "" : ", ") + k;
  return s;
}

std::optional<ModelRecord> validate_model(const json& e, std::size_t index, Validator& v) {
  std::string where = "models[" + std::to_string(index) + "]";
  if (!e.is_object()) {
    v.problem(where, "must be a table (an object) describing one model");
    return std::nullopt;
  }
  ModelRecord m;
  bool good = true;
  auto bad = [&](const std::string& what) {
    v.problem(where, what);
    good = false;
  };

  // The id first: every later message names the model by it.
  auto id_it = e.find("id");
  if (id_it == e.end()) {
    bad("id is required (the name agents pass as `model`, as the backends serve it)");
    return std::nullopt;
  }
  if (!id_it->is_string() || !valid_model_id(id_it->get<std::string>())) {
    bad("id must be a string of letters, digits and . _ - : / (at most 128, starting with a letter or digit)");
    return std::nullopt;
  }
  m.id = id_it->get<std::string>();
  where = "model " + m.id;

  for (auto it = e.begin(); it != e.end(); ++it) {
    const auto& keys = known_keys();
    if (std::find(keys.begin(), keys.end(), it.key()) == keys.end())
      bad("unknown key \"" + it.key() + "\" (known: " + key_list(keys) + ")");
  }

  auto string_field = [&](const char* key, bool required, std::string& out, auto&& check, const std::string& rule) {
    auto it = e.find(key);
    if (it == e.end()) {
      if (required) bad(std::string(key) + " is required: " + rule);
      return;
    }
    if (!it->is_string() || !check(it->get_ref<const std::string&>())) {
      bad(std::string(key) + " must be " + rule);
      return;
    }
    out = it->get<std::string>();
  };
  auto positive_integer = [&](const char* key, int64_t max, int64_t& out) {
    auto it = e.find(key);
    if (it == e.end()) {
      bad(std::string(key) + " is required: a positive integer");
      return;
    }
    if (!it->is_number_integer() || it->get<int64_t>() <= 0) {
      bad(std::string(key) + " must be a positive integer");
      return;
    }
    if (it->get<int64_t>() > max) {
      bad(std::string(key) + " must be at most " + std::to_string(max));
      return;
    }
    out = it->get<int64_t>();
  };

  string_field("revision", false, m.revision,
               [](const std::string& s) { return s.size() <= 128 && printable(s, false) && s.find(' ') == std::string::npos; },
               "a string without spaces, at most 128 characters (a commit or tag of the source)");
  string_field("name", false, m.name, [](const std::string& s) { return s.size() <= 200 && printable(s, false); },
               "a string of at most 200 characters");
  string_field("family", true, m.family, [](const std::string& s) { return valid_word(s, 128, "._-"); },
               "a string of letters, digits and . _ - (at most 128), e.g. \"llama-3.1\"");
  string_field("modality", true, m.modality,
               [](const std::string& s) {
                 const auto& k = known_modalities();
                 return std::find(k.begin(), k.end(), s) != k.end();
               },
               "one of " + key_list(known_modalities()));
  string_field("quantization", false, m.quantization, [](const std::string& s) { return valid_word(s, 64, "._-"); },
               "a string of letters, digits and . _ - (at most 64), e.g. \"bf16\" or \"awq-int4\"");
  string_field("license", true, m.license, [](const std::string& s) { return valid_word(s, 64, ".+_-"); },
               "a license identifier (SPDX where there is one, e.g. \"apache-2.0\", \"mit\", \"llama3.1\")");
  string_field("source", false, m.source,
               [](const std::string& s) { return !s.empty() && s.size() <= 1000 && printable(s, false); },
               "a non-empty string of at most 1000 characters (e.g. the weights' repository URL)");
  string_field("description", false, m.description,
               [](const std::string& s) { return s.size() <= 4000 && printable(s, true); },
               "a string of at most 4000 characters");
  string_field("weights_sha256", false, m.weights_sha256,
               [](const std::string& s) {
                 return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
                          return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
                        });
               },
               "64 hexadecimal digits (a SHA-256)");
  std::transform(m.weights_sha256.begin(), m.weights_sha256.end(), m.weights_sha256.begin(),
                 [](char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); });

  positive_integer("parameters", int64_t{100'000'000'000'000}, m.parameters);
  positive_integer("context_length", int64_t{1} << 30, m.context_length);

  if (auto it = e.find("tasks"); it == e.end()) {
    bad("tasks is required: a list of task names such as [\"chat\", \"tool-use\"]");
  } else if (!it->is_array() || it->empty() || it->size() > 32) {
    bad("tasks must be a list of 1 to 32 task names");
  } else {
    std::set<std::string> seen;
    for (const auto& t : *it) {
      if (!t.is_string() || !valid_task(t.get<std::string>())) {
        bad("tasks must hold lowercase names of letters, digits and - (at most 64), e.g. \"chat\"");
        break;
      }
      if (!seen.insert(t.get<std::string>()).second) {
        bad("tasks names \"" + t.get<std::string>() + "\" twice");
        break;
      }
      m.tasks.push_back(t.get<std::string>());
    }
  }

  if (auto it = e.find("gpu_memory_gib"); it != e.end()) {
    if (!it->is_number() || !(it->get<double>() > 0) || it->get<double>() > 1e6)
      bad("gpu_memory_gib must be a positive number of GiB (at most 1000000)");
    else
      m.gpu_memory_mib = std::llround(std::ceil(it->get<double>() * 1024.0));
  }

  if (auto it = e.find("rates"); it == e.end()) {
    if (!m.modality.empty()) m.rates = default_rates(m.id, m.modality);
  } else if (!it->is_object() || it->empty()) {
    bad("rates must be a table of usage kind = credit resource, e.g. tokens_in = \"tokens_in:" + m.id + "\"");
  } else {
    const auto& kinds = known_rate_kinds();
    for (auto r = it->begin(); r != it->end(); ++r) {
      if (std::find(kinds.begin(), kinds.end(), r.key()) == kinds.end()) {
        bad("rates." + r.key() + " is not a usage kind (known: " + key_list(kinds) + ")");
        continue;
      }
      std::string prefix = r.key() + ":";
      if (!r->is_string() || r->get_ref<const std::string&>().size() <= prefix.size() ||
          r->get_ref<const std::string&>().size() > 200 || r->get_ref<const std::string&>().rfind(prefix, 0) != 0 ||
          !printable(r->get_ref<const std::string&>(), false)) {
        bad("rates." + r.key() + " must be a credit resource named \"" + prefix + "<name>\" (docs/CREDITS.md)");
        continue;
      }
      m.rates[r.key()] = r->get<std::string>();
    }
  }
  if (!good) return std::nullopt;
  return m;
}

// TOML to JSON, keeping integers apart from floats. Dates have no place in a manifest.
json to_json(const toml::node& n, const std::string& source) {
  if (auto t = n.as_table()) {
    json o = json::object();
    for (auto&& [k, v] : *t) o[std::string(k.str())] = to_json(v, source);
    return o;
  }
  if (auto a = n.as_array()) {
    json arr = json::array();
    for (auto&& v : *a) arr.push_back(to_json(v, source));
    return arr;
  }
  if (auto s = n.as_string()) return json(s->get());
  if (auto i = n.as_integer()) return json(i->get());
  if (auto f = n.as_floating_point()) return json(f->get());
  if (auto b = n.as_boolean()) return json(b->get());
  const auto& r = n.source();
  throw ManifestError({source + ":" + std::to_string(r.begin.line) + ":" + std::to_string(r.begin.column) +
                       ": dates and times are not used in a model manifest"});
}

}  // namespace

ManifestError::ManifestError(std::vector<std::string> problems)
    : std::runtime_error(joined_lines(problems)), problems_(std::move(problems)) {}

std::vector<ModelRecord> parse_manifest_json(const json& doc, const std::string& source) {
  Validator v(source);
  if (!doc.is_object()) throw ManifestError({source + ": a manifest is a table (an object) with a list `models`"});
  for (auto it = doc.begin(); it != doc.end(); ++it)
    if (it.key() != "models" && it.key() != "description")
      v.problem("top level", "unknown key \"" + it.key() + "\" (known: models, description)");
  if (auto d = doc.find("description"); d != doc.end() && !d->is_string())
    v.problem("top level", "description must be a string");
  auto models = doc.find("models");
  if (models == doc.end() || !models->is_array()) {
    v.problem("top level", "models is required: a list of models ([[models]] tables in TOML)");
    throw ManifestError(v.take());
  }
  if (models->size() > kMaxModels) {
    v.problem("top level", "at most " + std::to_string(kMaxModels) + " models per manifest; split it");
    throw ManifestError(v.take());
  }
  std::vector<ModelRecord> out;
  std::set<std::string> ids;
  for (std::size_t i = 0; i < models->size(); ++i) {
    auto m = validate_model((*models)[i], i, v);
    if (!m) continue;
    if (!ids.insert(m->id).second) {
      v.problem("model " + m->id, "appears twice in the manifest");
      continue;
    }
    out.push_back(std::move(*m));
  }
  if (!v.ok()) throw ManifestError(v.take());
  return out;
}

std::vector<ModelRecord> parse_manifest(std::string_view text, ManifestFormat format, const std::string& source) {
  json doc;
  if (format == ManifestFormat::kJson) {
    doc = json::parse(text, nullptr, false);
    if (doc.is_discarded()) throw ManifestError({source + ": not valid JSON"});
  } else {
    toml::table t;
    try {
      t = toml::parse(text, source);
    } catch (const toml::parse_error& e) {
      const auto& r = e.source();
      throw ManifestError({source + ":" + std::to_string(r.begin.line) + ":" + std::to_string(r.begin.column) + ": " +
                           std::string(e.description())});
    }
    doc = to_json(t, source);
  }
  return parse_manifest_json(doc, source);
}

std::vector<ModelRecord> load_manifest(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw ManifestError({file.string() + ": cannot read the file"});
  std::stringstream ss;
  ss << in.rdbuf();
  ManifestFormat f = file.extension() == ".json" ? ManifestFormat::kJson : ManifestFormat::kToml;
  return parse_manifest(ss.str(), f, file.string());
}

}  // namespace scigate::registry
