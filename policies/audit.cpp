#include "policies/audit.hpp"

#include "policies/audit_time.hpp"
#include "policies/redact.hpp"
#include "server/common/crypto.hpp"
#include "server/observability/log.hpp"


namespace scigate {

namespace {

std::string error_code_for(int status, int rpc) {
  switch (rpc) {
    case -32700: return "parse_error";
    case -32600: return "invalid_request";
    case -32601: return "method_not_found";
    case -32602: return "invalid_params";
    case -32001: return "session_not_found";
    case -32020: return "header_mismatch";
    case -32021: return "missing_client_capability";
    case -32022: return "unsupported_protocol_version";
    default: break;
  }
  switch (status) {
    case 400: return "bad_request";
    case 401: return "unauthenticated";
    case 403: return "forbidden";
    case 404: return "not_found";
    case 405: return "method_not_allowed";
    case 406: return "not_acceptable";
    case 409: return "conflict";
    case 413: return "payload_too_large";
    case 415: return "unsupported_media_type";
    case 431: return "headers_too_large";
    case 503: return "unavailable";
    default: break;
  }
  if (status >= 500 || rpc == -32603) return "internal";
  return "invalid_request";
}

std::string outcome_for(int status, int rpc) {
  if (status == 401) return "unauthenticated";
  if (status == 403) return "denied";
  if (status == 503) return "unavailable";
  if (status >= 500 || rpc == -32603) return "internal";
  return "invalid";
}

}  // namespace

AuditRecord edge_refusal_record(const EdgeRefusal& e) {
  AuditRecord r;
  r.time_ms = audit::now_ms();
  r.request_id = e.transport + "-" + crypto::random_hex(8);
  if (e.principal) r.principal = e.principal->name;
  r.project = e.project;
  r.tool = e.tool;
  r.outcome = outcome_for(e.http_status, e.rpc_code);
  r.error_code = error_code_for(e.http_status, e.rpc_code);
  nlohmann::json d = nlohmann::json::object();
  std::string reason = e.reason;
  if (reason.size() > 500) {
    reason.resize(500);
    reason += "...";
  }
  d["reason"] = std::move(reason);
  d["transport"] = e.transport;
  if (e.http_status) d["http_status"] = e.http_status;
  if (e.rpc_code) d["rpc_code"] = e.rpc_code;
  if (!e.method.empty()) d["method"] = e.method;
  if (!e.path.empty()) {
    std::string path = e.path.substr(0, 200);
    // A token in a query string must not reach the log.
    d["path"] = looks_like_secret(path) ? std::string("[redacted]") : path;
  }
  if (!e.remote.empty()) d["remote"] = e.remote;
  if (!e.rpc_method.empty()) d["rpc_method"] = e.rpc_method.substr(0, 100);
  if (e.principal) {
    d["auth"] = e.principal->auth_method;
    // A service account may share its name with a user: the record says which one it was.
    if (e.principal->kind != "user") d["principal_kind"] = e.principal->kind;
  }
  r.details = std::move(d);
  return r;
}

void LogAuditLog::append(AuditRecord r) {
  nlohmann::json j{{"time_ms", r.time_ms},     {"request_id", r.request_id},
                   {"principal", r.principal}, {"project", r.project},   {"tool", r.tool},
                   {"outcome", r.outcome},     {"error_code", r.error_code}, {"rules", r.decision_rules},
                   {"cost", r.cost},           {"duration_us", r.duration_us}, {"details", r.details}};
  log::audit(j);
}

}  // namespace scigate
