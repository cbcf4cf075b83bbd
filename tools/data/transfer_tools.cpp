#include "tools/data/transfer_tools.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <cstdio>

#include "server/common/time_format.hpp"
#include "server/common/keyset_cursor.hpp"

namespace scigate::tools {
namespace asio = boost::asio;
using storage::TransferRecord;
using storage::TransferState;

namespace {

double credits_number(MicroCredits micro) { return static_cast<double>(micro) / 1e6; }

json transfer_id_schema() { return json::parse(R"({"type": "string", "maxLength": 14, "pattern": "^x-[0-9a-f]{12}$"})"); }

const char* kTransferOutputSchema = R"({
  "type": "object",
  "properties": {
    "transfer_id": {"type": "string"},
    "state": {"type": "string", "enum": ["QUEUED", "ACTIVE", "COMPLETED", "FAILED", "CANCELED"]},
    "final": {"type": "boolean"},
    "bytes_done": {"type": "integer"},
    "files_done": {"type": "integer"}
  },
  "required": ["transfer_id", "state", "final"]
})";

std::string rate_text(double bps) {
  if (bps <= 0) return "";
  return storage::human_bytes(static_cast<int64_t>(bps)) + "/s";
}

std::string progress_text(const TransferRecord& r) {
  std::string t = storage::human_bytes(r.bytes_done);
  if (r.bytes_total) t += " of " + storage::human_bytes(*r.bytes_total);
  if (r.directory) t += ", " + std::to_string(r.files_done) + " of " + std::to_string(r.files_total) + " files";
  if (r.files_skipped > 0) t += ", " + std::to_string(r.files_skipped) + " skipped";
  if (r.state == TransferState::kActive && r.rate_bytes_per_s > 0) t += ", " + rate_text(r.rate_bytes_per_s);
  return t;
}

std::string transfer_text(const TransferRecord& r) {
  std::string t = "transfer " + r.id + ": " + std::string(storage::to_string(r.state)) + ", " + progress_text(r);
  if (!r.sha256.empty() && r.state == TransferState::kCompleted) t += ", sha256 " + r.sha256;
  if (!r.error_message.empty()) t += "; " + r.error_message;
  return t;
}

Error not_found(const std::string& id) {
  return Error{ErrorCode::kNotFound, "no transfer " + id + " in this project",
               "list_transfers shows this project's transfers", {}};
}

std::vector<std::string> strings(const json& args, const char* key) {
  std::vector<std::string> out;
  if (auto it = args.find(key); it != args.end() && it->is_array())
    for (const auto& v : *it) out.push_back(v.get<std::string>());
  return out;
}

void add_location_facts(json& facts, const char* prefix, const std::string& uri) {
  auto l = storage::parse_location(uri);
  if (auto* loc = std::get_if<storage::Location>(&l)) {
    bool area = loc->kind == storage::Location::Kind::kArea;
    facts[std::string(prefix) + "_kind"] = area ? "area" : "http";
    if (area) facts[std::string(prefix) + "_area"] = loc->area;
    else facts[std::string(prefix) + "_host"] = loc->host;
  }
}

}  // namespace

json transfer_to_json(const TransferRecord& r, bool full) {
  json j = json::object();
  j["transfer_id"] = r.id;
  j["state"] = std::string(storage::to_string(r.state));
  j["final"] = storage::is_final(r.state);
  j["source"] = r.source;
  j["destination"] = r.destination;
  j["directory"] = r.directory;
  j["bytes_total"] = r.bytes_total ? json(*r.bytes_total) : json(nullptr);
  j["bytes_done"] = r.bytes_done;
  j["files_total"] = r.files_total;
  j["files_done"] = r.files_done;
  j["files_skipped"] = r.files_skipped;
  if (r.state == TransferState::kActive && r.rate_bytes_per_s > 0)
    j["rate_bytes_per_s"] = static_cast<int64_t>(r.rate_bytes_per_s);
  if (!r.sha256.empty()) j["sha256"] = r.sha256;
  if (!r.error_code.empty()) {
    json e = json::object();
    e["code"] = r.error_code;
    e["message"] = r.error_message;
    j["error"] = std::move(e);
  }
  j["created"] = rfc3339_seconds(r.created_ms);
  if (r.start_ms) j["started"] = rfc3339_seconds(*r.start_ms);
  if (r.end_ms) j["ended"] = rfc3339_seconds(*r.end_ms);
  if (r.start_ms) {
    int64_t end = r.end_ms.value_or(unix_now_ms());
    j["elapsed_s"] = static_cast<double>(std::max<int64_t>(0, end - *r.start_ms)) / 1000.0;
  }
  if (!full) return j;
  j["options"] = r.options;
  j["attempts"] = r.attempts;
  json credits = json::object();
  credits["held"] = credits_number(r.held);
  if (r.cost) credits["cost"] = credits_number(*r.cost);
  credits["settled"] = r.settled;
  j["credits"] = std::move(credits);
  if (!r.files.empty()) {
    json files = json::array();
    for (const auto& f : r.files) {
      json x = json::object();
      x["path"] = f.path;
      x["bytes"] = f.bytes;
      if (f.skipped) x["skipped"] = true;
      else x["sha256"] = f.sha256;
      files.push_back(std::move(x));
    }
    j["files"] = std::move(files);
  }
  return j;
}

// --- stage_data ------------------------------------------------------------------------------

StageDataTool::StageDataTool(storage::TransferService& transfers) : transfers_(transfers) {
  descriptor_.name = "stage_data";
  descriptor_.title = "Stage data";
  descriptor_.description =
      "Copies a file or a directory (recursive = true; include/exclude globs) between the project's storage areas "
      "(area://<area>/<path>) and HTTP(S) URLs the site allows, and returns a transfer id at once; follow it with "
      "get_transfer. wait_s > 0 (or calling it as a task) waits for the end, with progress (bytes, files, rate). "
      "Data lands under a temporary name and appears under its final name only complete, SHA-256 checked "
      "(sha256: the expected digest of a single file). overwrite: never (default), always, skip. Credits are held "
      "for the announced size and charged per GB moved. A destination ending in '/' receives the file by its name.";
  descriptor_.input_schema = json::parse(R"json({
    "type": "object", "additionalProperties": false,
    "properties": {
      "source": {"type": "string", "minLength": 7, "maxLength": 8192,
                 "description": "area://<area>/<path> or an http(s):// URL"},
      "destination": {"type": "string", "minLength": 7, "maxLength": 8192,
                      "description": "area://<area>/<path> (or an https:// URL that accepts uploads)"},
      "recursive": {"type": "boolean", "default": false},
      "include": {"type": "array", "maxItems": 64, "items": {"type": "string", "minLength": 1, "maxLength": 256},
                  "description": "globs; without '/' they match names, with '/' paths relative to the source"},
      "exclude": {"type": "array", "maxItems": 64, "items": {"type": "string", "minLength": 1, "maxLength": 256}},
      "overwrite": {"type": "string", "enum": ["never", "always", "skip"], "default": "never"},
      "sha256": {"type": "string", "maxLength": 64, "pattern": "^[0-9a-fA-F]{64}$"},
      "wait_s": {"type": "number", "minimum": 0, "maximum": 86400}
    },
    "required": ["source", "destination"]})json");
  descriptor_.output_schema = json::parse(kTransferOutputSchema);
  // overwrite=always replaces an existing file: that is a destructive update in MCP's sense.
  descriptor_.annotations = ToolAnnotations{.read_only = false, .destructive = true, .idempotent = false, .open_world = true};
  descriptor_.task_support = TaskSupport::kOptional;
}

std::variant<json, Error> StageDataTool::derive_facts(const json& args) const {
  json facts = json::object();
  add_location_facts(facts, "source", args["source"].get<std::string>());
  add_location_facts(facts, "destination", args["destination"].get<std::string>());
  return facts;
}

asio::awaitable<ToolResult> StageDataTool::call(const json& args, CallContext& ctx) {
  storage::StageRequest req;
  req.project = ctx.project;
  req.principal = ctx.principal.name;
  req.request_id = ctx.request_id;
  req.source = args["source"].get<std::string>();
  req.destination = args["destination"].get<std::string>();
  req.recursive = args.contains("recursive") && args["recursive"].get<bool>();
  req.include = strings(args, "include");
  req.exclude = strings(args, "exclude");
  std::string overwrite = args.contains("overwrite") ? args["overwrite"].get<std::string>() : "never";
  req.overwrite = overwrite == "always" ? storage::OverwritePolicy::kAlways
                  : overwrite == "skip" ? storage::OverwritePolicy::kSkip
                                        : storage::OverwritePolicy::kNever;
  if (args.contains("sha256")) {
    req.expected_sha256 = args["sha256"].get<std::string>();
    for (auto& c : req.expected_sha256) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  auto staged = co_await transfers_.stage(std::move(req));
  if (auto* e = std::get_if<Error>(&staged)) co_return ToolResult::failure(*e);
  TransferRecord rec = std::get<TransferRecord>(std::move(staged));
  ctx.audit_fields["transfer_id"] = rec.id;

  // Wait when asked to, or when the caller is a task (nobody holds a connection open for it).
  double wait_s = args.contains("wait_s") ? args["wait_s"].get<double>() : (ctx.task_id.empty() ? 0.0 : 86400.0);
  if (wait_s > 0 && !storage::is_final(rec.state)) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                            std::chrono::duration<double>(wait_s));
    // End a little before the pipeline's deadline: the caller gets the transfer, not a timeout.
    if (ctx.deadline.time_since_epoch().count() != 0 && ctx.deadline - std::chrono::milliseconds(500) < deadline)
      deadline = ctx.deadline - std::chrono::milliseconds(500);
    asio::steady_timer timer(co_await asio::this_coro::executor);
    auto last_report = std::chrono::steady_clock::time_point{};
    for (;;) {
      auto r = transfers_.get(ctx.project, rec.id);
      if (!r) break;
      rec = *r;
      auto now = std::chrono::steady_clock::now();
      if (storage::is_final(rec.state) || now >= deadline || ctx.cancelled()) break;
      if (now - last_report >= std::chrono::milliseconds(500)) {
        std::optional<double> total;
        if (rec.bytes_total && *rec.bytes_total > 0) total = static_cast<double>(*rec.bytes_total);
        // Progress must increase: bytes done plus one, so that a report at 0 bytes is sent too.
        ctx.progress.report(static_cast<double>(rec.bytes_done) + 1, total ? std::optional<double>(*total + 1) : total,
                            "transfer " + rec.id + ": " + progress_text(rec));
        last_report = now;
      }
      timer.expires_after(std::min<std::chrono::steady_clock::duration>(std::chrono::milliseconds(100), deadline - now));
      co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    }
  }
  auto full = transfers_.get(ctx.project, rec.id, storage::is_final(rec.state) && rec.directory);
  if (full) rec = *full;
  if (rec.state == TransferState::kFailed && !rec.error_code.empty()) {
    // The transfer ended badly while the caller waited: say so as an error it can act on.
    Error e{ErrorCode::kBackendUnavailable, "transfer " + rec.id + " failed: " + rec.error_message, {}, {}};
    if (auto code = rec.error_code; code == "integrity_failed") e.code = ErrorCode::kIntegrityFailed;
    else if (code == "quota_exceeded") e.code = ErrorCode::kQuotaExceeded;
    else if (code == "forbidden") e.code = ErrorCode::kForbidden;
    else if (code == "not_found") e.code = ErrorCode::kNotFound;
    else if (code == "conflict") e.code = ErrorCode::kConflict;
    else if (code == "invalid_arguments") e.code = ErrorCode::kInvalidArguments;
    ToolResult failed = ToolResult::failure(e);
    co_return failed;
  }
  co_return ToolResult::success(transfer_to_json(rec, true), transfer_text(rec));
}

// --- get_transfer ----------------------------------------------------------------------------

GetTransferTool::GetTransferTool(storage::TransferService& transfers) : transfers_(transfers) {
  descriptor_.name = "get_transfer";
  descriptor_.title = "Transfer status";
  descriptor_.description =
      "State of one transfer of this project (QUEUED, ACTIVE, COMPLETED, FAILED, CANCELED), bytes and files done of "
      "the total, rate, SHA-256 of a single file, error, credits held and charged; files = true lists the files "
      "moved with their checksums (the first 100).";
  descriptor_.input_schema = json::parse(R"({"type": "object", "additionalProperties": false,
      "properties": {"files": {"type": "boolean", "default": false}}, "required": ["transfer_id"]})");
  descriptor_.input_schema["properties"]["transfer_id"] = transfer_id_schema();
  descriptor_.output_schema = json::parse(kTransferOutputSchema);
  descriptor_.annotations = ToolAnnotations{.read_only = true, .destructive = false, .idempotent = true, .open_world = false};
}

asio::awaitable<ToolResult> GetTransferTool::call(const json& args, CallContext& ctx) {
  std::string id = args["transfer_id"].get<std::string>();
  bool files = args.contains("files") && args["files"].get<bool>();
  auto r = transfers_.get(ctx.project, id, files);
  if (!r) co_return ToolResult::failure(not_found(id));
  co_return ToolResult::success(transfer_to_json(*r, true), transfer_text(*r));
}

// --- list_transfers --------------------------------------------------------------------------

ListTransfersTool::ListTransfersTool(storage::TransferService& transfers) : transfers_(transfers) {
  descriptor_.name = "list_transfers";
  descriptor_.title = "List transfers";
  descriptor_.description =
      "This project's transfers, newest first, compact (id, state, source, destination, progress). Filter by state; "
      "pass next_cursor back as cursor for the next page.";
  descriptor_.input_schema = json::parse(R"({
    "type": "object", "additionalProperties": false,
    "properties": {
      "state": {"type": "string", "enum": ["QUEUED", "ACTIVE", "COMPLETED", "FAILED", "CANCELED"]},
      "limit": {"type": "integer", "minimum": 1, "maximum": 200},
      "cursor": {"type": "string", "maxLength": 31, "pattern": "^[0-9]{1,16}[.]x-[0-9a-f]{12}$"}
    }})");
  descriptor_.output_schema = json::parse(R"({"type": "object", "properties": {
      "transfers": {"type": "array"}, "next_cursor": {"type": ["string", "null"]}}, "required": ["transfers"]})");
  descriptor_.annotations = ToolAnnotations{.read_only = true, .destructive = false, .idempotent = true, .open_world = false};
}

asio::awaitable<ToolResult> ListTransfersTool::call(const json& args, CallContext& ctx) {
  storage::TransferFilter f;
  if (auto it = args.find("state"); it != args.end()) f.state = storage::parse_transfer_state(it->get<std::string>());
  if (auto it = args.find("limit"); it != args.end()) f.limit = it->get<std::size_t>();
  if (auto it = args.find("cursor"); it != args.end()) f.before = parse_keyset_cursor(it->get<std::string>());
  bool more = false;
  auto list = transfers_.list(ctx.project, f, &more);
  json out = json::object();
  json arr = json::array();
  std::string text;
  for (const auto& r : list) {
    arr.push_back(transfer_to_json(r, false));
    text += transfer_text(r) + "\n";
  }
  out["transfers"] = std::move(arr);
  out["next_cursor"] = next_keyset_cursor(list, more);
  co_return ToolResult::success(std::move(out), text.empty() ? "no transfers" : text);
}

// --- cancel_transfer -------------------------------------------------------------------------

CancelTransferTool::CancelTransferTool(storage::TransferService& transfers) : transfers_(transfers) {
  descriptor_.name = "cancel_transfer";
  descriptor_.title = "Cancel a transfer";
  descriptor_.description =
      "Cancels a transfer of this project: it stops between two pieces of data, its temporary file is removed "
      "(files already complete stay), and it pays for the bytes moved. Cancelling an ended transfer changes "
      "nothing.";
  descriptor_.input_schema = json::parse(R"({"type": "object", "additionalProperties": false, "properties": {},
      "required": ["transfer_id"]})");
  descriptor_.input_schema["properties"]["transfer_id"] = transfer_id_schema();
  descriptor_.output_schema = json::parse(kTransferOutputSchema);
  descriptor_.annotations = ToolAnnotations{.read_only = false, .destructive = true, .idempotent = true, .open_world = false};
}

asio::awaitable<ToolResult> CancelTransferTool::call(const json& args, CallContext& ctx) {
  std::string id = args["transfer_id"].get<std::string>();
  auto r = co_await transfers_.cancel(ctx.project, id);
  if (auto* e = std::get_if<Error>(&r)) {
    if (e->code == ErrorCode::kNotFound) co_return ToolResult::failure(not_found(id));
    co_return ToolResult::failure(*e);
  }
  const TransferRecord& rec = std::get<TransferRecord>(r);
  ctx.audit_fields["transfer_id"] = rec.id;
  co_return ToolResult::success(transfer_to_json(rec, true), transfer_text(rec));
}

}  // namespace scigate::tools
