#include "server/tasks/task_manager.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <set>

#include "server/common/time_format.hpp"
#include "server/common/crypto.hpp"
#include "server/observability/log.hpp"

namespace scigate::tasks {
namespace asio = boost::asio;

namespace {

json internal_error(const std::string& message) {
  json e = json::object();
  e["code"] = -32603;
  e["message"] = message;
  return e;
}

json parse_or_null(const std::string& text) {
  if (text.empty()) return nullptr;
  return json::parse(text, nullptr, false);
}

// Discarded tasks remembered, so a lookup can say why it fails (about 300 bytes each).
constexpr std::size_t kMaxTombstones = 10'000;

// Writes the row; returns the stored size of result and error.
int64_t write_record(state::Database& db, const TaskRecord& r) {
  state::Statement st(db.handle(),
                      "INSERT OR REPLACE INTO tasks(id, owner, project, tool, request_id, status, status_message, "
                      "created_ms, updated_ms, expires_ms, result, error, result_bytes, result_is_error) "
                      "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
  st.bind(1, r.id).bind(2, r.owner).bind(3, r.project).bind(4, r.tool).bind(5, r.request_id);
  st.bind(6, to_string(r.status)).bind(7, r.status_message).bind(8, r.created_ms).bind(9, r.updated_ms);
  st.bind(10, r.expires_ms);
  int64_t bytes = 0;
  auto bind_json = [&](int i, const json& value) {
    if (value.is_null()) {
      st.bind_null(i);
      return;
    }
    std::string text = value.dump();
    bytes += static_cast<int64_t>(text.size());
    st.bind(i, text);
  };
  bind_json(11, r.result);
  bind_json(12, r.error);
  st.bind(13, bytes);
  st.bind(14, int64_t(r.result.is_object() && r.result.value("isError", false) ? 1 : 0));
  st.step();
  return bytes;
}

std::function<void(state::Database&)> write_op(TaskRecord record, std::shared_ptr<int64_t> bytes) {
  return [record = std::move(record), bytes](state::Database& db) { *bytes = write_record(db, record); };
}

}  // namespace

std::string_view to_string(Status s) {
  switch (s) {
    case Status::kWorking: return "working";
    case Status::kInputRequired: return "input_required";
    case Status::kCompleted: return "completed";
    case Status::kFailed: return "failed";
    case Status::kCancelled: return "cancelled";
  }
  return "failed";
}

std::optional<Status> status_from_string(std::string_view s) {
  for (Status v : {Status::kWorking, Status::kInputRequired, Status::kCompleted, Status::kFailed, Status::kCancelled})
    if (to_string(v) == s) return v;
  return std::nullopt;
}

TaskManager::TaskManager(const TasksConfig& config, const std::filesystem::path& db_path)
    : config_(config), db_(db_path) {}

TaskManager::~TaskManager() { db_.join(); }

void TaskManager::recover() {
  auto lk = db_.db().lock();
  int64_t now = unix_now_ms();
  db_.db().exec("BEGIN IMMEDIATE");
  try {
    // The work of a task lives in this process only; whatever was running died with the last one.
    state::Statement fail(db_.db().handle(),
                          "UPDATE tasks SET status = 'failed', updated_ms = ?, status_message = ?, error = ? "
                          "WHERE status IN ('working', 'input_required')");
    std::string message =
        "the server restarted while this task was running; its tool call was not completed and its credit hold "
        "was released. Call the tool again.";
    fail.bind(1, now).bind(2, message).bind(3, internal_error(message).dump());
    fail.step();
    state::Statement purge(db_.db().handle(), "DELETE FROM tasks WHERE expires_ms < ?");
    purge.bind(1, now);
    purge.step();
    // Rows written before the size columns existed (migration 14): measured once, here.
    db_.db().exec(
        "UPDATE tasks SET result_bytes = coalesce(length(CAST(result AS BLOB)), 0) + "
        "coalesce(length(CAST(error AS BLOB)), 0), result_is_error = CASE WHEN json_valid(result) THEN "
        "coalesce(json_extract(result, '$.isError'), 0) ELSE 0 END WHERE result_bytes IS NULL");
    db_.db().exec("COMMIT");
  } catch (...) {
    db_.db().exec("ROLLBACK");
    throw;
  }
  // Results stay in the database (fetch() reads one when asked): a start costs no more with
  // gigabytes of retained results than with none.
  state::Statement st(db_.db().handle(),
                      "SELECT id, owner, project, tool, request_id, status, status_message, created_ms, updated_ms, "
                      "expires_ms, error, result_bytes, result_is_error FROM tasks");
  std::vector<std::string> evicted;
  {
    std::lock_guard g(mutex_);
    std::set<std::string> owners;
    while (st.step()) {
      TaskRecord r;
      r.id = st.column_text(0);
      r.owner = st.column_text(1);
      r.project = st.column_text(2);
      r.tool = st.column_text(3);
      r.request_id = st.column_text(4);
      r.status = status_from_string(st.column_text(5)).value_or(Status::kFailed);
      r.status_message = st.column_text(6);
      r.created_ms = st.column_int(7);
      r.updated_ms = st.column_int(8);
      r.expires_ms = st.column_int(9);
      if (!st.column_is_null(10)) r.error = parse_or_null(st.column_text(10));
      r.result_bytes = st.column_int(11);
      r.result_is_error = st.column_int(12) != 0;
      Entry e;
      e.record = std::move(r);
      e.stored = true;
      owners.insert(e.record.owner);
      tasks_.emplace(e.record.id, std::move(e));
    }
    // Limits lowered since the last run apply now.
    for (const auto& owner : owners) {
      auto ids = enforce_retention_locked(owner, {});
      evicted.insert(evicted.end(), ids.begin(), ids.end());
    }
  }
  for (const auto& id : evicted) {
    state::Statement del(db_.db().handle(), "DELETE FROM tasks WHERE id = ?");
    del.bind(1, id);
    del.step();
  }
  last_purge_ms_ = now;
}

bool TaskManager::visible_locked(const Entry& e, const std::string& owner, int64_t now) const {
  if (e.record.owner != owner) return false;
  return !(is_terminal(e.record.status) && e.record.expires_ms < now);
}

void TaskManager::purge_expired_locked(int64_t now) {
  // Memory only, and at most once a minute; rows are deleted at the next start (recover()).
  // An expired row is never served: visible_locked() hides it.
  if (now - last_purge_ms_ < 60'000) return;
  last_purge_ms_ = now;
  for (auto it = tasks_.begin(); it != tasks_.end();) {
    if (!it->second.running && is_terminal(it->second.record.status) && it->second.record.expires_ms < now)
      it = tasks_.erase(it);
    else
      ++it;
  }
  for (auto it = tombstones_.begin(); it != tombstones_.end();)
    it = it->second.expires_ms < now ? tombstones_.erase(it) : std::next(it);
  std::erase_if(tombstone_order_, [this](const std::string& id) { return !tombstones_.count(id); });
}

std::vector<std::string> TaskManager::enforce_retention_locked(const std::string& owner, const std::string& keep) {
  // Terminal tasks count, including one whose work is still unwinding (`running` is cleared
  // after finish()); only those whose work has ended may be discarded.
  std::vector<Entry*> finished;
  uint64_t bytes = 0;
  std::size_t count = 0;
  for (auto& [id, e] : tasks_) {
    if (e.record.owner != owner || !is_terminal(e.record.status)) continue;
    ++count;
    bytes += static_cast<uint64_t>(e.record.result_bytes);
    // Only stored ones: a task whose finish() (a cancel) is still writing its row stays.
    if (!e.running && e.stored && id != keep) finished.push_back(&e);
  }
  const uint64_t max_bytes = config_.max_retained_result_mb_per_principal << 20;
  if (count <= config_.max_retained_per_principal && bytes <= max_bytes) return {};
  // Oldest finished first; the one that just finished (`keep`) is never discarded.
  std::sort(finished.begin(), finished.end(), [](const Entry* a, const Entry* b) {
    return a->record.updated_ms != b->record.updated_ms ? a->record.updated_ms < b->record.updated_ms
                                                        : a->record.id < b->record.id;
  });
  std::vector<std::string> evicted;
  for (Entry* e : finished) {
    if (count <= config_.max_retained_per_principal && bytes <= max_bytes) break;
    --count;
    bytes -= static_cast<uint64_t>(e->record.result_bytes);
    const std::string id = e->record.id;
    std::string reason = "its result was discarded before its ttl to keep " + owner + " within the retention limits (" +
                         std::to_string(config_.max_retained_per_principal) + " finished tasks, " +
                         std::to_string(config_.max_retained_result_mb_per_principal) +
                         " MB of results); fetch results sooner, or ask the operator to raise [tasks] "
                         "max_retained_per_principal / max_retained_result_mb_per_principal";
    tombstones_[id] = Tombstone{owner, e->record.expires_ms, std::move(reason)};
    tombstone_order_.push_back(id);
    tasks_.erase(id);
    evicted.push_back(id);
  }
  // Tombstones are small, but bounded all the same.
  while (tombstone_order_.size() > kMaxTombstones) {
    tombstones_.erase(tombstone_order_.front());
    tombstone_order_.pop_front();
  }
  if (!evicted.empty())
    log::info("tasks_retention_discarded", {{"principal", owner}, {"tasks", evicted.size()}});
  return evicted;
}

namespace {
std::function<void(state::Database&)> delete_op(std::vector<std::string> ids) {
  return [ids = std::move(ids)](state::Database& db) {
    db.exec("BEGIN IMMEDIATE");
    try {
      state::Statement del(db.handle(), "DELETE FROM tasks WHERE id = ?");
      for (const auto& id : ids) {
        del.reset();
        del.bind(1, id);
        del.step();
      }
      db.exec("COMMIT");
    } catch (...) {
      db.exec("ROLLBACK");
      throw;
    }
  };
}

std::function<void(state::Database&)> load_op(std::string id, std::shared_ptr<std::optional<std::string>> out) {
  return [id = std::move(id), out](state::Database& db) {
    state::Statement st(db.handle(), "SELECT result FROM tasks WHERE id = ?");
    st.bind(1, id);
    if (st.step()) *out = st.column_is_null(0) ? std::string() : st.column_text(0);
  };
}
}  // namespace

asio::awaitable<void> TaskManager::delete_rows(std::vector<std::string> ids) {
  if (ids.empty()) co_return;
  try {
    co_await db_.run(delete_op(std::move(ids)));
  } catch (const std::exception& e) {
    // Memory no longer serves them; the next start enforces the limits again.
    log::error("tasks_retention_delete_failed", {{"detail", e.what()}});
  }
}

asio::awaitable<std::variant<TaskRecord, Error>> TaskManager::create(asio::any_io_executor executor, std::string owner,
                                                                    std::string project, std::string tool,
                                                                    std::string request_id,
                                                                    std::optional<int64_t> ttl_ms, Work work,
                                                                    Listener listener) {
  if (stopping_.load())
    co_return Error{ErrorCode::kBackendUnavailable, "the server is shutting down and starts no new tasks",
                    "try again in a moment, against the restarted server", {}};
  int64_t now = unix_now_ms();
  int64_t ttl = ttl_ms.value_or(std::chrono::milliseconds(config_.default_ttl).count());
  ttl = std::clamp<int64_t>(ttl, 1000, std::chrono::milliseconds(config_.max_ttl).count());
  TaskRecord rec;
  rec.id = "t-" + crypto::random_hex(16);
  rec.owner = std::move(owner);
  rec.project = std::move(project);
  rec.tool = std::move(tool);
  rec.request_id = std::move(request_id);
  rec.status_message = "running " + rec.tool;
  rec.created_ms = now;
  rec.updated_ms = now;
  rec.expires_ms = now + ttl;
  {
    std::lock_guard g(mutex_);
    purge_expired_locked(now);
    std::size_t mine = 0;
    for (const auto& [id, e] : tasks_)
      if (e.running && e.record.owner == rec.owner) ++mine;
    if (mine >= config_.max_running_per_principal)
      co_return Error{ErrorCode::kRateLimited,
                      rec.owner + " already runs " + std::to_string(mine) + " tasks, the most this server allows",
                      "wait for one to finish (tasks/get) or cancel one (tasks/cancel), then call again", {}};
    Entry e;
    e.record = rec;
    e.cancel = std::make_shared<CancellationFlag>();
    e.listener = std::move(listener);
    e.running = true;  // counted from now, so a burst cannot overshoot the limit
    tasks_.emplace(rec.id, std::move(e));
  }
  try {
    co_await persist(rec);
  } catch (const std::exception& ex) {
    {
      std::lock_guard g(mutex_);
      tasks_.erase(rec.id);
    }
    log::error("task_create_failed", {{"task_id", rec.id}, {"detail", ex.what()}});
    co_return Error::internal(std::string("could not record the task: ") + ex.what());
  }
  // The work runs on a strand of its own; stop() emits the cancellation there.
  auto strand = asio::make_strand(executor);
  auto signal = std::make_shared<asio::cancellation_signal>();
  {
    std::lock_guard g(mutex_);
    auto& e = tasks_.at(rec.id);
    e.stop = [strand, signal] {
      asio::post(strand, [signal] { signal->emit(asio::cancellation_type::terminal); });
    };
  }
  // The completion handler owns the signal: the coroutine's cancellation state points into it
  // until the very end, so it must not die with the entry's stop().
  asio::co_spawn(strand, run(rec.id, std::move(work)),
                 asio::bind_cancellation_slot(signal->slot(), [signal](std::exception_ptr) {}));
  co_return rec;
}

asio::awaitable<void> TaskManager::run(std::string id, Work work) {
  std::shared_ptr<CancellationFlag> flag;
  {
    std::lock_guard g(mutex_);
    flag = tasks_.at(id).cancel;
  }
  // Progress shows as statusMessage (memory only: a restart fails the task anyway).
  auto message = [this, id](std::string text) {
    std::lock_guard g(mutex_);
    auto it = tasks_.find(id);
    if (it == tasks_.end() || is_terminal(it->second.record.status) || it->second.record.status_message == text)
      return;
    it->second.record.status_message = std::move(text);
    it->second.record.updated_ms = unix_now_ms();
  };
  TaskOutcome outcome;
  try {
    outcome = co_await work(id, flag, message);
  } catch (const std::exception& e) {
    // Stopped by tasks/cancel or shutdown (which set the status already), or a bug below the
    // pipeline, which catches what tools throw.
    if (!flag->cancelled()) log::error("task_failed", {{"task_id", id}, {"detail", e.what()}});
    outcome.error = internal_error(flag->cancelled() ? "the call was cancelled" : "internal error (task " + id + ")");
  }
  co_await asio::this_coro::reset_cancellation_state(asio::disable_cancellation());
  if (!outcome.error.is_null()) {
    std::string msg = outcome.error.value("message", std::string("the call failed"));
    co_await finish(id, Status::kFailed, msg, nullptr, std::move(outcome.error));
  } else {
    // A tool error (isError) still completes the task: the result is what the call returned.
    bool is_error = outcome.result.value("isError", false);
    std::string msg = is_error ? "the call returned an error" : "the call completed";
    co_await finish(id, Status::kCompleted, msg, std::move(outcome.result), nullptr);
  }
  std::lock_guard g(mutex_);
  if (auto it = tasks_.find(id); it != tasks_.end()) {
    it->second.running = false;
    it->second.stop = nullptr;
  }
}

asio::awaitable<bool> TaskManager::finish(std::string id, Status status, std::string message, json result, json error) {
  TaskRecord copy;
  Listener listener;
  {
    std::lock_guard g(mutex_);
    auto it = tasks_.find(id);
    if (it == tasks_.end() || is_terminal(it->second.record.status)) co_return false;  // cancelled first: stays so
    auto& r = it->second.record;
    int64_t now = unix_now_ms();
    r.status = status;
    r.status_message = std::move(message);
    r.result = std::move(result);
    r.error = std::move(error);
    r.updated_ms = now;
    // However long the work took, its outcome stays readable a while after it ends.
    r.expires_ms = std::max(r.expires_ms, now + std::chrono::milliseconds(config_.min_retention).count());
    r.result_is_error = r.result.is_object() && r.result.value("isError", false);
    copy = r;
    listener = it->second.listener;
  }
  bool persisted = false;
  std::shared_ptr<int64_t> bytes;
  try {
    bytes = co_await persist(copy);
    persisted = true;
  } catch (const std::exception& e) {
    // Memory keeps serving it; a restart would fail the task instead (recover()).
    log::error("task_persist_failed", {{"task_id", id}, {"detail", e.what()}});
  }
  if (listener) listener(copy);
  std::vector<std::string> evicted;
  if (persisted) {
    std::lock_guard g(mutex_);
    if (auto it = tasks_.find(id); it != tasks_.end()) {
      // The database holds the result now; memory keeps the state only.
      it->second.record.result_bytes = *bytes;
      it->second.record.result = nullptr;
      it->second.stored = true;
      evicted = enforce_retention_locked(it->second.record.owner, id);
    }
  }
  co_await delete_rows(std::move(evicted));
  co_return true;
}

asio::awaitable<std::shared_ptr<int64_t>> TaskManager::persist(TaskRecord record) {
  // Built by a plain function: GCC 12 destroys a lambda made inside a co_await expression twice.
  auto bytes = std::make_shared<int64_t>(0);
  co_await db_.run(write_op(std::move(record), bytes));
  co_return bytes;
}

std::optional<TaskRecord> TaskManager::get(const std::string& owner, const std::string& id) {
  std::lock_guard g(mutex_);
  auto it = tasks_.find(id);
  if (it == tasks_.end() || !visible_locked(it->second, owner, unix_now_ms())) return std::nullopt;
  return it->second.record;
}

asio::awaitable<std::optional<TaskRecord>> TaskManager::fetch(std::string owner, std::string id) {
  bool stored = false;
  std::optional<TaskRecord> r;
  {
    std::lock_guard g(mutex_);
    auto it = tasks_.find(id);
    if (it == tasks_.end() || !visible_locked(it->second, owner, unix_now_ms())) co_return std::nullopt;
    r = it->second.record;
    stored = it->second.stored;
  }
  if (!stored || r->status != Status::kCompleted) co_return r;
  auto text = std::make_shared<std::optional<std::string>>();
  co_await db_.run(load_op(id, text));
  if (!*text) co_return std::nullopt;  // discarded meanwhile
  if (!(*text)->empty()) r->result = parse_or_null(**text);
  co_return r;
}

std::optional<std::string> TaskManager::why_missing(const std::string& owner, const std::string& id) const {
  std::lock_guard g(mutex_);
  auto it = tombstones_.find(id);
  if (it == tombstones_.end() || it->second.owner != owner || it->second.expires_ms < unix_now_ms())
    return std::nullopt;
  return it->second.reason;
}

std::vector<TaskRecord> TaskManager::list(const std::string& owner, const std::optional<PageKey>& after,
                                          std::size_t limit, bool* more) {
  // Newest first, ties by id: the order the keys of every page follow.
  auto before = [](int64_t ca, const std::string& ia, int64_t cb, const std::string& ib) {
    return ca != cb ? ca > cb : ia < ib;
  };
  std::vector<TaskRecord> page;
  std::lock_guard g(mutex_);
  const int64_t now = unix_now_ms();
  std::vector<const TaskRecord*> mine;
  for (const auto& [id, e] : tasks_)
    if (visible_locked(e, owner, now) &&
        (!after || before(after->created_ms, after->id, e.record.created_ms, e.record.id)))
      mine.push_back(&e.record);
  auto order = [&](const TaskRecord* a, const TaskRecord* b) {
    return before(a->created_ms, a->id, b->created_ms, b->id);
  };
  // Only the page is sorted and copied (records carry their results).
  const std::size_t n = std::min(mine.size(), limit);
  std::partial_sort(mine.begin(), mine.begin() + static_cast<std::ptrdiff_t>(n), mine.end(), order);
  if (more) *more = mine.size() > n;
  page.reserve(n);
  for (std::size_t i = 0; i < n; ++i) page.push_back(*mine[i]);
  return page;
}

asio::awaitable<std::optional<TaskRecord>> TaskManager::wait(std::string owner, std::string id,
                                                             std::shared_ptr<CancellationFlag> abandon) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  for (;;) {
    auto r = get(owner, id);
    if (!r) co_return r;
    if (is_terminal(r->status)) co_return co_await fetch(owner, id);
    if (abandon && abandon->cancelled()) co_return std::nullopt;
    // Polling memory is cheap, and it cannot miss a wake-up.
    timer.expires_after(std::chrono::milliseconds(50));
    auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    if (ec == asio::error::operation_aborted) co_return std::nullopt;  // the caller went away
  }
}

asio::awaitable<std::variant<TaskRecord, Error>> TaskManager::cancel(std::string owner, std::string id) {
  std::function<void()> stop;
  std::shared_ptr<CancellationFlag> flag;
  {
    std::lock_guard g(mutex_);
    auto it = tasks_.find(id);
    if (it == tasks_.end() || !visible_locked(it->second, owner, unix_now_ms()))
      co_return Error{ErrorCode::kNotFound, "no task " + id + " (it never existed, belongs to someone else, or expired)",
                      {}, {}};
    if (is_terminal(it->second.record.status))
      co_return Error{ErrorCode::kConflict,
                      "cannot cancel task " + id + ": already in terminal status '" +
                          std::string(to_string(it->second.record.status)) + "'",
                      {}, {}};
    stop = it->second.stop;
    flag = it->second.cancel;
  }
  co_await finish(id, Status::kCancelled, "cancelled at the caller's request", nullptr, nullptr);
  if (flag) flag->cancel();
  if (stop) stop();
  auto r = get(owner, id);
  if (!r) co_return Error{ErrorCode::kNotFound, "no task " + id, {}, {}};
  co_return *r;
}

void TaskManager::shutdown(asio::any_io_executor executor, std::chrono::milliseconds grace, std::function<void()> done) {
  stopping_.store(true);
  std::vector<std::string> ids;
  {
    std::lock_guard g(mutex_);
    for (auto& [id, e] : tasks_)
      if (e.running) ids.push_back(id);
  }
  auto deadline = std::chrono::steady_clock::now() + grace;
  asio::co_spawn(
      executor,
      [this, ids, deadline, done = std::move(done)]() -> asio::awaitable<void> {
        static const std::string kMessage =
            "the server shut down while this task was running; its tool call was stopped and charged only for what "
            "it used. Call the tool again.";
        for (const auto& id : ids) {
          std::function<void()> stop;
          std::shared_ptr<CancellationFlag> flag;
          {
            std::lock_guard g(mutex_);
            auto it = tasks_.find(id);
            if (it == tasks_.end()) continue;
            stop = it->second.stop;
            flag = it->second.cancel;
          }
          co_await finish(id, Status::kFailed, kMessage, nullptr, internal_error(kMessage));
          if (flag) flag->cancel();
          if (stop) stop();
        }
        asio::steady_timer timer(co_await asio::this_coro::executor);
        while (running() > 0 && std::chrono::steady_clock::now() < deadline) {
          timer.expires_after(std::chrono::milliseconds(20));
          co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
        }
        if (running() > 0) log::warn("tasks_shutdown_grace_expired", {{"running", running()}});
        done();
      },
      asio::detached);
}

std::size_t TaskManager::running() const {
  std::lock_guard g(mutex_);
  return static_cast<std::size_t>(
      std::count_if(tasks_.begin(), tasks_.end(), [](const auto& kv) { return kv.second.running; }));
}

}  // namespace scigate::tasks
