#include "policies/credit_ledger.hpp"

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <charconv>
#include <future>
#include <set>
#include <unordered_set>

#include "server/observability/log.hpp"

namespace scigate {
namespace asio = boost::asio;
using nlohmann::json;

struct SqliteLedger::Op {
  enum class Kind { kReserve, kSettle, kRelease, kSweep, kRecover, kUsage } kind;
  explicit Op(Kind k) : kind(k) {}

  bool counted = false;     // enqueued: flush() waits for it
  bool completed = false;   // its waiter was resumed (a hold may be answered before the commit)
  credits::HoldSpec spec;   // reserve
  int64_t hold_id = 0;      // settle, release
  MicroCredits price = 0;   // settle
  std::string usage_json;   // settle
  json result;              // settle
  std::string project, user;  // usage

  credits::ReserveOutcome reserved;
  std::optional<MicroCredits> posted;
  bool released = false;
  credits::SweepCounts swept;
  UsageReport report;
  std::optional<std::string> failure;  // the database refused the operation

  // Whoever waits: a coroutine (executor + handler) or a thread (promise). The handler is
  // emplaced, never assigned: Boost 1.81's any_completion_handler move assignment wraps the
  // handler in itself and recurses until the stack runs out.
  asio::any_io_executor executor;
  std::optional<asio::any_completion_handler<void()>> handler;
  std::promise<void>* done = nullptr;
};

namespace {

int64_t parse_hold_id(const std::string& id) {
  int64_t v = 0;
  auto r = std::from_chars(id.data(), id.data() + id.size(), v);
  return r.ec == std::errc() && r.ptr == id.data() + id.size() ? v : 0;
}

// Plain functions, not coroutine bodies: GCC 12 miscompiles brace-initialised json there.
std::string usage_detail(const Usage& usage, const credits::RateTable& rates, MicroCredits price) {
  json lines = json::array();
  for (const auto& l : usage.lines) {
    json line = json::object();
    line["resource"] = l.resource;
    line["quantity"] = l.quantity;
    if (!l.detail.empty()) line["detail"] = l.detail;
    if (const auto* r = rates.find(l.resource)) line["rate"] = credits::format_rate(r->pico_per_unit);
    lines.push_back(std::move(line));
  }
  json d = json::object();
  d["usage"] = std::move(lines);
  d["price"] = price;
  return d.dump(-1, ' ', false, json::error_handler_t::replace);  // a tool's detail may not be UTF-8
}

Error refusal(const HoldRequest& req, const credits::RateTable& rates, MicroCredits amount,
              const credits::ReserveOutcome& o) {
  using Kind = credits::ReserveOutcome::Kind;
  std::string available = credits::format(std::max<MicroCredits>(0, o.available));
  std::string needs = (req.tool.empty() ? std::string("this call") : req.tool) + " needs " + credits::format(amount) +
                      " credits (" + rates.explain(req.worst_case) + "), " + available + " available in ";
  std::string project = req.project.empty() ? std::string("(no project)") : req.project;
  switch (o.kind) {
    case Kind::kInsufficient:
      return Error{ErrorCode::kInsufficientCredits,
                   needs + "project " + project + "; a manager can grant more with `scigate credits grant`",
                   "ask a manager of project " + project + " to run `scigate credits grant --project " + project +
                       " AMOUNT`, or make the call smaller so that its worst case costs less",
                   "account " + o.account};
    case Kind::kSubBudget:
      return Error{ErrorCode::kInsufficientCredits,
                   needs + req.principal + "'s sub-budget in project " + project +
                       "; a manager can raise it with `scigate credits grant --user " + req.principal + "`",
                   "ask a manager of project " + project + " to run `scigate credits grant --project " + project +
                       " --user " + req.principal + " AMOUNT`, or make the call smaller",
                   "account " + o.account};
    case Kind::kKeyRunning: {
      Error e{ErrorCode::kConflict, "a call with this idempotency key is still running; retry later",
              "retry with the same key once it has finished to get its result", {}};
      e.retry_after_ms = 1000;
      return e;
    }
    case Kind::kKeyOtherArguments:
      return Error{ErrorCode::kConflict,
                   "this idempotency key was already used for a call with other arguments",
                   "use a new idempotency key for a different call", {}};
    default:
      return Error::internal("unexpected reserve outcome");
  }
}

// For the coroutines' log lines: GCC 12 miscompiles brace-initialised json in coroutine bodies.
void log_hold_event(spdlog::level::level_enum level, const char* event, const Hold& hold, const std::string& detail) {
  json fields = json::object();
  fields["hold"] = hold.id;
  fields["project"] = hold.project;
  if (!detail.empty()) fields["detail"] = detail;
  log::event(level, event, fields);
}

}  // namespace

SqliteLedger::SqliteLedger(const std::filesystem::path& db_path, CreditLedgerOptions options)
    : options_(std::move(options)),
      rates_(options_.rates),
      db_(db_path),
      store_(db_.handle(), options_.projects, options_.clock) {
  // Commits do not fsync; the syncer does, outside the write lock, before a charge is
  // acknowledged (see run()).
  db_.exec("PRAGMA synchronous=NORMAL");
  if (options_.checkpointer) options_.checkpointer->watch(db_.handle());
  store_.begin();
  try {
    store_.load();
    store_.ensure_accounts();
    int rates_added = store_.sync_rates(options_.rates);
    store_.flush();
    store_.bump_epoch();
    store_.commit();
    if (rates_added > 0) log::info("credit_rates_changed", {{"rows", rates_added}});
  } catch (...) {
    store_.rollback();
    throw;
  }
  if (options_.durable) syncer_ = std::make_unique<state::WalSyncer>(db_path);
  writer_ = std::thread([this] { run(); });
}

SqliteLedger::~SqliteLedger() {
  {
    std::lock_guard g(mutex_);
    stop_ = true;
  }
  cv_.notify_one();
  writer_.join();
}

void SqliteLedger::note_unpriced(const Usage& usage) const {
  // Once per resource per process; the thread-local set keeps the common case lock-free.
  thread_local std::unordered_set<std::string> seen_here;
  static std::mutex mutex;
  static std::set<std::string> seen;
  for (const auto& l : usage.lines) {
    if (seen_here.count(l.resource) || rates_.find(l.resource)) continue;
    seen_here.insert(l.resource);
    std::lock_guard g(mutex);
    if (seen.insert(l.resource).second) log::debug("credit_unpriced_resource", {{"resource", l.resource}});
  }
}

asio::awaitable<void> SqliteLedger::submit(std::shared_ptr<Op> op) {
  return asio::async_initiate<decltype(asio::use_awaitable), void()>(
      [this, op](auto handler) {
        op->executor = asio::get_associated_executor(handler);
        op->handler.emplace(std::move(handler));
        enqueue(op);
      },
      asio::use_awaitable);
}

void SqliteLedger::enqueue(std::shared_ptr<Op> op) {
  bool wake;
  op->counted = true;
  {
    std::lock_guard g(idle_mutex_);
    ++outstanding_;
  }
  {
    std::lock_guard g(mutex_);
    // Only the first operation of a batch wakes the writer; under load it drains big batches.
    wake = queue_.empty();
    queue_.push_back(std::move(op));
  }
  if (wake) cv_.notify_one();
}

asio::awaitable<ReserveResult> SqliteLedger::reserve(HoldRequest req) {
  ReserveResult r;
  r.hold.project = req.project;
  note_unpriced(req.worst_case);
  MicroCredits amount = rates_.price(req.worst_case);
  if (amount == 0 && req.idempotency_key.empty()) co_return r;  // free: nothing to hold or record

  auto op = std::make_shared<Op>(Op::Kind::kReserve);
  auto timeout = std::max(req.timeout, options_.hold_timeout);
  op->spec.project = req.project;
  op->spec.user = req.principal;
  op->spec.tool = req.tool;
  op->spec.request_id = req.request_id;
  op->spec.amount = amount;
  if (req.minimum) op->spec.min_amount = std::min(amount, rates_.price(*req.minimum));
  op->spec.expires_ms = store_.now() + std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count();
  op->spec.idempotency_key = req.idempotency_key;
  op->spec.args_hash = req.arguments_hash;
  op->spec.owner = req.owner;
  op->spec.key_ttl_ms = std::chrono::duration_cast<std::chrono::milliseconds>(options_.idempotency_ttl).count();
  co_await submit(op);

  using Kind = credits::ReserveOutcome::Kind;
  if (op->failure) {
    r.error = Error::internal("credit ledger: " + *op->failure);
    r.error->message = "the credit ledger could not record the hold";
    r.error->hint = "retry shortly; if it persists, tell the operators";
    co_return r;
  }
  switch (op->reserved.kind) {
    case Kind::kHeld:
      r.hold.id = std::to_string(op->reserved.hold_id);
      r.hold.amount = op->reserved.held;
      break;
    case Kind::kReplay: {
      auto stored = json::parse(op->reserved.replay, nullptr, false);
      if (stored.is_discarded()) r.error = Error::internal("stored result of an idempotency key does not parse");
      else r.hold.replay = std::move(stored);
      break;
    }
    default:
      r.error = refusal(req, rates_, amount, op->reserved);
  }
  co_return r;
}

asio::awaitable<MicroCredits> SqliteLedger::settle(Hold hold, Usage actual, json result) {
  if (hold.id.empty()) co_return 0;  // nothing was held, so nothing can be posted
  note_unpriced(actual);
  auto op = std::make_shared<Op>(Op::Kind::kSettle);
  op->hold_id = parse_hold_id(hold.id);
  op->price = rates_.price(actual);
  op->usage_json = usage_detail(actual, rates_, op->price);
  op->result = std::move(result);
  co_await submit(op);
  if (op->failure) {
    log_hold_event(spdlog::level::err, "credit_settle_failed", hold, *op->failure);
    co_return 0;
  }
  if (!op->posted) {
    // The sweeper voided it (the call outlived its hold) or it was never open: nothing posted.
    log_hold_event(spdlog::level::warn, "credit_settle_without_hold", hold, "");
    co_return 0;
  }
  co_return *op->posted;
}

asio::awaitable<void> SqliteLedger::release(Hold hold) {
  if (hold.id.empty()) co_return;
  auto op = std::make_shared<Op>(Op::Kind::kRelease);
  op->hold_id = parse_hold_id(hold.id);
  co_await submit(op);
  if (op->failure) log_hold_event(spdlog::level::err, "credit_release_failed", hold, *op->failure);
}

asio::awaitable<UsageReport> SqliteLedger::usage(std::string project, std::string user) {
  auto op = std::make_shared<Op>(Op::Kind::kUsage);
  op->project = std::move(project);
  op->user = std::move(user);
  co_await submit(op);
  if (op->failure) throw std::runtime_error("credit ledger: " + *op->failure);
  co_return std::move(op->report);
}

int SqliteLedger::recover_after_restart() {
  auto op = std::make_shared<Op>(Op::Kind::kRecover);
  std::promise<void> done;
  op->done = &done;
  enqueue(op);
  done.get_future().wait();
  if (op->failure) throw std::runtime_error("credit ledger recovery failed: " + *op->failure);
  if (op->swept.voided > 0) log::warn("credit_holds_recovered", {{"voided", op->swept.voided}, {"reason", "restart"}});
  return op->swept.voided;
}

credits::SweepCounts SqliteLedger::sweep_now() {
  auto op = std::make_shared<Op>(Op::Kind::kSweep);
  std::promise<void> done;
  op->done = &done;
  enqueue(op);
  done.get_future().wait();
  return op->swept;
}

SqliteLedger::Stats SqliteLedger::stats() const {
  return Stats{operations_.load(), transactions_.load(), retried_.load(), failed_.load(), reloads_.load(),
               db_.busy_waits(), syncer_ ? syncer_->syncs() : 0};
}

void SqliteLedger::pause() {
  std::lock_guard g(mutex_);
  paused_ = true;
}

void SqliteLedger::resume() {
  {
    std::lock_guard g(mutex_);
    paused_ = false;
  }
  cv_.notify_one();
}

void SqliteLedger::run() {
  using steady = std::chrono::steady_clock;
  auto next_sweep = steady::now() + options_.sweep_interval;
  std::vector<std::shared_ptr<Op>> batch;
  std::unique_lock l(mutex_);
  for (;;) {
    cv_.wait_until(l, next_sweep, [&] { return stop_ || (!paused_ && !queue_.empty()); });
    if (stop_ && queue_.empty()) return;
    bool sweep_due = steady::now() >= next_sweep;
    if (paused_ && !stop_) {
      if (sweep_due) next_sweep = steady::now() + options_.sweep_interval;
      continue;
    }
    if (sweep_due) {
      batch.push_back(std::make_shared<Op>(Op::Kind::kSweep));
      next_sweep = steady::now() + options_.sweep_interval;
    }
    while (!queue_.empty() && batch.size() < options_.max_batch) {
      batch.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    l.unlock();
    if (!batch.empty()) {
      process(batch, 0, batch.size());
      operations_ += batch.size();
      // Only what a caller may rely on after a power loss waits for the fsync: a charge, and a
      // replayed result (it came from a charge that may not be on disk yet). A hold need not:
      // restart recovery voids every hold, and a hold row lost with the power never was.
      std::vector<std::shared_ptr<Op>> after_sync;
      for (auto& op : batch) {
        bool must_sync = !op->failure && (op->kind == Op::Kind::kSettle ||
                                          (op->kind == Op::Kind::kReserve &&
                                           op->reserved.kind == credits::ReserveOutcome::Kind::kReplay));
        if (syncer_ && must_sync) after_sync.push_back(op);
        else complete(*op);
      }
      if (!after_sync.empty())
        syncer_->after_commit([this, ops = std::move(after_sync)](bool ok) {
          if (!ok) log::error("credit_fsync_failed", {{"operations", ops.size()}});
          for (const auto& op : ops) complete(*op);
        });
      batch.clear();
    }
    l.lock();
  }
}

void SqliteLedger::process(std::vector<std::shared_ptr<Op>>& ops, std::size_t begin, std::size_t end) {
  try {
    store_.begin();
    if (needs_reload_ || store_.changed_elsewhere()) {
      store_.load();  // a grant from the CLI, or state left behind by a rollback
      needs_reload_ = false;
      ++reloads_;
    }
    for (std::size_t i = begin; i < end; ++i)
      if (!ops[i]->completed) apply(*ops[i]);  // (one answered early, then rolled back, is not redone)
    store_.flush();
    store_.bump_epoch();
    // A new hold is answered now, before the COMMIT: it was decided under the write lock, which
    // the commit releases, so no other writer can have spent the same credits; and a hold needs
    // no durability (restart recovery voids them all). If the COMMIT fails, the hold is gone
    // from the database and, after the reload, from the mirror: its settle posts nothing and
    // says so in the log (credit_settle_without_hold). The caller saves the commit's write.
    for (std::size_t i = begin; i < end; ++i)
      if (ops[i]->kind == Op::Kind::kReserve && ops[i]->reserved.kind != credits::ReserveOutcome::Kind::kReplay)
        complete(*ops[i]);
    store_.commit();
    ++transactions_;
  } catch (const std::exception& e) {
    store_.rollback();
    needs_reload_ = true;  // the mirror holds changes the database has just dropped
    for (std::size_t i = begin; i < end; ++i)
      if (ops[i]->completed && ops[i]->kind == Op::Kind::kReserve && ops[i]->reserved.hold_id != 0)
        log::error("credit_hold_lost", {{"hold", ops[i]->reserved.hold_id}, {"detail", e.what()}});
    if (end - begin == 1) {
      if (ops[begin]->completed) return;  // its caller has its answer (and may be reading it)
      ops[begin]->failure = e.what();
      ++failed_;
      return;
    }
    // Do not lose the others: one transaction each, so only the bad one fails.
    ++retried_;
    log::warn("credit_batch_retried", {{"operations", end - begin}, {"detail", e.what()}});
    for (std::size_t i = begin; i < end; ++i)
      if (!ops[i]->completed) process(ops, i, i + 1);
  }
}

void SqliteLedger::apply(Op& op) {
  switch (op.kind) {
    case Op::Kind::kReserve:
      op.reserved = store_.reserve(op.spec);
      break;
    case Op::Kind::kSettle:
      op.posted = store_.settle(op.hold_id, op.price, op.usage_json, op.result);
      break;
    case Op::Kind::kRelease:
      op.released = store_.void_hold(op.hold_id, "released");
      break;
    case Op::Kind::kSweep: {
      op.swept = store_.sweep();
      auto ttl = std::chrono::duration_cast<std::chrono::milliseconds>(options_.idempotency_ttl).count();
      store_.prune_results(store_.now() - ttl);
      if (op.swept.voided > 0) log::warn("credit_holds_expired", {{"voided", op.swept.voided}});
      break;
    }
    case Op::Kind::kRecover:
      op.swept.voided = store_.void_orphaned("restart");
      op.swept.lapsed = store_.sweep().lapsed;
      break;
    case Op::Kind::kUsage:
      op.report = store_.report(op.project, op.user, rates_);
      break;
  }
}

void SqliteLedger::complete(Op& op) {
  if (op.completed) return;
  op.completed = true;
  if (op.done) {
    op.done->set_value();
  } else if (op.handler) {  // (none for the writer's own sweep)
    auto ex = op.executor;
    asio::post(ex, std::move(*op.handler));
    op.handler.reset();
  }
  if (!op.counted) return;
  std::lock_guard g(idle_mutex_);
  if (--outstanding_ == 0) idle_cv_.notify_all();
}

void SqliteLedger::flush() {
  std::unique_lock l(idle_mutex_);
  idle_cv_.wait(l, [&] { return outstanding_ == 0; });
}

}  // namespace scigate
