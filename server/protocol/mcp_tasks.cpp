// The wire side of tasks, for both protocol eras, over one tasks::TaskManager:
//  - 2025-11-25 (experimental, in the core spec): the client asks with params.task; the server
//    answers {task}; tasks/get, tasks/result (blocks until terminal), tasks/list, tasks/cancel;
//    a tool result with isError makes the task "failed"; fields ttl and pollInterval;
//    notifications/tasks/status on the session's stream.
//  - 2026-07-28 (the io.modelcontextprotocol/tasks extension): the server decides for clients
//    that declare the extension per request; the answer is the task itself with resultType
//    "task"; tasks/get carries the result inline; tasks/update (no input is ever asked here) and
//    tasks/cancel answer empty; isError results complete the task; fields ttlMs and
//    pollIntervalMs; notifications/tasks on subscriptions/listen streams that name the task.
#include <boost/asio/this_coro.hpp>

#include "server/common/keyset_cursor.hpp"
#include "server/common/json_util.hpp"
#include "server/common/time_format.hpp"
#include "server/observability/log.hpp"
#include "server/protocol/mcp_dispatcher.hpp"

namespace scigate::mcp {
namespace asio = boost::asio;
using tasks::Status;
using tasks::TaskRecord;

namespace {

// tasks/list's cursor: "<created_ms>.<task id>" of the last task of the previous page.
std::optional<tasks::TaskManager::PageKey> parse_task_cursor(const json& c) {
  if (!c.is_string()) return std::nullopt;
  const std::string& s = c.get_ref<const std::string&>();
  const auto dot = s.find('.');
  if (dot == std::string::npos || dot == 0 || dot > 16) return std::nullopt;
  const std::string ms = s.substr(0, dot), id = s.substr(dot + 1);
  if (ms.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  if (id.size() != 34 || id.compare(0, 2, "t-") != 0 || id.find_first_not_of("0123456789abcdef", 2) != std::string::npos)
    return std::nullopt;
  return tasks::TaskManager::PageKey{std::stoll(ms), id};
}

// Not built inside coroutines: GCC 12 miscompiles brace-initialised json there.

json task_wire(const TaskRecord& r, bool modern, int64_t poll_ms) {
  json t = json::object();
  t["taskId"] = r.id;
  Status status = r.status;
  // 2025-11-25: "For tool calls, this includes cases where the tool call result has isError".
  if (!modern && status == Status::kCompleted && r.result_is_error)
    status = Status::kFailed;
  t["status"] = std::string(tasks::to_string(status));
  if (!r.status_message.empty()) t["statusMessage"] = r.status_message;
  t["createdAt"] = rfc3339_seconds(r.created_ms);
  t["lastUpdatedAt"] = rfc3339_seconds(r.updated_ms);
  t[modern ? "ttlMs" : "ttl"] = r.expires_ms - r.created_ms;
  if (!tasks::is_terminal(r.status)) t[modern ? "pollIntervalMs" : "pollInterval"] = poll_ms;
  return t;
}

// 2026-07-28 tasks/get and notifications/tasks: the task with its outcome inline.
json detailed_task(const TaskRecord& r, int64_t poll_ms) {
  json t = task_wire(r, true, poll_ms);
  if (r.status == Status::kCompleted && r.result.is_object()) {
    // The CallToolResult as the 2026-07-28 era shapes every result.
    json result = r.result;
    if (!result.contains("resultType")) result["resultType"] = "complete";
    t["result"] = std::move(result);
  }
  if (r.status == Status::kFailed && !r.error.is_null()) t["error"] = r.error;
  return t;
}

json create_task_result(const TaskRecord& r, bool modern, int64_t poll_ms) {
  if (modern) {
    json t = task_wire(r, true, poll_ms);
    t["resultType"] = "task";
    return t;
  }
  json out = json::object();
  out["task"] = task_wire(r, false, poll_ms);
  // What a host may hand the model at once while the task runs (2025-11-25, non-binding).
  out["_meta"]["io.modelcontextprotocol/model-immediate-response"] =
      r.tool + " is running in the background as task " + r.id + "; its result will follow.";
  return out;
}

json with_related_task(json result, const std::string& task_id) {
  if (!result.is_object()) result = json::object();
  result["_meta"][kMetaRelatedTask] = json{{"taskId", task_id}};
  return result;
}

json error_object(int code, const std::string& message) {
  json e = json::object();
  e["code"] = code;
  e["message"] = message;
  return e;
}

json progress_params(const json& token, double progress, std::optional<double> total, const std::string& message,
                     const std::string& task_id) {
  json p = json::object();
  p["progressToken"] = token;
  p["progress"] = progress;
  if (total) p["total"] = *total;
  if (!message.empty()) p["message"] = message;
  p["_meta"][kMetaRelatedTask] = json{{"taskId", task_id}};
  return p;
}

json task_list(const std::vector<TaskRecord>& records, int64_t poll_ms) {
  json a = json::array();
  for (const auto& r : records) a.push_back(task_wire(r, false, poll_ms));
  return a;
}

json subscription_notification(json params, const json& subscription_id) {
  params["_meta"][kMetaSubscriptionId] = subscription_id;
  return jsonrpc::make_notification("notifications/tasks", std::move(params));
}

}  // namespace

asio::awaitable<Outbound> Dispatcher::start_task(Inbound& in, ToolCallRequest req, bool modern,
                                                 std::optional<int64_t> ttl_ms, json progress_token) {
  const auto& msg = in.message;
  const int64_t poll_ms = tasks_->config().poll_interval.count();
  req.timeout = tasks_->config().max_duration;
  std::string owner = req.principal.owner_id();
  std::string project = req.requested_project.empty() ? req.principal.default_project() : req.requested_project;
  std::string tool = req.tool;
  std::string request_id = req.request_id;
  std::weak_ptr<LegacySession> session;
  if (!modern) session = in.session;

  // The work outlives this request: everything it needs is copied in.
  tasks::TaskManager::Work work = [this, req, progress_token, session](
                                      std::string task_id, std::shared_ptr<CancellationFlag> cancel,
                                      std::function<void(std::string)> message) {
    return run_task_call(req, progress_token, session, std::move(task_id), std::move(cancel), std::move(message));
  };
  tasks::TaskManager::Listener listener = [this, session, modern, poll_ms](const TaskRecord& r) {
    if (modern) {
      notify_task_listeners(r);
    } else if (auto s = session.lock()) {
      s->send(jsonrpc::make_notification("notifications/tasks/status", task_wire(r, false, poll_ms)));
    }
  };
  auto created = co_await tasks_->create(co_await asio::this_coro::executor, owner, project, tool, request_id, ttl_ms,
                                         std::move(work), std::move(listener));
  if (auto* e = std::get_if<Error>(&created)) {
    Outbound out{jsonrpc::make_error(msg.id, jsonrpc::kInvalidRequest, e->message + (e->hint.empty() ? "" : "; " + e->hint)),
                 200};
    co_return out;
  }
  const TaskRecord& rec = std::get<TaskRecord>(created);
  log::info("task_created", {{"task_id", rec.id}, {"tool", rec.tool}, {"principal", owner}, {"request_id", request_id}});
  // The tool call's own audit record (written when it ends) names the task.
  Outbound out{jsonrpc::make_result(msg.id, create_task_result(rec, modern, poll_ms)), 200};
  out.audited = true;
  co_return out;
}

asio::awaitable<tasks::TaskOutcome> Dispatcher::run_task_call(ToolCallRequest req, json progress_token,
                                                              std::weak_ptr<LegacySession> session,
                                                              std::string task_id,
                                                              std::shared_ptr<CancellationFlag> cancel,
                                                              std::function<void(std::string)> message) {
  req.task_id = task_id;
  req.cancellation = cancel;
  req.progress = ProgressReporter([message, progress_token, session, task_id](
                                      double progress, std::optional<double> total, const std::string& text) {
    if (!text.empty()) message(text);
    // 2025-11-25: the request's progressToken stays valid for the task's life; the request's
    // own stream is gone, so progress goes to the session's stream, if one is open.
    if (progress_token.is_null()) return;
    if (auto s = session.lock())
      s->send(jsonrpc::make_notification("notifications/progress",
                                         progress_params(progress_token, progress, total, text, task_id)));
  });
  metrics_.in_flight.fetch_add(1);
  ToolCallOutcome o = co_await pipeline_.run(std::move(req));
  metrics_.in_flight.fetch_sub(1);
  tasks::TaskOutcome out;
  if (o.protocol_error) {
    out.error = error_object(o.protocol_error->code, o.protocol_error->message);
  } else if (o.cancelled) {
    // Only tasks/cancel and shutdown cancel a task's call, and both have set its status already.
    out.error = error_object(jsonrpc::kInternalError, "the call was cancelled");
  } else {
    out.result = std::move(o.result);
  }
  co_return out;
}

asio::awaitable<Outbound> Dispatcher::tasks_request(Inbound& in, bool modern) {
  const auto& msg = in.message;
  if (!tasks_) co_return Outbound{jsonrpc::make_error(msg.id, jsonrpc::kMethodNotFound, "Method not found: " + msg.method), 404};
  if (!in.principal) co_return Outbound{jsonrpc::make_error(msg.id, jsonrpc::kInvalidRequest, "not authenticated"), 401};
  const std::string owner = in.principal->owner_id();
  const int64_t poll_ms = tasks_->config().poll_interval.count();
  auto bad = [&](const std::string& message) {
    return Outbound{jsonrpc::make_error(msg.id, jsonrpc::kInvalidParams, message), 200};
  };

  if (msg.method == "tasks/list") {
    std::optional<tasks::TaskManager::PageKey> after;
    if (msg.params.is_object() && msg.params.contains("cursor")) {
      after = parse_task_cursor(msg.params["cursor"]);
      if (!after) co_return bad("invalid cursor: pass back nextCursor unchanged");
    }
    bool more = false;
    auto page = tasks_->list(owner, after, page_size, &more);
    json r = json::object();
    r["tasks"] = task_list(page, poll_ms);
    if (json next = next_keyset_cursor(page, more); !next.is_null()) r["nextCursor"] = std::move(next);
    co_return Outbound{jsonrpc::make_result(msg.id, std::move(r)), 200};
  }

  std::string id = msg.params.is_object() ? string_member(msg.params, "taskId") : std::string();
  if (id.empty()) co_return bad(msg.method + " needs params.taskId (a string)");
  // Asked when the answer is "not found": a task retention discarded (possibly just now) says why.
  auto not_found = [&] {
    auto why = tasks_->why_missing(owner, id);
    return "Failed to retrieve task: Task not found (" + id + "; " +
           (why ? *why : std::string("it never existed, belongs to another principal, or has expired")) + ")";
  };

  if (msg.method == "tasks/get") {
    // 2026-07-28 carries the result inline: read it from the database. (Not a ?: around a
    // co_await: GCC 12 destroys its result twice.)
    std::optional<TaskRecord> r;
    if (modern) r = co_await tasks_->fetch(owner, id);
    else r = tasks_->get(owner, id);
    if (!r) co_return bad(not_found());
    co_return Outbound{jsonrpc::make_result(msg.id, modern ? detailed_task(*r, poll_ms) : task_wire(*r, false, poll_ms)),
                       200};
  }
  if (msg.method == "tasks/update") {
    // No task here ever asks for input: responses are for no outstanding request and are
    // ignored, as the extension says.
    if (!tasks_->get(owner, id)) co_return bad(not_found());
    co_return Outbound{jsonrpc::make_result(msg.id, json::object()), 200};
  }
  if (msg.method == "tasks/cancel") {
    auto c = co_await tasks_->cancel(owner, id);
    if (auto* e = std::get_if<Error>(&c)) co_return bad(e->code == ErrorCode::kNotFound ? not_found() : e->message);
    log::info("task_cancelled", {{"task_id", id}, {"principal", owner}});
    co_return Outbound{
        jsonrpc::make_result(msg.id, modern ? json::object() : task_wire(std::get<TaskRecord>(c), false, poll_ms)), 200};
  }
  // tasks/result (2025-11-25): waits for the end, then answers what the call would have.
  // notifications/cancelled stops the wait (not the task).
  auto key = track(in);
  if (!key) co_return Outbound{jsonrpc::make_error(msg.id, jsonrpc::kInvalidRequest, "request id " + msg.id.dump() + " is already in use"), 200};
  InFlightGuard tracked{*this, *key};
  auto r = co_await tasks_->wait(owner, id, in.cancellation);
  if (!r) {
    if (in.cancellation->cancelled()) co_return Outbound{std::nullopt, 200};
    co_return bad(not_found());
  }
  if (r->status == Status::kCancelled) co_return bad("task " + id + " was cancelled and has no result");
  if (r->status == Status::kFailed && !r->error.is_null()) {
    int code = r->error.value("code", jsonrpc::kInternalError);
    co_return Outbound{jsonrpc::make_error(msg.id, code, r->error.value("message", std::string("the task failed")),
                                           r->error.contains("data") ? r->error["data"] : json()),
                       200};
  }
  co_return Outbound{jsonrpc::make_result(msg.id, with_related_task(r->result, id)), 200};
}

void Dispatcher::notify_task_listeners(const TaskRecord& r) {
  const int64_t poll_ms = tasks_ ? tasks_->config().poll_interval.count() : 0;
  std::lock_guard g(listeners_mutex_);
  for (auto& [lid, l] : listeners_) {
    if (l.owner != r.owner) continue;
    if (std::find(l.task_ids.begin(), l.task_ids.end(), r.id) == l.task_ids.end()) continue;
    l.notify(subscription_notification(detailed_task(r, poll_ms), l.subscription_id));
  }
}

}  // namespace scigate::mcp
