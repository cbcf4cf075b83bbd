#include "server/cli/models_cli.hpp"

#include <chrono>
#include <map>
#include <stdexcept>

#include "connectors/registry/model_catalog.hpp"
#include "connectors/registry/model_manifest.hpp"
#include "policies/project_policies.hpp"
#include "server/auth/directory.hpp"
#include "server/state/database.hpp"
#include "tools/models/model_tools.hpp"

namespace scigate::cli {
namespace {

using nlohmann::json;
using registry::ModelCatalog;
using registry::ModelRecord;

std::string opt(const ModelsArgs& a, const std::string& k, const std::string& d = "") {
  auto it = a.options.find(k);
  return it == a.options.end() ? d : it->second;
}

bool flag(const ModelsArgs& a, const std::string& f) {
  for (const auto& x : a.flags)
    if (x == f) return true;
  return false;
}

void refuse_unknown(const ModelsArgs& a, std::initializer_list<const char*> options,
                    std::initializer_list<const char*> flags) {
  for (const auto& [k, v] : a.options) {
    bool ok = false;
    for (const char* o : options) ok = ok || k == o;
    if (!ok) throw std::invalid_argument("models " + a.command + ": unknown option --" + k);
  }
  for (const auto& f : a.flags) {
    bool ok = false;
    for (const char* o : flags) ok = ok || f == o;
    if (!ok) throw std::invalid_argument("models " + a.command + ": unknown option --" + f);
  }
}

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::unique_ptr<state::Database> open_db(const Config& config) {
  auto db = std::make_unique<state::Database>(config.database);
  db->migrate(state::schema_migrations());
  return db;
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

int cmd_import(const Config& config, const ModelsArgs& a, std::ostream& out, std::ostream& err) {
  refuse_unknown(a, {}, {});
  if (a.positional.empty()) throw std::invalid_argument("usage: scigate models import [--config FILE] MANIFEST...");
  // Every file is read and checked before anything is written: a broken manifest imports nothing.
  std::vector<ModelRecord> all;
  std::map<std::string, std::string> from;  // id -> file, for duplicates across files
  bool bad = false;
  for (const auto& file : a.positional) {
    try {
      for (auto& m : registry::load_manifest(file)) {
        auto [it, fresh] = from.emplace(m.id, file);
        if (!fresh) {
          err << file << ": model " << m.id << ": also in " << it->second << "\n";
          bad = true;
          continue;
        }
        all.push_back(std::move(m));
      }
    } catch (const registry::ManifestError& e) {
      err << e.what() << "\n";
      bad = true;
    }
  }
  if (bad) {
    err << "nothing imported\n";
    return 1;
  }
  auto db = open_db(config);
  auto r = ModelCatalog(*db).import(all, now_ms());
  out << "imported " << all.size() << " models: " << r.added.size() << " added, " << r.updated.size() << " updated, "
      << r.unchanged.size() << " unchanged\n";
  if (!r.added.empty()) out << "  added:   " << joined(r.added) << "\n";
  if (!r.updated.empty()) out << "  updated: " << joined(r.updated) << "\n";
  return 0;
}

int cmd_list(const Config& config, const ModelsArgs& a, std::ostream& out, std::ostream& err) {
  refuse_unknown(a, {"format", "project", "as", "kind", "group", "modality", "text"}, {"served"});
  const std::string format = opt(a, "format", "text");
  if (format != "text" && format != "json") throw std::invalid_argument("--format must be text or json");
  if (!a.positional.empty()) throw std::invalid_argument("usage: scigate models list [--format text|json] ...");

  // With --as, what that principal sees in a project (the tools' policy filter); without, all.
  std::optional<Principal> who;
  std::string project;
  std::unique_ptr<ProjectPolicies> engine;
  if (auto as = opt(a, "as"); !as.empty()) {
    Principal p;
    p.name = as;
    p.kind = opt(a, "kind", "user");
    if (p.kind != "user" && p.kind != "service") throw std::invalid_argument("--kind must be user or service");
    p.auth_method = "cli";
    p.groups = a.groups;
    auth::assign_projects(p, config);
    project = opt(a, "project", p.default_project());
    if (project.empty() || !config.project(project))
      throw std::invalid_argument("--as needs a project of the config (--project P)");
    who = std::move(p);
    engine = std::make_unique<ProjectPolicies>(ProjectPolicies::sources_from(config));
  } else if (!opt(a, "project").empty()) {
    throw std::invalid_argument("--project needs --as NAME (whose view of the project to show)");
  }

  auto db = open_db(config);
  ModelCatalog catalog(*db);
  registry::ModelFilter f;
  if (auto m = opt(a, "modality"); !m.empty()) f.modality = m;
  if (auto t = opt(a, "text"); !t.empty()) {
    std::string why;
    try {
      (void)json(t).dump();  // throws on bytes that are not UTF-8
    } catch (const json::exception&) {
      why = "--text is not valid UTF-8";
    }
    if (!why.empty()) throw std::invalid_argument(why);
    f.text = t;
  }
  f.served_now = flag(a, "served");
  f.limit = ModelCatalog::kMaxPageSize;
  ModelCatalog::Visible visible;
  if (who)
    visible = [&](const ModelRecord& m) { return tools::model_visible(*engine, *who, project, m); };

  // The GPU type of each configured backend, shown beside the backends serving a model.
  std::map<std::string, std::string> gpu;
  for (const auto& b : config.inference.backends)
    if (!b.gpu_type.empty()) gpu[b.id] = b.gpu_type;

  json arr = json::array();
  std::size_t hidden = 0;
  for (;;) {
    auto r = catalog.query(f, visible);
    if (auto* e = std::get_if<registry::QueryError>(&r)) throw std::invalid_argument(e->message);
    auto& page = std::get<registry::ModelPage>(r);
    if (f.count_hidden) hidden = page.hidden;  // the whole catalog's: read once
    f.count_hidden = false;
    for (const auto& m : page.models) {
      if (format == "json") {
        json j = registry::full_json(m);
        for (auto& s : j["served_by"])
          if (auto g = gpu.find(s.value("backend", "")); g != gpu.end()) s["gpu_type"] = g->second;
        arr.push_back(std::move(j));
        continue;
      }
      std::vector<std::string> backends;
      for (const auto& s : m.served_by) {
        auto g = gpu.find(s.backend);
        backends.push_back(g == gpu.end() ? s.backend : s.backend + " (" + g->second + ")");
      }
      out << m.id << "\t" << m.modality << "\t" << registry::size_text(m.parameters) << "\t" << m.context_length
          << "\t" << m.license << "\t" << (backends.empty() ? "-" : joined(backends)) << "\n";
    }
    if (page.next_cursor.empty()) break;
    f.cursor = page.next_cursor;
  }
  if (format == "json") out << arr.dump(2) << "\n";
  if (who && hidden > 0)
    err << "note: " << hidden << (hidden == 1 ? " model" : " models") << " of the catalog not shown to " << who->name
        << " in project " << project << ": its policy permits no inference call with them\n";
  return 0;
}

}  // namespace

int models_command(const Config& config, const ModelsArgs& a, std::ostream& out, std::ostream& err) {
  if (a.command == "import") return cmd_import(config, a, out, err);
  if (a.command == "list") return cmd_list(config, a, out, err);
  throw std::invalid_argument("unknown models command: " + a.command + " (import, list)");
}

std::size_t import_models_text(const Config& config, const std::string& text, const std::string& source) {
  auto models = registry::parse_manifest(text, registry::ManifestFormat::kToml, source);
  auto db = open_db(config);
  auto r = ModelCatalog(*db).import(models, now_ms());
  return r.added.size() + r.updated.size();
}

}  // namespace scigate::cli
