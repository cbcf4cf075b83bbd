#pragma once
// JSON-RPC 2.0 framing: parsing one message with size and depth limits, classifying it, and
// building responses. Knows nothing of MCP.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace scigate::jsonrpc {

using nlohmann::json;

inline constexpr int kParseError = -32700;
inline constexpr int kInvalidRequest = -32600;
inline constexpr int kMethodNotFound = -32601;
inline constexpr int kInvalidParams = -32602;
inline constexpr int kInternalError = -32603;

struct Limits {
  std::size_t max_message_bytes = 4 * 1024 * 1024;
  int max_depth = 64;
};

enum class Kind { kRequest, kNotification, kResponse };

struct Message {
  Kind kind = Kind::kRequest;
  json id;             // string or integer for requests and responses; null for notifications
  std::string method;  // empty for responses
  json params;         // always an object for requests and notifications (empty when absent)
  json raw;            // the whole message
};

// A protocol-level failure to report back: code, a message for the caller, and the id when it
// could be recovered (null otherwise).
struct ProtocolError {
  int code;
  std::string message;
  json id;
  json data;
};

// Either a message or the error that describes why the bytes are not one. Never throws.
struct ParseResult {
  std::optional<Message> message;
  std::optional<ProtocolError> error;
};

ParseResult parse(std::string_view text, const Limits& limits);
// Whether JSON text nests at most `max_depth` arrays and objects deep (checked on the bytes,
// before any parser sees them). For other JSON bodies the server reads (/v1/...).
bool depth_within(std::string_view text, int max_depth);

json make_result(const json& id, json result);
json make_error(const json& id, int code, std::string_view message, const json& data = nullptr);
json make_error(const ProtocolError& e);
json make_notification(std::string_view method, json params);

// Serialises without throwing: invalid UTF-8 from a tool is replaced rather than aborting a
// response half-way.
std::string dump(const json& j);

}  // namespace scigate::jsonrpc
