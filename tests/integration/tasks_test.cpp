// MCP tasks through the real binary, both eras, with wait_job on the local executor: task
// creation, polling, results, cancellation, owner binding, and what a restart or a shutdown
// leaves behind.
#include <catch2/catch.hpp>

#include "job_server.hpp"
#include "server_process.hpp"
#include "tool_call.hpp"

using namespace scigate::itest;
using http::verb;

namespace {

constexpr const char* kTasksExt = "io.modelcontextprotocol/tasks";

// A 2026-07-28 request from a client that declares the tasks extension.
json tasks_request(json id, const std::string& method, json params) {
  json r = modern_request(std::move(id), method, std::move(params));
  r["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"]["extensions"][kTasksExt] = json::object();
  return r;
}

json post(Client& c, const std::string& key, const json& req, const std::string& name) {
  auto r = c.request(verb::post, "/mcp", modern_headers(key, req["method"], name), req.dump());
  INFO(r.body);
  REQUIRE(r.status == 200);
  return r.json_body();
}

json start_wait(Client& c, const std::string& key, const std::string& job_id, double timeout_s = 60) {
  auto body = post(c, key, tasks_request(2, "tools/call", {{"name", "wait_job"}, {"arguments", {{"job_id", job_id}, {"timeout_s", timeout_s}}}}),
                   "wait_job");
  INFO(body.dump());
  REQUIRE(body.contains("result"));
  return body["result"];
}

json task_get(Client& c, const std::string& key, const std::string& task_id) {
  return post(c, key, tasks_request(3, "tasks/get", {{"taskId", task_id}}), task_id);
}

// Legacy session helpers.
struct Session {
  Client& c;
  std::string key;
  std::string sid;
  json init_result;
  Session(Client& client, std::string k) : c(client), key(std::move(k)) {
    auto r = c.request(verb::post, "/mcp", legacy_headers(key), legacy_initialize().dump());
    REQUIRE(r.status == 200);
    sid = r.header("mcp-session-id");
    init_result = r.json_body()["result"];
    auto note = c.request(verb::post, "/mcp", legacy_headers(key, sid),
                          json{{"jsonrpc", "2.0"}, {"method", "notifications/initialized"}}.dump());
    REQUIRE(note.status == 202);
  }
  json call(json id, const std::string& method, json params) {
    json req{{"jsonrpc", "2.0"}, {"id", id}, {"method", method}, {"params", std::move(params)}};
    auto r = c.request(verb::post, "/mcp", legacy_headers(key, sid), req.dump());
    INFO(r.body);
    REQUIRE(r.status == 200);
    return r.json_body();
  }
};

}  // namespace

TEST_CASE("tasks 2026-07-28: wait_job becomes a task the client polls to its result") {
  JobServer js;
  Client c(js.s.port());
  const auto& key = js.s.user_key();

  // Advertised in server/discover.
  auto d = post(c, key, tasks_request(1, "server/discover", json::object()), "");
  CHECK(d["result"]["capabilities"]["extensions"].contains(kTasksExt));

  auto job = submit(c, key, {{"script", "sleep 1.5; echo done"}, {"resources", {{"walltime", "00:01:00"}}}});
  json created = start_wait(c, key, job["job_id"]);
  CHECK(created["resultType"] == "task");
  CHECK(created["status"] == "working");
  std::string task_id = created["taskId"];
  CHECK(task_id.rfind("t-", 0) == 0);
  CHECK(created["ttlMs"] == 3600000);
  CHECK(created["pollIntervalMs"] == 1000);
  CHECK_FALSE(created.contains("content"));  // a task, not a CallToolResult

  // Polled: working (with the job's state as its message), then completed with the result inline.
  auto first = task_get(c, key, task_id)["result"];
  CHECK(first["resultType"] == "complete");
  CHECK(first["taskId"] == task_id);
  json done;
  REQUIRE(eventually([&] {
    done = task_get(c, key, task_id)["result"];
    return done["status"] != "working";
  }, std::chrono::seconds(20)));
  INFO(done.dump());
  CHECK(done["status"] == "completed");
  CHECK(done["result"]["isError"] == false);
  CHECK(done["result"]["resultType"] == "complete");  // a 2026-07-28 CallToolResult
  CHECK(done["result"]["structuredContent"]["state"] == "COMPLETED");
  CHECK(done["result"]["structuredContent"]["final"] == true);
  CHECK_FALSE(done.contains("pollIntervalMs"));

  // The call's own audit record names the task.
  CHECK(js.s.wait_for_log("\"task_id\":\"" + task_id + "\""));

  // tasks/update is acknowledged (no task here asks for input).
  auto upd = post(c, key, tasks_request(4, "tasks/update", {{"taskId", task_id}, {"inputResponses", json::object()}}), task_id);
  CHECK(upd["result"]["resultType"] == "complete");
  // A finished task cannot be cancelled.
  auto late = post(c, key, tasks_request(5, "tasks/cancel", {{"taskId", task_id}}), task_id);
  CHECK(late["error"]["code"] == -32602);
  CHECK(late["error"]["message"].get<std::string>().find("already in terminal status 'completed'") != std::string::npos);

  // Another principal cannot see it: "not found", as for an id that never existed.
  auto other = task_get(c, js.bob_key, task_id);
  CHECK(other["error"]["code"] == -32602);
  CHECK(other["error"]["message"].get<std::string>().find("Task not found") != std::string::npos);
  CHECK(task_get(c, key, "t-0000")["error"]["code"] == -32602);

  // Routing headers: Mcp-Name must carry the task id.
  auto req = tasks_request(6, "tasks/get", {{"taskId", task_id}});
  auto wrong = c.request(verb::post, "/mcp", modern_headers(key, "tasks/get", "t-other"), req.dump());
  CHECK(wrong.status == 400);
  CHECK(wrong.json_body()["error"]["code"] == -32020);

  // The extension's methods need the extension declared on the request.
  auto undeclared = modern_request(8, "tasks/get", {{"taskId", task_id}});
  auto u = c.request(verb::post, "/mcp", modern_headers(key, "tasks/get", task_id), undeclared.dump());
  CHECK(u.status == 400);  // the 2026-07-28 spec: MissingRequiredClientCapability is 400 on HTTP
  CHECK(u.json_body()["error"]["code"] == -32021);
  CHECK(u.json_body()["error"]["data"]["requiredCapabilities"]["extensions"].contains(kTasksExt));

  // Without the extension the same call answers inline.
  auto inline_result = call_tool(c, key, "wait_job", {{"job_id", job["job_id"]}, {"timeout_s", 5}});
  CHECK(inline_result["structuredContent"]["state"] == "COMPLETED");
}

TEST_CASE("tasks 2026-07-28: tasks/cancel stops the wait, and a refused call completes its task with isError") {
  JobServer js;
  Client c(js.s.port());
  const auto& key = js.s.user_key();
  auto job = submit(c, key, {{"script", "sleep 30"}, {"resources", {{"walltime", "00:01:00"}}}});
  json created = start_wait(c, key, job["job_id"], 600);
  std::string task_id = created["taskId"];
  REQUIRE(eventually([&] {
    auto g = task_get(c, key, task_id)["result"];
    return g.value("statusMessage", "").find("is ACTIVE") != std::string::npos;
  }));
  auto ack = post(c, key, tasks_request(7, "tasks/cancel", {{"taskId", task_id}}), task_id);
  CHECK(ack["result"]["resultType"] == "complete");
  auto g = task_get(c, key, task_id)["result"];
  CHECK(g["status"] == "cancelled");
  CHECK_FALSE(g.contains("result"));
  // The job itself is untouched: cancelling a wait is not cancelling the job.
  CHECK(call_tool(c, key, "get_job", {{"job_id", job["job_id"]}})["structuredContent"]["state"] == "ACTIVE");
  CHECK(call_tool(c, key, "cancel_job", {{"job_id", job["job_id"]}})["isError"] == false);

  // Governance runs inside the task: an unknown job is a tool error, and the task completes
  // with it (2026-07-28: isError results complete a task).
  json bad = start_wait(c, key, "j-000000000000");
  json end;
  REQUIRE(eventually([&] {
    end = task_get(c, key, bad["taskId"])["result"];
    return end["status"] != "working";
  }));
  CHECK(end["status"] == "completed");
  CHECK(end["result"]["isError"] == true);
}

TEST_CASE("tasks 2025-11-25: params.task, tasks/list, tasks/result and the tool-level rules") {
  JobServer js;
  Client c(js.s.port());
  Session s(c, js.s.user_key());
  auto caps = s.init_result["capabilities"]["tasks"];
  CHECK(caps.contains("list"));
  CHECK(caps.contains("cancel"));
  CHECK(caps["requests"]["tools"].contains("call"));

  auto tools = s.call(2, "tools/list", json::object())["result"]["tools"];
  bool seen = false;
  for (const auto& t : tools) {
    if (t["name"] == "wait_job") {
      seen = true;
      CHECK(t["execution"]["taskSupport"] == "optional");
    }
    if (t["name"] == "submit_job") CHECK_FALSE(t.contains("execution"));
  }
  CHECK(seen);

  auto job = submit(c, js.s.user_key(), {{"script", "sleep 1; exit 3"}, {"resources", {{"walltime", "00:01:00"}}}});
  auto created = s.call(3, "tools/call",
                        {{"name", "wait_job"}, {"arguments", {{"job_id", job["job_id"]}}}, {"task", {{"ttl", 60000}}}});
  INFO(created.dump());
  auto task = created["result"]["task"];
  std::string task_id = task["taskId"];
  CHECK(task["status"] == "working");
  CHECK(task["ttl"] == 60000);
  CHECK(task.contains("pollInterval"));
  CHECK(created["result"]["_meta"].contains("io.modelcontextprotocol/model-immediate-response"));

  auto listed = s.call(4, "tasks/list", json::object())["result"]["tasks"];
  REQUIRE(listed.size() == 1);
  CHECK(listed[0]["taskId"] == task_id);

  // tasks/result blocks until the end and answers what the call would have, tagged.
  auto t0 = std::chrono::steady_clock::now();
  auto result = s.call(5, "tasks/result", {{"taskId", task_id}})["result"];
  CHECK(std::chrono::steady_clock::now() - t0 > std::chrono::milliseconds(300));
  CHECK(result["structuredContent"]["state"] == "FAILED");
  CHECK(result["structuredContent"]["exit_code"] == 3);
  CHECK(result["_meta"]["io.modelcontextprotocol/related-task"]["taskId"] == task_id);
  auto got = s.call(6, "tasks/get", {{"taskId", task_id}})["result"];
  CHECK(got["status"] == "completed");  // the job failed; the call that waited for it did not

  // Tool-level negotiation: submit_job may not run as a task.
  auto refused = s.call(7, "tools/call",
                        {{"name", "submit_job"}, {"arguments", {{"script", "true"}}}, {"task", json::object()}});
  CHECK(refused["error"]["code"] == -32601);
  auto cancel_done = s.call(8, "tasks/cancel", {{"taskId", task_id}});
  CHECK(cancel_done["error"]["code"] == -32602);

  // Cancelling a running task answers the task, cancelled; tasks/result then has no result.
  auto long_job = submit(c, js.s.user_key(), {{"script", "sleep 30"}, {"resources", {{"walltime", "00:01:00"}}}});
  auto t2 = s.call(9, "tools/call",
                   {{"name", "wait_job"}, {"arguments", {{"job_id", long_job["job_id"]}, {"timeout_s", 600}}}, {"task", json::object()}});
  std::string id2 = t2["result"]["task"]["taskId"];
  auto cancelled = s.call(10, "tasks/cancel", {{"taskId", id2}})["result"];
  CHECK(cancelled["status"] == "cancelled");
  CHECK(s.call(11, "tasks/result", {{"taskId", id2}})["error"]["code"] == -32602);
  CHECK(call_tool(c, js.s.user_key(), "cancel_job", {{"job_id", long_job["job_id"]}})["isError"] == false);

  // A TTL too large to be an integer gets the most the server allows (7 days), not 1 s.
  auto huge = s.call(12, "tools/call",
                     {{"name", "wait_job"}, {"arguments", {{"job_id", job["job_id"]}}}, {"task", {{"ttl", 1e19}}}});
  INFO(huge.dump());
  CHECK(huge["result"]["task"]["ttl"] == 7 * 86400 * 1000LL);

  // Another principal's session sees none of these.
  Session bob(c, js.bob_key);
  CHECK(bob.call(2, "tasks/list", json::object())["result"]["tasks"].empty());
  CHECK(bob.call(3, "tasks/get", {{"taskId", task_id}})["error"]["code"] == -32602);
}

TEST_CASE("tasks: a shutdown fails running tasks with a reason, and a crash is reported after restart") {
  JobServer js;
  Client c(js.s.port());
  const auto& key = js.s.user_key();
  auto job = submit(c, key, {{"script", "sleep 60"}, {"resources", {{"walltime", "00:02:00"}}}});
  std::string graceful = start_wait(c, key, job["job_id"], 600)["taskId"];
  c.close();
  REQUIRE(js.s.stop() == 0);  // SIGTERM: the task is failed and its call stopped and audited
  js.s.start();
  Client c2(js.s.port());
  auto g = task_get(c2, key, graceful)["result"];
  INFO(g.dump());
  CHECK(g["status"] == "failed");
  CHECK(g["error"]["code"] == -32603);
  CHECK(g["statusMessage"].get<std::string>().find("shut down") != std::string::npos);

  std::string crashed = start_wait(c2, key, job["job_id"], 600)["taskId"];
  c2.close();
  js.s.kill_hard();
  js.s.start();
  Client c3(js.s.port());
  auto k = task_get(c3, key, crashed)["result"];
  INFO(k.dump());
  CHECK(k["status"] == "failed");
  CHECK(k["statusMessage"].get<std::string>().find("restarted") != std::string::npos);
  // The job outlived both servers; once cancelled, nothing stays held.
  CHECK(call_tool(c3, key, "cancel_job", {{"job_id", job["job_id"]}})["isError"] == false);
  REQUIRE(eventually([&] {
    return call_tool(c3, key, "get_usage", json::object())["structuredContent"]["held"].get<double>() == 0;
  }));
}
