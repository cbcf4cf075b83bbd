#include "policies/credit_store.hpp"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>

#include "server/common/crypto.hpp"
#include "server/observability/log.hpp"

namespace scigate::credits {
namespace {

using state::Statement;

std::optional<int64_t> opt_int(const Statement& st, int col) {
  if (st.column_is_null(col)) return std::nullopt;
  return st.column_int(col);
}

// Never throw over bad UTF-8 (a tool's output, a note typed at a terminal): the charge or grant
// must be recorded all the same.
std::string dump_text(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

int64_t expiry_or_never(const Statement& st, int col) {
  return st.column_is_null(col) ? kNever : st.column_int(col);
}

}  // namespace

int64_t system_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Prepared once per store: the writer runs these for every call.
struct CreditStore::Statements {
  explicit Statements(sqlite3* db)
      : insert_hold(db,
                    "INSERT INTO credit_holds(id, account, project, user, tool, request_id, amount, sub_budget, "
                    "created_ms, expires_ms, state, idempotency_key, args_hash, owner) "
                    // An explicit id (an in-memory hold written out, negative), or the next
                    // positive one: not SQLite's max(rowid) + 1, which after negative rows
                    // alone would land among ids in-memory holds have already used.
                    "VALUES (COALESCE(?, MAX(0, COALESCE((SELECT id FROM credit_holds ORDER BY id DESC LIMIT 1), 0)) + 1),"
                    "?,?,?,?,?,?,?,?,?,'open',?,?,?)"),
        settle_hold(db,
                    "UPDATE credit_holds SET state = 'settled', posted = ?, closed_ms = ?, result = ? "
                    "WHERE id = ? AND state = 'open'"),
        void_hold(db,
                  "UPDATE credit_holds SET state = 'voided', posted = 0, closed_ms = ?, void_reason = ? "
                  "WHERE id = ? AND state = 'open'"),
        extend_hold(db, "UPDATE credit_holds SET expires_ms = ? WHERE id = ? AND state = 'open'"),
        insert_posting(db,
                       "INSERT INTO credit_postings(time_ms, account, user, kind, amount, balance_after, sub_budget, "
                       "hold_id, grant_id, tool, request_id, detail) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"),
        update_account(db, "UPDATE credit_accounts SET balance = ?, debt = ? WHERE account = ?"),
        update_user(db, "UPDATE credit_sub_budgets SET balance = ?, debt = ? WHERE account = ? AND user = ?"),
        update_grant(db, "UPDATE credit_grants SET remaining = ? WHERE id = ?"),
        find_key(db,
                 "SELECT state, args_hash, result, created_ms FROM credit_holds "
                 "WHERE project = ? AND idempotency_key = ? AND user = ? ORDER BY id DESC LIMIT 1"),
        epoch(db, "SELECT epoch FROM credit_meta WHERE id = 1"),
        bump(db, "UPDATE credit_meta SET epoch = epoch + 1 WHERE id = 1 RETURNING epoch") {}
  Statement insert_hold, settle_hold, void_hold, extend_hold, insert_posting, update_account, update_user, update_grant, find_key,
      epoch, bump;
};

CreditStore::CreditStore(sqlite3* db, std::vector<ProjectAccount> projects, Clock clock)
    : db_(db), projects_(std::move(projects)), clock_(clock ? std::move(clock) : Clock(system_now_ms)),
      instance_(std::to_string(::getpid()) + "/" + crypto::random_hex(4)) {
  for (const auto& p : projects_) account_of_[p.project] = p.account;
  st_ = std::make_unique<Statements>(db_);
}

CreditStore::~CreditStore() = default;

static void exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errmsg(db);
    sqlite3_free(err);
    throw state::DbError(msg);
  }
}

void CreditStore::begin() { exec(db_, "BEGIN IMMEDIATE"); }
void CreditStore::begin_read() { exec(db_, "BEGIN"); }
void CreditStore::commit() { exec(db_, "COMMIT"); }
void CreditStore::rollback() noexcept {
  // A statement left mid-step by an exception would keep its read open past the rollback.
  for (Statement* st : {&st_->insert_hold, &st_->settle_hold, &st_->void_hold, &st_->extend_hold, &st_->insert_posting,
                        &st_->update_account, &st_->update_user, &st_->update_grant, &st_->find_key, &st_->epoch,
                        &st_->bump})
    st->reset();
  if (!sqlite3_get_autocommit(db_)) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
}

const std::string& CreditStore::account_of(const std::string& project) const {
  auto it = account_of_.find(project);
  return it == account_of_.end() ? project : it->second;
}

const AccountState* CreditStore::account(const std::string& account) const {
  auto it = accounts_.find(account);
  return it == accounts_.end() ? nullptr : &it->second;
}

void CreditStore::load() {
  accounts_.clear();
  std::set<int64_t> pinned;  // rows whose decided settle is queued: they stay pinned
  for (const auto& [id, h] : open_)
    if (!h.in_memory && h.settling) pinned.insert(id);
  std::erase_if(open_, [](const auto& e) { return !e.second.in_memory; });  // rows are reloaded below
  dirty_grants_.clear();
  dirty_accounts_.clear();
  dirty_users_.clear();
  {
    Statement st(db_, "SELECT account, debt, credit_line FROM credit_accounts");
    while (st.step()) {
      auto& a = accounts_[st.column_text(0)];
      a.purse.debt = st.column_int(1);
      a.purse.line = st.column_int(2);
    }
  }
  {
    Statement st(db_, "SELECT account, user, debt FROM credit_sub_budgets");
    while (st.step()) accounts_[st.column_text(0)].users[st.column_text(1)].debt = st.column_int(2);
  }
  {
    Statement st(db_, "SELECT id, account, user, remaining, expires_ms FROM credit_grants WHERE remaining > 0");
    while (st.step()) {
      auto& a = accounts_[st.column_text(1)];
      std::string user = st.column_text(2);
      Purse& p = user.empty() ? a.purse : a.users[user];
      p.insert(GrantSlice{st.column_int(0), expiry_or_never(st, 4), st.column_int(3)});
    }
  }
  {
    Statement st(db_,
                 "SELECT id, account, project, user, tool, request_id, amount, created_ms, expires_ms, sub_budget, "
                 "idempotency_key IS NOT NULL, owner FROM credit_holds WHERE state = 'open'");
    while (st.step()) {
      OpenHold h{st.column_int(0), st.column_text(1), st.column_text(2), st.column_text(3), st.column_text(4),
                 st.column_text(5), st.column_int(6), st.column_int(7), st.column_int(8), st.column_int(9) != 0,
                 st.column_int(10) != 0, st.column_text(11)};
      auto it = accounts_.find(h.account);
      if (it != accounts_.end()) {
        it->second.purse.held += h.amount;
        if (h.sub_budget) it->second.users[h.user].held += h.amount;
      }
      h.settling = pinned.count(h.id) > 0;
      open_.emplace(h.id, std::move(h));
    }
  }
  for (const auto& [id, h] : open_) {
    if (!h.in_memory) continue;
    auto& a = accounts_[h.account];
    a.purse.held += h.amount;
    if (h.sub_budget) a.users[h.user].held += h.amount;
  }
  st_->epoch.reset();
  epoch_ = st_->epoch.step() ? st_->epoch.column_int(0) : 0;
  st_->epoch.reset();
}

bool CreditStore::changed_elsewhere() {
  auto& st = st_->epoch;
  st.reset();
  int64_t e = st.step() ? st.column_int(0) : 0;
  st.reset();
  return e != epoch_;
}

void CreditStore::bump_epoch() {
  auto& st = st_->bump;
  st.reset();
  if (st.step()) epoch_ = st.column_int(0);
  st.reset();
}

void CreditStore::ensure_accounts() {
  int64_t now = clock_();
  Statement ins(db_,
                "INSERT INTO credit_accounts(account, balance, debt, credit_line, created_ms) VALUES (?, 0, 0, ?, ?) "
                "ON CONFLICT(account) DO UPDATE SET credit_line = excluded.credit_line "
                "WHERE credit_line != excluded.credit_line");
  for (const auto& p : projects_) {
    ins.reset();
    ins.bind(1, p.account).bind(2, p.credit_line).bind(3, now);
    ins.step();
    accounts_[p.account].purse.line = p.credit_line;
  }
}

int CreditStore::sync_rates(const std::vector<Rate>& rates) {
  int64_t now = clock_();
  std::map<std::string, RateRow> current;
  for (auto& r : stored_rates(db_, false)) current[r.resource] = r;
  Statement ins(db_, "INSERT OR REPLACE INTO credit_rates(resource, pico_per_unit, unit, effective_ms) VALUES (?,?,?,?)");
  int added = 0;
  auto add = [&](const std::string& resource, int64_t pico, const std::string& unit) {
    ins.reset();
    ins.bind(1, resource).bind(2, pico).bind(3, unit).bind(4, now);
    ins.step();
    ++added;
  };
  for (const auto& r : rates) {
    auto it = current.find(r.resource);
    if (it == current.end() ? r.pico_per_unit != 0
                            : it->second.pico_per_unit != r.pico_per_unit || it->second.unit != r.unit)
      add(r.resource, r.pico_per_unit, r.unit);
    if (it != current.end()) current.erase(it);
  }
  for (const auto& [resource, row] : current) add(resource, 0, row.unit);  // no longer priced
  return added;
}

void CreditStore::post(int64_t time_ms, const std::string& account, const std::string& user, const char* kind,
                       MicroCredits amount, MicroCredits balance_after, bool sub_budget, int64_t hold_id,
                       int64_t grant_id, const std::string& tool, const std::string& request_id,
                       const std::string& detail) {
  auto& st = st_->insert_posting;
  st.reset();
  st.bind(1, time_ms).bind(2, account).bind(3, user).bind(4, kind).bind(5, amount).bind(6, balance_after);
  st.bind(7, int64_t(sub_budget ? 1 : 0));
  if (hold_id) st.bind(8, hold_id); else st.bind_null(8);
  if (grant_id) st.bind(9, grant_id); else st.bind_null(9);
  st.bind(10, tool).bind(11, request_id).bind(12, detail.empty() ? std::string_view("{}") : std::string_view(detail));
  st.step();
}

void CreditStore::lapse(const std::string& account, AccountState& a) {
  int64_t now = clock_();
  if (a.purse.has_expired(now)) {
    for (const auto& l : a.purse.lapse(now)) {
      dirty_grants_[l.grant_id] = l.remaining;
      dirty_accounts_.insert(account);
      post(now, account, "", "lapse", -l.amount, a.purse.balance(), false, 0, l.grant_id, "", "", "");
    }
  }
  for (auto& [user, p] : a.users) {
    if (!p.has_expired(now)) continue;
    for (const auto& l : p.lapse(now)) {
      dirty_grants_[l.grant_id] = l.remaining;
      dirty_users_.insert({account, user});
      post(now, account, user, "allowance_lapse", -l.amount, p.balance(), false, 0, l.grant_id, "", "", "");
    }
  }
}

ReserveOutcome CreditStore::reserve(const HoldSpec& s) { return hold(s, 0); }

bool CreditStore::can_hold_in_memory(const HoldSpec& s) const {
  if (!s.idempotency_key.empty() || !s.owner.empty()) return false;
  auto it = accounts_.find(account_of(s.project));
  if (it == accounts_.end()) return true;  // refused: no account, nothing to write
  int64_t now = clock_();
  if (it->second.purse.has_expired(now)) return false;
  // hold() lapses every expired purse of the account, other users' allowances too: that is
  // writes, which belong in the writer's transaction, not beside an in-memory hold.
  for (const auto& [user, purse] : it->second.users)
    if (purse.has_expired(now)) return false;
  return true;
}

ReserveOutcome CreditStore::hold_in_memory(const HoldSpec& s, int64_t id) { return hold(s, id); }

ReserveOutcome CreditStore::hold(const HoldSpec& s, int64_t memory_id) {
  ReserveOutcome out;
  out.account = account_of(s.project);
  int64_t now = clock_();
  if (!s.idempotency_key.empty()) {
    auto& st = st_->find_key;
    st.reset();
    // A caller's key: another caller's call under the same key is not its to replay (its result
    // was decided and scoped for that caller), nor a conflict. (The hash covers the kind too.)
    st.bind(1, s.project).bind(2, s.idempotency_key).bind(3, s.user);
    if (st.step() && st.column_int(3) > now - s.key_ttl_ms) {
      std::string state = st.column_text(0);
      if (st.column_text(1) != s.args_hash) out.kind = ReserveOutcome::Kind::kKeyOtherArguments;
      else if (state == "open") out.kind = ReserveOutcome::Kind::kKeyRunning;
      else if (state == "settled" && !st.column_is_null(2)) {
        out.kind = ReserveOutcome::Kind::kReplay;
        out.replay = st.column_text(2);
      }
    }
    st.reset();
    if (out.kind != ReserveOutcome::Kind::kHeld) return out;
  }
  auto it = accounts_.find(out.account);
  AccountState* a = it == accounts_.end() ? nullptr : &it->second;
  Purse* user_purse = nullptr;
  if (a) {
    lapse(out.account, *a);
    if (auto u = a->users.find(s.user); u != a->users.end()) user_purse = &u->second;
  }
  MicroCredits amount = s.amount;
  if (amount > 0) {
    // A flexible hold settles for what the account (and the user's sub-budget) can spare, down
    // to min_amount.
    const MicroCredits least = s.min_amount > 0 && s.min_amount < amount ? s.min_amount : amount;
    MicroCredits available = a ? a->purse.available() : 0;
    if (available < least) {
      out.kind = ReserveOutcome::Kind::kInsufficient;
      out.available = available;
      return out;
    }
    if (user_purse && user_purse->available() < least) {
      out.kind = ReserveOutcome::Kind::kSubBudget;
      out.available = user_purse->available();
      return out;
    }
    amount = std::min(amount, available);
    if (user_purse) amount = std::min(amount, user_purse->available());
    if (memory_id != 0 && amount < s.amount) {
      // Less than asked for: the caller asks the writer, which sees grants made elsewhere.
      out.kind = ReserveOutcome::Kind::kInsufficient;
      out.available = amount;
      return out;
    }
  }
  out.held = amount;
  OpenHold h{memory_id, out.account, s.project, s.user, s.tool, s.request_id, amount,
             now, s.expires_ms, user_purse != nullptr, !s.idempotency_key.empty(),
             s.owner.empty() ? instance_ : s.owner, memory_id != 0};
  if (h.in_memory) {
    ++memory_holds_;
  } else {
    insert_hold_row(h, s.idempotency_key, s.args_hash);
    // SQLite picks the id under the write lock: unique across processes sharing the file.
    h.id = sqlite3_last_insert_rowid(db_);
  }
  if (a) a->purse.held += h.amount;
  if (user_purse) user_purse->held += h.amount;
  out.hold_id = h.id;
  open_.emplace(h.id, std::move(h));
  return out;
}

void CreditStore::insert_hold_row(const OpenHold& h, const std::string& key, const std::string& args_hash) {
  auto& st = st_->insert_hold;
  st.reset();
  if (h.id != 0) st.bind(1, h.id); else st.bind_null(1);
  st.bind(2, h.account).bind(3, h.project).bind(4, h.user).bind(5, h.tool).bind(6, h.request_id);
  st.bind(7, h.amount).bind(8, int64_t(h.sub_budget ? 1 : 0)).bind(9, h.created_ms).bind(10, h.expires_ms);
  if (h.keyed) st.bind(11, key).bind(12, args_hash); else st.bind_null(11).bind_null(12);
  st.bind(13, h.owner);
  st.step();
}

int CreditStore::persist_memory_holds() {
  int n = 0;
  for (auto& [id, h] : open_) {
    if (!h.in_memory) continue;
    insert_hold_row(h, "", "");
    h.in_memory = false;
    persisted_in_txn_.push_back(id);
    ++n;
  }
  memory_holds_ = 0;
  return n;
}

int64_t CreditStore::take_hold_ids(int64_t count) {
  Statement st(db_, "UPDATE credit_meta SET hold_floor = hold_floor - ? WHERE id = 1 RETURNING hold_floor");
  st.bind(1, count);
  if (!st.step()) throw state::DbError("credit_meta has no row");
  return st.column_int(0) + count - 1;
}

void CreditStore::committed() {
  settled_in_txn_.clear();
  persisted_in_txn_.clear();
}

void CreditStore::rolled_back() noexcept {
  for (auto id : persisted_in_txn_)
    if (auto it = open_.find(id); it != open_.end()) {
      it->second.in_memory = true;
      ++memory_holds_;
    }
  for (auto& h : settled_in_txn_) {
    ++memory_holds_;
    open_.emplace(h.id, std::move(h));
  }
  committed();
}

void CreditStore::close_hold(OpenHold& h) {
  auto it = accounts_.find(h.account);
  if (it == accounts_.end()) return;
  it->second.purse.held -= h.amount;
  if (h.sub_budget) it->second.users[h.user].held -= h.amount;
}

std::optional<MicroCredits> CreditStore::settle(int64_t hold_id, MicroCredits price, const std::string& usage_json,
                                                const nlohmann::json& result) {
  auto it = open_.find(hold_id);
  if (it == open_.end()) return std::nullopt;
  OpenHold& h = it->second;
  int64_t now = clock_();
  MicroCredits posted = posted_for(h, price);
  close_hold(h);
  MicroCredits balance_after = charge(h, posted);
  if (h.in_memory) {
    // No row to close: the posting below is the record. Kept until the COMMIT, to be reopened
    // (and settled again by the retry) if the transaction rolls back.
    --memory_holds_;
    settled_in_txn_.push_back(h);
  } else {
    auto& st = st_->settle_hold;
    st.reset();
    st.bind(1, posted).bind(2, now);
    std::string stored;
    if (h.keyed && !result.is_null()) {  // (null: charged, but nothing to replay: the key runs again)
      stored = dump_text(result);
      st.bind(3, stored);
    } else {
      st.bind_null(3);
    }
    st.bind(4, hold_id);
    st.step();
    // Written out in this same transaction (a yield to another writer): a rollback takes its
    // row with it, so it must come back as the in-memory hold it was, for the retry to settle.
    if (std::find(persisted_in_txn_.begin(), persisted_in_txn_.end(), hold_id) != persisted_in_txn_.end()) {
      OpenHold again = h;
      again.in_memory = true;
      settled_in_txn_.push_back(std::move(again));
    }
  }
  // A hold of nothing (a keyed free call) leaves no posting: the hold row records the settle.
  if (h.amount > 0)
    post(now, h.account, h.user, "charge", -posted, balance_after, h.sub_budget, h.id, 0, h.tool, h.request_id,
         usage_json);
  open_.erase(it);
  return posted;
}

MicroCredits posted_for(const OpenHold& h, MicroCredits price) {
  if (price > h.amount)
    log::warn("credit_usage_over_hold", {{"hold", h.id},
                                         {"project", h.project},
                                         {"tool", h.tool},
                                         {"request_id", h.request_id},
                                         {"price", price},
                                         {"held", h.amount},
                                         {"detail", "the call used more than its hold, which is all it is charged: the "
                                                    "tool's worst-case estimate fell short"}});
  return std::clamp<MicroCredits>(price, 0, h.amount);
}

MicroCredits CreditStore::charge(const OpenHold& h, MicroCredits posted) {
  auto a = accounts_.find(h.account);
  if (a == accounts_.end() || h.amount <= 0) return 0;
  std::vector<GrantChange> changed;
  a->second.purse.charge(posted, &changed);
  if (h.sub_budget) {
    a->second.users[h.user].charge(posted, &changed);
    dirty_users_.insert({h.account, h.user});
  }
  for (const auto& c : changed) dirty_grants_[c.grant_id] = c.remaining;
  dirty_accounts_.insert(h.account);
  return a->second.purse.balance();
}

const OpenHold* CreditStore::pin(int64_t hold_id) {
  auto it = open_.find(hold_id);
  if (it == open_.end() || !it->second.in_memory) return nullptr;
  it->second.settling = true;
  return &it->second;
}

std::optional<MicroCredits> CreditStore::settle_decided(const OpenHold& hold, MicroCredits posted,
                                                       const std::string& usage_json) {
  posted = std::clamp<MicroCredits>(posted, 0, hold.amount);
  if (open_.count(hold.id)) return settle(hold.id, posted, usage_json, nlohmann::json());
  {
    // A row that is not open: written out while the ledger was shared, then voided by another
    // process (it outlived its timeout). Its credits were released; charging them now could
    // overspend the account, so nothing is posted, as for any settle that finds its hold gone.
    Statement st(db_, "SELECT state FROM credit_holds WHERE id = ?");
    st.bind(1, hold.id);
    if (st.step()) return std::nullopt;
  }
  // No row: the process that held it in memory died and this is the replay of its journal.
  // The call was answered with this charge: post it (the held amount died with the process).
  if (hold.amount > 0)
    post(clock_(), hold.account, hold.user, "charge", -posted, charge(hold, posted), hold.sub_budget, hold.id, 0,
         hold.tool, hold.request_id, usage_json);
  return posted;
}

bool CreditStore::void_hold(int64_t hold_id, const std::string& reason) {
  auto it = open_.find(hold_id);
  if (it == open_.end()) return false;
  close_hold(it->second);
  if (it->second.in_memory) {
    --memory_holds_;  // a void needs no record and stands even if the transaction rolls back
  } else {
    auto& st = st_->void_hold;
    st.reset();
    st.bind(1, clock_()).bind(2, reason).bind(3, hold_id);
    st.step();
  }
  open_.erase(it);
  return true;
}

bool CreditStore::extend_hold(int64_t hold_id, int64_t expires_ms) {
  auto it = open_.find(hold_id);
  if (it == open_.end()) return false;
  if (expires_ms <= it->second.expires_ms) return true;
  it->second.expires_ms = expires_ms;
  if (!it->second.in_memory) {
    auto& st = st_->extend_hold;
    st.reset();
    st.bind(1, expires_ms).bind(2, hold_id);
    st.step();
  }
  return true;
}

int CreditStore::void_orphaned(const std::string& reason) {
  auto orphaned = [&](const std::string& owner) {
    if (owner == instance_) return false;
    if (owner.rfind("job:", 0) == 0) return false;  // detached: settled by the job ledger
    if (owner.rfind("transfer:", 0) == 0) return false;  // detached: settled by the transfer ledger
    long pid = std::strtol(owner.c_str(), nullptr, 10);
    if (pid <= 0 || pid == ::getpid()) return true;  // a dead process whose PID we now have
    return ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
  };
  std::vector<int64_t> ids;
  for (const auto& [id, h] : open_)
    if (orphaned(h.owner)) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (auto id : ids) void_hold(id, reason);
  return static_cast<int>(ids.size());
}

SweepCounts CreditStore::sweep() {
  SweepCounts c;
  int64_t now = clock_();
  std::vector<int64_t> expired;
  for (const auto& [id, h] : open_)
    if (h.expires_ms <= now && !h.settling) expired.push_back(id);
  std::sort(expired.begin(), expired.end());
  for (auto id : expired) c.voided += void_hold(id, "timeout") ? 1 : 0;
  for (auto& [account, a] : accounts_) {
    std::size_t before = dirty_grants_.size();
    lapse(account, a);
    c.lapsed += static_cast<int>(dirty_grants_.size() - before);
  }
  return c;
}

int64_t CreditStore::grant(const std::string& account, const std::string& user, MicroCredits amount,
                           std::optional<int64_t> expires_ms, const std::string& granted_by, const std::string& note) {
  if (amount <= 0) throw std::invalid_argument("a grant must be more than zero");
  int64_t now = clock_();
  MicroCredits line = 0;
  for (const auto& p : projects_)
    if (p.account == account) line = p.credit_line;
  {
    Statement st(db_,
                 "INSERT INTO credit_accounts(account, balance, debt, credit_line, created_ms) VALUES (?, 0, 0, ?, ?) "
                 "ON CONFLICT(account) DO NOTHING");
    st.bind(1, account).bind(2, line).bind(3, now);
    st.step();
  }
  AccountState& a = accounts_[account];
  if (!user.empty() && !a.users.count(user)) {
    Statement st(db_,
                 "INSERT INTO credit_sub_budgets(account, user, balance, debt, created_ms) VALUES (?, ?, 0, 0, ?) "
                 "ON CONFLICT(account, user) DO NOTHING");
    st.bind(1, account).bind(2, user).bind(3, now);
    st.step();
    a.users[user];
  }
  Statement ins(db_,
                "INSERT INTO credit_grants(account, user, amount, remaining, granted_ms, expires_ms, granted_by, note) "
                "VALUES (?,?,?,?,?,?,?,?)");
  ins.bind(1, account).bind(2, user).bind(3, amount).bind(4, amount).bind(5, now);
  if (expires_ms) ins.bind(6, *expires_ms); else ins.bind_null(6);
  ins.bind(7, granted_by).bind(8, note);
  ins.step();
  int64_t id = sqlite3_last_insert_rowid(db_);
  Purse& p = user.empty() ? a.purse : a.users[user];
  MicroCredits remaining = p.add_grant(id, expires_ms.value_or(kNever), amount);
  if (remaining != amount) dirty_grants_[id] = remaining;
  nlohmann::json detail = nlohmann::json::object();
  detail["granted_by"] = granted_by;
  if (!note.empty()) detail["note"] = note;
  if (expires_ms) detail["expires_ms"] = *expires_ms;
  if (user.empty()) {
    dirty_accounts_.insert(account);
    post(now, account, "", "grant", amount, p.balance(), false, 0, id, "", "", dump_text(detail));
  } else {
    dirty_users_.insert({account, user});
    post(now, account, user, "allowance", amount, p.balance(), false, 0, id, "", "", dump_text(detail));
  }
  return id;
}

int CreditStore::prune_results(int64_t before_ms) {
  Statement st(db_, "UPDATE credit_holds SET result = NULL WHERE result IS NOT NULL AND created_ms < ?");
  st.bind(1, before_ms);
  st.step();
  return sqlite3_changes(db_);
}

void CreditStore::flush() {
  for (const auto& name : dirty_accounts_) {
    auto it = accounts_.find(name);
    if (it == accounts_.end()) continue;
    auto& st = st_->update_account;
    st.reset();
    st.bind(1, it->second.purse.balance()).bind(2, it->second.purse.debt).bind(3, name);
    st.step();
  }
  for (const auto& [account, user] : dirty_users_) {
    const Purse& p = accounts_[account].users[user];
    auto& st = st_->update_user;
    st.reset();
    st.bind(1, p.balance()).bind(2, p.debt).bind(3, account).bind(4, user);
    st.step();
  }
  for (const auto& [id, remaining] : dirty_grants_) {
    auto& st = st_->update_grant;
    st.reset();
    st.bind(1, remaining).bind(2, id);
    st.step();
  }
  dirty_accounts_.clear();
  dirty_users_.clear();
  dirty_grants_.clear();
}

UsageReport CreditStore::report(const std::string& project, const std::string& user, const RateTable& rates,
                                bool whole_project, int recent) {
  flush();
  UsageReport r;
  r.metered = true;
  r.project = project;
  r.account = account_of(project);
  if (auto it = accounts_.find(r.account); it != accounts_.end()) {
    lapse(r.account, it->second);
    flush();
    const AccountState& a = it->second;
    r.balance = a.purse.balance();
    r.held = a.purse.held;
    r.credit_line = a.purse.line;
    r.available = a.purse.available();
    if (auto u = a.users.find(user); u != a.users.end())
      r.sub_budget = UsageReport::SubBudget{user, u->second.balance(), u->second.held, u->second.available()};
  }
  {
    Statement st(db_,
                 "SELECT id, amount, remaining, expires_ms, note FROM credit_grants "
                 "WHERE account = ? AND user = '' AND remaining > 0 ORDER BY COALESCE(expires_ms, 9223372036854775807), id "
                 "LIMIT ?");
    st.bind(1, r.account).bind(2, int64_t(recent));
    while (st.step())
      r.grants.push_back(UsageReport::Grant{st.column_int(0), st.column_int(1), st.column_int(2), opt_int(st, 3),
                                            st.column_text(4)});
  }
  std::vector<const OpenHold*> holds;
  for (const auto& [id, h] : open_)
    if (h.account == r.account && (whole_project || h.user == user)) holds.push_back(&h);
  std::sort(holds.begin(), holds.end(), [](auto* a, auto* b) { return a->id > b->id; });
  if (holds.size() > static_cast<std::size_t>(recent)) holds.resize(static_cast<std::size_t>(recent));
  for (const auto* h : holds)
    r.holds.push_back(UsageReport::OpenHold{std::to_string(h->id), h->user, h->tool, h->amount, h->created_ms,
                                            h->expires_ms});
  if (whole_project) {
    Statement st(db_,
                 "SELECT time_ms, user, tool, request_id, amount FROM credit_postings "
                 "WHERE account = ? AND kind = 'charge' ORDER BY seq DESC LIMIT ?");
    st.bind(1, r.account).bind(2, int64_t(recent));
    while (st.step())
      r.recent_charges.push_back(UsageReport::Charge{st.column_int(0), st.column_text(1), st.column_text(2),
                                                     st.column_text(3), -st.column_int(4)});
  } else {
    // Bounded: a member's view never scans a large account's whole history.
    Statement st(db_,
                 "SELECT time_ms, user, tool, request_id, amount FROM ("
                 "SELECT seq, time_ms, user, tool, request_id, amount FROM credit_postings "
                 "WHERE account = ? AND kind = 'charge' ORDER BY seq DESC LIMIT ?) "
                 "WHERE user = ? ORDER BY seq DESC LIMIT ?");
    st.bind(1, r.account).bind(2, int64_t(kOwnChargesScanned)).bind(3, user).bind(4, int64_t(recent));
    while (st.step())
      r.recent_charges.push_back(UsageReport::Charge{st.column_int(0), st.column_text(1), st.column_text(2),
                                                     st.column_text(3), -st.column_int(4)});
  }
  for (const auto& rate : rates.all())
    if (rate.pico_per_unit > 0) r.rates.push_back(UsageReport::Rate{rate.resource, rate.unit, rate.pico_per_unit});
  return r;
}

std::vector<PostingRow> postings(sqlite3* db, const std::string& account, int64_t since_ms) {
  Statement st(db,
               "SELECT seq, time_ms, account, user, kind, amount, balance_after, sub_budget, hold_id, grant_id, tool, "
               "request_id, detail FROM credit_postings WHERE account = ? AND time_ms >= ? ORDER BY seq");
  st.bind(1, account).bind(2, since_ms);
  std::vector<PostingRow> out;
  while (st.step())
    out.push_back(PostingRow{st.column_int(0), st.column_int(1), st.column_text(2), st.column_text(3),
                             st.column_text(4), st.column_int(5), st.column_int(6), st.column_int(7) != 0,
                             opt_int(st, 8), opt_int(st, 9), st.column_text(10), st.column_text(11),
                             st.column_text(12)});
  return out;
}

MicroCredits balance_before(sqlite3* db, const std::string& account, int64_t since_ms) {
  Statement st(db,
               "SELECT COALESCE(SUM(amount), 0) FROM credit_postings WHERE account = ? AND time_ms < ? "
               "AND kind IN ('grant', 'charge', 'lapse')");
  st.bind(1, account).bind(2, since_ms);
  st.step();
  return st.column_int(0);
}

std::vector<RateRow> stored_rates(sqlite3* db, bool history) {
  Statement st(db, history ? "SELECT resource, unit, pico_per_unit, effective_ms FROM credit_rates "
                             "ORDER BY resource, effective_ms"
                           : "SELECT r.resource, r.unit, r.pico_per_unit, r.effective_ms FROM credit_rates r "
                             "WHERE r.effective_ms = (SELECT MAX(effective_ms) FROM credit_rates x "
                             "WHERE x.resource = r.resource) ORDER BY r.resource");
  std::vector<RateRow> out;
  while (st.step()) {
    RateRow r{st.column_text(0), st.column_text(1), st.column_int(2), st.column_int(3)};
    if (history || r.pico_per_unit > 0) out.push_back(std::move(r));
  }
  return out;
}

Verification verify(sqlite3* db, int64_t now_ms) {
  Verification v;
  auto problem = [&](std::string p) {
    v.ok = false;
    v.problems.push_back(std::move(p));
  };
  auto scalar = [&](const std::string& sql, const std::vector<std::string>& args) {
    Statement st(db, sql);
    for (std::size_t i = 0; i < args.size(); ++i) st.bind(static_cast<int>(i) + 1, args[i]);
    st.step();
    return st.column_int(0);
  };
  Statement accounts(db, "SELECT account, balance, debt, credit_line FROM credit_accounts ORDER BY account");
  while (accounts.step()) {
    ++v.accounts;
    std::string a = accounts.column_text(0);
    MicroCredits balance = accounts.column_int(1), debt = accounts.column_int(2), line = accounts.column_int(3);
    std::string who = "account " + a + ": ";
    MicroCredits posted = scalar(
        "SELECT COALESCE(SUM(amount), 0) FROM credit_postings WHERE account = ? AND kind IN ('grant','charge','lapse')",
        {a});
    MicroCredits granted =
        scalar("SELECT COALESCE(SUM(amount), 0) FROM credit_grants WHERE account = ? AND user = ''", {a});
    MicroCredits granted_posted =
        scalar("SELECT COALESCE(SUM(amount), 0) FROM credit_postings WHERE account = ? AND kind = 'grant'", {a});
    MicroCredits remaining =
        scalar("SELECT COALESCE(SUM(remaining), 0) FROM credit_grants WHERE account = ? AND user = ''", {a});
    MicroCredits held =
        scalar("SELECT COALESCE(SUM(amount), 0) FROM credit_holds WHERE account = ? AND state = 'open'", {a});
    if (balance != posted)
      problem(who + "balance " + format(balance) + " but its postings sum to " + format(posted));
    if (granted != granted_posted)
      problem(who + "grants sum to " + format(granted) + " but grant postings to " + format(granted_posted));
    if (balance != remaining - debt)
      problem(who + "balance " + format(balance) + " but grants' remaining − debt is " + format(remaining - debt));
    if (debt < 0 || debt > line)
      problem(who + "credit line used " + format(debt) + " beyond its limit " + format(line));
    if (balance - held < -line)
      problem(who + "holds " + format(held) + " exceed the balance " + format(balance) + " and credit line");
    Statement last(db, "SELECT balance_after FROM credit_postings WHERE account = ? AND kind IN ('grant','charge','lapse') "
                       "ORDER BY seq DESC LIMIT 1");
    last.bind(1, a);
    if (last.step() && last.column_int(0) != balance)
      problem(who + "the last posting says balance " + format(last.column_int(0)) + ", the account " + format(balance));
    Statement users(db, "SELECT user, balance, debt FROM credit_sub_budgets WHERE account = ?");
    users.bind(1, a);
    while (users.step()) {
      std::string u = users.column_text(0);
      MicroCredits ub = users.column_int(1), ud = users.column_int(2);
      MicroCredits upost = scalar(
          "SELECT COALESCE(SUM(amount), 0) FROM credit_postings WHERE account = ? AND user = ? AND "
          "(kind IN ('allowance', 'allowance_lapse') OR (kind = 'charge' AND sub_budget = 1))",
          {a, u});
      MicroCredits urem =
          scalar("SELECT COALESCE(SUM(remaining), 0) FROM credit_grants WHERE account = ? AND user = ?", {a, u});
      if (ub != upost || ub != urem - ud)
        problem(who + "sub-budget of " + u + ": balance " + format(ub) + ", postings " + format(upost) +
                ", remaining − debt " + format(urem - ud));
    }
  }
  if (auto n = scalar("SELECT COUNT(*) FROM credit_holds WHERE posted > amount", {}); n > 0)
    problem(std::to_string(n) + " holds posted more than they held");
  if (auto n = scalar("SELECT COUNT(*) FROM credit_holds h WHERE h.state = 'settled' AND h.amount > 0 AND "
                      "(SELECT COUNT(*) FROM credit_postings p WHERE p.hold_id = h.id AND p.kind = 'charge' "
                      "AND -p.amount = h.posted) != 1",
                      {});
      n > 0)
    problem(std::to_string(n) + " settled holds without exactly one matching charge");
  // A charge of an in-memory hold (negative id) has no hold row unless the hold was written out.
  if (auto n = scalar("SELECT COUNT(*) FROM credit_postings p WHERE p.kind = 'charge' AND NOT EXISTS "
                      "(SELECT 1 FROM credit_holds h WHERE h.id = p.hold_id AND h.state = 'settled') AND NOT "
                      "(p.hold_id < 0 AND NOT EXISTS (SELECT 1 FROM credit_holds h WHERE h.id = p.hold_id))",
                      {});
      n > 0)
    problem(std::to_string(n) + " charges without a settled hold");
  if (auto n = scalar("SELECT COUNT(*) FROM (SELECT hold_id FROM credit_postings WHERE kind = 'charge' AND "
                      "hold_id IS NOT NULL GROUP BY hold_id HAVING COUNT(*) > 1)",
                      {});
      n > 0)
    problem(std::to_string(n) + " holds charged more than once");
  v.holds_open = static_cast<int>(scalar("SELECT COUNT(*) FROM credit_holds WHERE state = 'open'", {}));
  Statement stale(db, "SELECT COUNT(*) FROM credit_holds WHERE state = 'open' AND expires_ms <= ?");
  stale.bind(1, now_ms);
  stale.step();
  if (stale.column_int(0) > 0) problem(std::to_string(stale.column_int(0)) + " open holds are past their timeout");
  return v;
}

}  // namespace scigate::credits
