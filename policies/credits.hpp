#pragma once
// The arithmetic of the credit ledger, free of storage and threads: amounts as text, pricing a
// Usage with the rates table, and a Purse (a project account or a user's sub-budget) that
// draws charges from its grants, earliest expiry first, and lapses expired grants.
//
// Everything is integer: amounts in micro-credits, rates in pico-credits per unit, quantities
// in micro-units. Nothing here is thread-safe; RateTable is immutable after construction and
// may be shared.
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "policies/ledger.hpp"

namespace scigate::credits {

constexpr int64_t kPicoPerMicro = 1'000'000;        // rates are pico-credits per unit
constexpr int64_t kNever = std::numeric_limits<int64_t>::max();  // expires_ms of a grant that never expires

// "12.5", "0.000001", "-3": micro-credits as credits, exact, no trailing zeros.
std::string format(MicroCredits micro);
// A credit amount typed by a person ("12.5", "1000"); nullopt (with *why) when it is not a
// number or has more than 6 decimal places.
std::optional<MicroCredits> parse(std::string_view text, std::string* why = nullptr);
// A rate in pico-credits per unit as credits ("1.5", "0.0000002").
std::string format_rate(int64_t pico_per_unit);

struct Rate {
  std::string resource;
  int64_t pico_per_unit = 0;
  std::string unit;
};

// The rates in force. Pricing a Usage: each line's quantity is taken to 6 decimals (micro-units),
// multiplied by its rate, the lines summed exactly, and the total rounded up to a whole
// micro-credit. Resources without a rate (or with rate 0) are free, except that an untyped
// resource ("gpu_hour") without a rate of its own is priced at its dearest typed rate
// ("gpu_hour:a100"): the type it will get is not known when it is asked for.
class RateTable {
 public:
  RateTable() = default;
  explicit RateTable(std::vector<Rate> rates);

  const Rate* find(const std::string& resource) const;
  const std::vector<Rate>& all() const { return rates_; }
  bool empty() const { return rates_.empty(); }

  // The price of `usage`; saturates at kTooMuch (which no balance covers) instead of overflowing.
  MicroCredits price(const Usage& usage) const;
  // How the price came about, for people: "2 GPU × 4 h × 1.5/GPU-h + 1 call × 0.1/call". Only
  // priced lines appear; a line's `detail` is used when it has one, else "<quantity> <unit>".
  std::string explain(const Usage& usage) const;
  // The resources of `usage` that have no rate.
  std::vector<std::string> unpriced(const Usage& usage) const;

  static constexpr MicroCredits kTooMuch = std::numeric_limits<int64_t>::max() / 4;

 private:
  std::vector<Rate> rates_;
  std::map<std::string, std::size_t, std::less<>> index_;
  std::map<std::string, std::size_t, std::less<>> dearest_;  // base without a rate -> its dearest typed rate
};

// One grant's unspent part, as a purse holds it.
struct GrantSlice {
  int64_t id = 0;
  int64_t expires_ms = kNever;
  MicroCredits remaining = 0;
};

// What a change did to a grant, for writing back: its new remaining amount.
struct GrantChange {
  int64_t grant_id;
  MicroCredits remaining;
};

struct Lapse {
  int64_t grant_id;
  MicroCredits amount;    // what lapsed now
  MicroCredits remaining; // what the grant keeps (for open holds made before it expired)
};

// A project's account or one user's sub-budget within it.
//
//   balance   = Σ grants' remaining − debt          (= Σ grants − Σ charges − Σ lapses)
//   available = balance + line − held
//
// Charges draw from the grant that expires first (never-expiring grants last); what the grants
// cannot cover becomes debt, drawn on the credit line. A new grant repays debt first. An
// expired grant's remaining lapses, except the part that holds made before the expiry still
// need (available never drops below zero through a lapse), which lapses once they resolve.
struct Purse {
  std::vector<GrantSlice> grants;  // remaining > 0, ordered by (expires_ms, id)
  MicroCredits debt = 0;           // credit line in use
  MicroCredits line = 0;           // credit line: how far below zero the balance may go
  MicroCredits held = 0;           // open holds

  MicroCredits balance() const;
  MicroCredits available() const { return balance() + line - held; }
  // Draws `amount` (>= 0); appends the grants it changed to *changed.
  void charge(MicroCredits amount, std::vector<GrantChange>* changed);
  // Adds a grant of `amount`; returns the part left after repaying debt (its remaining).
  MicroCredits add_grant(int64_t id, int64_t expires_ms, MicroCredits amount);
  // Lapses what is lapsable of the grants expired at `now_ms`.
  std::vector<Lapse> lapse(int64_t now_ms);
  // Whether some grant has expired at `now_ms` (cheap: grants are ordered by expiry).
  bool has_expired(int64_t now_ms) const { return !grants.empty() && grants.front().expires_ms <= now_ms; }
  void insert(GrantSlice g);
};

}  // namespace scigate::credits
