// An attacker with write access to the database (and, for some cases, the checkpoint file) tries
// every kind of edit; verification must fail and name the first record that cannot be trusted.
#include <catch2/catch.hpp>

#include <algorithm>
#include <random>
#include <filesystem>
#include <fstream>
#include <thread>
#include <sstream>

#include "policies/audit_checkpoint.hpp"
#include "policies/audit_query.hpp"
#include "policies/audit_time.hpp"
#include "policies/audit_store.hpp"
#include "policies/audit_verify.hpp"
#include "policies/canonical_json.hpp"
#include "server/common/crypto.hpp"
#include "tests/support/files.hpp"

using namespace scigate;
namespace fs = std::filesystem;

namespace {

struct TempDir : scigate::test::TempDir {
  TempDir() : scigate::test::TempDir("tamper") {
    state::Database db(this->db());
    db.migrate(state::schema_migrations());
  }
  fs::path db() const { return path / "audit.db"; }
  fs::path key() const { return path / "key.pem"; }
  fs::path checkpoints() const { return path / "checkpoints.jsonl"; }
};

AuditRecord record(int i) {
  AuditRecord r;
  r.time_ms = 1'700'000'000'000 + i * 1000;
  r.request_id = "req-" + std::to_string(i);
  // Record 8's principal needs an escape at the top level, record 7's text braces, brackets,
  // quotes and escapes inside details: what the exported line's fast reader must get right.
  r.principal = i == 8 ? "o\"brien" : i % 3 ? "alice" : "bob";
  r.project = i % 2 ? "demo" : "other";
  r.tool = "echo";
  r.outcome = "ok";
  r.cost = i;
  std::string text = i == 7 ? "a \"}\" {[ \\\" ] \n\t\u00e9 }}" : "call " + std::to_string(i);
  r.details = {{"arguments", {{"text", text}}}, {"held", i * 10}, {"client", "t"}};
  return r;
}

// Records first..n (20 from an empty log) with a checkpoint every 5.
void write_log(const TempDir& t, int n = 20, bool checkpoints = true, int first = 1) {
  AuditLogOptions o;
  o.also_log = false;
  if (checkpoints) {
    o.signing_key = t.key();
    o.checkpoint_file = t.checkpoints();
  }
  o.checkpoint_every_records = 5;
  o.checkpoint_every = std::chrono::seconds(0);
  SqliteAuditLog log(t.db(), o);
  for (int i = first; i <= n; ++i) {
    log.append(record(i));
    log.flush();  // one batch per record, so that checkpoints fall every 5
  }
}

AuditVerifyOptions with_checkpoints(const TempDir& t) {
  AuditVerifyOptions o;
  o.checkpoint_file = t.checkpoints();
  o.key = audit::SigningKey::load(t.key());
  return o;
}

audit::StoredRecord row(state::Database& db, int64_t seq) {
  audit::StoredRecord r;
  state::Statement st(db.handle(),
                      "SELECT seq, time_ms, request_id, principal, project, tool, outcome, error_code, rules, cost, "
                      "duration_us, details, prev_hash, hash FROM audit_log WHERE seq = ?");
  st.bind(1, seq);
  REQUIRE(st.step());
  r.seq = st.column_int(0);
  r.time_ms = st.column_int(1);
  r.request_id = st.column_text(2);
  r.principal = st.column_text(3);
  r.project = st.column_text(4);
  r.tool = st.column_text(5);
  r.outcome = st.column_text(6);
  r.error_code = st.column_text(7);
  r.rules = st.column_text(8);
  r.cost = st.column_int(9);
  r.duration_us = st.column_int(10);
  r.details = st.column_text(11);
  r.prev_hash = st.column_text(12);
  r.hash = st.column_text(13);
  return r;
}

void store(state::Database& db, const audit::StoredRecord& r) {
  state::Statement st(db.handle(),
                      "INSERT INTO audit_log(seq, time_ms, request_id, principal, project, tool, outcome, error_code, "
                      "rules, cost, duration_us, details, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
  st.bind(1, r.seq).bind(2, r.time_ms).bind(3, r.request_id).bind(4, r.principal).bind(5, r.project);
  st.bind(6, r.tool).bind(7, r.outcome).bind(8, r.error_code).bind(9, r.rules).bind(10, r.cost);
  st.bind(11, r.duration_us).bind(12, r.details).bind(13, r.prev_hash).bind(14, r.hash);
  st.step();
}

// What an attacker who knows the format does: rewrite records from `from` on with valid hashes.
void rehash_from(state::Database& db, int64_t from) {
  auto prev = row(db, from - 1).hash;
  for (int64_t s = from;; ++s) {
    state::Statement exists(db.handle(), "SELECT 1 FROM audit_log WHERE seq = ?");
    exists.bind(1, s);
    if (!exists.step()) break;
    auto r = row(db, s);
    r.prev_hash = prev;
    r.hash = audit_row_hash(r.view());
    state::Statement up(db.handle(), "UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?");
    up.bind(1, r.prev_hash).bind(2, r.hash).bind(3, s);
    up.step();
    prev = r.hash;
  }
}

void unlock(state::Database& db) {
  db.exec("DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;");
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("audit verify: an untouched log and its checkpoints verify") {
  TempDir t;
  write_log(t);
  state::Database db(t.db());
  auto v = verify_audit_log(db, with_checkpoints(t));
  INFO(describe(v));
  CHECK(v.ok);
  CHECK(v.records == 20);
  CHECK(v.checkpoints == 4);
  CHECK(v.checkpoints_matched == 4);
  CHECK(v.signatures_checked);
  REQUIRE(v.newest_checkpoint);
  CHECK(v.newest_checkpoint->seq == 20);
  CHECK(contains(describe(v), "audit log intact: 20 records"));
}

TEST_CASE("audit verify: every kind of tampering names the first bad record") {
  TempDir t;
  write_log(t);
  state::Database db(t.db());
  unlock(db);
  auto verify = [&] {
    auto v = verify_audit_log(db, with_checkpoints(t));
    INFO(describe(v));
    CHECK_FALSE(v.ok);
    return v;
  };

  SECTION("a changed field") {
    db.exec("UPDATE audit_log SET principal = 'mallory' WHERE seq = 7");
    auto v = verify();
    CHECK(v.first_bad_seq == 7);
    CHECK(v.records == 6);
    CHECK(contains(v.detail, "does not match its hash"));
  }
  SECTION("changed details, even only their spacing") {
    db.exec("UPDATE audit_log SET details = replace(details, ':', ': ') WHERE seq = 12");
    CHECK(verify().first_bad_seq == 12);
  }
  SECTION("a changed field with its own hash recomputed") {
    auto r = row(db, 7);
    r.cost = 0;
    r.hash = audit_row_hash(r.view());
    state::Statement up(db.handle(), "UPDATE audit_log SET cost = 0, hash = ? WHERE seq = 7");
    up.bind(1, r.hash);
    up.step();
    auto v = verify();
    CHECK(v.first_bad_seq == 7);
    CHECK(contains(v.detail, "record 8 was chained to"));
  }
  SECTION("a changed prev_hash") {
    db.exec("UPDATE audit_log SET prev_hash = hash WHERE seq = 9");
    CHECK(verify().first_bad_seq == 9);
  }
  SECTION("a deleted record") {
    db.exec("DELETE FROM audit_log WHERE seq = 7");
    auto v = verify();
    CHECK(v.first_bad_seq == 7);
    CHECK(contains(v.detail, "record 7 is missing"));
  }
  SECTION("several deleted records") {
    db.exec("DELETE FROM audit_log WHERE seq BETWEEN 7 AND 9");
    auto v = verify();
    CHECK(v.first_bad_seq == 7);
    CHECK(contains(v.detail, "records 7..9 are missing"));
  }
  SECTION("a deleted record with the later ones renumbered") {
    db.exec("DELETE FROM audit_log WHERE seq = 7");
    db.exec("UPDATE audit_log SET seq = -(seq - 1) WHERE seq > 7; UPDATE audit_log SET seq = -seq WHERE seq < 0");
    CHECK(verify().first_bad_seq == 7);
  }
  SECTION("an inserted record, chained correctly to its predecessor") {
    db.exec("UPDATE audit_log SET seq = -(seq + 1) WHERE seq >= 7; UPDATE audit_log SET seq = -seq WHERE seq < 0");
    audit::StoredRecord forged = row(db, 6);
    forged.seq = 7;
    forged.principal = "mallory";
    forged.request_id = "req-forged";
    forged.prev_hash = forged.hash;
    forged.hash = audit_row_hash(forged.view());
    store(db, forged);
    auto v = verify();
    CHECK(v.first_bad_seq == 7);
    CHECK(contains(v.detail, "record 7 was inserted"));
  }
  SECTION("a forged record appended with a bad hash") {
    audit::StoredRecord forged = row(db, 20);
    forged.seq = 21;
    forged.prev_hash = forged.hash;
    forged.hash = std::string(64, 'a');
    store(db, forged);
    CHECK(verify().first_bad_seq == 21);
  }
  SECTION("two records swapped") {
    db.exec("UPDATE audit_log SET seq = -1 WHERE seq = 7; UPDATE audit_log SET seq = 7 WHERE seq = 8; "
            "UPDATE audit_log SET seq = 8 WHERE seq = -1");
    CHECK(verify().first_bad_seq == 7);
  }
  SECTION("two records' contents swapped, seq and hashes left in place") {
    auto a = row(db, 7), b = row(db, 8);
    db.exec("DELETE FROM audit_log WHERE seq IN (7, 8)");
    std::swap(a.request_id, b.request_id);
    std::swap(a.cost, b.cost);
    std::swap(a.details, b.details);
    store(db, a);
    store(db, b);
    CHECK(verify().first_bad_seq == 7);
  }
  SECTION("the newest records cut off: only a checkpoint can tell") {
    db.exec("DELETE FROM audit_log WHERE seq > 17");
    auto chain_only = verify_audit_chain(db);
    CHECK(chain_only.ok);  // a shorter chain is still a chain
    auto v = verify();
    CHECK(v.truncated);
    CHECK(v.first_bad_seq == 18);
    CHECK(contains(v.detail, "records after seq 17 were removed"));
    CHECK(contains(v.detail, "the checkpoint at seq 20 signed at"));
  }
  SECTION("every record removed") {
    db.exec("DELETE FROM audit_log");
    auto v = verify();
    CHECK(v.truncated);
    CHECK(v.first_bad_seq == 1);
    CHECK(contains(v.detail, "all records were removed"));
  }
  SECTION("a change with the whole rest of the chain recomputed: the checkpoints disagree") {
    db.exec("UPDATE audit_log SET outcome = 'denied' WHERE seq = 7");
    rehash_from(db, 7);
    CHECK(verify_audit_chain(db).ok);  // the chain alone cannot tell
    auto v = verify();
    // The checkpoint at 5 still agrees, the one at 10 does not: the change is in 6..10.
    CHECK(v.first_bad_seq == 6);
    CHECK(contains(v.detail, "records 6..10"));
  }
}

TEST_CASE("audit verify: checkpoints that are forged or altered are reported and not trusted") {
  TempDir t;
  write_log(t);
  state::Database db(t.db());
  auto cps = audit::read_checkpoints(t.checkpoints());
  REQUIRE(cps.checkpoints.size() == 4);

  auto rewrite = [&](const std::vector<std::string>& lines) {
    std::ofstream out(t.checkpoints(), std::ios::trunc);
    for (const auto& l : lines) out << l << "\n";
  };
  std::vector<std::string> lines;
  for (const auto& c : cps.checkpoints) lines.push_back(audit::checkpoint_line(c));

  SECTION("a checkpoint signed by another key") {
    auto other = audit::SigningKey::load_or_create(t.path / "other.pem");
    lines.push_back(audit::checkpoint_line(audit::make_checkpoint(other, 40, std::string(64, 'b'), 1)));
    rewrite(lines);
    auto v = verify_audit_log(db, with_checkpoints(t));
    CHECK_FALSE(v.ok);
    CHECK_FALSE(v.first_bad_seq);  // the records are fine; the file is not
    REQUIRE(v.checkpoint_problems.size() == 1);
    CHECK(contains(v.checkpoint_problems[0], "signed by key " + other.key_id()));
    CHECK_FALSE(v.truncated);  // a checkpoint nobody can vouch for proves nothing
  }
  SECTION("a checkpoint whose seq was changed after signing") {
    auto c = cps.checkpoints[1];
    c.seq = 999;
    lines[1] = audit::checkpoint_line(c);
    rewrite(lines);
    auto v = verify_audit_log(db, with_checkpoints(t));
    CHECK_FALSE(v.ok);
    REQUIRE(v.checkpoint_problems.size() == 1);
    CHECK(contains(v.checkpoint_problems[0], "line 2 (seq 999): the signature is not valid"));
    CHECK_FALSE(v.truncated);
    CHECK(contains(describe(v), "audit checkpoints BROKEN"));
  }
  SECTION("a line that is not a checkpoint") {
    lines.insert(lines.begin() + 2, "{\"hello\":1}");
    rewrite(lines);
    auto v = verify_audit_log(db, with_checkpoints(t));
    CHECK_FALSE(v.ok);
    CHECK(contains(v.checkpoint_problems.at(0), "line 3"));
  }
  SECTION("a line torn by a crash is ignored, and the writer repairs it") {
    {
      std::ofstream out(t.checkpoints(), std::ios::app);
      out << lines[0].substr(0, 30);
    }
    auto v = verify_audit_log(db, with_checkpoints(t));
    CHECK(v.ok);
    CHECK(contains(describe(v), "incomplete"));
    write_log(t, 0);  // a restart: nothing to append, nothing changes
    {
      AuditLogOptions o;
      o.also_log = false;
      o.signing_key = t.key();
      o.checkpoint_file = t.checkpoints();
      o.checkpoint_every_records = 1;
      SqliteAuditLog log(t.db(), o);
      log.append(record(21));
    }
    auto after = audit::read_checkpoints(t.checkpoints());
    CHECK_FALSE(after.torn_tail);
    CHECK(after.problems.empty());
    CHECK(after.checkpoints.back().seq == 21);
    CHECK(verify_audit_log(db, with_checkpoints(t)).ok);
  }
  SECTION("without the public key the signatures are not checked, and it says so") {
    AuditVerifyOptions o;
    o.checkpoint_file = t.checkpoints();
    auto v = verify_audit_log(db, o);
    CHECK(v.ok);
    CHECK_FALSE(v.signatures_checked);
    CHECK(contains(describe(v), "signatures NOT checked"));
  }
}

TEST_CASE("audit verify: without checkpoints a cut-off tail goes unnoticed, and the report says so") {
  TempDir t;
  write_log(t, 10, false);
  state::Database db(t.db());
  unlock(db);
  db.exec("DELETE FROM audit_log WHERE seq > 8");
  AuditVerifyOptions o;
  o.checkpoint_file = t.checkpoints();  // never written
  auto v = verify_audit_log(db, o);
  CHECK(v.ok);
  CHECK(contains(describe(v), "removal of the newest records cannot be detected"));
}

TEST_CASE("audit log: a checkpoint at a clean stop, by count and by time") {
  TempDir t;
  AuditLogOptions o;
  o.also_log = false;
  o.signing_key = t.key();
  o.checkpoint_file = t.checkpoints();
  o.checkpoint_every_records = 0;
  o.checkpoint_every = std::chrono::seconds(1);
  {
    // A process that appends nothing (scigate key ...) creates neither key nor file: the
    // server's own account must own them.
    SqliteAuditLog idle(t.db(), o);
  }
  CHECK_FALSE(fs::exists(t.key()));
  CHECK_FALSE(fs::exists(t.checkpoints()));
  {
    SqliteAuditLog log(t.db(), o);
    log.append(record(1));
    log.flush();
    // By time: within about a second of the record, without another append.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (audit::read_checkpoints(t.checkpoints()).checkpoints.empty() && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    CHECK(audit::read_checkpoints(t.checkpoints()).checkpoints.size() == 1);
    log.append(record(2));
    log.append(record(3));
  }
  // At the stop: the last record is covered.
  auto cps = audit::read_checkpoints(t.checkpoints());
  REQUIRE(cps.checkpoints.size() == 2);
  CHECK(cps.checkpoints.back().seq == 3);
  // The key was created with owner-only permissions.
  auto perms = fs::status(t.key()).permissions();
  CHECK((perms & (fs::perms::group_all | fs::perms::others_all)) == fs::perms::none);
}

TEST_CASE("audit log: a forged or foreign last checkpoint line does not stop the server checkpointing") {
  TempDir t;
  write_log(t, 6);  // checkpoints at 5 and at the stop (6)
  // Appended by someone who can write the file but has no key: far beyond the log.
  {
    std::ofstream f(t.checkpoints(), std::ios::app);
    f << R"({"hash":"00","key_id":"ffffffffffffffff","seq":1000000000000,"sig":"AA==","time_ms":1,)"
         R"("type":"scigate.audit.checkpoint.v1"})"
      << "\n";
  }
  write_log(t, 12, true, 7);
  // Records 7..12 are checkpointed (at 11 by count, at 12 at the stop), with this server's key.
  auto cps = audit::read_checkpoints(t.checkpoints());
  REQUIRE_FALSE(cps.checkpoints.empty());
  CHECK(cps.checkpoints.back().seq == 12);
  auto key = audit::SigningKey::load(t.key());
  CHECK(audit::checkpoint_signature_ok(key, cps.checkpoints.back()));
  // verify still reports the forged line.
  state::Database db(t.db());
  auto v = verify_audit_log(db, with_checkpoints(t));
  CHECK_FALSE(v.ok);
}

TEST_CASE("audit export: verifies offline, a tampered line is found, key order does not matter") {
  TempDir t;
  write_log(t);
  // Export the way `scigate audit export` does.
  auto export_log = [&](const audit::EventFilter& f, bool to_end, const std::string& project) {
    std::string out;
    nlohmann::json header = {{"version", 1}, {"to_end", to_end}, {"exported_at_ms", audit::now_ms()}};
    if (!project.empty()) header["project"] = project;
    audit::AuditReader reader(t.db());
    header["log_last_seq"] = reader.last_seq();
    if (f.from_seq) {  // (the CLI's --since)
      header["since"] = "2026-01-01T00:00:00Z";
      header["from_seq"] = *f.from_seq;
    }
    out += canonical::dump(nlohmann::json{{"scigate_audit_export", header}}) + "\n";
    reader.scan(f, [&](const AuditRowView& r) {
      out += audit_export_line(r) + "\n";
      return true;
    });
    return out;
  };
  auto verify = [&](const std::string& text) {
    std::istringstream in(text);
    auto v = verify_audit_export(in, with_checkpoints(t));
    INFO(describe(v));
    return v;
  };
  auto lines_of = [](const std::string& text) {
    std::vector<std::string> v;
    std::istringstream in(text);
    std::string l;
    while (std::getline(in, l)) v.push_back(l);
    return v;
  };
  auto join = [](const std::vector<std::string>& v) {
    std::string s;
    for (const auto& l : v) s += l + "\n";
    return s;
  };
  const std::string full = export_log({}, true, "");

  SECTION("a full export verifies, checkpoints included") {
    auto v = verify(full);
    CHECK(v.ok);
    CHECK(v.records == 20);
    CHECK(v.contiguous);
    CHECK(v.checkpoints_matched == 4);
    CHECK(v.parsed_in_full == 1);  // record 8's escaped principal; record 7's details took the fast reader
  }
  SECTION("a change inside details that keeps the line canonical and its braces balanced is found") {
    auto lines = lines_of(full);
    REQUIRE(lines[7].find("{[ \\\\\\\" ]") != std::string::npos);  // record 7's hostile text, escaped
    auto p = lines[7].find("{[");
    lines[7].replace(p, 2, "[{");
    auto v = verify(join(lines));
    CHECK_FALSE(v.ok);
    CHECK(v.first_bad_seq == 7);
    CHECK(contains(v.detail, "does not match its hash"));
  }
  SECTION("a tampered line names its record") {
    auto lines = lines_of(full);
    auto j = nlohmann::json::parse(lines[9]);  // seq 9
    j["details"]["arguments"]["text"] = "something else";
    lines[9] = j.dump();
    auto v = verify(join(lines));
    CHECK_FALSE(v.ok);
    CHECK(v.first_bad_seq == 9);
  }
  SECTION("a line with its members in another order and spaces added still verifies") {
    auto lines = lines_of(full);
    for (int i : {5, 6}) {
      auto j = nlohmann::ordered_json::parse(lines[i]);
      nlohmann::ordered_json reversed;
      std::vector<std::string> keys;
      for (auto it = j.begin(); it != j.end(); ++it) keys.push_back(it.key());
      for (auto k = keys.rbegin(); k != keys.rend(); ++k) reversed[*k] = j[*k];
      std::string text = reversed.dump(1);
      text.erase(std::remove(text.begin(), text.end(), '\n'), text.end());
      REQUIRE(text != lines[i]);
      REQUIRE(text.rfind("{ \"tool\"", 0) == 0);
      lines[i] = text;
    }
    auto v = verify(join(lines));
    CHECK(v.ok);
    CHECK(v.parsed_in_full == 3);
  }
  SECTION("a field the hash does not cover is refused") {
    auto lines = lines_of(full);
    auto j = nlohmann::json::parse(lines[3]);
    j["note"] = "approved by the auditor";
    lines[3] = j.dump();
    auto v = verify(join(lines));
    CHECK(v.first_bad_seq == 3);
    CHECK(contains(v.detail, "not a record field"));
  }
  SECTION("a line removed from the middle") {
    auto lines = lines_of(full);
    lines.erase(lines.begin() + 4);
    CHECK(verify(join(lines)).first_bad_seq == 4);
  }
  SECTION("the last lines removed from a full export: the checkpoints show it") {
    auto lines = lines_of(full);
    lines.resize(lines.size() - 2);
    auto v = verify(join(lines));
    CHECK(v.truncated);
    CHECK(v.first_bad_seq == 19);
  }
  SECTION("an export of one project verifies each record and says what it cannot check") {
    audit::EventFilter f;
    f.projects = std::vector<std::string>{"demo"};
    auto v = verify(export_log(f, true, "demo"));
    CHECK(v.ok);
    CHECK(v.records == 10);
    CHECK_FALSE(v.contiguous);
    CHECK(contains(describe(v), "links between records that are not adjacent cannot be verified"));
  }
  SECTION("a whole export with its oldest records cut off is broken, not 'a run that starts later'") {
    auto lines = lines_of(full);
    lines.erase(lines.begin() + 1, lines.begin() + 8);  // records 1..7
    auto v = verify(join(lines));
    CHECK_FALSE(v.ok);
    CHECK(v.first_bad_seq == 1);
    CHECK(contains(v.detail, "missing"));
  }
  SECTION("a whole export with its newest records cut off is broken, checkpoints or not") {
    auto lines = lines_of(full);
    lines.resize(lines.size() - 3);  // records 18..20 (no checkpoint beyond 15 covers them)
    auto v = verify(join(lines));
    CHECK_FALSE(v.ok);
    CHECK(v.first_bad_seq == 18);
    CHECK(contains(v.detail, "the log ended at seq 20"));
  }
  SECTION("a project's export holds only that project's records") {
    audit::EventFilter f;
    f.projects = std::vector<std::string>{"demo"};
    auto lines = lines_of(export_log(f, true, "demo"));
    // Another project's record kept among them (its line verifies on its own).
    auto other = lines_of(full)[2];  // record 2, project "other"
    lines.insert(lines.begin() + 2, other);
    auto v = verify(join(lines));
    CHECK_FALSE(v.ok);
    CHECK(v.first_bad_seq == 2);
    CHECK(contains(v.detail, "is of project other"));
  }
  SECTION("an export --since that selects nothing is not taken for a truncated log") {
    audit::EventFilter f;
    f.from_seq = 21;  // past the last record: nothing selected
    auto v = verify(export_log(f, true, ""));
    CHECK(v.ok);
    CHECK(v.records == 0);
  }
  SECTION("a partial export by seq range verifies as a chain") {
    audit::EventFilter f;
    f.from_seq = 6;
    f.to_seq = 14;
    auto v = verify(export_log(f, false, ""));
    CHECK(v.ok);
    CHECK(v.records == 9);
    CHECK(contains(describe(v), "start at seq 6"));
    CHECK(contains(describe(v), "does not claim to run to the end"));
  }
  SECTION("checkpoints written after the export are not mistaken for truncation") {
    std::string earlier = full;
    write_log(t, 5);  // the server goes on: 25 records, a checkpoint at 25
    auto v = verify(earlier);
    CHECK(v.ok);
    CHECK(contains(describe(v), "signed after the export"));
  }
}

TEST_CASE("audit export: random edits to a line are refused unless they leave the record the same") {
  // The fast reader takes lines as views into the text; whatever bytes an export holds, a line
  // it accepts must mean exactly the record that was written (and nothing may read out of
  // bounds: this runs under ASan in CI).
  TempDir t;
  write_log(t, 20, false);
  std::vector<std::string> lines;
  {
    audit::AuditReader reader(t.db());
    reader.scan({}, [&](const AuditRowView& r) {
      lines.push_back(audit_export_line(r));
      return true;
    });
  }
  REQUIRE(lines.size() == 20);
  const std::string header = canonical::dump(nlohmann::json{{"scigate_audit_export", {{"version", 1}, {"to_end", true}}}});
  std::mt19937 rng(20261123);
  const std::string alphabet = "{}[]\",:\\ 0123456789-eE.tfnulrsa\x01\xc3\xa9";
  int accepted_changed = 0, refused = 0, accepted_same = 0;
  for (int iter = 0; iter < 1500; ++iter) {
    const std::size_t i = rng() % lines.size();
    std::string line = lines[i];
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits && !line.empty(); ++e) {
      const std::size_t at = rng() % line.size();
      const char c = alphabet[rng() % alphabet.size()];
      switch (rng() % 4) {
        case 0: line[at] = c; break;
        case 1: line.insert(line.begin() + static_cast<std::ptrdiff_t>(at), c); break;
        case 2: line.erase(at, 1 + rng() % 8); break;
        default: line.insert(at, line.substr(rng() % line.size(), 1 + rng() % 12)); break;
      }
    }
    if (line == lines[i]) continue;
    std::string text = header + "\n";
    for (std::size_t k = 0; k < lines.size(); ++k) text += (k == i ? line : lines[k]) + "\n";
    std::istringstream in(text);
    AuditVerification v = verify_audit_export(in, AuditVerifyOptions{});
    if (!v.ok) {
      ++refused;
      CHECK(v.first_bad_seq.has_value());
      continue;
    }
    // Accepted: only if the edit changed nothing the hash covers (say, a space between tokens).
    auto original = nlohmann::json::parse(lines[i]);
    auto edited = nlohmann::json::parse(line, nullptr, false);
    INFO("line " << i << ": " << line);
    REQUIRE_FALSE(edited.is_discarded());
    if (canonical::dump(edited) == canonical::dump(original)) ++accepted_same;
    else ++accepted_changed;
  }
  CHECK(accepted_changed == 0);
  CHECK(refused > 1000);
}

TEST_CASE("audit record hash: canonical, so key order and a JSON round trip do not change it") {
  AuditRecord a = record(1), b = record(1);
  a.details = nlohmann::json::parse(R"({"z":1,"a":{"y":[1,2.5,{"q":true,"b":null}],"b":"x"},"m":1e21})");
  b.details = nlohmann::json::parse(R"({"m":1000000000000000000000.0,"a":{"b":"x","y":[1,2.50,{"b":null,"q":true}]},"z":1.0})");
  std::string da = canonical::dump(a.details), db = canonical::dump(b.details);
  CHECK(da == db);
  CHECK(da == R"({"a":{"b":"x","y":[1,2.5,{"b":null,"q":true}]},"m":1e+21,"z":1})");
  CHECK(audit_record_hash(std::string(kAuditGenesisHash), 1, a, da) ==
        audit_record_hash(std::string(kAuditGenesisHash), 1, b, db));
  // Through an export line and back.
  AuditRowView v;
  v.seq = 1;
  v.time_ms = a.time_ms;
  v.request_id = a.request_id;
  v.principal = a.principal;
  v.project = a.project;
  v.tool = a.tool;
  v.outcome = a.outcome;
  v.cost = a.cost;
  v.details = da;
  v.prev_hash = kAuditGenesisHash;
  std::string h = audit_row_hash(v);
  v.hash = h;
  auto line = nlohmann::json::parse(audit_export_line(v));
  CHECK(line["hash"] == h);
  line.erase("hash");
  CHECK(crypto::sha256_hex(canonical::dump(line)) == h);
}
