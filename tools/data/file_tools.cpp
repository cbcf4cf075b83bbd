#include "tools/data/file_tools.hpp"

#include <cstdio>

#include "server/common/crypto.hpp"
#include "server/common/time_format.hpp"
#include "server/common/utf8.hpp"

namespace scigate::tools {
namespace asio = boost::asio;
using storage::FileType;
using storage::human_bytes;

namespace {

ToolAnnotations read_only() {
  return ToolAnnotations{.read_only = true, .destructive = false, .idempotent = true, .open_world = false};
}

const char* kUriDescription = "area://<area>/<path>: a file or directory in one of the project's storage areas";

std::string octal_mode(uint32_t m) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", m & 07777);
  return buf;
}

std::string uri_of(const std::string& area, const std::string& path) { return "area://" + area + "/" + path; }

storage::Location location_or_fail(const json& args, std::optional<Error>* err) {
  auto parsed = storage::parse_location(args["uri"].get<std::string>());
  if (auto* e = std::get_if<Error>(&parsed)) {
    *err = *e;
    return {};
  }
  return std::get<storage::Location>(parsed);
}

json areas_json(storage::Areas& areas, const std::string& project, std::string* text) {
  json arr = json::array();
  for (const auto& h : areas.visible(project)) {
    const AreaConfig& a = *h.config;
    json j = json::object();
    j["uri"] = uri_of(a.id, "");
    j["area"] = a.id;
    j["mode"] = h.may_write ? "rw" : "ro";
    j["shared"] = a.project != project;
    if (!a.site.empty()) j["site"] = a.site;
    if (a.quota_bytes > 0) j["quota_bytes"] = a.quota_bytes;
    if (a.quota_files > 0) j["quota_files"] = a.quota_files;
    if (auto u = areas.usage_estimate(h)) {
      j["used_bytes"] = u->bytes;
      j["used_files"] = u->files;
    }
    *text += j["uri"].get<std::string>() + " (" + j["mode"].get<std::string>() +
             (a.project != project ? ", shared dataset" : "") +
             (a.quota_bytes > 0 ? ", quota " + human_bytes(a.quota_bytes) : std::string()) + ")\n";
    arr.push_back(std::move(j));
  }
  return arr;
}

}  // namespace

json file_info_json(const std::string& area, const storage::FileInfo& f) {
  json j = json::object();
  j["uri"] = uri_of(area, f.path) + (f.type == FileType::kDirectory && !f.path.empty() ? "/" : "");
  j["name"] = f.name;
  j["type"] = storage::to_string(f.type);
  if (f.type == FileType::kFile) j["size"] = f.size;
  j["modified"] = rfc3339_seconds(f.mtime_ns / 1'000'000);
  return j;
}

// --- list_files ------------------------------------------------------------------------------

ListFilesTool::ListFilesTool(storage::Areas& areas) : areas_(areas) {
  descriptor_.name = "list_files";
  descriptor_.title = "List files";
  descriptor_.description =
      "Lists one directory of a storage area (area://<area>/<path>), sorted by name, a page at a time (limit, "
      "default 100, at most 1000; pass next_cursor back as cursor). Without uri: the project's areas (own ones "
      "read-write or read-only, shared datasets read-only) with their quotas. Symbolic links are listed, never "
      "followed.";
  descriptor_.input_schema = json::parse(R"({
    "type": "object", "additionalProperties": false,
    "properties": {
      "uri": {"type": "string", "minLength": 7, "maxLength": 4200},
      "cursor": {"type": "string", "maxLength": 400},
      "limit": {"type": "integer", "minimum": 1, "maximum": 1000}
    }})");
  descriptor_.input_schema["properties"]["uri"]["description"] = kUriDescription;
  descriptor_.output_schema = json::parse(R"({"type": "object", "properties": {
      "uri": {"type": "string"}, "areas": {"type": "array"}, "entries": {"type": "array"},
      "next_cursor": {"type": ["string", "null"]}}})");
  descriptor_.annotations = read_only();
}

asio::awaitable<ToolResult> ListFilesTool::call(const json& args, CallContext& ctx) {
  json out = json::object();
  if (!args.contains("uri")) {
    std::string text;
    out["areas"] = areas_json(areas_, ctx.project, &text);
    co_return ToolResult::success(std::move(out), text.empty() ? "this project has no storage areas" : text);
  }
  std::optional<Error> err;
  auto where = location_or_fail(args, &err);
  if (err) co_return ToolResult::failure(*err);
  std::string after;
  if (auto it = args.find("cursor"); it != args.end()) {
    auto decoded = crypto::base64url_decode(it->get<std::string>());
    if (!decoded) co_return ToolResult::failure(Error::invalid_arguments("cursor is not one list_files returned"));
    after = *decoded;
  }
  std::size_t limit = args.contains("limit") ? args["limit"].get<std::size_t>() : 100;
  auto r = co_await areas_.list(ctx.project, where, after, limit);
  if (auto* e = std::get_if<Error>(&r)) co_return ToolResult::failure(*e);
  const auto& page = std::get<storage::ListPage>(r);
  json entries = json::array();
  std::string text;
  for (const auto& f : page.entries) {
    entries.push_back(file_info_json(where.area, f));
    text += f.name + (f.type == FileType::kDirectory ? "/" : f.type == FileType::kSymlink ? " (symlink)" : "");
    if (f.type == FileType::kFile) text += "  " + human_bytes(f.size);
    text += "\n";
  }
  out["uri"] = storage::to_uri(where);
  out["entries"] = std::move(entries);
  out["next_cursor"] = page.more && !page.entries.empty() ? json(crypto::base64url_encode(page.entries.back().name))
                                                          : json(nullptr);
  if (page.more) text += "[more entries: pass next_cursor as cursor]\n";
  if (text.empty()) text = "the directory is empty";
  co_return ToolResult::success(std::move(out), text);
}

// --- stat_file -------------------------------------------------------------------------------

StatFileTool::StatFileTool(storage::Areas& areas) : areas_(areas) {
  descriptor_.name = "stat_file";
  descriptor_.title = "File details";
  descriptor_.description =
      "Size, type, permissions, link count and times of one entry of a storage area (area://<area>/<path>); "
      "with sha256 = true also the SHA-256 of a file's contents (reads the whole file). A symbolic link is "
      "described, not followed.";
  descriptor_.input_schema = json::parse(R"({
    "type": "object", "additionalProperties": false,
    "properties": {
      "uri": {"type": "string", "minLength": 7, "maxLength": 4200},
      "sha256": {"type": "boolean", "default": false}
    },
    "required": ["uri"]})");
  descriptor_.input_schema["properties"]["uri"]["description"] = kUriDescription;
  descriptor_.output_schema = json::parse(R"({"type": "object", "properties": {
      "uri": {"type": "string"}, "type": {"type": "string"}, "size": {"type": "integer"},
      "sha256": {"type": "string"}}, "required": ["uri", "type"]})");
  descriptor_.annotations = read_only();
}

asio::awaitable<ToolResult> StatFileTool::call(const json& args, CallContext& ctx) {
  std::optional<Error> err;
  auto where = location_or_fail(args, &err);
  if (err) co_return ToolResult::failure(*err);
  bool want = args.contains("sha256") && args["sha256"].get<bool>();
  auto r = co_await areas_.stat(ctx.project, where, want, ctx.cancellation);
  if (auto* e = std::get_if<Error>(&r)) co_return ToolResult::failure(*e);
  const auto& s = std::get<storage::StatResult>(r);
  json out = file_info_json(where.area, s.info);
  out["size"] = s.info.size;
  out["mode"] = octal_mode(s.info.mode);
  out["links"] = s.info.nlink;
  out["changed"] = rfc3339_seconds(s.info.ctime_ns / 1'000'000);
  std::string text = out["uri"].get<std::string>() + ": " + storage::to_string(s.info.type);
  if (s.info.type == FileType::kFile) text += ", " + human_bytes(s.info.size) + " (" + std::to_string(s.info.size) + " bytes)";
  text += ", modified " + out["modified"].get<std::string>();
  if (!s.sha256.empty()) {
    out["sha256"] = s.sha256;
    text += ", sha256 " + s.sha256;
  }
  co_return ToolResult::success(std::move(out), text);
}

// --- read_file -------------------------------------------------------------------------------

ReadFileTool::ReadFileTool(storage::Areas& areas) : areas_(areas) {
  descriptor_.name = "read_file";
  descriptor_.title = "Read a file";
  descriptor_.description =
      "Reads text from a file of a storage area (area://<area>/<path>): `offset` and `length` bytes, or the last "
      "`tail` bytes (at most 65536 per call; default: the first 65536). Says when more is left (size, "
      "next_offset) and when the file is not UTF-8 text (binary: invalid bytes shown as U+FFFD).";
  descriptor_.input_schema = json::parse(R"({
    "type": "object", "additionalProperties": false,
    "properties": {
      "uri": {"type": "string", "minLength": 7, "maxLength": 4200},
      "offset": {"type": "integer", "minimum": 0},
      "length": {"type": "integer", "minimum": 1, "maximum": 65536},
      "tail": {"type": "integer", "minimum": 1, "maximum": 65536}
    },
    "required": ["uri"]})");
  descriptor_.input_schema["properties"]["uri"]["description"] = kUriDescription;
  descriptor_.output_schema = json::parse(R"({"type": "object", "properties": {
      "uri": {"type": "string"}, "offset": {"type": "integer"}, "bytes": {"type": "integer"},
      "size": {"type": "integer"}, "next_offset": {"type": "integer"}, "truncated": {"type": "boolean"},
      "binary": {"type": "boolean"}, "text": {"type": "string"}},
      "required": ["uri", "text", "size", "truncated", "binary"]})");
  descriptor_.annotations = read_only();
}

asio::awaitable<ToolResult> ReadFileTool::call(const json& args, CallContext& ctx) {
  std::optional<Error> err;
  auto where = location_or_fail(args, &err);
  if (err) co_return ToolResult::failure(*err);
  if (args.contains("tail") && (args.contains("offset") || args.contains("length")))
    co_return ToolResult::failure(Error::invalid_arguments("give tail, or offset and length, not both"));
  int64_t offset = args.contains("offset") ? args["offset"].get<int64_t>() : 0;
  int64_t length = args.contains("length") ? args["length"].get<int64_t>() : kMaxBytes;
  int64_t tail = args.contains("tail") ? args["tail"].get<int64_t>() : 0;
  auto r = co_await areas_.read(ctx.project, where, offset, std::min(length, kMaxBytes), std::min(tail, kMaxBytes));
  if (auto* e = std::get_if<Error>(&r)) co_return ToolResult::failure(*e);
  const auto& rr = std::get<storage::ReadResult>(r);
  bool binary = false;
  std::size_t front = 0;
  std::string text = utf8_safe(rr.bytes, &binary, &front);
  int64_t consumed = binary ? static_cast<int64_t>(rr.bytes.size()) : static_cast<int64_t>(front + text.size());
  int64_t next = rr.offset + consumed;
  int64_t size = rr.info.size;
  json out = json::object();
  out["uri"] = storage::to_uri(where);
  out["offset"] = rr.offset + static_cast<int64_t>(front);
  out["bytes"] = consumed - static_cast<int64_t>(front);
  out["size"] = size;
  out["next_offset"] = next;
  out["truncated"] = next < size || rr.offset > 0;
  out["binary"] = binary;
  out["text"] = text;
  std::string note;
  if (binary) note = "[the file is not UTF-8 text (binary); invalid bytes are shown as U+FFFD]\n";
  if (next < size)
    note += "[truncated: " + std::to_string(size - next) + " more bytes from offset " + std::to_string(next) + "]\n";
  if (rr.offset > 0) note += "[starts at byte " + std::to_string(rr.offset + static_cast<int64_t>(front)) + " of " + std::to_string(size) + "]\n";
  co_return ToolResult::success(std::move(out), note + text);
}

}  // namespace scigate::tools
