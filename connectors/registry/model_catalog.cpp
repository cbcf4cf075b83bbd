#include "connectors/registry/model_catalog.hpp"

#include <nlohmann/json.hpp>
#include <sqlite3.h>

#include <algorithm>
#include <charconv>
#include <stdexcept>
#include <set>
#include <variant>

#include "server/common/crypto.hpp"

namespace scigate::registry {

using nlohmann::json;
using state::Statement;

namespace {

constexpr const char* kColumns =
    "m.id, m.revision, m.name, m.family, m.modality, m.tasks, m.parameters, m.context_length, m.quantization, "
    "m.license, m.source, m.weights_sha256, m.gpu_memory_mib, m.description, m.rates, m.updated_ms";

// Rows are read in batches while the policy filter fills a page.
constexpr std::size_t kBatch = 200;

ModelRecord read_row(const Statement& st) {
  ModelRecord m;
  m.id = st.column_text(0);
  m.revision = st.column_text(1);
  m.name = st.column_text(2);
  m.family = st.column_text(3);
  m.modality = st.column_text(4);
  json tasks = json::parse(st.column_text(5), nullptr, false);
  if (tasks.is_array())
    for (const auto& t : tasks)
      if (t.is_string()) m.tasks.push_back(t.get<std::string>());
  m.parameters = st.column_int(6);
  m.context_length = st.column_int(7);
  m.quantization = st.column_text(8);
  m.license = st.column_text(9);
  m.source = st.column_text(10);
  m.weights_sha256 = st.column_text(11);
  m.gpu_memory_mib = st.column_int(12);
  m.description = st.column_text(13);
  json rates = json::parse(st.column_text(14), nullptr, false);
  if (rates.is_object())
    for (auto it = rates.begin(); it != rates.end(); ++it)
      if (it->is_string()) m.rates[it.key()] = it->get<std::string>();
  m.updated_ms = st.column_int(15);
  return m;
}

std::string tasks_text(const ModelRecord& m) { return json(m.tasks).dump(); }

std::string rates_text(const ModelRecord& m) {
  json r = json::object();
  for (const auto& [k, v] : m.rates) r[k] = v;
  return r.dump();
}

// What an import compares: the manifest's fields, not the catalog's bookkeeping.
bool same_content(ModelRecord a, ModelRecord b) {
  a.served_by.clear();
  b.served_by.clear();
  a.updated_ms = b.updated_ms = 0;
  return a == b;
}

void load_served_by(state::Database& db, ModelRecord& m) {
  Statement st(db.handle(), "SELECT backend, seen_ms FROM model_backends WHERE model_id = ? ORDER BY backend");
  st.bind(1, m.id);
  while (st.step()) m.served_by.push_back(ServedBy{st.column_text(0), st.column_int(1)});
}

class Transaction {
 public:
  explicit Transaction(state::Database& db) : db_(db) { db_.exec("BEGIN IMMEDIATE"); }
  ~Transaction() {
    if (!done_) {
      try {
        db_.exec("ROLLBACK");
      } catch (...) {
      }
    }
  }
  void commit() {
    db_.exec("COMMIT");
    done_ = true;
  }

 private:
  state::Database& db_;
  bool done_ = false;
};

// Ties a cursor to the filters it was made for: a cursor passed with other filters would
// silently skip or repeat models.
std::string fingerprint(const ModelFilter& f) {
  json j = json::object();
  auto put = [&j](const char* k, const auto& opt) {
    if (opt) j[k] = *opt;
  };
  put("modality", f.modality);
  put("task", f.task);
  put("license", f.license);
  put("family", f.family);
  put("min_parameters", f.min_parameters);
  put("max_parameters", f.max_parameters);
  put("min_context", f.min_context);
  put("text", f.text);
  j["served_now"] = f.served_now;
  return crypto::sha256_hex(j.dump()).substr(0, 8);
}

// Cursors: in id order (no text) "k<hex of the last id shown>.<fp>", so that a page starts after
// that id however the catalog changed in between (no model repeated or skipped); in relevance
// order "<offset>.<fp>" (a text query's ranking itself moves when models are imported).
struct Cursor {
  std::size_t offset = 0;
  std::optional<std::string> after;  // id order: the last id of the previous page
};

std::string hex_of(std::string_view bytes) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

std::optional<std::string> unhex(std::string_view hex) {
  if (hex.empty() || hex.size() % 2) return std::nullopt;
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  std::string out;
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    int hi = digit(hex[i]), lo = digit(hex[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out.push_back(static_cast<char>(hi * 16 + lo));
  }
  return out;
}

std::optional<Cursor> parse_cursor(const std::string& cursor, const std::string& fp, bool by_id) {
  auto dot = cursor.find('.');
  if (dot == std::string::npos || cursor.substr(dot + 1) != fp) return std::nullopt;
  Cursor c;
  if (by_id) {
    if (cursor[0] != 'k') return std::nullopt;
    c.after = unhex(std::string_view(cursor).substr(1, dot - 1));
    if (!c.after) return std::nullopt;
    return c;
  }
  auto [p, ec] = std::from_chars(cursor.data(), cursor.data() + dot, c.offset);
  if (ec != std::errc() || p != cursor.data() + dot) return std::nullopt;
  return c;
}

}  // namespace

std::string fts_query(const std::string& text) {
  std::string out, word;
  int words = 0;
  auto flush = [&] {
    if (word.empty() || words >= 16) {
      word.clear();
      return;
    }
    out += (out.empty() ? "" : " ") + ("\"" + word + "\"*");
    ++words;
    word.clear();
  };
  for (unsigned char c : text) {
    bool part = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80;
    if (part)
      word += static_cast<char>(c);
    else
      flush();
  }
  flush();
  return out;
}

ImportResult ModelCatalog::import(const std::vector<ModelRecord>& records, int64_t now_ms) {
  ImportResult result;
  auto lk = db_.lock();
  Transaction tx(db_);
  for (const auto& m : records) {
    std::optional<ModelRecord> old;
    {
      Statement st(db_.handle(), std::string("SELECT ") + kColumns + " FROM models m WHERE m.id = ?");
      st.bind(1, m.id);
      if (st.step()) old = read_row(st);
    }
    if (old && same_content(*old, m)) {
      result.unchanged.push_back(m.id);
      continue;
    }
    Statement st(db_.handle(), R"sql(
      INSERT INTO models (id, revision, name, family, modality, tasks, parameters, context_length, quantization,
                          license, source, weights_sha256, gpu_memory_mib, description, rates, imported_ms, updated_ms)
      VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?16)
      ON CONFLICT(id) DO UPDATE SET
        revision = excluded.revision, name = excluded.name, family = excluded.family, modality = excluded.modality,
        tasks = excluded.tasks, parameters = excluded.parameters, context_length = excluded.context_length,
        quantization = excluded.quantization, license = excluded.license, source = excluded.source,
        weights_sha256 = excluded.weights_sha256, gpu_memory_mib = excluded.gpu_memory_mib,
        description = excluded.description, rates = excluded.rates, updated_ms = excluded.updated_ms
    )sql");
    st.bind(1, m.id).bind(2, m.revision).bind(3, m.name).bind(4, m.family).bind(5, m.modality);
    st.bind(6, tasks_text(m)).bind(7, m.parameters).bind(8, m.context_length).bind(9, m.quantization);
    st.bind(10, m.license).bind(11, m.source).bind(12, m.weights_sha256).bind(13, m.gpu_memory_mib);
    st.bind(14, m.description).bind(15, rates_text(m)).bind(16, now_ms);
    st.step();
    (old ? result.updated : result.added).push_back(m.id);
  }
  tx.commit();
  return result;
}

std::variant<ModelPage, QueryError> ModelCatalog::query(const ModelFilter& f, const Visible& visible) {
  const std::string fp = fingerprint(f);
  const bool by_id = !f.text;
  Cursor cur;
  if (!f.cursor.empty()) {
    auto c = parse_cursor(f.cursor, fp, by_id);
    if (!c)
      return QueryError{"cursor " + f.cursor.substr(0, 64) + " does not belong to this query",
                        "pass next_cursor back with the same filters as the call that returned it, or leave "
                        "cursor out to start again"};
    cur = *c;
  }
  const std::size_t limit = std::clamp<std::size_t>(f.limit, 1, kMaxPageSize);

  std::string sql = std::string("SELECT ") + kColumns + " FROM models m";
  std::vector<std::variant<std::string, int64_t>> binds;
  std::string match;
  if (f.text) {
    match = fts_query(*f.text);
    if (match.empty())
      return QueryError{"text \"" + *f.text + "\" has no word to search for",
                        "give one or more words, e.g. \"vision ocr\" or \"embedding multilingual\""};
    sql += " JOIN models_fts ON models_fts.rowid = m.seq";
  }
  sql += " WHERE 1";
  if (f.text) {
    sql += " AND models_fts MATCH ?";
    binds.emplace_back(match);
  }
  if (f.modality) {
    sql += " AND m.modality = ?";
    binds.emplace_back(*f.modality);
  }
  if (f.family) {
    sql += " AND m.family = ?";
    binds.emplace_back(*f.family);
  }
  if (f.license) {
    sql += " AND m.license = ?";  // the column collates NOCASE
    binds.emplace_back(*f.license);
  }
  if (f.task) {
    sql += " AND EXISTS (SELECT 1 FROM json_each(m.tasks) WHERE json_each.value = ?)";
    binds.emplace_back(*f.task);
  }
  if (f.min_parameters) {
    sql += " AND m.parameters >= ?";
    binds.emplace_back(*f.min_parameters);
  }
  if (f.max_parameters) {
    sql += " AND m.parameters <= ?";
    binds.emplace_back(*f.max_parameters);
  }
  if (f.min_context) {
    sql += " AND m.context_length >= ?";
    binds.emplace_back(*f.min_context);
  }
  if (f.served_now) sql += " AND EXISTS (SELECT 1 FROM model_backends b WHERE b.model_id = m.id)";
  if (by_id) sql += " AND m.id > ?";  // bound per batch: after the last id read
  sql += f.text ? " ORDER BY bm25(models_fts), m.id" : " ORDER BY m.id";
  sql += " LIMIT ? OFFSET ?";

  auto lk = db_.lock();
  ModelPage page;
  std::size_t pos = cur.offset;            // relevance order
  std::string after = cur.after.value_or("");  // id order ("" sorts before every id)
  std::size_t next = 0;
  bool more = false;
  for (;;) {
    Statement st(db_.handle(), sql);
    int i = 1;
    for (const auto& b : binds) {
      if (const auto* s = std::get_if<std::string>(&b))
        st.bind(i++, *s);
      else
        st.bind(i++, std::get<int64_t>(b));
    }
    if (by_id) st.bind(i++, after);
    st.bind(i++, static_cast<int64_t>(kBatch));
    st.bind(i++, static_cast<int64_t>(by_id ? 0 : pos));
    std::size_t rows = 0;
    while (st.step()) {
      ModelRecord m = read_row(st);
      std::size_t here = pos + rows++;
      if (by_id) after = m.id;
      if (visible && !visible(m)) continue;
      if (page.models.size() == limit) {
        more = true;
        break;
      }
      page.models.push_back(std::move(m));
      next = here + 1;
    }
    if (more || rows < kBatch) break;
    pos += rows;
  }
  for (auto& m : page.models) load_served_by(db_, m);
  if (more) page.next_cursor = by_id ? "k" + hex_of(page.models.back().id) + "." + fp : std::to_string(next) + "." + fp;
  // How many models of the whole catalog `visible` hides, whatever the filters: a count that
  // followed them would let a caller learn a hidden model's id a letter at a time (text is a
  // prefix search) and its size by bisection.
  if (visible && f.count_hidden) {
    Statement all(db_.handle(), std::string("SELECT ") + kColumns + " FROM models m");
    while (all.step())
      if (!visible(read_row(all))) ++page.hidden;
  }
  return page;
}

std::optional<ModelRecord> ModelCatalog::get(const std::string& id) {
  auto lk = db_.lock();
  Statement st(db_.handle(), std::string("SELECT ") + kColumns + " FROM models m WHERE m.id = ?");
  st.bind(1, id);
  if (!st.step()) return std::nullopt;
  ModelRecord m = read_row(st);
  load_served_by(db_, m);
  return m;
}

std::vector<std::string> ModelCatalog::set_served(const std::string& backend, const std::vector<std::string>& model_ids,
                                                  int64_t now_ms) {
  if (backend.empty()) throw std::invalid_argument("set_served: empty backend name");
  std::vector<std::string> unknown;
  auto lk = db_.lock();
  Transaction tx(db_);
  {
    Statement del(db_.handle(), "DELETE FROM model_backends WHERE backend = ?");
    del.bind(1, backend);
    del.step();
  }
  std::set<std::string> seen;
  for (const auto& id : model_ids) {
    if (!seen.insert(id).second) continue;
    Statement ins(db_.handle(), "INSERT INTO model_backends (model_id, backend, seen_ms) VALUES (?, ?, ?)");
    ins.bind(1, id).bind(2, backend).bind(3, now_ms);
    ins.step();
    Statement known(db_.handle(), "SELECT 1 FROM models WHERE id = ?");
    known.bind(1, id);
    if (!known.step()) unknown.push_back(id);
  }
  tx.commit();
  return unknown;
}

std::size_t ModelCatalog::retain_backends(const std::vector<std::string>& configured) {
  auto lk = db_.lock();
  Transaction tx(db_);
  std::set<std::string> keep(configured.begin(), configured.end());
  std::vector<std::string> gone;
  {
    Statement st(db_.handle(), "SELECT DISTINCT backend FROM model_backends");
    while (st.step())
      if (!keep.count(st.column_text(0))) gone.push_back(st.column_text(0));
  }
  std::size_t removed = 0;
  for (const auto& b : gone) {
    Statement del(db_.handle(), "DELETE FROM model_backends WHERE backend = ?");
    del.bind(1, b);
    del.step();
    removed += static_cast<std::size_t>(sqlite3_changes(db_.handle()));
  }
  tx.commit();
  return removed;
}

std::map<std::string, ModelCatalog::Terms> ModelCatalog::all_terms() {
  auto lk = db_.lock();
  std::map<std::string, Terms> out;
  Statement st(db_.handle(), "SELECT id, modality, rates FROM models");
  while (st.step()) {
    Terms& t = out[st.column_text(0)];
    t.modality = st.column_text(1);
    json rates = json::parse(st.column_text(2), nullptr, false);
    if (rates.is_object())
      for (auto it = rates.begin(); it != rates.end(); ++it)
        if (it->is_string()) t.rates[it.key()] = it->get<std::string>();
  }
  return out;
}

std::size_t ModelCatalog::count() {
  auto lk = db_.lock();
  Statement st(db_.handle(), "SELECT count(*) FROM models");
  st.step();
  return static_cast<std::size_t>(st.column_int(0));
}

}  // namespace scigate::registry
