#include "server/protocol/mcp_dispatcher.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>

#include "scigate/version.hpp"
#include "server/common/crypto.hpp"
#include "server/common/json_util.hpp"
#include "server/observability/log.hpp"

namespace scigate::mcp {
namespace asio = boost::asio;

const std::vector<std::string>& supported_versions() {
  static const std::vector<std::string> kVersions = {kModernVersion, "2025-11-25", "2025-06-18", "2025-03-26"};
  return kVersions;
}

bool is_legacy_version(const std::string& v) {
  const auto& all = supported_versions();
  return v != kModernVersion && std::find(all.begin(), all.end(), v) != all.end();
}

namespace {

Outbound error(const json& id, int code, std::string message, int http_status = 200, json data = nullptr) {
  return Outbound{jsonrpc::make_error(id, code, message, data), http_status};
}

Outbound result(const json& id, json r) { return Outbound{jsonrpc::make_result(id, std::move(r)), 200}; }

Outbound accepted() { return Outbound{std::nullopt, 202}; }

// The data of a -32021 answer naming the tasks extension (on HTTP with 400 Bad Request, as the
// 2026-07-28 spec requires: dual-era clients read the 400 to tell the eras apart). Not built inside a coroutine: GCC 12
// miscompiles brace-initialised json there.
json tasks_extension_required() {
  json ext = json::object();
  ext[kTasksExtension] = json::object();
  json data = json::object();
  data["requiredCapabilities"]["extensions"] = std::move(ext);
  return data;
}

// Whether this 2026-07-28 request's client capabilities declare the tasks extension.
bool declares_tasks(const json& meta) {
  json ext = object_member(object_member(meta, kMetaClientCapabilities), "extensions");
  auto it = ext.find(kTasksExtension);
  return it != ext.end() && it->is_object();
}

std::string in_flight_key(const std::string& channel, const json& id) { return channel + "|" + id.dump(); }

// Cursors are opaque to clients; inside they are a base64 offset so a forged one is just a
// bad offset, which is checked.
std::string make_cursor(std::size_t offset) { return crypto::base64_encode("o:" + std::to_string(offset)); }

std::optional<std::size_t> read_cursor(const json& params) {
  if (!params.is_object() || !params.contains("cursor")) return 0;
  const json& c = params["cursor"];
  if (!c.is_string()) return std::nullopt;
  auto raw = crypto::base64_decode(c.get<std::string>());
  if (!raw || raw->rfind("o:", 0) != 0 || raw->size() > 12) return std::nullopt;
  std::size_t off = 0;
  for (char ch : raw->substr(2)) {
    if (ch < '0' || ch > '9') return std::nullopt;
    off = off * 10 + static_cast<std::size_t>(ch - '0');
  }
  return off;
}

}  // namespace

Dispatcher::Dispatcher(const Config& config, ToolCallPipeline& pipeline, const ToolRegistry& registry,
                       const PolicyEngine& policy, Metrics& metrics, tasks::TaskManager* tasks)
    : config_(config), pipeline_(pipeline), registry_(registry), policy_(policy), metrics_(metrics), tasks_(tasks) {}

json Dispatcher::server_info() const {
  return json{{"name", config_.server_name}, {"title", "scigate research computing gateway"}, {"version", kVersion}};
}

json Dispatcher::capabilities(const std::string& version) const {
  json c = json::object();
  c["tools"] = json{{"listChanged", true}};
  if (tasks_ && version == kModernVersion) {
    c["extensions"][kTasksExtension] = json::object();
  } else if (tasks_ && version == kLatestLegacyVersion) {
    // 2025-11-25's experimental tasks: tools/call may be task-augmented; tasks can be listed
    // and cancelled.
    json requests = json::object();
    requests["tools"]["call"] = json::object();
    c["tasks"] = json{{"list", json::object()}, {"cancel", json::object()}, {"requests", requests}};
  }
  return c;
}

asio::awaitable<Outbound> Dispatcher::handle(Inbound in) {
  std::string failure;
  try {
    co_return co_await route(in);
  } catch (const std::exception& e) {
    failure = e.what();
  }
  // Only a bug gets here. The caller learns that, and a correlation id; the log learns the rest.
  std::string correlation = crypto::request_id();
  log::error("request_failed", {{"request_id", correlation}, {"method", in.message.method}, {"detail", failure}});
  if (in.message.kind != jsonrpc::Kind::kRequest) co_return accepted();
  co_return error(in.message.id, jsonrpc::kInternalError, "internal error (correlation id " + correlation + ")", 500);
}

asio::awaitable<Outbound> Dispatcher::route(Inbound& in) {
  const auto& msg = in.message;
  if (msg.kind == jsonrpc::Kind::kResponse) co_return accepted();  // we send no requests; nothing to match
  metrics_.record_rpc(msg.method);
  const json* meta = nullptr;
  if (msg.params.is_object())
    if (auto it = msg.params.find("_meta"); it != msg.params.end() && it->is_object()) meta = &*it;
  if (meta && meta->contains(kMetaProtocolVersion)) {
    const json& v = (*meta)[kMetaProtocolVersion];
    if (!v.is_string())
      co_return error(msg.id, jsonrpc::kInvalidParams, std::string("_meta.") + kMetaProtocolVersion + " must be a string",
                      400);
    co_return co_await handle_modern(in, v.get<std::string>(), *meta);
  }
  if (msg.method == "server/discover")
    co_return error(msg.id, jsonrpc::kInvalidParams,
                    std::string("server/discover needs params._meta with \"") + kMetaProtocolVersion +
                        "\" and \"" + kMetaClientCapabilities + "\"",
                    400);
  co_return co_await handle_legacy(in);
}

asio::awaitable<Outbound> Dispatcher::handle_modern(Inbound& in, const std::string& version, const json& meta) {
  const auto& msg = in.message;
  if (msg.kind == jsonrpc::Kind::kNotification) {
    if (msg.method == "notifications/cancelled" && msg.params.contains("requestId"))
      cancel_request(in.channel, msg.params["requestId"]);
    co_return accepted();
  }
  if (version != kModernVersion) {
    co_return error(msg.id, kUnsupportedProtocolVersion, "Unsupported protocol version", 400,
                    json{{"supported", supported_versions()}, {"requested", version}});
  }
  auto caps = meta.find(kMetaClientCapabilities);
  if (caps == meta.end() || !caps->is_object())
    co_return error(msg.id, jsonrpc::kInvalidParams,
                    std::string("missing required _meta field \"") + kMetaClientCapabilities + "\" (an object)", 400);
  std::string client_name;
  client_name = string_member(object_member(meta, kMetaClientInfo), "name");

  Outbound out;
  if (msg.method == "server/discover") {
    json r{{"supportedVersions", supported_versions()}, {"capabilities", capabilities(version)}, {"ttlMs", 3600000},
           {"cacheScope", "public"}};
    if (!config_.instructions.empty()) r["instructions"] = config_.instructions;
    out = result(msg.id, std::move(r));
  } else if (msg.method == "tools/list") {
    out = tools_list(in, true);
  } else if (msg.method == "tools/call") {
    out = co_await tools_call(in, version, client_name, meta);
  } else if (msg.method == "subscriptions/listen") {
    out = co_await subscriptions_listen(in, meta);
  } else if (msg.method == "tasks/get" || msg.method == "tasks/update" || msg.method == "tasks/cancel") {
    // The extension's methods exist only for clients that declare it on the request.
    if (!tasks_) co_return error(msg.id, jsonrpc::kMethodNotFound, "Method not found: " + msg.method, 404);
    if (!declares_tasks(meta))
      co_return error(msg.id, kMissingRequiredClientCapability,
                      std::string("Missing required client capability: ") + msg.method + " needs the " +
                          kTasksExtension + " extension in this request's client capabilities",
                      400, tasks_extension_required());
    out = co_await tasks_request(in, true);
  } else {
    co_return error(msg.id, jsonrpc::kMethodNotFound, "Method not found: " + msg.method, 404);
  }
  if (out.response && out.response->contains("result")) {
    json& r = (*out.response)["result"];
    if (!r.contains("resultType")) r["resultType"] = "complete";  // "task" for a CreateTaskResult
    r["_meta"][kMetaServerInfo] = server_info();
  }
  co_return out;
}

asio::awaitable<Outbound> Dispatcher::handle_legacy(Inbound& in) {
  const auto& msg = in.message;
  auto& session = in.session;
  if (!session) co_return error(msg.id, jsonrpc::kInvalidRequest, "no MCP session: send initialize first", 400);
  session->touch();
  if (msg.kind == jsonrpc::Kind::kNotification) {
    if (msg.method == "notifications/cancelled" && msg.params.contains("requestId"))
      cancel_request(in.channel, msg.params["requestId"]);
    co_return accepted();
  }
  if (msg.method == "initialize") co_return initialize(in);
  if (msg.method == "ping") co_return result(msg.id, json::object());
  if (!session->initialized())
    co_return error(msg.id, jsonrpc::kInvalidRequest,
                    "the session is not initialized: send initialize first, or use protocol 2026-07-28 with "
                    "params._meta",
                    400);
  if (msg.method == "tools/list") co_return tools_list(in, false);
  if (msg.method == "tools/call") {
    json meta = object_member(msg.params, "_meta");
    co_return co_await tools_call(in, session->version(), session->client_name(), meta);
  }
  if (msg.method == "tasks/get" || msg.method == "tasks/result" || msg.method == "tasks/list" ||
      msg.method == "tasks/cancel")
    if (tasks_ && session->version() == kLatestLegacyVersion) co_return co_await tasks_request(in, false);
  co_return error(msg.id, jsonrpc::kMethodNotFound, "Method not found: " + msg.method);
}

Outbound Dispatcher::initialize(Inbound& in) {
  const auto& msg = in.message;
  const json& p = msg.params;
  if (!p.is_object() || !p.contains("protocolVersion") || !p["protocolVersion"].is_string())
    return error(msg.id, jsonrpc::kInvalidParams, "initialize needs params.protocolVersion (a string)");
  std::string requested = p["protocolVersion"].get<std::string>();
  // Version negotiation: echo a version we speak, else offer our latest of this era.
  std::string chosen = is_legacy_version(requested) ? requested : kLatestLegacyVersion;
  in.session->initialize(chosen, string_member(object_member(p, "clientInfo"), "name"));
  json r{{"protocolVersion", chosen}, {"capabilities", capabilities(chosen)}, {"serverInfo", server_info()}};
  if (!config_.instructions.empty()) r["instructions"] = config_.instructions;
  return result(msg.id, std::move(r));
}

Outbound Dispatcher::tools_list(const Inbound& in, bool modern) {
  const auto& msg = in.message;
  auto offset = read_cursor(msg.params);
  if (!offset) return error(msg.id, jsonrpc::kInvalidParams, "invalid cursor: pass back nextCursor unchanged");
  std::vector<Tool*> visible;
  for (Tool* t : registry_.tools())
    if (!in.principal || pipeline_.visible(*in.principal, *t)) visible.push_back(t);
  if (*offset > visible.size()) return error(msg.id, jsonrpc::kInvalidParams, "invalid cursor: past the end of the list");
  json tools = json::array();
  std::size_t end = std::min(visible.size(), *offset + page_size);
  for (std::size_t i = *offset; i < end; ++i) {
    json t = ToolRegistry::to_wire(visible[i]->descriptor());
    if (!tasks_) t.erase("execution");  // no task may be started here
    tools.push_back(std::move(t));
  }
  json r{{"tools", std::move(tools)}};
  if (end < visible.size()) r["nextCursor"] = make_cursor(end);
  if (modern) {
    // The list depends on who asks, so shared caches must not keep it.
    r["ttlMs"] = 60000;
    r["cacheScope"] = "private";
  }
  return result(msg.id, std::move(r));
}

asio::awaitable<Outbound> Dispatcher::tools_call(Inbound& in, const std::string& version,
                                                 const std::string& client_name, const json& meta) {
  const auto& msg = in.message;
  const json& p = msg.params;
  if (!p.is_object() || !p.contains("name") || !p["name"].is_string())
    co_return error(msg.id, jsonrpc::kInvalidParams, "tools/call needs params.name (a string)");
  json args = json::object();
  if (auto a = p.find("arguments"); a != p.end() && !a->is_null()) {
    if (!a->is_object()) co_return error(msg.id, jsonrpc::kInvalidParams, "params.arguments must be an object");
    args = *a;
  }
  if (!in.principal) co_return error(msg.id, jsonrpc::kInvalidRequest, "not authenticated");

  ToolCallRequest req;
  req.tool = p["name"].get<std::string>();
  req.arguments = std::move(args);
  req.principal = *in.principal;
  if (auto pj = meta.find(kMetaProject); pj != meta.end() && pj->is_string()) req.requested_project = *pj;
  else req.requested_project = in.project_header;
  if (auto ik = meta.find(kMetaIdempotencyKey); ik != meta.end() && ik->is_string()) req.idempotency_key = *ik;
  else req.idempotency_key = in.idempotency_header;
  if (req.idempotency_key.size() > kMaxIdempotencyKeyChars)
    co_return error(msg.id, jsonrpc::kInvalidParams,
                    "the idempotency key is longer than " + std::to_string(kMaxIdempotencyKeyChars) + " characters");
  req.request_id = crypto::request_id();
  req.protocol_version = version;
  req.era = version == kModernVersion ? kModernVersion : kLatestLegacyVersion;
  req.client_name = client_name;
  req.cancellation = in.cancellation;

  // Run as a task? 2025-11-25: when the client asks (params.task) and the tool allows it.
  // 2026-07-28: the server decides, for clients that declare the tasks extension on this request:
  // every call of a tool that supports tasks becomes one.
  if (tasks_) {
    const bool modern = version == kModernVersion;
    const Tool* tool = registry_.find(req.tool);
    const TaskSupport support =
        tool && pipeline_.visible(req.principal, *tool) ? tool->descriptor().task_support : TaskSupport::kForbidden;
    std::optional<int64_t> ttl;
    bool as_task = false;
    if (modern) {
      bool declared = declares_tasks(meta);
      if (support == TaskSupport::kRequired && !declared)
        co_return error(msg.id, kMissingRequiredClientCapability,
                        "Missing required client capability: " + req.tool + " runs only as a task; declare the " +
                            kTasksExtension + " extension in this request's client capabilities",
                        400, tasks_extension_required());
      as_task = declared && support != TaskSupport::kForbidden;
    } else if (version == kLatestLegacyVersion) {
      auto t = p.find("task");
      bool requested = t != p.end() && t->is_object();
      if (requested && support == TaskSupport::kForbidden && tool)
        co_return error(msg.id, jsonrpc::kMethodNotFound,
                        req.tool + " does not support task-augmented execution: call it without params.task");
      if (!requested && support == TaskSupport::kRequired)
        co_return error(msg.id, jsonrpc::kMethodNotFound,
                        req.tool + " runs only as a task: call it with params.task (tasks capability)");
      as_task = requested && support != TaskSupport::kForbidden;
      if (as_task)
        if (auto ttl_it = t->find("ttl"); ttl_it != t->end() && ttl_it->is_number() && ttl_it->get<double>() >= 0)
          // Clamped as a double: a cast of 1e19 is undefined (INT64_MIN on x86-64, then 1 s).
          ttl = static_cast<int64_t>(std::min(ttl_it->get<double>(), 9.0e15));
    }
    if (as_task) {
      json token = meta.contains("progressToken") ? meta["progressToken"] : json();
      co_return co_await start_task(in, std::move(req), modern, ttl, std::move(token));
    }
  }

  if (auto tok = meta.find("progressToken"); tok != meta.end() && (tok->is_string() || tok->is_number_integer()) &&
                                             in.notify) {
    json token = *tok;
    Notifier notify = in.notify;
    req.progress = ProgressReporter([token, notify](double progress, std::optional<double> total,
                                                    const std::string& message) {
      json params{{"progressToken", token}, {"progress", progress}};
      if (total) params["total"] = *total;
      if (!message.empty()) params["message"] = message;
      notify(jsonrpc::make_notification("notifications/progress", std::move(params)));
    });
  }

  auto key = track(in);
  if (!key) co_return error(msg.id, jsonrpc::kInvalidRequest, "request id " + msg.id.dump() + " is already in use");
  InFlightGuard tracked{*this, *key};
  // Undone however the call ends, exceptions included.
  struct Gauge {
    Metrics& m;
    ~Gauge() { m.in_flight.fetch_sub(1); }
  } gauge{metrics_};
  metrics_.in_flight.fetch_add(1);
  ToolCallOutcome outcome = co_await pipeline_.run(std::move(req));
  Outbound out;
  if (outcome.cancelled) {
    out = Outbound{std::nullopt, 200};
  } else if (outcome.protocol_error) {
    auto e = *outcome.protocol_error;
    out = error(msg.id, e.code, e.message);
  } else {
    out = result(msg.id, std::move(outcome.result));
  }
  out.audited = true;
  co_return out;
}

asio::awaitable<Outbound> Dispatcher::subscriptions_listen(Inbound& in, const json& meta) {
  const auto& msg = in.message;
  if (!in.notify)
    co_return error(msg.id, jsonrpc::kInvalidRequest,
                    "subscriptions/listen needs a streaming response: send Accept: text/event-stream");
  json filter = object_member(msg.params, "notifications");
  json acknowledged = json::object();
  bool tools = bool_member(filter, "toolsListChanged");
  if (tools) acknowledged["toolsListChanged"] = true;  // the only list this server has
  std::vector<std::string> task_ids;
  std::string owner = in.principal ? in.principal->owner_id() : std::string();
  if (auto t = filter.find("taskIds"); t != filter.end() && t->is_array() && !t->empty()) {
    bool declared = declares_tasks(meta);
    if (!tasks_ || !declared)
      co_return error(msg.id, kMissingRequiredClientCapability,
                      std::string("Missing required client capability: task notifications need the ") + kTasksExtension +
                          " extension in this request's client capabilities",
                      400, tasks_extension_required());
    // Only the caller's own, live tasks; the others are left out of the acknowledgement.
    for (const auto& id : *t)
      if (id.is_string() && task_ids.size() < 1000 && tasks_->get(owner, id.get<std::string>()))
        task_ids.push_back(id.get<std::string>());
    acknowledged["taskIds"] = task_ids;
  }

  auto key = track(in);
  if (!key) co_return error(msg.id, jsonrpc::kInvalidRequest, "request id " + msg.id.dump() + " is already in use");
  InFlightGuard tracked{*this, *key};  // notifications/cancelled ends the stream
  auto executor = co_await asio::this_coro::executor;
  auto timer = std::make_shared<asio::steady_timer>(executor, asio::steady_timer::time_point::max());
  auto closed = std::make_shared<std::atomic<bool>>(false);
  uint64_t listener_id;
  {
    std::lock_guard g(listeners_mutex_);
    listener_id = next_listener_++;
    listeners_[listener_id] = Listener{in.notify, msg.id, tools,
                                       [timer, closed] {
                                         closed->store(true);
                                         asio::post(timer->get_executor(), [timer] { timer->cancel(); });
                                       },
                                       owner, task_ids};
  }
  in.notify(jsonrpc::make_notification(
      "notifications/subscriptions/acknowledged",
      json{{"_meta", {{kMetaSubscriptionId, msg.id}}}, {"notifications", acknowledged}}));
  try {
    co_await timer->async_wait(asio::use_awaitable);
  } catch (const boost::system::system_error&) {
  }
  {
    std::lock_guard g(listeners_mutex_);
    listeners_.erase(listener_id);
  }
  if (!closed->load()) co_return Outbound{std::nullopt, 200};  // the client went away: no response
  co_return result(msg.id, json{{"_meta", {{kMetaSubscriptionId, msg.id}}}});
}

void Dispatcher::close_subscriptions() {
  std::lock_guard g(listeners_mutex_);
  for (auto& [id, l] : listeners_) l.close();
}

void Dispatcher::broadcast_tools_changed() {
  {
    std::lock_guard g(listeners_mutex_);
    for (auto& [id, l] : listeners_)
      if (l.tools)
        l.notify(jsonrpc::make_notification("notifications/tools/list_changed",
                                            json{{"_meta", {{kMetaSubscriptionId, l.subscription_id}}}}));
  }
  if (on_tools_changed_legacy) on_tools_changed_legacy();
}

std::optional<std::string> Dispatcher::track(const Inbound& in) {
  if (in.channel.empty()) return std::string();
  std::string key = in_flight_key(in.channel, in.message.id);
  std::lock_guard g(in_flight_mutex_);
  if (!in_flight_.emplace(key, in.cancel ? in.cancel : [] {}).second) return std::nullopt;
  return key;
}

void Dispatcher::cancel_request(const std::string& channel, const json& request_id) {
  if (channel.empty()) return;
  std::function<void()> cancel;
  {
    std::lock_guard g(in_flight_mutex_);
    auto it = in_flight_.find(in_flight_key(channel, request_id));
    if (it == in_flight_.end()) return;  // unknown or finished: MAY be ignored
    cancel = it->second;
  }
  cancel();
}

}  // namespace scigate::mcp
