#include "policies/audit.hpp"

#include "server/observability/log.hpp"


namespace scigate {

void LogAuditLog::append(AuditRecord r) {
  nlohmann::json j{{"time_ms", r.time_ms},     {"request_id", r.request_id},
                   {"principal", r.principal}, {"project", r.project},   {"tool", r.tool},
                   {"outcome", r.outcome},     {"error_code", r.error_code}, {"rules", r.decision_rules},
                   {"cost", r.cost},           {"duration_us", r.duration_us}, {"details", r.details}};
  log::audit(j);
}

}  // namespace scigate
