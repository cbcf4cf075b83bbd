#pragma once
// Verification of the audit trail: the hash chain (from the database, or from an export file
// without the server or the database) and the signed checkpoints. What each check proves is in
// docs/AUDIT.md.
#include <cstdint>
#include <filesystem>
#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

#include "policies/audit_checkpoint.hpp"
#include "server/state/database.hpp"

namespace scigate {

struct AuditVerifyOptions {
  // Checkpoints to check the records against; none: the chain alone (truncation of the newest
  // records then goes unnoticed).
  std::optional<std::filesystem::path> checkpoint_file;
  // The public key the checkpoints must be signed with; none: signatures are not checked.
  std::optional<audit::SigningKey> key;
  // Fail, rather than note, when the log has records and the checkpoint file is missing or
  // holds no usable checkpoint: whoever can delete the newest records can delete that file too.
  // (`scigate audit verify` sets it when --checkpoints or --pubkey is given.)
  bool require_checkpoints = false;
};

struct AuditVerification {
  bool ok = true;
  int64_t records = 0;  // records whose own hash was checked
  int64_t first_seq = 0, last_seq = 0;
  // The first record that cannot be trusted, and why (records changed, missing, inserted,
  // reordered, or cut off after the last one).
  std::optional<int64_t> first_bad_seq;
  std::string detail;
  bool truncated = false;
  // Problems with the checkpoint file itself (bad signature, unknown key, unreadable lines).
  std::vector<std::string> checkpoint_problems;
  // What could not be verified, and why (no key, a filtered export, ...). Not failures.
  std::vector<std::string> notes;
  int64_t checkpoints = 0;          // checkpoints read (valid lines)
  int64_t checkpoints_matched = 0;  // checkpoints whose seq and hash match a verified record
  bool signatures_checked = false;
  std::optional<audit::Checkpoint> newest_checkpoint;  // newest checkpoint that was used
  // Export verification: whether the records form one run without gaps.
  bool contiguous = true;
  // Export verification: record lines read with the full JSON parser because they were not
  // exactly as `scigate audit export` writes them, or did not match their hash (the rest take
  // a fast reader; the verdict is the same either way).
  int64_t parsed_in_full = 0;
};

// The chain in the database, without checkpoints.
AuditVerification verify_audit_chain(state::Database& db);
// The chain in the database and the checkpoints. The checkpoint file is read before the
// records, so a server writing meanwhile cannot make a new checkpoint look like truncation.
AuditVerification verify_audit_log(state::Database& db, const AuditVerifyOptions& options);
// The same on a read-only connection of its own (the command line; fastest).
AuditVerification verify_audit_log(const std::filesystem::path& db_path, const AuditVerifyOptions& options);
// An export (`scigate audit export`): one JSON record per line, after an optional header line.
AuditVerification verify_audit_export(std::istream& in, const AuditVerifyOptions& options);

// A report for people: several lines, the verdict first.
std::string describe(const AuditVerification& v);

}  // namespace scigate
