#include "policies/credit_ledger.hpp"

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <future>
#include <set>
#include <thread>
#include <unordered_set>

#include "policies/canonical_json.hpp"
#include "server/observability/log.hpp"

namespace scigate {
namespace asio = boost::asio;
using nlohmann::json;

struct SqliteLedger::Op final : state::Writer::Item {
  // kClaim: take in-memory hold ids, own the ledger alone from the COMMIT on. kSignal: a
  // transaction that moves the epoch (asks an owner to share). kYield: a transaction in which
  // an owner that saw the epoch move writes its in-memory holds out (begin()).
  enum class Kind { kInit, kReserve, kSettle, kRelease, kExtend, kSweep, kRecover, kUsage, kClaim, kSignal, kYield } kind;
  Op(SqliteLedger* l, Kind k) : Item(l), kind(k), ledger(l) {}

  SqliteLedger* ledger;
  credits::HoldSpec spec;   // reserve
  int64_t hold_id = 0;      // settle, release, extend
  std::chrono::milliseconds extend_by{0};  // extend: the hold's new expiry from now
  std::string project;      // settle, release (for the log); usage
  MicroCredits price = 0;   // settle
  std::string usage_json;   // settle
  json result;              // settle
  std::shared_ptr<MicroCredits> posted_out;  // settle_queued: what was posted, set in apply()
  bool queued = false;      // settle_queued/release_queued: nobody waits, answer() logs
  // settle_queued with a journal: the hold (pinned) and the amount (`price`) were decided
  // before the op was queued, and the op is in the journal (decode() makes it again).
  bool decided = false;
  credits::OpenHold hold;
  std::string user;         // usage
  bool whole_project = false;  // usage: every user's holds and charges (a manager's view)

  credits::ReserveOutcome reserved;
  std::optional<MicroCredits> posted;
  bool released = false;
  bool extended = false;
  credits::SweepCounts swept;
  int rates_added = 0;  // init
  UsageReport report;
  std::optional<std::string> failure;  // the database refused the operation

  // Whoever waits: a coroutine (executor + handler) or a thread (promise). The handler is
  // emplaced, never assigned: Boost 1.81's any_completion_handler move assignment wraps the
  // handler in itself and recurses until the stack runs out.
  asio::any_io_executor executor;
  std::optional<asio::any_completion_handler<void()>> handler;
  std::promise<void>* done = nullptr;

  void apply() override { ledger->apply(*this); }
  // A new hold is answered before the COMMIT: it was decided under the write lock, which the
  // commit releases, so no other writer can have spent the same credits; and a hold needs no
  // durability (restart recovery voids them all). If the COMMIT fails, the hold is gone from
  // the database and, after the reload, from the mirror: its settle posts nothing and says so
  // in the log (credit_settle_without_hold). The caller saves the commit's write.
  bool answer_before_commit() const override {
    return kind == Kind::kReserve && reserved.kind != credits::ReserveOutcome::Kind::kReplay;
  }
  // Only what a caller may rely on after a power loss waits for the fsync: a charge, and a
  // replayed result (it came from a charge that may not be on disk yet). A hold need not:
  // restart recovery voids every hold, and a hold row lost with the power never was.
  bool needs_sync() const override {
    return ledger->options_.durable && !failure &&
           (kind == Kind::kSettle ||
            (kind == Kind::kReserve && reserved.kind == credits::ReserveOutcome::Kind::kReplay));
  }
  void failed(const std::string& what) override {
    failure = what;
    if (posted_out) *posted_out = 0;  // (an attempt in a batch that failed may have set it)
    if (kind == Kind::kClaim) ledger->claim_failed(what);
  }
  void lost(const std::string& what) override {
    if (kind == Kind::kReserve && reserved.hold_id != 0)
      log::error("credit_hold_lost", {{"hold", reserved.hold_id}, {"detail", what}});
  }
  void answer() override {
    if (queued) log_queued_outcome();
    if (done) {
      done->set_value();
    } else if (handler) {  // (none for the writer's own sweep)
      auto ex = executor;
      asio::post(ex, std::move(*handler));
      handler.reset();
    }
  }
  bool journal_entry(std::string& out) const override;
  void log_queued_outcome();
};

bool SqliteLedger::Op::journal_entry(std::string& out) const {
  if (kind != Kind::kSettle || !decided) return false;
  // Canonical JSON by hand (keys in order): this is on the caller's thread.
  auto text = [&](const char* key, std::string_view v) {
    out += key;
    canonical::append_string(out, v);
  };
  auto number = [&](const char* key, int64_t v) {
    out += key;
    canonical::append_int(out, v);
  };
  text("{\"account\":", hold.account);
  number(",\"amount\":", hold.amount);
  number(",\"hold\":", hold.id);
  number(",\"posted\":", price);
  text(",\"project\":", hold.project);
  text(",\"request_id\":", hold.request_id);
  out += hold.sub_budget ? ",\"sub_budget\":true" : ",\"sub_budget\":false";
  text(",\"tool\":", hold.tool);
  text(",\"usage\":", usage_json);
  text(",\"user\":", hold.user);
  out += '}';
  return true;
}

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

void SqliteLedger::Op::log_queued_outcome() {
  Hold h;
  h.id = std::to_string(hold_id);
  h.project = project;
  if (failure) {
    log_hold_event(spdlog::level::err, kind == Kind::kSettle ? "credit_settle_failed" : "credit_release_failed", h,
                   *failure);
  } else if (kind == Kind::kSettle && !posted) {
    // The sweeper voided it (the call outlived its hold) or it was never open: nothing posted.
    log_hold_event(spdlog::level::warn, "credit_settle_without_hold", h, "");
  }
}

SqliteLedger::SqliteLedger(const std::filesystem::path& db_path, CreditLedgerOptions options)
    : SqliteLedger(std::make_unique<state::Writer>(
                       db_path, state::Writer::Options{options.durable, options.max_batch, options.checkpointer}),
                   nullptr, std::move(options)) {}

SqliteLedger::SqliteLedger(state::Writer& writer, CreditLedgerOptions options)
    : SqliteLedger(nullptr, &writer, std::move(options)) {}

SqliteLedger::SqliteLedger(std::unique_ptr<state::Writer> own, state::Writer* writer, CreditLedgerOptions options)
    : options_(std::move(options)),
      rates_(options_.rates),
      own_writer_(std::move(own)),
      writer_(writer ? writer : own_writer_.get()),
      store_(writer_->db().handle(), options_.projects, options_.clock),
      next_sweep_(std::chrono::steady_clock::now() + options_.sweep_interval) {
  writer_->add(this);
  // Accounts and rates, in the writer's first transaction for this ledger (begin() loads).
  auto op = std::make_shared<Op>(this, Op::Kind::kInit);
  run_blocking(op);
  if (op->failure) {
    writer_->remove(this);
    throw std::runtime_error("credit ledger: " + *op->failure);
  }
  if (op->rates_added > 0) log::info("credit_rates_changed", {{"rows", op->rates_added}});
}

SqliteLedger::~SqliteLedger() {
  writer_->flush();
  writer_->remove(this);
  if (lock_fd_ >= 0) ::close(lock_fd_);  // the lock goes with it; in-memory holds die with us
}

namespace {
// In-memory hold ids taken per claim: ample for one owner's time alone (2^40 calls), and the
// int64 range below zero lasts 2^23 claims. An owner that runs out writes rows again.
constexpr int64_t kHoldIdBlock = int64_t(1) << 40;

// The lock file beside the database that says who decides holds in memory.
std::filesystem::path ledger_lock_path(const std::filesystem::path& db_path) {
  auto path = db_path;
  path += "-ledger.lock";
  return path;
}

int open_ledger_lock(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) throw std::runtime_error("credit ledger: cannot open " + path.string() + ": " + std::strerror(errno));
  return fd;
}

// Open-file-description locks: per open(), so two ledgers in one process exclude each other
// like two processes; and a conversion either happens whole or not at all (flock(2) drops the
// old lock first), so an owner that fails to go exclusive stays shared.
bool ofd_lock(int fd, short type) {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  return ::fcntl(fd, F_OFD_SETLK, &fl) == 0;
}

// Takes the lock shared once its owner has written its holds out: `signal` moves the epoch,
// and is repeated every 250 ms (the owner may have been idle, or busy). False at `deadline`.
bool share_when_owner_yields(int fd, const std::function<void()>& signal,
                             std::chrono::steady_clock::time_point deadline) {
  using steady = std::chrono::steady_clock;
  for (;;) {
    signal();
    auto until = std::min(deadline, steady::now() + std::chrono::milliseconds(250));
    while (steady::now() < until) {
      if (ofd_lock(fd, F_RDLCK)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (steady::now() >= deadline) return ofd_lock(fd, F_RDLCK);
  }
}
}  // namespace

bool SqliteLedger::try_lock(short type) { return ofd_lock(lock_fd_, type); }

void SqliteLedger::claim(const std::filesystem::path& db_path, std::chrono::milliseconds wait) {
  if (lock_fd_ >= 0) return;
  const auto path = ledger_lock_path(db_path);
  lock_fd_ = open_ledger_lock(path);
  if (try_lock(F_WRLCK)) {
    {
      std::lock_guard g(mirror_);
      lock_ = Lock::kClaiming;
    }
    auto op = std::make_shared<Op>(this, Op::Kind::kClaim);
    run_blocking(op);
    if (op->failure) throw std::runtime_error("credit ledger: claiming " + path.string() + ": " + *op->failure);
    log::info("credit_ledger_owned", {{"lock", path.string()}, {"holds", "memory"}});
    writer_->tick_now(this);  // look out for servers that want to share, from now on
    return;
  }
  if (errno != EAGAIN && errno != EACCES) {
    // No locks on this file system: nobody can own the ledger alone, every hold is a row.
    log::warn("credit_ledger_lock_unavailable", {{"lock", path.string()}, {"detail", std::strerror(errno)}});
    ::close(lock_fd_);
    lock_fd_ = -1;
    return;
  }
  // Another server owns it: move the epoch so that it writes its holds out and shares.
  bool shared = share_when_owner_yields(
      lock_fd_, [this] { run_blocking(std::make_shared<Op>(this, Op::Kind::kSignal)); },
      std::chrono::steady_clock::now() + wait);
  if (!shared)
    throw std::runtime_error("credit ledger: another scigate server holds " + path.string() +
                             " and did not share the ledger within " + std::to_string(wait.count()) +
                             " ms; is it stopped (SIGSTOP, a debugger)?");
  {
    std::lock_guard g(mirror_);
    lock_ = Lock::kShared;
    shared_since_ = std::chrono::steady_clock::now();
  }
  log::info("credit_ledger_shared", {{"lock", path.string()}, {"holds", "rows"}});
  writer_->tick_now(this);  // try to own it alone once the other server is gone
}

LedgerVisit::LedgerVisit(const std::filesystem::path& db_path, const std::function<void()>& signal,
                         std::chrono::milliseconds wait) {
  const auto path = ledger_lock_path(db_path);
  // Not created here: a server creates it when it claims the ledger, so none exists where no
  // server ever ran (and a CLI run as another user leaves no file the server cannot open).
  fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd_ < 0) {
    shared_ = errno == ENOENT;
    if (!shared_) problem_ = path.string() + ": " + std::strerror(errno);
    return;
  }
  if (ofd_lock(fd_, F_RDLCK)) {
    shared_ = true;  // no owner alone: every server decides holds in transactions
    return;
  }
  if (errno != EAGAIN && errno != EACCES) {
    shared_ = true;  // no locks on this file system: no server can own the ledger alone
    ::close(fd_);
    fd_ = -1;
    return;
  }
  try {
    shared_ = share_when_owner_yields(fd_, signal, std::chrono::steady_clock::now() + wait);
  } catch (const std::exception& e) {  // the signal's transaction (a busy database): warn, do not fail
    problem_ = std::string("asking the server to share the ledger failed: ") + e.what();
    return;
  }
  if (!shared_) problem_ = "the server holding " + path.string() + " did not share the ledger within " +
                           std::to_string(wait.count()) + " ms (stopped?)";
}

LedgerVisit::~LedgerVisit() {
  if (fd_ >= 0) ::close(fd_);
}

bool SqliteLedger::owns_alone() const {
  std::lock_guard g(mirror_);
  return alone_;
}

void SqliteLedger::claim_failed(const std::string& what) {
  std::lock_guard g(mirror_);
  if (lock_ != Lock::kClaiming) return;
  try_lock(F_RDLCK);  // (a downgrade cannot conflict)
  lock_ = Lock::kShared;
  shared_since_ = std::chrono::steady_clock::now();
  writer_->tick_now(this);
  log::error("credit_ledger_claim_failed", {{"detail", what}});
}

std::optional<ReserveResult> SqliteLedger::hold_in_memory(const HoldRequest& req, const credits::HoldSpec& spec) {
  std::lock_guard g(mirror_);
  if (!alone_ || stale_ || next_hold_id_ <= hold_id_end_ || !store_.can_hold_in_memory(spec)) return std::nullopt;
  auto o = store_.hold_in_memory(spec, next_hold_id_);
  // A refusal is left to the writer: it first reloads what changed elsewhere (a grant made a
  // moment ago with `scigate credits grant`, which the mirror sees only at its next poll).
  if (o.kind != credits::ReserveOutcome::Kind::kHeld) return std::nullopt;
  --next_hold_id_;
  ++memory_holds_;
  ReserveResult r;
  r.hold.project = req.project;
  r.hold.id = std::to_string(o.hold_id);
  r.hold.amount = o.held;
  return r;
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
        ++operations_;
        writer_->enqueue(op);
      },
      asio::use_awaitable);
}

void SqliteLedger::run_blocking(std::shared_ptr<Op> op) {
  std::promise<void> done;
  op->done = &done;
  ++operations_;
  writer_->enqueue(op);
  done.get_future().wait();
}

asio::awaitable<ReserveResult> SqliteLedger::reserve(HoldRequest req) {
  ReserveResult r;
  r.hold.project = req.project;
  note_unpriced(req.worst_case);
  MicroCredits amount = rates_.price(req.worst_case);
  if (amount == 0 && req.idempotency_key.empty()) co_return r;  // free: nothing to hold or record

  auto op = std::make_shared<Op>(this, Op::Kind::kReserve);
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
  if (auto in_memory = hold_in_memory(req, op->spec)) co_return std::move(*in_memory);
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

std::shared_ptr<SqliteLedger::Op> SqliteLedger::settle_op(const Hold& hold, const Usage& actual, json result) {
  note_unpriced(actual);
  auto op = std::make_shared<Op>(this, Op::Kind::kSettle);
  op->hold_id = parse_hold_id(hold.id);
  op->project = hold.project;
  op->price = rates_.price(actual);
  op->usage_json = usage_detail(actual, rates_, op->price);
  op->result = std::move(result);
  return op;
}

asio::awaitable<MicroCredits> SqliteLedger::settle(Hold hold, Usage actual, json result) {
  if (hold.id.empty()) co_return 0;  // nothing was held, so nothing can be posted
  auto op = settle_op(hold, actual, std::move(result));
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

std::optional<MicroCredits> SqliteLedger::decide_settle(Op& op) {
  // Only an in-memory hold of a server that owns the ledger alone, with a journal: its amount
  // depends on nothing but the hold, which nobody else can see or void.
  if (op.hold_id >= 0 || !writer_->journaling()) return std::nullopt;
  std::lock_guard g(mirror_);
  if (!alone_ || stale_) return std::nullopt;
  const credits::OpenHold* h = store_.pin(op.hold_id);
  if (!h) return std::nullopt;  // voided, or a row now
  op.hold = *h;
  op.price = credits::posted_for(*h, op.price);
  op.decided = true;
  return op.price;
}

std::optional<MicroCredits> SqliteLedger::settle_queued(Hold hold, Usage actual, json result,
                                                        std::shared_ptr<MicroCredits> posted) {
  if (posted) *posted = 0;
  if (hold.id.empty()) return 0;
  auto op = settle_op(hold, actual, std::move(result));
  op->queued = true;
  ++operations_;
  // The call's audit record follows and wakes the writer (and writes this entry with its own).
  if (auto decided = decide_settle(*op)) {
    if (writer_->enqueue_journaled(op, /*wake_writer=*/false)) return decided;
  }
  op->posted_out = std::move(posted);
  writer_->enqueue(op, /*wake_writer=*/false);
  return std::nullopt;
}

std::shared_ptr<state::Writer::Item> SqliteLedger::decode(std::string_view payload) {
  auto j = json::parse(payload);
  auto op = std::make_shared<Op>(this, Op::Kind::kSettle);
  op->hold.id = j.at("hold").get<int64_t>();
  op->hold.account = j.at("account").get<std::string>();
  op->hold.project = j.at("project").get<std::string>();
  op->hold.user = j.at("user").get<std::string>();
  op->hold.tool = j.at("tool").get<std::string>();
  op->hold.request_id = j.at("request_id").get<std::string>();
  op->hold.amount = j.at("amount").get<int64_t>();
  op->hold.sub_budget = j.at("sub_budget").get<bool>();
  op->hold_id = op->hold.id;
  op->project = op->hold.project;
  op->price = j.at("posted").get<int64_t>();
  op->usage_json = j.at("usage").get<std::string>();
  op->decided = true;
  op->queued = true;
  return op;
}

asio::awaitable<void> SqliteLedger::release(Hold hold) {
  if (hold.id.empty()) co_return;
  auto op = std::make_shared<Op>(this, Op::Kind::kRelease);
  op->hold_id = parse_hold_id(hold.id);
  co_await submit(op);
  if (op->failure) log_hold_event(spdlog::level::err, "credit_release_failed", hold, *op->failure);
}

asio::awaitable<bool> SqliteLedger::extend(Hold hold, std::chrono::seconds timeout) {
  if (hold.id.empty()) co_return false;
  auto op = std::make_shared<Op>(this, Op::Kind::kExtend);
  op->hold_id = parse_hold_id(hold.id);
  op->project = hold.project;
  op->extend_by = timeout;
  co_await submit(op);
  if (op->failure) throw std::runtime_error("credit ledger: " + *op->failure);
  co_return op->extended;
}

void SqliteLedger::release_queued(Hold hold) {
  if (hold.id.empty()) return;
  auto op = std::make_shared<Op>(this, Op::Kind::kRelease);
  op->hold_id = parse_hold_id(hold.id);
  op->project = hold.project;
  op->queued = true;
  ++operations_;
  writer_->enqueue(op, /*wake_writer=*/false);  // the call's audit record follows and wakes it
}

asio::awaitable<UsageReport> SqliteLedger::usage(std::string project, std::string user, bool whole_project) {
  auto op = std::make_shared<Op>(this, Op::Kind::kUsage);
  op->project = std::move(project);
  op->user = std::move(user);
  op->whole_project = whole_project;
  co_await submit(op);
  if (op->failure) throw std::runtime_error("credit ledger: " + *op->failure);
  co_return std::move(op->report);
}

int SqliteLedger::recover_after_restart() {
  auto op = std::make_shared<Op>(this, Op::Kind::kRecover);
  run_blocking(op);
  if (op->failure) throw std::runtime_error("credit ledger recovery failed: " + *op->failure);
  if (op->swept.voided > 0) log::warn("credit_holds_recovered", {{"voided", op->swept.voided}, {"reason", "restart"}});
  return op->swept.voided;
}

credits::SweepCounts SqliteLedger::sweep_now() {
  auto op = std::make_shared<Op>(this, Op::Kind::kSweep);
  run_blocking(op);
  return op->swept;
}

SqliteLedger::Stats SqliteLedger::stats() const {
  state::Writer::Stats w = writer_->stats();
  return Stats{operations_.load(), w.transactions, w.retried_batches, w.failed_items, reloads_.load(),
               w.busy_waits, w.syncs, memory_holds_.load(), yields_.load()};
}

void SqliteLedger::begin() {
  std::lock_guard g(mirror_);
  bool moved = store_.changed_elsewhere();
  if (moved && alone_) {
    // Another connection wrote: `scigate credits grant`, or a server that wants to share the
    // ledger (claim()). Either way our in-memory holds become rows, from this transaction on.
    alone_ = false;
    ++yields_;
    log::info("credit_ledger_yield", {{"memory_holds", store_.has_memory_holds()}});
  }
  if (needs_reload_ || moved) {
    store_.load();  // the first transaction, a grant from the CLI, or state left behind by a rollback
    if (loaded_) ++reloads_;
    loaded_ = true;
    needs_reload_ = false;
    stale_ = false;
  }
  if (!alone_ && store_.has_memory_holds()) store_.persist_memory_holds();
}

void SqliteLedger::before_commit() {
  std::lock_guard g(mirror_);
  store_.flush();
  // Alone, nobody else keeps a mirror of these rows (the CLI reads them afresh).
  if (!alone_) store_.bump_epoch();
}

void SqliteLedger::committed() {
  std::lock_guard g(mirror_);
  store_.committed();
  if (claim_applied_) {
    claim_applied_ = false;
    lock_ = Lock::kExclusive;
    alone_ = true;
    writer_->tick_now(this);
  } else if (lock_ == Lock::kExclusive && !alone_ && !store_.has_memory_holds()) {
    // Every hold is a row now and the rows are committed: let the other server in.
    try_lock(F_RDLCK);  // (a downgrade cannot conflict)
    lock_ = Lock::kShared;
    shared_since_ = std::chrono::steady_clock::now();
    writer_->tick_now(this);
  }
}

void SqliteLedger::rolled_back() noexcept {
  std::lock_guard g(mirror_);
  store_.rolled_back();
  needs_reload_ = true;  // the mirror holds changes the database has just dropped
  stale_ = true;         // and decides no hold in memory until it is reloaded
  claim_applied_ = false;  // (the kClaim is retried alone, or fails: claim_failed())
}

state::Writer::TimePoint SqliteLedger::tick(state::Writer::TimePoint now) {
  if (now >= next_sweep_) {
    next_sweep_ = now + options_.sweep_interval;
    writer_->enqueue(std::make_shared<Op>(this, Op::Kind::kSweep));  // answered to nobody
  }
  // The connection's lock before the mirror's, as in a transaction.
  auto db = writer_->db().lock();
  std::lock_guard g(mirror_);
  switch (lock_) {
    case Lock::kExclusive:
      if (alone_ && store_.changed_elsewhere())
        writer_->enqueue(std::make_shared<Op>(this, Op::Kind::kYield));  // its begin() yields
      return std::min(next_sweep_, now + options_.contender_poll);
    case Lock::kShared:
      if (now - shared_since_ >= options_.reclaim_after && try_lock(F_WRLCK)) {
        lock_ = Lock::kClaiming;  // the other server is gone
        writer_->enqueue(std::make_shared<Op>(this, Op::Kind::kClaim));
      }
      return std::min(next_sweep_, now + std::max(options_.contender_poll, options_.reclaim_after / 4));
    default:
      return next_sweep_;
  }
}

void SqliteLedger::apply(Op& op) {
  std::lock_guard g(mirror_);
  switch (op.kind) {
    case Op::Kind::kClaim:
      if (lock_ != Lock::kClaiming) break;
      // Current, under the write lock, before deciding anything in memory. Operations ahead
      // of it in this transaction changed the mirror: written first, or the reload drops them.
      store_.flush();
      store_.load();
      next_hold_id_ = store_.take_hold_ids(kHoldIdBlock);
      hold_id_end_ = next_hold_id_ - kHoldIdBlock;
      claim_applied_ = true;
      break;  // alone from the COMMIT on (committed())
    case Op::Kind::kSignal:
    case Op::Kind::kYield:
      break;
    case Op::Kind::kInit:
      store_.ensure_accounts();
      op.rates_added = store_.sync_rates(options_.rates);
      break;
    case Op::Kind::kReserve:
      op.reserved = store_.reserve(op.spec);
      break;
    case Op::Kind::kSettle:
      op.posted = op.decided ? store_.settle_decided(op.hold, op.price, op.usage_json)
                             : store_.settle(op.hold_id, op.price, op.usage_json, op.result);
      if (op.posted_out) *op.posted_out = op.posted.value_or(0);
      break;
    case Op::Kind::kRelease:
      op.released = store_.void_hold(op.hold_id, "released");
      break;
    case Op::Kind::kExtend:
      op.extended = store_.extend_hold(op.hold_id, store_.now() + op.extend_by.count());
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
      op.report = store_.report(op.project, op.user, rates_, op.whole_project);
      break;
  }
}

}  // namespace scigate
