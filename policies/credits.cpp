#include "policies/credits.hpp"

#include <algorithm>
#include <cmath>

#include "server/common/decimal.hpp"

namespace scigate::credits {
namespace {

// A quantity in micro-units. Quantities are doubles from tools ("4 h", "1e6 tokens"); going
// through the nearest micro-unit keeps 0.1 h from pricing as 0.1000000000000000055 h.
int64_t micro_units(double q) {
  if (!(q > 0)) return 0;  // NaN, zero and negative use nothing
  double m = std::nearbyint(q * 1e6);
  if (m >= 9.0e18) return std::numeric_limits<int64_t>::max();
  return static_cast<int64_t>(m);
}

}  // namespace

std::string format(MicroCredits micro) { return decimal::format(micro, 6); }

std::optional<MicroCredits> parse(std::string_view text, std::string* why) { return decimal::parse(text, 6, why); }

std::string format_rate(int64_t pico_per_unit) { return decimal::format(pico_per_unit, 12); }

RateTable::RateTable(std::vector<Rate> rates) : rates_(std::move(rates)) {
  for (std::size_t i = 0; i < rates_.size(); ++i) index_[rates_[i].resource] = i;
  // "gpu_hour" without a rate of its own: the dearest "gpu_hour:<type>" prices it, so a job
  // that asks for GPUs of no particular type is never free where only typed GPUs have rates.
  for (std::size_t i = 0; i < rates_.size(); ++i) {
    const std::string& r = rates_[i].resource;
    auto colon = r.find(':');
    if (colon == std::string::npos || colon == 0) continue;
    std::string base = r.substr(0, colon);
    if (index_.count(base)) continue;
    auto [it, fresh] = dearest_.emplace(base, i);
    if (!fresh && rates_[i].pico_per_unit > rates_[it->second].pico_per_unit) it->second = i;
  }
}

const Rate* RateTable::find(const std::string& resource) const {
  if (auto it = index_.find(resource); it != index_.end()) return &rates_[it->second];
  if (auto it = dearest_.find(resource); it != dearest_.end()) return &rates_[it->second];
  return nullptr;
}

MicroCredits RateTable::price(const Usage& usage) const {
  if (rates_.empty()) return 0;
  // Σ micro-units × pico-credits/unit is in 10^-18 credits; 10^12 of those make a micro-credit.
  __int128 total = 0;
  constexpr __int128 kScale = static_cast<__int128>(kPicoPerMicro) * 1'000'000;
  constexpr __int128 kCap = static_cast<__int128>(kTooMuch) * kScale;
  for (const auto& line : usage.lines) {
    const Rate* r = find(line.resource);
    if (!r || r->pico_per_unit == 0) continue;
    total += static_cast<__int128>(micro_units(line.quantity)) * r->pico_per_unit;
    if (total >= kCap) return kTooMuch;
  }
  __int128 micro = (total + kScale - 1) / kScale;  // round up: a fraction of a micro-credit is charged
  return static_cast<MicroCredits>(micro);
}

std::string RateTable::explain(const Usage& usage) const {
  std::string out;
  for (const auto& line : usage.lines) {
    const Rate* r = find(line.resource);
    if (!r || r->pico_per_unit == 0) continue;
    std::string what = line.detail.empty() ? decimal::format(micro_units(line.quantity), 6) + " " + r->unit : line.detail;
    if (!out.empty()) out += " + ";
    out += what + " × " + format_rate(r->pico_per_unit) + "/" + r->unit;
  }
  return out;
}

std::vector<std::string> RateTable::unpriced(const Usage& usage) const {
  std::vector<std::string> out;
  for (const auto& line : usage.lines)
    if (!find(line.resource)) out.push_back(line.resource);
  return out;
}

MicroCredits Purse::balance() const {
  MicroCredits b = -debt;
  for (const auto& g : grants) b += g.remaining;
  return b;
}

void Purse::insert(GrantSlice g) {
  auto pos = std::upper_bound(grants.begin(), grants.end(), g, [](const GrantSlice& a, const GrantSlice& b) {
    return a.expires_ms != b.expires_ms ? a.expires_ms < b.expires_ms : a.id < b.id;
  });
  grants.insert(pos, g);
}

void Purse::charge(MicroCredits amount, std::vector<GrantChange>* changed) {
  std::size_t used = 0;
  for (auto& g : grants) {
    if (amount == 0) break;
    MicroCredits take = std::min(amount, g.remaining);
    g.remaining -= take;
    amount -= take;
    if (changed) changed->push_back({g.id, g.remaining});
    if (g.remaining == 0) ++used;
  }
  // Spent grants leave the purse (they are at the front: drawn in order).
  grants.erase(grants.begin(), grants.begin() + static_cast<std::ptrdiff_t>(used));
  debt += amount;
}

MicroCredits Purse::add_grant(int64_t id, int64_t expires_ms, MicroCredits amount) {
  MicroCredits repay = std::min(debt, amount);
  debt -= repay;
  MicroCredits remaining = amount - repay;
  if (remaining > 0) insert(GrantSlice{id, expires_ms, remaining});
  return remaining;
}

std::vector<Lapse> Purse::lapse(int64_t now_ms) {
  std::vector<Lapse> out;
  // Expired grants lose their remainder beyond what open holds still need. Those holds were
  // made before the expiry (a lapse runs before every hold) and are settled from the expired
  // grants first (charge() draws in expiry order), so what came in since — a new grant, the
  // credit line — is no cover for them: counting it would lapse credits their settle then
  // takes from the new grant (or from the line, as debt).
  MicroCredits expired = 0;
  for (const auto& g : grants) {
    if (g.expires_ms > now_ms) break;  // (ordered by expiry)
    expired += g.remaining;
  }
  MicroCredits lapsable = std::max<MicroCredits>(0, expired - held);
  while (lapsable > 0 && !grants.empty() && grants.front().expires_ms <= now_ms) {
    GrantSlice& g = grants.front();
    MicroCredits amount = std::min(g.remaining, lapsable);
    g.remaining -= amount;
    lapsable -= amount;
    out.push_back(Lapse{g.id, amount, g.remaining});
    if (g.remaining > 0) break;
    grants.erase(grants.begin());
  }
  return out;
}

}  // namespace scigate::credits
