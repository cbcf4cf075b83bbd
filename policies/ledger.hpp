#pragma once
// The credit stage of the pipeline: two-phase charging in integer micro-credits. A call's
// worst-case cost is held before it runs; afterwards the actual cost is posted and the rest
// released. A hold is always either settled or released.
//
// Thread-safety: all methods may be called concurrently.
#include <cstdint>
#include <optional>
#include <string>

#include "server/common/error.hpp"

namespace scigate {

using MicroCredits = int64_t;

struct HoldRequest {
  std::string project;
  std::string principal;
  std::string tool;
  std::string request_id;
  MicroCredits amount = 0;
};

struct Hold {
  std::string id;  // empty for a zero-amount (unmetered) hold
  MicroCredits amount = 0;
};

class Ledger {
 public:
  virtual ~Ledger() = default;
  // A hold for the request, or the reason it cannot be held (insufficient credits, ...).
  virtual std::optional<Error> reserve(const HoldRequest& request, Hold& out) = 0;
  virtual void settle(const Hold& hold, MicroCredits actual) = 0;
  virtual void release(const Hold& hold) = 0;
};

// No metering: every hold succeeds with amount zero. The core's default until the ledger is
// configured.
class UnmeteredLedger final : public Ledger {
 public:
  std::optional<Error> reserve(const HoldRequest&, Hold& out) override {
    out = Hold{};
    return std::nullopt;
  }
  void settle(const Hold&, MicroCredits) override {}
  void release(const Hold&) override {}
};

}  // namespace scigate
