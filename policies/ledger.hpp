#pragma once
// The credit stage of the pipeline: two-phase charging in integer micro-credits (1 credit =
// 1,000,000 micro-credits). Tools state what a call uses in resource units (Usage); the ledger
// prices it with its rates table, so one currency covers GPU-hours, tokens, shots and bytes.
//
//   reserve  before the call: hold the priced worst case, or refuse (not enough credits)
//   settle   after the call: post the priced actual usage (never more than the hold), release
//            the rest
//   release  on failure or cancellation: void the hold
//
// A hold is always either settled or released; one left behind by a crash is voided when it
// times out or at restart recovery. All three are coroutines so that an implementation can
// commit durably (and in batches) without blocking an I/O thread.
//
// Thread-safety: all methods may be called concurrently.
#include <boost/asio/awaitable.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "server/common/error.hpp"

namespace scigate {

using MicroCredits = int64_t;
constexpr MicroCredits kMicroPerCredit = 1'000'000;

// One priced quantity: `quantity` units of `resource`, a key of the rates table such as
// "cpu_core_hour", "gpu_hour:a100", "tokens_in:llama-3-8b", "quantum_shot:ibm_kyiv", "gb_staged"
// or "call:echo" (a flat rate per call, which the pipeline adds for every tool). `detail` says
// how the quantity was reached, for the caller ("2 GPU x 4 h").
struct UsageLine {
  std::string resource;
  double quantity = 0;
  std::string detail;
};

struct Usage {
  std::vector<UsageLine> lines;

  Usage& add(std::string resource, double quantity, std::string detail = {}) {
    lines.push_back(UsageLine{std::move(resource), quantity, std::move(detail)});
    return *this;
  }
  bool empty() const { return lines.empty(); }
};

struct HoldRequest {
  std::string project;
  std::string principal;
  std::string tool;
  std::string request_id;
  Usage worst_case;
  // Set for a call that can shrink its work to fit (an inference call's max_tokens): when the
  // worst case is not available but this least useful amount is, everything available is held
  // (Hold::amount says how much) instead of refusing.
  std::optional<Usage> minimum;
  // Retried calls with the same key (per project and caller) are charged once: see Hold::replay.
  std::string idempotency_key;
  std::string arguments_hash;  // a reused key with other arguments is a conflict
  std::chrono::seconds timeout{3600};  // voided after this if never settled
  // Empty: the hold belongs to this server process and is voided at restart recovery if the
  // process died. "job:<gateway id>": a detached hold that outlives the call and the process
  // (a batch job's); restart recovery leaves it open for the job ledger to settle, and only
  // its timeout voids it. "transfer:<id>": the same for a data transfer (the transfer ledger).
  std::string owner;
};

struct Hold {
  std::string id;           // empty when nothing was held (a free call)
  MicroCredits amount = 0;  // what was held
  std::string project;
  // Set when the idempotency key was already settled: the stored result of that call, to be
  // returned again without running the tool or charging.
  std::optional<nlohmann::json> replay;
};

struct ReserveResult {
  std::optional<Error> error;  // insufficient credits, unknown account, key conflict, ...
  Hold hold;
};

// What a project's credits look like to one of its members (the get_usage tool). Amounts in
// micro-credits; times in unix milliseconds.
struct UsageReport {
  bool metered = false;  // false: no ledger (every call is free); the rest is empty
  std::string project;
  std::string account;
  MicroCredits balance = 0;     // grants − charges − lapses; negative while the credit line is used
  MicroCredits held = 0;        // open holds
  MicroCredits available = 0;   // balance + credit_line − held
  MicroCredits credit_line = 0;
  struct Grant {
    int64_t id = 0;
    MicroCredits amount = 0, remaining = 0;
    std::optional<int64_t> expires_ms;
    std::string note;
  };
  std::vector<Grant> grants;    // with something left, earliest expiry first
  struct OpenHold {
    std::string id, user, tool;
    MicroCredits amount = 0;
    int64_t created_ms = 0, expires_ms = 0;
  };
  std::vector<OpenHold> holds;  // newest first, bounded
  struct Charge {
    int64_t time_ms = 0;
    std::string user, tool, request_id;
    MicroCredits amount = 0;
  };
  std::vector<Charge> recent_charges;  // newest first, bounded
  struct Rate {
    std::string resource, unit;
    int64_t pico_per_unit = 0;  // 10^-12 credits per unit
  };
  std::vector<Rate> rates;
  struct SubBudget {
    std::string user;
    MicroCredits balance = 0, held = 0, available = 0;
  };
  std::optional<SubBudget> sub_budget;  // the caller's, when it has one
};

namespace state {
class Writer;
}

class Ledger {
 public:
  virtual ~Ledger() = default;
  virtual boost::asio::awaitable<ReserveResult> reserve(HoldRequest request) = 0;
  // Posts min(price(actual), hold.amount) and releases the rest; returns what was posted.
  // `result` is stored for replay when the hold carried an idempotency key.
  virtual boost::asio::awaitable<MicroCredits> settle(Hold hold, Usage actual, nlohmann::json result) = 0;
  virtual boost::asio::awaitable<void> release(Hold hold) = 0;
  // Keeps an open hold until `timeout` from now (never shortens it): for a detached hold whose
  // work outlives the timeout it was made with (a batch job waiting in a long queue). False
  // when the hold is no longer open (settled, voided); throws when the ledger cannot be reached.
  virtual boost::asio::awaitable<bool> extend(Hold hold, std::chrono::seconds timeout) { co_return !hold.id.empty(); }
  // The writer this ledger's operations go through (nullptr: none). When it is also the audit
  // log's, a call's settle or release can be queued without waiting for it: the call's audit
  // record, queued after it, is written after it — in the same transaction or a later one —
  // and reads what it posted (AuditRecord::cost_posted).
  virtual const state::Writer* writer() const { return nullptr; }
  // settle() without waiting: `posted` receives what was posted before anything queued after
  // it on writer() runs. Returns the amount when it is decided already (the settle is in
  // writer()'s journal, or there is nothing to post): the call's audit record can then be
  // journaled too. Only for a ledger with a writer() (others throw std::logic_error).
  virtual std::optional<MicroCredits> settle_queued(Hold, Usage, nlohmann::json, std::shared_ptr<MicroCredits>) {
    throw std::logic_error("settle_queued on a ledger without a writer");
  }
  // release() without waiting; the same condition.
  virtual void release_queued(Hold) { throw std::logic_error("release_queued on a ledger without a writer"); }
  // The state of `project`'s account as `user` may see it: with `whole_project` (a manager) the
  // holds and charges of every user, else only the user's own.
  virtual boost::asio::awaitable<UsageReport> usage(std::string project, std::string user, bool whole_project) {
    UsageReport r;
    r.project = std::move(project);
    co_return r;
  }
};

// No metering: every hold succeeds with amount zero. Used when [credits] is disabled.
class UnmeteredLedger final : public Ledger {
 public:
  boost::asio::awaitable<ReserveResult> reserve(HoldRequest request) override {
    ReserveResult r;
    r.hold.project = request.project;
    co_return r;
  }
  boost::asio::awaitable<MicroCredits> settle(Hold, Usage, nlohmann::json) override { co_return 0; }
  boost::asio::awaitable<void> release(Hold) override { co_return; }
};

}  // namespace scigate
