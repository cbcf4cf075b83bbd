// The catalog in SQLite: upserts, filters, FTS5 search, pagination under a visibility filter,
// and availability per backend.
#include <catch2/catch.hpp>

#include <filesystem>
#include <set>

#include "connectors/registry/model_catalog.hpp"
#include "connectors/registry/model_manifest.hpp"
#include "server/common/crypto.hpp"
#include "server/state/database.hpp"

using namespace scigate;
using namespace scigate::registry;

namespace {

struct Db {
  Db() : path(std::filesystem::temp_directory_path() / ("scigate-models-" + crypto::random_hex(6) + ".db")), db(path) {
    db.migrate(state::schema_migrations());
  }
  ~Db() {
    std::error_code ec;
    for (const char* s : {"", "-wal", "-shm"}) std::filesystem::remove(path.string() + s, ec);
  }
  std::filesystem::path path;
  state::Database db;
};

ModelRecord model(std::string id, std::string modality, std::vector<std::string> tasks, int64_t params, int64_t ctx,
                  std::string license, std::string description) {
  ModelRecord m;
  m.id = std::move(id);
  m.family = "fam";
  m.modality = std::move(modality);
  m.tasks = std::move(tasks);
  m.parameters = params;
  m.context_length = ctx;
  m.license = std::move(license);
  m.description = std::move(description);
  m.rates = default_rates(m.id, m.modality);
  return m;
}

std::vector<ModelRecord> sample() {
  return {
      model("llama-8b", "text", {"chat", "tool-use"}, 8'030'000'000, 131072, "llama3.1",
            "Instruction-tuned multilingual chat model with tool calling."),
      model("qwen-vl-7b", "vision", {"chat", "image-understanding"}, 8'290'000'000, 128000, "apache-2.0",
            "Vision-language model: reads charts, documents and photographs."),
      model("got-ocr", "ocr", {"ocr"}, 580'000'000, 8192, "apache-2.0", "Optical character recognition of scanned pages."),
      model("bge-m3", "embedding", {"embedding", "retrieval"}, 568'000'000, 8192, "MIT",
            "Multilingual dense embeddings for retrieval."),
      model("whisper-large-v3", "speech", {"transcription", "translation"}, 1'550'000'000, 448, "apache-2.0",
            "Speech recognition and translation into English."),
  };
}

ModelPage page_of(std::variant<ModelPage, QueryError> r) {
  if (auto* e = std::get_if<QueryError>(&r)) FAIL("query error: " << e->message);
  return std::get<ModelPage>(std::move(r));
}

std::vector<std::string> ids(const ModelPage& p) {
  std::vector<std::string> out;
  for (const auto& m : p.models) out.push_back(m.id);
  return out;
}

}  // namespace

TEST_CASE("registry catalog: SQLite has FTS5 and the migration creates the tables") {
  Db d;
  state::Statement st(d.db.handle(), "SELECT sqlite_compileoption_used('ENABLE_FTS5')");
  REQUIRE(st.step());
  CHECK(st.column_int(0) == 1);
  state::Statement t(d.db.handle(), "SELECT count(*) FROM sqlite_master WHERE name IN ('models', 'model_backends', 'models_fts')");
  REQUIRE(t.step());
  CHECK(t.column_int(0) == 3);
  CHECK(d.db.schema_version() >= 7);
}

TEST_CASE("registry catalog: import adds, updates by id and leaves identical records alone") {
  Db d;
  ModelCatalog c(d.db);
  auto r1 = c.import(sample(), 1000);
  CHECK(r1.added.size() == 5);
  CHECK(r1.updated.empty());
  auto r2 = c.import(sample(), 2000);
  CHECK(r2.unchanged.size() == 5);
  CHECK(r2.added.empty());
  auto changed = sample();
  changed[0].revision = "new-rev";
  changed[0].description = "Now about astronomy.";
  auto r3 = c.import({changed[0]}, 3000);
  CHECK(r3.updated == std::vector<std::string>{"llama-8b"});
  auto got = c.get("llama-8b");
  REQUIRE(got);
  CHECK(got->revision == "new-rev");
  CHECK(got->updated_ms == 3000);
  CHECK(c.count() == 5);
  CHECK_FALSE(c.get("nope"));
  // The full-text index follows the update: the old words are gone, the new ones found.
  ModelFilter f;
  f.text = "astronomy";
  CHECK(ids(page_of(c.query(f))) == std::vector<std::string>{"llama-8b"});
  f.text = "tool calling";
  CHECK(ids(page_of(c.query(f))).empty());
}

TEST_CASE("registry catalog: filters on modality, task, license, size and context") {
  Db d;
  ModelCatalog c(d.db);
  c.import(sample(), 1);
  ModelFilter f;
  CHECK(ids(page_of(c.query(f))) ==
        std::vector<std::string>{"bge-m3", "got-ocr", "llama-8b", "qwen-vl-7b", "whisper-large-v3"});
  f.modality = "vision";
  CHECK(ids(page_of(c.query(f))) == std::vector<std::string>{"qwen-vl-7b"});
  f = {};
  f.task = "chat";
  CHECK(ids(page_of(c.query(f))) == std::vector<std::string>{"llama-8b", "qwen-vl-7b"});
  f = {};
  f.license = "mit";  // case-insensitive: stored as "MIT"
  CHECK(ids(page_of(c.query(f))) == std::vector<std::string>{"bge-m3"});
  f = {};
  f.max_parameters = 1'000'000'000;
  CHECK(ids(page_of(c.query(f))) == std::vector<std::string>{"bge-m3", "got-ocr"});
  f.min_parameters = 570'000'000;
  CHECK(ids(page_of(c.query(f))) == std::vector<std::string>{"got-ocr"});
  f = {};
  f.min_context = 100000;
  CHECK(ids(page_of(c.query(f))) == std::vector<std::string>{"llama-8b", "qwen-vl-7b"});
  f.license = "apache-2.0";
  f.task = "chat";
  CHECK(ids(page_of(c.query(f))) == std::vector<std::string>{"qwen-vl-7b"});
}

TEST_CASE("registry catalog: full-text search with prefixes and stemming, ranked, never interpreting operators") {
  Db d;
  ModelCatalog c(d.db);
  c.import(sample(), 1);
  ModelFilter f;
  f.text = "embed";  // prefix of "embedding(s)"
  CHECK(ids(page_of(c.query(f))) == std::vector<std::string>{"bge-m3"});
  f.text = "documents";  // porter stemming: "document"
  CHECK(ids(page_of(c.query(f))) == std::vector<std::string>{"qwen-vl-7b"});
  f.text = "scanned OCR";
  CHECK(ids(page_of(c.query(f))) == std::vector<std::string>{"got-ocr"});
  f.text = "translation";  // a task name
  CHECK(ids(page_of(c.query(f))) == std::vector<std::string>{"whisper-large-v3"});
  f.text = "multilingual";
  auto both = ids(page_of(c.query(f)));
  CHECK(std::set<std::string>(both.begin(), both.end()) == std::set<std::string>{"bge-m3", "llama-8b"});
  f.text = "multilingual NOT chat) \"AND*";  // FTS5 syntax in the input is just words
  CHECK_NOTHROW(c.query(f));
  f.text = "  ---  ";
  auto r = c.query(f);
  REQUIRE(std::holds_alternative<QueryError>(r));
  CHECK(std::get<QueryError>(r).message.find("has no word") != std::string::npos);
  f.text = "chat";
  f.modality = "vision";
  CHECK(ids(page_of(c.query(f))) == std::vector<std::string>{"qwen-vl-7b"});
  CHECK(fts_query("Vision, OCR!") == "\"Vision\"* \"OCR\"*");
}

TEST_CASE("registry catalog: pages follow the cursor and skip hidden models without short pages") {
  Db d;
  ModelCatalog c(d.db);
  std::vector<ModelRecord> many;
  for (int i = 0; i < 250; ++i) {
    char id[16];
    std::snprintf(id, sizeof id, "m-%03d", i);
    many.push_back(model(id, "text", {"chat"}, 1000 + i, 4096, "mit", "model number " + std::to_string(i)));
  }
  c.import(many, 1);
  // Visible: every third model.
  ModelCatalog::Visible visible = [](const ModelRecord& m) { return std::stoi(m.id.substr(2)) % 3 == 0; };
  ModelFilter f;
  f.limit = 30;
  std::vector<std::string> seen;
  int pages = 0;
  std::size_t hidden = 0;
  for (;;) {
    auto p = page_of(c.query(f, visible));
    ++pages;
    // Every page says how many of the whole catalog are hidden, the same number.
    if (pages > 1) CHECK(p.hidden == hidden);
    hidden = p.hidden;
    for (const auto& m : p.models) seen.push_back(m.id);
    if (p.next_cursor.empty()) {
      CHECK(p.models.size() == 84 - 30 * 2);
      break;
    }
    CHECK(p.models.size() == 30);
    f.cursor = p.next_cursor;
  }
  CHECK(pages == 3);
  REQUIRE(seen.size() == 84);  // 0, 3, ..., 249
  CHECK(seen.front() == "m-000");
  CHECK(seen.back() == "m-249");
  CHECK(std::set<std::string>(seen.begin(), seen.end()).size() == 84);
  CHECK(hidden == 250 - 84);
  // ... whatever the filters: a count that followed them would tell a caller a hidden model's id
  // a prefix at a time (m-001 is hidden; "m" "001" would otherwise count 1, "m" "002" ...).
  ModelFilter narrow;
  narrow.text = "number 1";
  CHECK(page_of(c.query(narrow, visible)).hidden == 250 - 84);
  narrow.text = "zzz-nothing";
  auto none = c.query(narrow, visible);
  if (auto* p = std::get_if<ModelPage>(&none)) CHECK(p->hidden == 250 - 84);
  narrow.text.reset();
  narrow.min_parameters = 1001;
  narrow.max_parameters = 1001;  // exactly m-001, hidden
  auto one = page_of(c.query(narrow, visible));
  CHECK(one.models.empty());
  CHECK(one.hidden == 250 - 84);

  // The page size is bounded.
  ModelFilter big;
  big.limit = 100000;
  CHECK(page_of(c.query(big)).models.size() == ModelCatalog::kMaxPageSize);

  // A cursor only works with the filters that made it.
  ModelFilter first;
  first.limit = 10;
  auto p1 = page_of(c.query(first));
  ModelFilter other;
  other.cursor = p1.next_cursor;
  other.task = "chat";
  auto r = c.query(other);
  REQUIRE(std::holds_alternative<QueryError>(r));
  CHECK(std::get<QueryError>(r).message.find("does not belong to this query") != std::string::npos);
  other.task.reset();
  other.limit = 5;  // another page size is fine
  CHECK(ids(page_of(c.query(other))).front() == "m-010");
  other.cursor = "garbage";
  CHECK(std::holds_alternative<QueryError>(c.query(other)));
  // A tampered cursor (odd hex, not hex) is refused, not read as some id.
  other.cursor = "k6d2d3." + p1.next_cursor.substr(p1.next_cursor.find('.') + 1);
  CHECK(std::holds_alternative<QueryError>(c.query(other)));
  other.cursor = "kzz." + p1.next_cursor.substr(p1.next_cursor.find('.') + 1);
  CHECK(std::holds_alternative<QueryError>(c.query(other)));
}

TEST_CASE("registry catalog: a page in id order starts after the last one shown, whatever was imported in between") {
  Db d;
  ModelCatalog c(d.db);
  std::vector<ModelRecord> four;
  for (const char* id : {"b-model", "c-model", "d-model", "e-model"})
    four.push_back(model(id, "text", {"chat"}, 1000, 4096, "mit", "a model"));
  c.import(four, 1);
  ModelFilter f;
  f.limit = 2;
  auto p1 = page_of(c.query(f));
  REQUIRE(ids(p1) == std::vector<std::string>{"b-model", "c-model"});
  // Imported meanwhile: one before the page (an offset would repeat c-model) and one inside the
  // next (it belongs there).
  c.import({model("a-model", "text", {"chat"}, 1000, 4096, "mit", "new"), model("cc-model", "text", {"chat"}, 1000, 4096, "mit", "new")}, 2);
  f.cursor = p1.next_cursor;
  auto p2 = page_of(c.query(f));
  CHECK(ids(p2) == std::vector<std::string>{"cc-model", "d-model"});
  f.cursor = p2.next_cursor;
  auto p3 = page_of(c.query(f));
  CHECK(ids(p3) == std::vector<std::string>{"e-model"});
  CHECK(p3.next_cursor.empty());
  // A text query's cursor (an offset in relevance order) is no cursor for an id-order query.
  ModelFilter t;
  t.text = "model";
  t.limit = 2;
  auto tp = page_of(c.query(t));
  REQUIRE_FALSE(tp.next_cursor.empty());
  ModelFilter by_id;
  by_id.limit = 2;
  by_id.cursor = tp.next_cursor;
  CHECK(std::holds_alternative<QueryError>(c.query(by_id)));
}

TEST_CASE("registry catalog: backends no longer configured stop counting as serving") {
  Db d;
  ModelCatalog c(d.db);
  c.import(sample(), 1);
  c.set_served("gpuA", {"llama-8b", "bge-m3"}, 100);
  c.set_served("gpuB", {"llama-8b"}, 100);
  // The config now names gpuB and gpuC only: gpuA's rows are stale (the server restarted).
  CHECK(c.retain_backends({"gpuB", "gpuC"}) == 2);
  CHECK(c.get("bge-m3")->served_by.empty());
  REQUIRE(c.get("llama-8b")->served_by.size() == 1);
  CHECK(c.get("llama-8b")->served_by[0].backend == "gpuB");
  CHECK(c.retain_backends({"gpuB"}) == 0);
  CHECK(c.retain_backends({}) == 1);
  CHECK(c.get("llama-8b")->served_by.empty());
}

TEST_CASE("registry catalog: set_served replaces one backend's set and feeds served_now") {
  Db d;
  ModelCatalog c(d.db);
  c.import(sample(), 1);
  auto unknown = c.set_served("vllm-a", {"llama-8b", "qwen-vl-7b", "not-in-catalog"}, 100);
  CHECK(unknown == std::vector<std::string>{"not-in-catalog"});
  c.set_served("llamacpp-b", {"llama-8b"}, 200);
  auto l = c.get("llama-8b");
  REQUIRE(l);
  REQUIRE(l->served_by.size() == 2);
  CHECK(l->served_by[0].backend == "llamacpp-b");
  CHECK(l->served_by[0].seen_ms == 200);
  CHECK(l->served_by[1].backend == "vllm-a");
  ModelFilter f;
  f.served_now = true;
  CHECK(ids(page_of(c.query(f))) == std::vector<std::string>{"llama-8b", "qwen-vl-7b"});
  // vllm-a now serves only bge-m3: qwen is no longer served, llama still by the other backend.
  c.set_served("vllm-a", {"bge-m3", "bge-m3"}, 300);
  CHECK(ids(page_of(c.query(f))) == std::vector<std::string>{"bge-m3", "llama-8b"});
  CHECK(c.get("qwen-vl-7b")->served_by.empty());
  c.set_served("llamacpp-b", {}, 400);
  CHECK(ids(page_of(c.query(f))) == std::vector<std::string>{"bge-m3"});
  // Re-importing a model keeps its availability.
  auto s = sample();
  s[3].description = "changed";
  c.import(s, 500);
  CHECK(c.get("bge-m3")->served_by.size() == 1);
  // The compact form says whether it is served; the full form by whom.
  auto page = page_of(c.query(f));
  CHECK(compact_json(page.models[0])["served"] == true);
  CHECK(full_json(*c.get("bge-m3"))["served_by"][0]["backend"] == "vllm-a");
}
