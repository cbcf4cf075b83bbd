// Writes N synthetic audit records into a scigate database through the real audit writer
// (SqliteAuditLog: canonical JSON, hash chain, batches, checkpoints), for bench/audit_verify.sh
// and for trying `scigate audit verify/export` on a large log. Not installed: a tool that writes
// audit records has no place in the server binary.
//
//   scigate_audit_gen CONFIG N
#include <cstdlib>
#include <iostream>

#include "policies/audit_store.hpp"
#include "server/config/config.hpp"
#include "server/state/database.hpp"

int main(int argc, char** argv) {
  using namespace scigate;
  if (argc != 3) {
    std::cerr << "usage: scigate_audit_gen CONFIG N\n";
    return 2;
  }
  Config cfg = load_config(argv[1]);
  long n = std::atol(argv[2]);
  {
    state::Database db(cfg.database);
    db.migrate(state::schema_migrations());
  }
  AuditLogOptions o{false, cfg.audit.signing_key, cfg.audit.checkpoint_file, cfg.audit.checkpoint_every_records,
                    std::chrono::seconds(0)};
  SqliteAuditLog log(cfg.database, o);
  const char* tools[] = {"submit_job", "job_status", "stage_data", "chat", "run_circuit", "whoami"};
  const char* outcomes[] = {"ok", "ok", "ok", "ok", "tool_error", "denied", "invalid"};
  const char* principals[] = {"alice", "bob", "carol", "lab-controller"};
  const char* projects[] = {"chem-042", "phys-7", "bio-3"};
  for (long i = 0; i < n; ++i) {
    AuditRecord r;
    r.time_ms = 1'790'000'000'000 + i * 3;
    r.request_id = "req-0a1b2c3d-" + std::to_string(i + 1);
    r.principal = principals[i % 4];
    r.project = projects[i % 3];
    r.tool = tools[i % 6];
    r.outcome = outcomes[i % 7];
    r.error_code = r.outcome == "ok" ? "" : r.outcome == "denied" ? "policy_denied" : "invalid_arguments";
    r.decision_rules = "builtin-membership";
    r.cost = (i % 5) * 125000;
    r.duration_us = 150 + (i * 37) % 90000;
    r.details = {{"auth", "api_key"},
                 {"client", "claude-code"},
                 {"held", r.cost * 2},
                 {"policy_hash", "3f8a1c9e5b2d7f4061e8a9c3b5d7f1e2a4c6b8d0e2f4a6c8b0d2e4f6a8c0b2d4"},
                 {"arguments", {{"partition", "gpu"}, {"walltime", "04:00:00"}, {"nodes", 1 + i % 4},
                                {"script", "[sha256:9b74c9897bac770ffc029102a200c5de4cb0c6d9d1f0b6b3c4f1a2e3d4c5b6a7, 2048 bytes]"}}},
                 {"job_id", std::to_string(4'000'000 + i)}};
    log.append(std::move(r));
    if ((i + 1) % 100000 == 0) std::cerr << (i + 1) << " records\n";
  }
  log.flush();
  return 0;
}
