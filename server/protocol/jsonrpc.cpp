#include "server/protocol/jsonrpc.hpp"

namespace scigate::jsonrpc {

// Depth is checked on the raw bytes before parsing so that a hostile 1e6-deep array never
// reaches the recursive parser. Strings are skipped so brackets inside them do not count.
bool depth_within(std::string_view text, int max_depth) {
  int depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    else if (c == '[' || c == '{') {
      if (++depth > max_depth) return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}

namespace {

bool valid_id(const json& id) { return id.is_string() || id.is_number_integer() || id.is_number_unsigned(); }

ProtocolError invalid(std::string message, json id = nullptr) {
  return {kInvalidRequest, std::move(message), std::move(id), nullptr};
}

}  // namespace

ParseResult parse(std::string_view text, const Limits& limits) {
  ParseResult r;
  if (text.size() > limits.max_message_bytes) {
    r.error = invalid("message of " + std::to_string(text.size()) + " bytes exceeds the limit of " +
                      std::to_string(limits.max_message_bytes) + " bytes");
    return r;
  }
  if (!depth_within(text, limits.max_depth)) {
    r.error = invalid("message nests deeper than " + std::to_string(limits.max_depth) + " levels");
    return r;
  }
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    // nlohmann also rejects invalid UTF-8 inside strings here.
    r.error = ProtocolError{kParseError, "Parse error: the body is not valid JSON (or not valid UTF-8)", nullptr, nullptr};
    return r;
  }
  if (j.is_array()) {
    r.error = invalid("JSON-RPC batches are not supported; send one message per request");
    return r;
  }
  if (!j.is_object()) {
    r.error = invalid("a JSON-RPC message must be an object");
    return r;
  }
  json id = nullptr;
  if (auto it = j.find("id"); it != j.end()) {
    if (!valid_id(*it)) {
      r.error = invalid("\"id\" must be a string or an integer (null is not allowed)");
      return r;
    }
    id = *it;
  }
  auto jv = j.find("jsonrpc");
  if (jv == j.end() || *jv != "2.0") {
    r.error = invalid("\"jsonrpc\" must be \"2.0\"", id);
    return r;
  }
  Message m;
  m.id = id;
  auto method = j.find("method");
  if (method != j.end()) {
    if (!method->is_string() || method->get_ref<const std::string&>().empty()) {
      r.error = invalid("\"method\" must be a non-empty string", id);
      return r;
    }
    m.method = method->get<std::string>();
    m.kind = j.contains("id") ? Kind::kRequest : Kind::kNotification;
    m.params = json::object();  // absent params read as empty, so handlers need not null-check
    if (auto p = j.find("params"); p != j.end() && !p->is_null()) {
      if (!p->is_object()) {
        // MCP only uses by-name params; by-position arrays are a malformed request here.
        if (m.kind == Kind::kRequest) {
          r.error = ProtocolError{kInvalidParams, "\"params\" must be an object", id, nullptr};
          return r;
        }
      } else {
        m.params = *p;
      }
    }
  } else if (j.contains("result") || j.contains("error")) {
    if (!j.contains("id")) {
      r.error = invalid("a response must carry an \"id\"");
      return r;
    }
    m.kind = Kind::kResponse;
  } else {
    r.error = invalid("a JSON-RPC message needs a \"method\" (request or notification) or a \"result\"/\"error\"", id);
    return r;
  }
  m.raw = std::move(j);
  r.message = std::move(m);
  return r;
}

json make_result(const json& id, json result) {
  return json{{"jsonrpc", "2.0"}, {"id", id}, {"result", std::move(result)}};
}

json make_error(const json& id, int code, std::string_view message, const json& data) {
  json err{{"code", code}, {"message", message}};
  if (!data.is_null()) err["data"] = data;
  json out{{"jsonrpc", "2.0"}, {"error", std::move(err)}};
  // JSON-RPC puts "id": null on errors whose id could not be read; MCP's schema drops the member.
  if (!id.is_null()) out["id"] = id;
  return out;
}

json make_error(const ProtocolError& e) { return make_error(e.id, e.code, e.message, e.data); }

json make_notification(std::string_view method, json params) {
  json n{{"jsonrpc", "2.0"}, {"method", method}};
  if (!params.is_null()) n["params"] = std::move(params);
  return n;
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace scigate::jsonrpc
