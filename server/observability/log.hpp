#pragma once
// Structured logging. Every line goes to stderr (stdout belongs to the MCP stdio transport).
// In json format each line is one JSON object: {"ts","level","event", ...fields}.
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

namespace scigate::log {

// format: "json" or "text"; level: trace|debug|info|warn|error|off
void init(const std::string& format, const std::string& level);
void event(spdlog::level::level_enum level, std::string_view name, const nlohmann::json& fields = {});
// Audit records are written whatever the log level: they are a record, not diagnostics.
void audit(const nlohmann::json& fields);
// Several records in one write (JSON format), for the audit writer's batches.
void audit_batch(const std::vector<nlohmann::json>& records);
// Whether audit lines are JSON (then a writer may format them itself, with audit_timestamp(),
// and hand them to audit_lines: one or more lines, newline-separated, no trailing newline).
bool audit_json();
std::string audit_timestamp();
void audit_lines(const std::string& lines);

inline void info(std::string_view name, const nlohmann::json& fields = {}) { event(spdlog::level::info, name, fields); }
inline void warn(std::string_view name, const nlohmann::json& fields = {}) { event(spdlog::level::warn, name, fields); }
inline void error(std::string_view name, const nlohmann::json& fields = {}) { event(spdlog::level::err, name, fields); }
inline void debug(std::string_view name, const nlohmann::json& fields = {}) { event(spdlog::level::debug, name, fields); }

}  // namespace scigate::log
