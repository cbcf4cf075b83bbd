#include "policies/audit_verify.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <istream>
#include <set>

#include <nlohmann/json.hpp>

#include "policies/audit_store.hpp"
#include "policies/audit_time.hpp"
#include "policies/canonical_json.hpp"

namespace scigate {
namespace {

using nlohmann::json;
using audit::Checkpoint;

std::string seq_range(int64_t from, int64_t to) {
  return from == to ? "record " + std::to_string(from) : "records " + std::to_string(from) + ".." + std::to_string(to);
}

// With require_checkpoints: records but not one usable checkpoint fails the verification.
void check_required(const AuditVerifyOptions& o, AuditVerification& v, bool no_checkpoints) {
  if (!o.require_checkpoints || !no_checkpoints || v.records == 0) return;
  v.ok = false;
  v.checkpoint_problems.push_back(
      (o.checkpoint_file ? o.checkpoint_file->string() : std::string("the checkpoint file")) +
      " holds no usable checkpoint (missing, empty, or none signed by the given key): removal of the newest records "
      "cannot be ruled out");
}

// Reads and (with a key) authenticates the checkpoints; returns the usable ones by seq.
std::vector<Checkpoint> prepare_checkpoints(const AuditVerifyOptions& o, AuditVerification& v) {
  if (!o.checkpoint_file) {
    v.notes.push_back("no checkpoint file given: removal of the newest records cannot be detected");
    return {};
  }
  auto file = audit::read_checkpoints(*o.checkpoint_file);
  if (!file.exists) {
    v.notes.push_back("no checkpoint file at " + o.checkpoint_file->string() +
                      ": removal of the newest records cannot be detected");
    return {};
  }
  for (auto& p : file.problems) v.checkpoint_problems.push_back(o.checkpoint_file->string() + " " + p);
  if (file.torn_tail)
    v.notes.push_back("the last line of " + o.checkpoint_file->string() +
                      " is incomplete (cut short by a crash while it was written) and was ignored");
  if (o.key) v.signatures_checked = true;
  else v.notes.push_back("checkpoint signatures were not checked: no public key (give --pubkey FILE)");
  std::vector<Checkpoint> usable;
  for (auto& c : file.checkpoints) {
    ++v.checkpoints;
    std::string where = o.checkpoint_file->string() + " line " + std::to_string(c.line) + " (seq " +
                        std::to_string(c.seq) + ")";
    if (o.key && c.key_id != o.key->key_id()) {
      v.checkpoint_problems.push_back(where + ": signed by key " + c.key_id + ", not by the given key " +
                                      o.key->key_id());
      continue;
    }
    if (o.key && !audit::checkpoint_signature_ok(*o.key, c)) {
      v.checkpoint_problems.push_back(where + ": the signature is not valid (the checkpoint was forged or altered)");
      continue;
    }
    usable.push_back(std::move(c));
  }
  if (!v.checkpoint_problems.empty()) v.ok = false;
  std::stable_sort(usable.begin(), usable.end(), [](const Checkpoint& a, const Checkpoint& b) { return a.seq < b.seq; });
  return usable;
}

// Walks records in seq order and stops at the first one that cannot be trusted.
class ChainVerifier {
 public:
  // from_genesis: the records must start at seq 1 (a whole log). sparse: gaps are expected (a
  // filtered export); links are checked only between adjacent records.
  ChainVerifier(AuditVerification& v, std::vector<Checkpoint> checkpoints, bool from_genesis, bool sparse)
      : v_(v), cps_(std::move(checkpoints)), from_genesis_(from_genesis), sparse_(sparse) {}

  bool broken() const { return broken_; }

  void fail(int64_t seq, std::string why) {
    v_.ok = false;
    if (!v_.first_bad_seq) {
      v_.first_bad_seq = seq;
      v_.detail = std::move(why);
    }
    broken_ = true;
  }

  // `hash_checked`: the caller has established audit_row_hash(r) == r.hash.
  bool add(const AuditRowView& r, bool hash_checked = false) {
    if (broken_) return false;
    bool linked = false;
    auto str = [](int64_t n) { return std::to_string(n); };
    const int64_t seq = r.seq;
    if (!started_) {
      if (from_genesis_ && r.seq != 1) {
        fail(1, seq_range(1, r.seq - 1) + " missing: the log starts at record " + str(seq));
        return false;
      }
      if (!from_genesis_ && r.seq != 1)
        v_.notes.push_back("the records start at seq " + str(seq) + ": the link to record " + std::to_string(r.seq - 1) +
                           " is not verified");
      v_.first_seq = r.seq;
    } else if (r.seq <= last_seq_) {
      fail(r.seq, "record " + str(seq) + " appears out of order, after record " + std::to_string(last_seq_));
      return false;
    } else if (r.seq != last_seq_ + 1) {
      if (!sparse_) {
        fail(last_seq_ + 1, seq_range(last_seq_ + 1, r.seq - 1) + (r.seq - last_seq_ > 2 ? " are" : " is") +
                                " missing (the next record is " + str(seq) + ")");
        return false;
      }
      ++gaps_;
    } else {
      linked = true;
    }

    if (!hash_checked && audit_row_hash(r) != r.hash) {
      if (linked && !prev_prev_hash_.empty() && r.prev_hash == prev_prev_hash_)
        fail(r.seq - 1, "record " + std::to_string(r.seq - 1) + " was inserted: the record now numbered " + str(seq) +
                            " was written to follow record " + std::to_string(r.seq - 2));
      else
        fail(r.seq, "record " + str(seq) + " does not match its hash: it was changed after it was written");
      return false;
    }
    if (r.seq == 1 && r.prev_hash != kAuditGenesisHash) {
      fail(1, "record 1 does not start a chain (its prev_hash is not the genesis hash)");
      return false;
    }
    if (linked && r.prev_hash != prev_hash_) {
      fail(r.seq - 1, "record " + std::to_string(r.seq - 1) + " is not the record that record " + str(seq) +
                          " was chained to: it was changed and its hash recomputed, or replaced");
      return false;
    }

    while (next_cp_ < cps_.size() && cps_[next_cp_].seq < r.seq) {
      ++skipped_cps_;  // its record is not in this run of records
      ++next_cp_;
    }
    while (next_cp_ < cps_.size() && cps_[next_cp_].seq == r.seq) {
      const Checkpoint& cp = cps_[next_cp_++];
      if (cp.hash == r.hash) {
        ++v_.checkpoints_matched;
        good_cp_ = cp;
        continue;
      }
      int64_t from = good_cp_ ? good_cp_->seq + 1 : v_.first_seq;
      fail(from, "record " + str(seq) + " differs from the checkpoint signed for it at " + audit::format_time(cp.time_ms) +
                     ": the chain was recomputed after a change; the first changed record is " +
                     (from == r.seq ? "record " + str(seq)
                                    : "one of " + seq_range(from, r.seq) + " (the newest checkpoint that agrees is " +
                                          (good_cp_ ? "at seq " + std::to_string(good_cp_->seq) : std::string("none")) +
                                          ")"));
      return false;
    }

    prev_prev_hash_ = linked || r.seq == 1 ? prev_hash_ : std::string();
    prev_hash_.assign(r.hash);
    last_seq_ = r.seq;
    started_ = true;
    ++v_.records;
    v_.last_seq = r.seq;
    return true;
  }

  // `to_end`: the records run to the end of the log (as of `as_of_ms`, when given), so a
  // checkpoint beyond the last one, signed before then, means records were removed.
  void finish(bool to_end, std::optional<int64_t> as_of_ms = std::nullopt) {
    v_.newest_checkpoint = good_cp_;
    if (gaps_ > 0) {
      v_.contiguous = false;
      v_.notes.push_back("the records are filtered (" + std::to_string(gaps_) +
                         " gaps): links between records that are not adjacent cannot be verified; each record's own "
                         "hash and the links between adjacent records were");
    }
    if (skipped_cps_ > 0)
      v_.notes.push_back(std::to_string(skipped_cps_) + " checkpoints name records that are not in this set");
    if (broken_) return;
    const Checkpoint* proof = nullptr;  // the newest checkpoint beyond the end that counts
    int64_t later = 0, unchecked = 0;
    for (std::size_t i = next_cp_; i < cps_.size(); ++i) {
      if (as_of_ms && cps_[i].time_ms > *as_of_ms) ++later;
      else if (to_end && !sparse_) proof = &cps_[i];
      else ++unchecked;
    }
    std::string after = started_ ? "records after seq " + std::to_string(last_seq_) : std::string("all records");
    if (later > 0)
      v_.notes.push_back(std::to_string(later) + " checkpoints beyond the last record were signed after the export was "
                         "made (they cover newer records)");
    if (unchecked > 0)
      v_.notes.push_back(std::to_string(unchecked) + " checkpoints are beyond the last record here (seq " +
                         std::to_string(last_seq_) + "): this set does not claim to run to the end of the log, so "
                         "whether " + after + " were removed is not checked");
    if (proof) {
      v_.truncated = true;
      fail(last_seq_ + 1, after + " were removed: the checkpoint at seq " + std::to_string(proof->seq) + " signed at " +
                              audit::format_time(proof->time_ms) + " proves they existed");
    }
  }

 private:
  AuditVerification& v_;
  std::vector<Checkpoint> cps_;
  std::size_t next_cp_ = 0;
  bool from_genesis_;
  bool sparse_;
  bool started_ = false;
  bool broken_ = false;
  int64_t last_seq_ = 0;
  int64_t gaps_ = 0;
  int64_t skipped_cps_ = 0;
  std::string prev_hash_, prev_prev_hash_;
  std::optional<Checkpoint> good_cp_;
};

std::string_view column(sqlite3_stmt* st, int i) {
  auto* p = reinterpret_cast<const char*>(sqlite3_column_text(st, i));
  return p ? std::string_view(p, static_cast<std::size_t>(sqlite3_column_bytes(st, i))) : std::string_view();
}

const std::set<std::string>& record_members() {
  static const std::set<std::string> k = {"cost",      "details",   "duration_us", "error_code", "hash",
                                          "outcome",   "prev_hash", "principal",   "project",    "request_id",
                                          "rules",     "seq",       "time_ms",     "tool"};
  return k;
}

// Why `j` is not an export record line, or empty.
// An export line exactly as `scigate audit export` writes it — canonical JSON, members in
// their order, top-level strings without escapes — read as views into `line` without building
// a DOM (the full parse costs several times the hash). nullopt for anything else, which the full
// parser then judges. A record read this way is accepted only if the bytes rebuilt from these
// views hash to its `hash` (the caller checks), and those are the bytes the full path would
// rebuild from the same line, so the fast path changes no verdict, only the speed.
class ExportLineReader {
 public:
  explicit ExportLineReader(std::string_view line) : s_(line) {}

  std::optional<AuditRowView> read() {
    AuditRowView r;
    bool ok = lit("{\"cost\":") && integer(r.cost) && lit(",\"details\":") && object(r.details) &&
              lit(",\"duration_us\":") && integer(r.duration_us) && lit(",\"error_code\":") && string(r.error_code) &&
              lit(",\"hash\":") && string(r.hash) && lit(",\"outcome\":") && string(r.outcome) &&
              lit(",\"prev_hash\":") && string(r.prev_hash) && lit(",\"principal\":") && string(r.principal) &&
              lit(",\"project\":") && string(r.project) && lit(",\"request_id\":") && string(r.request_id) &&
              lit(",\"rules\":") && string(r.rules) && lit(",\"seq\":") && integer(r.seq) &&
              lit(",\"time_ms\":") && integer(r.time_ms) && lit(",\"tool\":") && string(r.tool) && lit("}") &&
              pos_ == s_.size();
    if (!ok) return std::nullopt;
    return r;
  }

 private:
  bool lit(std::string_view text) {
    if (s_.compare(pos_, text.size(), text) != 0) return false;
    pos_ += text.size();
    return true;
  }
  // Canonical integers only: -?(0|[1-9][0-9]*), at most 18 digits.
  bool integer(int64_t& out) {
    bool negative = pos_ < s_.size() && s_[pos_] == '-';
    std::size_t p = pos_ + (negative ? 1 : 0), start = p;
    int64_t v = 0;
    while (p < s_.size() && s_[p] >= '0' && s_[p] <= '9' && p - start < 18) v = v * 10 + (s_[p++] - '0');
    std::size_t digits = p - start;
    if (digits == 0 || (digits > 1 && s_[start] == '0') || (p < s_.size() && s_[p] >= '0' && s_[p] <= '9')) return false;
    out = negative ? -v : v;
    pos_ = p;
    return true;
  }
  // A string with no escape and no control character (its bytes are its value).
  bool string(std::string_view& out) {
    if (pos_ >= s_.size() || s_[pos_] != '"') return false;
    std::size_t p = pos_ + 1;
    while (p < s_.size() && s_[p] != '"') {
      if (s_[p] == '\\' || static_cast<unsigned char>(s_[p]) < 0x20) return false;
      ++p;
    }
    if (p >= s_.size()) return false;
    out = s_.substr(pos_ + 1, p - pos_ - 1);
    pos_ = p + 1;
    return true;
  }
  // The text of an object value, braces matched outside strings; hashed as it stands.
  bool object(std::string_view& out) {
    if (pos_ >= s_.size() || s_[pos_] != '{') return false;
    int depth = 0;
    bool in_string = false;
    for (std::size_t p = pos_; p < s_.size(); ++p) {
      char c = s_[p];
      if (in_string) {
        if (c == '\\') ++p;
        else if (c == '"') in_string = false;
      } else if (c == '"') {
        in_string = true;
      } else if (c == '{' || c == '[') {
        ++depth;
      } else if ((c == '}' || c == ']') && --depth == 0) {
        out = s_.substr(pos_, p + 1 - pos_);
        pos_ = p + 1;
        return true;
      }
    }
    return false;
  }

  std::string_view s_;
  std::size_t pos_ = 0;
};

std::string record_problem(const json& j) {
  if (!j.is_object()) return "not a JSON object";
  for (const auto& name : record_members())
    if (!j.contains(name)) return "no \"" + name + "\"";
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!record_members().count(it.key())) return "\"" + it.key() + "\" is not a record field (the hash would not cover it)";
  for (const char* k : {"cost", "duration_us", "seq", "time_ms"})
    if (!j[k].is_number_integer()) return std::string("\"") + k + "\" is not an integer";
  for (const char* k : {"error_code", "hash", "outcome", "prev_hash", "principal", "project", "request_id", "rules", "tool"})
    if (!j[k].is_string()) return std::string("\"") + k + "\" is not a string";
  if (!j["details"].is_object()) return "\"details\" is not an object";
  return {};
}

}  // namespace

AuditVerification verify_audit_chain(state::Database& db) { return verify_audit_log(db, AuditVerifyOptions{}); }

namespace {

AuditVerification verify_connection(sqlite3* handle, const AuditVerifyOptions& options) {
  AuditVerification v;
  // Checkpoints first: each names a record committed before it was written, so every one read
  // now is in the snapshot the query below sees.
  auto checkpoints = prepare_checkpoints(options, v);
  const bool no_checkpoints = checkpoints.empty();
  ChainVerifier chain(v, std::move(checkpoints), true, false);
  sqlite3_stmt* st = nullptr;
  const char* sql =
      "SELECT seq, time_ms, request_id, principal, project, tool, outcome, error_code, rules, cost, duration_us, "
      "details, prev_hash, hash FROM audit_log ORDER BY seq";
  if (sqlite3_prepare_v2(handle, sql, -1, &st, nullptr) != SQLITE_OK)
    throw state::DbError(std::string("prepare failed: ") + sqlite3_errmsg(handle));
  std::unique_ptr<sqlite3_stmt, decltype(&sqlite3_finalize)> guard(st, sqlite3_finalize);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    AuditRowView r;
    r.seq = sqlite3_column_int64(st, 0);
    r.time_ms = sqlite3_column_int64(st, 1);
    r.request_id = column(st, 2);
    r.principal = column(st, 3);
    r.project = column(st, 4);
    r.tool = column(st, 5);
    r.outcome = column(st, 6);
    r.error_code = column(st, 7);
    r.rules = column(st, 8);
    r.cost = sqlite3_column_int64(st, 9);
    r.duration_us = sqlite3_column_int64(st, 10);
    r.details = column(st, 11);
    r.prev_hash = column(st, 12);
    r.hash = column(st, 13);
    if (!chain.add(r)) break;
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE)
    throw state::DbError(std::string("reading the audit log failed: ") + sqlite3_errmsg(handle));
  chain.finish(true);
  check_required(options, v, no_checkpoints);
  return v;
}

}  // namespace

AuditVerification verify_audit_log(state::Database& db, const AuditVerifyOptions& options) {
  auto lock = db.lock();
  return verify_connection(db.handle(), options);
}

AuditVerification verify_audit_log(const std::filesystem::path& db_path, const AuditVerifyOptions& options) {
  // A connection of its own: read-only, without SQLite's per-call mutex (one thread uses it),
  // reading through mmap rather than read() copies.
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    throw state::DbError("cannot open database " + db_path.string() + ": " + msg);
  }
  std::unique_ptr<sqlite3, decltype(&sqlite3_close)> guard(db, sqlite3_close);
  sqlite3_busy_timeout(db, 5000);
  sqlite3_exec(db, "PRAGMA mmap_size=1099511627776", nullptr, nullptr, nullptr);
  return verify_connection(db, options);
}

AuditVerification verify_audit_export(std::istream& in, const AuditVerifyOptions& options) {
  AuditVerification v;
  auto checkpoints = prepare_checkpoints(options, v);
  const bool no_checkpoints = checkpoints.empty();
  std::string line;
  int line_no = 0;
  std::optional<ChainVerifier> chain;
  bool to_end = false;
  std::optional<int64_t> as_of, log_last_seq, from_seq;
  std::string project;  // a project export: every record must be that project's
  int64_t last_seq = 0;
  std::string details;
  // A record of another project in a project's export: the header does not describe the
  // records (one of them kept in place of the project's own, or the header edited to excuse gaps).
  auto foreign = [&](const AuditRowView& r) {
    if (project.empty() || r.project == project) return false;
    chain->fail(r.seq, "record " + std::to_string(r.seq) + " is of project " + std::string(r.project) +
                           ", in an export of project " + project + "'s records");
    return true;
  };
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    if (chain) {
      // The common case: a line as exported whose hash holds; anything else takes the full parse.
      if (auto fast = ExportLineReader(line).read(); fast && audit_row_hash(*fast) == fast->hash) {
        if (foreign(*fast) || !chain->add(*fast, true)) break;
        last_seq = fast->seq;
        continue;
      }
    }
    if (chain) ++v.parsed_in_full;
    json j = json::parse(line, nullptr, false);
    if (!chain) {
      bool sparse = false, from_genesis = false;
      if (j.is_object() && j.contains("scigate_audit_export")) {
        const json& h = j["scigate_audit_export"];
        if (h.is_object()) {
          sparse = h.contains("project") && h["project"].is_string() && !h["project"].get<std::string>().empty();
          if (sparse) project = h["project"].get<std::string>();
          to_end = h.contains("to_end") && h["to_end"].is_boolean() && h["to_end"].get<bool>();
          if (h.contains("exported_at_ms") && h["exported_at_ms"].is_number_integer())
            as_of = h["exported_at_ms"].get<int64_t>();
          if (h.contains("log_last_seq") && h["log_last_seq"].is_number_integer())
            log_last_seq = h["log_last_seq"].get<int64_t>();
          if (h.contains("from_seq") && h["from_seq"].is_number_integer()) from_seq = h["from_seq"].get<int64_t>();
          // A whole log's export (no --since, no --project) starts at record 1: records cut from
          // its front are missing, not "where the export starts".
          from_genesis = !sparse && !h.contains("since");
          if (sparse)
            v.notes.push_back("the export holds only project " + project + "'s records, so it has gaps by design");
          if (h.contains("since"))
            v.notes.push_back("the export starts at --since (the export's header says so; the header is not signed)");
        }
        // Checkpoints below the selection's first record say nothing about what it holds.
        if (from_seq)
          checkpoints.erase(std::remove_if(checkpoints.begin(), checkpoints.end(),
                                           [&](const Checkpoint& c) { return c.seq < *from_seq; }),
                            checkpoints.end());
        chain.emplace(v, std::move(checkpoints), from_genesis, sparse);
        continue;
      }
      v.notes.push_back("the export has no header line: it is taken to be one run of records that may end early");
      chain.emplace(v, std::move(checkpoints), false, false);
    }
    if (j.is_discarded()) {
      chain->fail(last_seq + 1, "line " + std::to_string(line_no) + " is not JSON");
      break;
    }
    if (std::string why = record_problem(j); !why.empty()) {
      int64_t seq = j.is_object() && j.contains("seq") && j["seq"].is_number_integer() ? j["seq"].get<int64_t>()
                                                                                        : last_seq + 1;
      chain->fail(seq, "line " + std::to_string(line_no) + " is not a valid record: " + why);
      break;
    }
    details.clear();
    canonical::append(details, j["details"]);
    AuditRowView r;
    r.seq = j["seq"].get<int64_t>();
    r.time_ms = j["time_ms"].get<int64_t>();
    r.request_id = j["request_id"].get_ref<const std::string&>();
    r.principal = j["principal"].get_ref<const std::string&>();
    r.project = j["project"].get_ref<const std::string&>();
    r.tool = j["tool"].get_ref<const std::string&>();
    r.outcome = j["outcome"].get_ref<const std::string&>();
    r.error_code = j["error_code"].get_ref<const std::string&>();
    r.rules = j["rules"].get_ref<const std::string&>();
    r.cost = j["cost"].get<int64_t>();
    r.duration_us = j["duration_us"].get<int64_t>();
    r.details = details;
    r.prev_hash = j["prev_hash"].get_ref<const std::string&>();
    r.hash = j["hash"].get_ref<const std::string&>();
    if (foreign(r) || !chain->add(r)) break;
    last_seq = r.seq;
  }
  if (!chain) {
    chain.emplace(v, std::move(checkpoints), false, false);
    v.notes.push_back("the export holds no records");
  }
  // A whole run to the end of the log ends at the record the header says the log ended at.
  if (to_end && project.empty() && log_last_seq && !chain->broken() && last_seq < *log_last_seq &&
      (!from_seq || *from_seq <= *log_last_seq)) {
    v.truncated = true;
    chain->fail(last_seq + 1, "records after seq " + std::to_string(last_seq) + " were removed: the export's header says "
                                  "the log ended at seq " + std::to_string(*log_last_seq) + " when it was exported");
  }
  chain->finish(to_end, as_of);
  check_required(options, v, no_checkpoints);
  return v;
}

std::string describe(const AuditVerification& v) {
  std::string out;
  if (v.first_bad_seq) {
    out += "audit log BROKEN at record " + std::to_string(*v.first_bad_seq) + ": " + v.detail + " (" +
           std::to_string(v.records) + " records before it verified)\n";
  } else if (!v.ok) {
    out += "audit checkpoints BROKEN: " + v.checkpoint_problems.front() + "\n";
  } else {
    out += "audit log intact: " + std::to_string(v.records) + " records";
    if (v.records > 0) out += " (seq " + std::to_string(v.first_seq) + ".." + std::to_string(v.last_seq) + ")";
    out += ", hash chain verified\n";
  }
  if (v.checkpoints > 0 || v.signatures_checked) {
    out += "checkpoints: " + std::to_string(v.checkpoints) + " read, " + std::to_string(v.checkpoints_matched) +
           " matched their records; signatures " + (v.signatures_checked ? "verified" : "NOT checked");
    if (v.newest_checkpoint)
      out += "; newest at seq " + std::to_string(v.newest_checkpoint->seq) + " (" +
             audit::format_time(v.newest_checkpoint->time_ms) + ")";
    out += "\n";
  }
  for (const auto& p : v.checkpoint_problems) out += "checkpoint problem: " + p + "\n";
  for (const auto& n : v.notes) out += "note: " + n + "\n";
  return out;
}

}  // namespace scigate
