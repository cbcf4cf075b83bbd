#include "server/observability/log.hpp"

#include <spdlog/sinks/stdout_sinks.h>

#include <chrono>
#include <ctime>

#include "server/protocol/jsonrpc.hpp"

namespace scigate::log {
namespace {
bool g_json = true;
std::shared_ptr<spdlog::logger> g_audit;

std::string iso_now() {
  using namespace std::chrono;
  auto now = system_clock::now();
  auto t = system_clock::to_time_t(now);
  auto ms = duration_cast<milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  char out[48];
  std::snprintf(out, sizeof out, "%s.%03lldZ", buf, static_cast<long long>(ms));
  return out;
}
}  // namespace

void init(const std::string& format, const std::string& level) {
  g_json = format != "text";
  auto logger = spdlog::stderr_logger_mt("scigate");
  logger->set_pattern(g_json ? "%v" : "%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  logger->set_level(spdlog::level::from_str(level));
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
  // Its own sink: a logger's pattern belongs to its sinks, and audit lines carry no level. Both
  // sinks write whole lines to the same stderr FILE, whose lock keeps lines from interleaving.
  g_audit = std::make_shared<spdlog::logger>("audit", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  g_audit->set_pattern(g_json ? "%v" : "%Y-%m-%dT%H:%M:%S.%e audit %v");
  g_audit->set_level(spdlog::level::info);
  g_audit->flush_on(spdlog::level::info);
}

void audit_batch(const std::vector<nlohmann::json>& records) {
  if (!g_audit || !g_json) {
    for (const auto& r : records) audit(r);
    return;
  }
  // One write for the batch: a syscall per record was a measurable share of a no-op call.
  std::string out;
  std::string ts = iso_now();
  for (std::size_t i = 0; i < records.size(); ++i) {
    nlohmann::json line{{"ts", ts}, {"level", "info"}, {"event", "audit"}};
    for (auto it = records[i].begin(); it != records[i].end(); ++it) line[it.key()] = it.value();
    if (i) out.push_back('\n');
    out += jsonrpc::dump(line);
  }
  if (!out.empty()) g_audit->info("{}", out);
}

bool audit_json() { return g_audit && g_json; }

std::string audit_timestamp() { return iso_now(); }

void audit_lines(const std::string& lines) {
  if (!lines.empty() && g_audit) g_audit->info("{}", lines);
}

void audit(const nlohmann::json& fields) {
  if (!g_audit) {  // logging not initialised (unit tests): fall back to the default logger
    event(spdlog::level::info, "audit", fields);
    return;
  }
  nlohmann::json line{{"ts", iso_now()}, {"level", "info"}, {"event", "audit"}};
  for (auto it = fields.begin(); it != fields.end(); ++it) line[it.key()] = it.value();
  g_audit->info("{}", jsonrpc::dump(line));
}

void event(spdlog::level::level_enum level, std::string_view name, const nlohmann::json& fields) {
  auto logger = spdlog::default_logger_raw();
  if (!logger->should_log(level)) return;
  if (g_json) {
    nlohmann::json line{{"ts", iso_now()}, {"level", std::string(spdlog::level::to_string_view(level).data(), spdlog::level::to_string_view(level).size())}, {"event", name}};
    if (fields.is_object())
      for (auto it = fields.begin(); it != fields.end(); ++it) line[it.key()] = it.value();
    logger->log(level, "{}", jsonrpc::dump(line));
  } else {
    logger->log(level, "{} {}", name, fields.is_null() ? "" : jsonrpc::dump(fields));
  }
}

}  // namespace scigate::log
