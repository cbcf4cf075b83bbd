#pragma once
// The credit ledger's state in SQLite (tables credit_*, migration 3) and its in-memory mirror.
//
// A CreditStore owns no connection and no thread: it runs on the connection and thread of its
// user — the server's ledger writer thread, or a CLI command — inside transactions that user
// opens. Every operation changes the mirror and writes the rows in the same transaction; grant
// and account rows are written once per transaction (flush()). After a rollback the mirror is
// stale: reload with load().
//
// The mirror is what makes check-and-hold cheap (no SUM over holds or grants per call). Every
// writing transaction bumps credit_meta.epoch (bump_epoch()); a store that finds the epoch
// moved under it (scigate credits grant, a second server on the same file) reloads before it
// decides anything (changed_elsewhere()). One server per database reloads never.
//
// Holds in memory: a store whose ledger owns the database alone (SqliteLedger::claim) may keep
// plain holds — no idempotency key, not detached — in the mirror only (hold_in_memory), with
// negative ids; their settle writes the charge's posting and nothing else. Nobody else can see
// them, so before another server shares the database they are written out as ordinary open rows
// (persist_memory_holds). A process that dies takes its in-memory holds with it, as restart
// recovery would void them anyway.
//
// Not thread-safe.
#include <sqlite3.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "policies/credits.hpp"
#include "policies/ledger.hpp"
#include "server/state/database.hpp"

namespace scigate::credits {

using Clock = std::function<int64_t()>;  // unix milliseconds
int64_t system_now_ms();

// Which account pays for a project's calls (ProjectConfig::credit_account) and its credit line.
struct ProjectAccount {
  std::string project;
  std::string account;
  MicroCredits credit_line = 0;
};

struct AccountState {
  Purse purse;
  std::map<std::string, Purse> users;  // sub-budgets: users with allowance grants
};

struct OpenHold {
  int64_t id = 0;
  std::string account, project, user, tool, request_id;
  MicroCredits amount = 0;
  int64_t created_ms = 0, expires_ms = 0;
  bool sub_budget = false;  // also held against the user's sub-budget
  bool keyed = false;       // carries an idempotency key: settle stores the result
  std::string owner;        // "PID/instance" of the store that made it
  bool in_memory = false;   // no row (yet): see "Holds in memory" above
  bool settling = false;    // its settle is decided and queued (pin()): the sweep leaves it
};

// What a settle posts for `price`: never more than the hold (CREDITS.md), and never less than
// nothing. A price above the hold means the hold was not the call's worst case (a tool's
// estimate fell short): charged up to the hold, and logged (credit_usage_over_hold) so that the
// shortfall is seen rather than silently given away.
MicroCredits posted_for(const OpenHold& h, MicroCredits price);

struct HoldSpec {
  std::string project, user, tool, request_id;
  MicroCredits amount = 0;
  // Less than `amount`: a flexible hold. When `amount` is not available but this is, the hold
  // takes everything available (ReserveOutcome::held says how much).
  MicroCredits min_amount = 0;
  int64_t expires_ms = 0;
  std::string idempotency_key, args_hash;  // key empty: none
  int64_t key_ttl_ms = 86'400'000;
  std::string owner;  // "job:<id>": detached, survives restart recovery; empty: this store
};

struct ReserveOutcome {
  enum class Kind {
    kHeld,              // hold_id is open
    kReplay,            // the key was settled: `replay` is the stored result
    kInsufficient,      // the account cannot cover it: `available`
    kSubBudget,         // the user's sub-budget cannot cover it: `available` is the sub-budget's
    kKeyRunning,        // the key's first call is still running
    kKeyOtherArguments  // the key was used with other arguments
  } kind = Kind::kHeld;
  int64_t hold_id = 0;
  MicroCredits held = 0;  // kHeld: what the hold took (`amount`, or less for a flexible hold)
  std::string replay;
  MicroCredits available = 0;
  std::string account;
};

struct SweepCounts {
  int voided = 0;
  int lapsed = 0;
};

class CreditStore {
 public:
  CreditStore(sqlite3* db, std::vector<ProjectAccount> projects, Clock clock);
  ~CreditStore();

  void begin();   // BEGIN IMMEDIATE
  void begin_read();  // BEGIN (a consistent snapshot for reports)
  void commit();
  void rollback() noexcept;

  // (Re)loads the mirror from the database. Inside a transaction.
  void load();
  // Whether another connection changed credit state since this store last loaded or wrote
  // (credit_meta.epoch moved).
  bool changed_elsewhere();
  // Marks this transaction's changes for other stores (call before commit when writing).
  void bump_epoch();
  // Creates the configured projects' accounts and sets their credit lines.
  void ensure_accounts();
  // Records the configured rates: a new effective row for each rate that changed (or appeared),
  // a zero rate for one that is gone. Returns how many rows were added.
  int sync_rates(const std::vector<Rate>& rates);

  ReserveOutcome reserve(const HoldSpec& spec);
  // Whether `spec` may be held in memory: no idempotency key (its lookup and replay need the
  // row), not detached (it must outlive the process), and no grant of the account or of the
  // user's sub-budget due to lapse (a lapse writes postings).
  bool can_hold_in_memory(const HoldSpec& spec) const;
  // reserve() without a row: the hold, with id `id` (negative), lives in the mirror only. Only
  // a whole hold: one that would take less than spec.amount is refused (kInsufficient).
  ReserveOutcome hold_in_memory(const HoldSpec& spec, int64_t id);
  bool has_memory_holds() const { return memory_holds_ > 0; }
  // Writes every in-memory hold as an open row with the same id. Inside a transaction.
  int persist_memory_holds();
  // Takes `count` in-memory hold ids below credit_meta.hold_floor (moving it down) and returns
  // the highest; the block is [highest − count + 1, highest]. Inside a transaction.
  int64_t take_hold_ids(int64_t count);
  // The transaction that ran this store's operations committed, or rolled back. After a
  // rollback, in-memory holds settled in it are open again (their postings are gone; the
  // settle is retried) and holds written out in it are in memory again; the rows' side needs
  // load().
  void committed();
  void rolled_back() noexcept;
  // Posts min(price, held) for an open hold and closes it; nullopt when the hold is not open
  // (voided by the sweeper or at restart). `result` is stored for replay when the hold is keyed.
  std::optional<MicroCredits> settle(int64_t hold_id, MicroCredits price, const std::string& usage_json,
                                     const nlohmann::json& result);
  // A settle decided before it runs (SqliteLedger::settle_queued with a journal): pin() marks
  // an open in-memory hold so that the sweep leaves it to its settle (nullptr: not open, or a
  // row);
  // settle_decided() then posts min(posted, hold.amount) — through settle() while the hold is
  // open; straight to the account when it never had a row (a replay after a crash: the hold
  // died with the process); nullopt when its row was voided (by another process, past its
  // timeout, while the ledger was shared).
  const OpenHold* pin(int64_t hold_id);
  std::optional<MicroCredits> settle_decided(const OpenHold& hold, MicroCredits posted, const std::string& usage_json);
  bool void_hold(int64_t hold_id, const std::string& reason);
  // Moves an open hold's expiry to `expires_ms` (never earlier than it is). False when the hold
  // is not open (settled, voided).
  bool extend_hold(int64_t hold_id, int64_t expires_ms);
  // Restart recovery: voids the open holds whose owner process is gone (another ledger in this
  // process included: one ledger per database per process). Processes sharing a SQLite file in
  // WAL mode share a host, so "gone" is a PID that no longer exists.
  int void_orphaned(const std::string& reason);
  // Voids open holds past their expiry and lapses expired grants.
  SweepCounts sweep();
  // Adds credits to a project account (`user` empty) or to a user's sub-budget within it.
  // Returns the grant id.
  int64_t grant(const std::string& account, const std::string& user, MicroCredits amount,
                std::optional<int64_t> expires_ms, const std::string& granted_by, const std::string& note);
  // Forgets stored results of keyed calls made before `before_ms` (their keys have expired).
  int prune_results(int64_t before_ms);
  // Writes the changed account, sub-budget and grant rows.
  void flush();

  // For reports, inside a transaction. recent: how many holds and charges to list.
  // `whole_project`: the holds and charges of every user; else only `user`'s, found among the
  // account's last kOwnChargesScanned charges.
  static constexpr int kOwnChargesScanned = 5000;
  UsageReport report(const std::string& project, const std::string& user, const RateTable& rates, bool whole_project,
                     int recent = 20);

  const std::string& account_of(const std::string& project) const;
  const AccountState* account(const std::string& account) const;
  const std::unordered_map<std::string, AccountState>& accounts() const { return accounts_; }
  const std::unordered_map<int64_t, OpenHold>& open_holds() const { return open_; }
  int64_t now() const { return clock_(); }
  sqlite3* db() const { return db_; }

 private:
  struct Statements;
  void post(int64_t time_ms, const std::string& account, const std::string& user, const char* kind,
            MicroCredits amount, MicroCredits balance_after, bool sub_budget, int64_t hold_id, int64_t grant_id,
            const std::string& tool, const std::string& request_id, const std::string& detail);
  void lapse(const std::string& account, AccountState& a);
  void close_hold(OpenHold& h);
  MicroCredits charge(const OpenHold& h, MicroCredits posted);  // returns the balance after
  ReserveOutcome hold(const HoldSpec& spec, int64_t memory_id);  // memory_id 0: a row
  void insert_hold_row(const OpenHold& h, const std::string& key, const std::string& args_hash);

  sqlite3* db_;
  std::vector<ProjectAccount> projects_;
  std::unordered_map<std::string, std::string> account_of_;
  Clock clock_;
  std::unique_ptr<Statements> st_;
  std::unordered_map<std::string, AccountState> accounts_;
  std::unordered_map<int64_t, OpenHold> open_;
  std::map<int64_t, MicroCredits> dirty_grants_;
  std::set<std::string> dirty_accounts_;
  std::set<std::pair<std::string, std::string>> dirty_users_;
  std::vector<OpenHold> settled_in_txn_;   // in-memory holds settled in the open transaction
  std::vector<int64_t> persisted_in_txn_;  // in-memory holds written out in it
  std::size_t memory_holds_ = 0;           // open holds with in_memory
  std::string instance_;  // this store's owner tag: "PID/random"
  int64_t epoch_ = -1;
};

// Every posting of an account since `since_ms`, oldest first (for statements).
struct PostingRow {
  int64_t seq = 0, time_ms = 0;
  std::string account, user, kind;
  MicroCredits amount = 0, balance_after = 0;
  bool sub_budget = false;
  std::optional<int64_t> hold_id, grant_id;
  std::string tool, request_id, detail;
};
std::vector<PostingRow> postings(sqlite3* db, const std::string& account, int64_t since_ms);
// The balance of an account just before `since_ms` (the statement's opening balance).
MicroCredits balance_before(sqlite3* db, const std::string& account, int64_t since_ms);

// The rates table: current rates (latest row per resource, zero rates left out), or every row.
struct RateRow {
  std::string resource, unit;
  int64_t pico_per_unit = 0, effective_ms = 0;
};
std::vector<RateRow> stored_rates(sqlite3* db, bool history);

// Checks the ledger's invariants from the rows alone:
//   per account   balance = Σ postings = Σ grants − Σ charges − Σ lapses = Σ remaining − debt,
//                 debt ≤ credit line, balance − held ≥ −credit line
//   per sub-budget the same, from its allowances and the charges drawn from it
//   per hold      posted ≤ amount; a settled hold has exactly one charge of that amount
//   no open hold past its expiry (`now_ms`)
struct Verification {
  bool ok = true;
  int accounts = 0, holds_open = 0;
  std::vector<std::string> problems;
};
Verification verify(sqlite3* db, int64_t now_ms);

}  // namespace scigate::credits
