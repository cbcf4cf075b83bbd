#pragma once
// Tasks: tool calls that run in the background and are followed by polling (the MCP tasks
// extension, io.modelcontextprotocol/tasks, and the experimental tasks of 2025-11-25; the wire
// formats of both live in the dispatcher, docs/PROTOCOL.md "Tasks").
//
// A task is created durably (its row committed) before the caller learns its id, runs its work
// on a strand of its own, and keeps its final result until it expires. Tasks are bound to the
// principal that created them: every lookup takes the owner, and another principal's task is
// "not found", never "forbidden", so ids cannot be probed.
//
// The work is the ordinary tool-call pipeline, so governance is the same as for an inline call;
// the task only changes who waits. Work cut short by a restart or a shutdown is failed with a
// message that says so: holds of the call are voided by the ledger's own recovery.
//
// Thread-safety: every public member may be called from any thread.
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "server/common/error.hpp"
#include "server/config/config.hpp"
#include "server/pipeline/call_context.hpp"
#include "server/state/db_worker.hpp"

namespace scigate::tasks {

using nlohmann::json;

enum class Status { kWorking, kInputRequired, kCompleted, kFailed, kCancelled };
std::string_view to_string(Status s);
std::optional<Status> status_from_string(std::string_view s);
inline bool is_terminal(Status s) { return s == Status::kCompleted || s == Status::kFailed || s == Status::kCancelled; }

struct TaskRecord {
  std::string id;
  std::string owner;
  std::string project;
  std::string tool;
  std::string request_id;
  Status status = Status::kWorking;
  std::string status_message;
  int64_t created_ms = 0;
  int64_t updated_ms = 0;
  int64_t expires_ms = 0;  // may be deleted after this once terminal (ttl = expires - created)
  json result;             // the CallToolResult, when completed (see TaskManager::fetch)
  json error;              // the JSON-RPC error object, when failed
  bool result_is_error = false;  // the result's isError, known without loading the result
  int64_t result_bytes = 0;      // the stored size of result and error, counted against retention
};

// What a task's work ends with: a CallToolResult (isError or not) or a JSON-RPC error.
struct TaskOutcome {
  json result;
  json error;
};

class TaskManager {
 public:
  // The work of a task. It must stop soon after `cancel` is set (its Asio operations are also
  // cancelled through the coroutine's cancellation slot) and may describe its progress with
  // `message` (shown as statusMessage).
  using Work = std::function<boost::asio::awaitable<TaskOutcome>(
      std::string task_id, std::shared_ptr<CancellationFlag> cancel, std::function<void(std::string)> message)>;
  // Hears the task's status changes (status notifications; not statusMessage updates). Called
  // on the task's strand or the caller's thread, never under the manager's lock.
  using Listener = std::function<void(const TaskRecord&)>;

  TaskManager(const TasksConfig& config, const std::filesystem::path& db_path);
  ~TaskManager();

  // Loads the retained tasks. Those a previous process left working are failed: their work died
  // with it.
  void recover();

  // Creates the task durably, then starts `work` on a strand of `executor`. Fails when the owner
  // already runs max_running_per_principal tasks, or the server is shutting down.
  boost::asio::awaitable<std::variant<TaskRecord, Error>> create(boost::asio::any_io_executor executor,
                                                                std::string owner, std::string project,
                                                                std::string tool, std::string request_id,
                                                                std::optional<int64_t> ttl_ms, Work work,
                                                                Listener listener);

  // The task's state; its `result` may be absent (null) once stored: a finished task's result
  // lives in the database only, so that retained results cost no memory. fetch() loads it.
  std::optional<TaskRecord> get(const std::string& owner, const std::string& id);
  // The task with its result (read from the database when it is no longer in memory).
  boost::asio::awaitable<std::optional<TaskRecord>> fetch(std::string owner, std::string id);
  // Why get() finds no task `id` of `owner`, when the reason is more than "never existed":
  // its result was discarded to keep the owner within the retention limits.
  std::optional<std::string> why_missing(const std::string& owner, const std::string& id) const;
  // Where a tasks/list page ends: the last task it showed. The next page starts strictly after
  // it, so tasks created or expired between calls never make a page repeat or skip one.
  struct PageKey {
    int64_t created_ms = 0;
    std::string id;
  };
  // The owner's tasks, newest first (ties by id), from just after `after` (or the newest).
  std::vector<TaskRecord> list(const std::string& owner, const std::optional<PageKey>& after, std::size_t limit,
                               bool* more);
  // Waits until the task is terminal (tasks/result) and fetches it. nullopt: unknown, or
  // `abandon` was set.
  boost::asio::awaitable<std::optional<TaskRecord>> wait(std::string owner, std::string id,
                                                         std::shared_ptr<CancellationFlag> abandon);
  // Marks the task cancelled (durably) and stops its work. An error when it is unknown or
  // already terminal.
  boost::asio::awaitable<std::variant<TaskRecord, Error>> cancel(std::string owner, std::string id);

  // Refuses new tasks, fails the running ones ("the server is shutting down") and stops their
  // work; `done` runs on `executor` once all have ended, or after `grace`.
  void shutdown(boost::asio::any_io_executor executor, std::chrono::milliseconds grace, std::function<void()> done);
  // Joins the database worker (App::drain_writers).
  void join() { db_.join(); }

  std::size_t running() const;
  const TasksConfig& config() const { return config_; }

 private:
  struct Entry {
    TaskRecord record;
    std::shared_ptr<CancellationFlag> cancel;
    std::function<void()> stop;  // cancels the work's coroutine (posted to its strand)
    Listener listener;
    bool running = false;
    bool stored = false;  // terminal and persisted: `record.result` was dropped from memory
  };
  struct Tombstone {
    std::string owner;
    int64_t expires_ms = 0;
    std::string reason;
  };
  boost::asio::awaitable<void> run(std::string id, Work work);
  // Sets a terminal status unless one is set already; persists it; tells the listener.
  boost::asio::awaitable<bool> finish(std::string id, Status status, std::string message, json result, json error);
  // Writes the record; returns the stored size of its result and error.
  boost::asio::awaitable<std::shared_ptr<int64_t>> persist(TaskRecord record);
  void purge_expired_locked(int64_t now);
  // Drops the owner's oldest finished tasks (never `keep`) beyond max_retained_per_principal
  // or max_retained_result_mb_per_principal; returns their ids, whose rows must be deleted.
  std::vector<std::string> enforce_retention_locked(const std::string& owner, const std::string& keep);
  boost::asio::awaitable<void> delete_rows(std::vector<std::string> ids);
  bool visible_locked(const Entry& e, const std::string& owner, int64_t now) const;

  TasksConfig config_;
  state::DbWorker db_;
  mutable std::mutex mutex_;
  std::map<std::string, Entry> tasks_;
  std::map<std::string, Tombstone> tombstones_;  // discarded by retention, until they would have expired
  std::deque<std::string> tombstone_order_;      // oldest first, to bound tombstones_
  std::atomic<bool> stopping_{false};
  int64_t last_purge_ms_ = 0;
};

}  // namespace scigate::tasks
