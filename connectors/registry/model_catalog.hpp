#pragma once
// The model registry's catalog in SQLite (tables models, model_backends, models_fts; migration 8
// in server/state/database.cpp): import from manifests, filtered and full-text queries with
// cursor pagination, one model by id, and which backends serve each model now.
//
// Synchronous: every method runs SQL on the calling thread. The server reaches it through
// ModelRegistry, which runs it on a DbWorker thread; the CLI and tests use it directly.
// Thread-safety: as the Database it is given (each call takes the connection's lock).
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "connectors/registry/model_record.hpp"
#include "server/state/database.hpp"

namespace scigate::registry {

struct ImportResult {
  std::vector<std::string> added, updated, unchanged;
};

struct ModelFilter {
  std::optional<std::string> modality;
  std::optional<std::string> task;
  std::optional<std::string> license;  // compared without regard to case
  std::optional<std::string> family;
  std::optional<int64_t> min_parameters, max_parameters;
  std::optional<int64_t> min_context;
  bool served_now = false;             // only models some backend serves now
  std::optional<std::string> text;     // full-text search over id, name, family, tasks, description
  std::size_t limit = 20;              // page size, 1..kMaxPageSize
  std::string cursor;                  // next_cursor of the previous page, or empty
  bool count_hidden = true;            // ModelPage::hidden (a pass over the whole catalog)
};

struct ModelPage {
  std::vector<ModelRecord> models;
  std::string next_cursor;       // empty: this was the last page
  std::size_t hidden = 0;        // models of the whole catalog `visible` refuses (not only matching ones)
};

// A cursor that does not belong to the query it came with, or text with nothing to search for.
struct QueryError {
  std::string message;
  std::string hint;
};

class ModelCatalog {
 public:
  static constexpr std::size_t kMaxPageSize = 100;

  explicit ModelCatalog(state::Database& db) : db_(db) {}

  // Upserts every record by id in one transaction: a new id is added; an existing one is
  // replaced (revision and all), or left alone when nothing changed. Availability
  // (model_backends) is not touched: a re-imported model stays served.
  ImportResult import(const std::vector<ModelRecord>& records, int64_t now_ms);

  // Models matching `filter`, ordered by relevance for a text query (then id), else by id.
  // `visible`, when set, hides models from the page (the caller's policy); pages are filled
  // with visible models only. Returns QueryError for a stale or foreign cursor and for a text
  // query without a searchable word.
  using Visible = std::function<bool(const ModelRecord&)>;
  std::variant<ModelPage, QueryError> query(const ModelFilter& filter, const Visible& visible = {});

  std::optional<ModelRecord> get(const std::string& id);

  // Replaces the set of models `backend` serves (the inference connector calls this after each
  // GET /v1/models of that backend): ids not in `model_ids` stop being served by it, the others
  // get seen_ms = now_ms. Ids the catalog does not know are recorded too (they become visible
  // in served_by once a manifest adds the model) and returned, so the caller can log them.
  // An empty list removes the backend (it went away or serves nothing).
  std::vector<std::string> set_served(const std::string& backend, const std::vector<std::string>& model_ids,
                                      int64_t now_ms);
  // Forgets what backends no longer configured served (a backend removed or renamed in the
  // config kept showing in served_by for ever). Returns how many rows went.
  std::size_t retain_backends(const std::vector<std::string>& configured);
  // What the inference connector keeps of every model, by id: its modality (which tool uses it)
  // and its `rates` (usage kind -> credit resource: what a call is charged to).
  struct Terms {
    std::string modality;
    std::map<std::string, std::string> rates;
  };
  std::map<std::string, Terms> all_terms();

  std::size_t count();

 private:
  state::Database& db_;
};

// Turns free text into an FTS5 query: each word becomes a quoted prefix term ("embed"*), all of
// them required. Operators and quotes in the input are never interpreted. Empty when the text
// has no word.
std::string fts_query(const std::string& text);

}  // namespace scigate::registry
