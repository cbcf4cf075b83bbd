#include "server/cli/credits_cli.hpp"

#include <cstdlib>
#include <ctime>
#include <iomanip>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

#include "policies/credit_ledger.hpp"
#include "policies/credit_store.hpp"
#include "policies/credits.hpp"
#include "server/app.hpp"
#include "server/common/time_format.hpp"
#include "server/state/database.hpp"

namespace scigate::cli {
namespace {

using credits::format;
using nlohmann::json;

std::string opt(const CreditsArgs& a, const std::string& k, const std::string& d = "") {
  auto it = a.options.find(k);
  return it == a.options.end() ? d : it->second;
}

const ProjectConfig& project_of(const Config& config, const std::string& id) {
  if (id.empty()) throw std::invalid_argument("--project P is required");
  const ProjectConfig* p = config.project(id);
  if (!p) {
    std::string known;
    for (const auto& q : config.projects) known += (known.empty() ? "" : ", ") + q.id;
    throw std::invalid_argument("no project \"" + id + "\" in " + config.path.string() + " (projects: " +
                                (known.empty() ? "none" : known) + ")");
  }
  return *p;
}

// The database, migrated; the credits commands may be the first thing to touch it.
std::unique_ptr<state::Database> open_db(const Config& config) {
  auto db = std::make_unique<state::Database>(config.database);
  db->migrate(state::schema_migrations());
  return db;
}

// How long a grant waits for a running server to share the ledger (it answers within ~50 ms).
constexpr std::chrono::milliseconds kServerShareWait{5000};

credits::CreditStore store_for(state::Database& db, const Config& config) {
  return credits::CreditStore(db.handle(), credit_ledger_options(config).projects, nullptr);
}

int cmd_grant(const Config& config, const CreditsArgs& a, std::ostream& out) {
  const ProjectConfig& p = project_of(config, opt(a, "project"));
  if (a.positional.size() != 1)
    throw std::invalid_argument(
        "usage: scigate credits grant --project P AMOUNT [--expires DATE | --days N] [--note TEXT] [--user U]");
  std::string why;
  auto amount = credits::parse(a.positional[0], &why);
  if (!amount) throw std::invalid_argument("AMOUNT \"" + a.positional[0] + "\": " + why + " (credits, up to 6 decimals)");
  if (*amount <= 0) throw std::invalid_argument("AMOUNT must be more than zero");
  std::optional<int64_t> expires;
  int64_t now = credits::system_now_ms();
  if (auto e = opt(a, "expires"); !e.empty()) {
    expires = parse_utc_date(e);
    if (!expires) throw std::invalid_argument("--expires wants a date like 2027-01-01 (UTC), got \"" + e + "\"");
  }
  if (auto d = opt(a, "days"); !d.empty()) {
    if (expires) throw std::invalid_argument("give --expires or --days, not both");
    char* end = nullptr;
    long days = std::strtol(d.c_str(), &end, 10);
    if (*end || days <= 0 || days > 36500) throw std::invalid_argument("--days wants a number of days, 1 or more");
    expires = now + static_cast<int64_t>(days) * 86'400'000;
  }
  if (expires && *expires <= now) throw std::invalid_argument("--expires is in the past");
  std::string by = opt(a, "by");
  if (by.empty()) {
    const char* u = std::getenv("USER");
    by = u && *u ? u : "cli";
  }
  std::string user = opt(a, "user");
  int64_t id = grant_credits(config, p.id, user, *amount, expires, by, opt(a, "note"));
  out << "granted " << format(*amount) << " credits to "
      << (user.empty() ? "project " + p.id : user + "'s sub-budget in project " + p.id) << " (grant " << id
      << ", account " << p.credit_account << ", " << (expires ? "expires " + rfc3339_seconds(*expires) : "never expires") << ")\n";
  return 0;
}

json balance_json(credits::CreditStore& store, state::Database& db, const ProjectConfig& p) {
  json j = json::object();
  j["project"] = p.id;
  j["account"] = p.credit_account;
  const credits::AccountState* a = store.account(p.credit_account);
  credits::Purse empty;
  const credits::Purse& purse = a ? a->purse : empty;
  j["balance"] = format(purse.balance());
  j["held"] = format(purse.held);
  j["available"] = format(purse.available());
  j["credit_line"] = format(purse.line);
  j["credit_line_used"] = format(purse.debt);
  j["balance_micro"] = purse.balance();
  j["held_micro"] = purse.held;
  j["available_micro"] = purse.available();
  json grants = json::array();
  state::Statement st(db.handle(),
                      "SELECT id, user, amount, remaining, granted_ms, expires_ms, granted_by, note FROM credit_grants "
                      "WHERE account = ? AND remaining > 0 ORDER BY user, COALESCE(expires_ms, 9223372036854775807), id");
  st.bind(1, p.credit_account);
  int64_t now = credits::system_now_ms();
  while (st.step()) {
    json g = json::object();
    g["id"] = st.column_int(0);
    if (!st.column_text(1).empty()) g["user"] = st.column_text(1);
    g["amount"] = format(st.column_int(2));
    g["remaining"] = format(st.column_int(3));
    g["granted"] = rfc3339_seconds(st.column_int(4));
    g["expires"] = st.column_is_null(5) ? json(nullptr) : json(rfc3339_seconds(st.column_int(5)));
    if (!st.column_is_null(5) && st.column_int(5) <= now) g["expired"] = true;  // lapses at the next sweep
    g["granted_by"] = st.column_text(6);
    if (!st.column_text(7).empty()) g["note"] = st.column_text(7);
    grants.push_back(std::move(g));
  }
  j["grants"] = std::move(grants);
  json users = json::object();
  if (a)
    for (const auto& [user, up] : a->users) {
      json u = json::object();
      u["balance"] = format(up.balance());
      u["held"] = format(up.held);
      u["available"] = format(up.available());
      users[user] = std::move(u);
    }
  j["sub_budgets"] = std::move(users);
  return j;
}

int cmd_balance(const Config& config, const CreditsArgs& a, std::ostream& out) {
  std::vector<const ProjectConfig*> projects;
  if (auto id = opt(a, "project"); !id.empty()) projects.push_back(&project_of(config, id));
  else
    for (const auto& p : config.projects) projects.push_back(&p);
  auto db = open_db(config);
  auto store = store_for(*db, config);
  store.begin_read();
  store.load();
  json all = json::array();
  for (const auto* p : projects) all.push_back(balance_json(store, *db, *p));
  store.rollback();
  if (opt(a, "format", "text") == "json") {
    for (const auto& j : all) out << j.dump() << "\n";
    return 0;
  }
  if (all.empty()) out << "no projects in " << config.path.string() << "\n";
  for (const auto& j : all) {
    out << "project " << j["project"].get<std::string>() << " (account " << j["account"].get<std::string>() << ")\n"
        << "  balance      " << j["balance"].get<std::string>() << "\n"
        << "  held         " << j["held"].get<std::string>() << "\n"
        << "  available    " << j["available"].get<std::string>() << "\n"
        << "  credit line  " << j["credit_line"].get<std::string>() << " (used "
        << j["credit_line_used"].get<std::string>() << ")\n";
    for (const auto& g : j["grants"]) {
      out << "  grant " << g["id"] << (g.contains("user") ? " for " + g["user"].get<std::string>() : std::string())
          << ": " << g["remaining"].get<std::string>() << " of " << g["amount"].get<std::string>() << " left, "
          << (g["expires"].is_null() ? std::string("never expires") : "expires " + g["expires"].get<std::string>())
          << (g.contains("expired") ? " (expired; lapses at the next sweep)" : "") << "\n";
    }
    for (auto it = j["sub_budgets"].begin(); it != j["sub_budgets"].end(); ++it)
      out << "  sub-budget " << it.key() << ": " << it.value()["available"].get<std::string>() << " available (balance "
          << it.value()["balance"].get<std::string>() << ", held " << it.value()["held"].get<std::string>() << ")\n";
  }
  return 0;
}

int cmd_statement(const Config& config, const CreditsArgs& a, std::ostream& out) {
  const ProjectConfig& p = project_of(config, opt(a, "project"));
  int64_t since = 0;
  if (auto s = opt(a, "since"); !s.empty()) {
    auto v = parse_utc_date(s);
    if (!v) throw std::invalid_argument("--since wants a date like 2026-01-01 (UTC), got \"" + s + "\"");
    since = *v;
  }
  std::string fmt = opt(a, "format", "text");
  if (fmt != "text" && fmt != "jsonl") throw std::invalid_argument("--format is text or jsonl");
  auto db = open_db(config);
  auto store = store_for(*db, config);
  store.begin_read();
  MicroCredits opening = credits::balance_before(db->handle(), p.credit_account, since);
  auto rows = credits::postings(db->handle(), p.credit_account, since);
  store.load();
  const credits::AccountState* acct = store.account(p.credit_account);
  MicroCredits line = acct ? acct->purse.line : 0;
  MicroCredits held = acct ? acct->purse.held : 0;
  store.rollback();

  MicroCredits granted = 0, charged = 0, lapsed = 0, closing = opening, lowest = opening;
  int64_t charges = 0;
  for (const auto& r : rows) {
    if (r.kind == "grant") granted += r.amount;
    else if (r.kind == "charge") charged -= r.amount, ++charges;
    else if (r.kind == "lapse") lapsed -= r.amount;
    if (r.kind == "grant" || r.kind == "charge" || r.kind == "lapse") {
      closing = r.balance_after;
      lowest = std::min(lowest, closing);
    }
  }
  if (fmt == "jsonl") {
    for (const auto& r : rows) {
      json j = json::object();
      j["seq"] = r.seq;
      j["time"] = rfc3339_seconds(r.time_ms);
      j["kind"] = r.kind;
      j["amount"] = format(r.amount);
      j["amount_micro"] = r.amount;
      j["balance_after"] = format(r.balance_after);
      if (!r.user.empty()) j["user"] = r.user;
      if (r.sub_budget) j["sub_budget"] = true;
      if (!r.tool.empty()) j["tool"] = r.tool;
      if (!r.request_id.empty()) j["request_id"] = r.request_id;
      if (r.hold_id) j["hold"] = *r.hold_id;
      if (r.grant_id) j["grant"] = *r.grant_id;
      j["detail"] = json::parse(r.detail, nullptr, false);
      out << j.dump() << "\n";
    }
    json s = json::object();
    s["kind"] = "summary";
    s["project"] = p.id;
    s["account"] = p.credit_account;
    s["since"] = rfc3339_seconds(since);
    s["opening_balance"] = format(opening);
    s["granted"] = format(granted);
    s["charged"] = format(charged);
    s["charges"] = charges;
    s["lapsed"] = format(lapsed);
    s["closing_balance"] = format(closing);
    s["closing_balance_micro"] = closing;
    s["held"] = format(held);
    s["credit_line"] = format(line);
    s["credit_line_used"] = format(std::max<MicroCredits>(0, -closing));
    s["credit_line_peak"] = format(std::max<MicroCredits>(0, -lowest));
    out << s.dump() << "\n";
    return 0;
  }
  out << "Statement of project " << p.id << " (account " << p.credit_account << ") since " << rfc3339_seconds(since) << "\n"
      << "opening balance " << format(opening) << "\n\n";
  out << std::left << std::setw(22) << "time" << std::setw(17) << "kind" << std::right << std::setw(16) << "amount"
      << std::setw(16) << "balance" << "  " << "who / what\n";
  for (const auto& r : rows) {
    std::string sign = r.amount > 0 ? "+" : "";
    std::string what;
    if (r.kind == "charge") what = r.user + "  " + r.tool + " " + r.request_id + (r.sub_budget ? " (sub-budget)" : "");
    else if (r.kind == "grant" || r.kind == "allowance") {
      auto d = json::parse(r.detail, nullptr, false);
      what = (r.kind == "allowance" ? "sub-budget of " + r.user + ", " : std::string()) + "grant " +
             std::to_string(r.grant_id.value_or(0));
      if (d.is_object()) {
        if (auto by = d.find("granted_by"); by != d.end() && by->is_string()) what += " by " + by->get<std::string>();
        if (auto n = d.find("note"); n != d.end() && n->is_string()) what += ": " + n->get<std::string>();
      }
    } else {
      what = (r.kind == "allowance_lapse" ? "sub-budget of " + r.user + ", " : std::string()) + "grant " +
             std::to_string(r.grant_id.value_or(0)) + " expired";
    }
    out << std::left << std::setw(22) << rfc3339_seconds(r.time_ms) << std::setw(17) << r.kind << std::right << std::setw(16)
        << sign + format(r.amount) << std::setw(16) << format(r.balance_after) << "  " << what << "\n";
  }
  out << "\ngranted " << format(granted) << ", charged " << format(charged) << " (" << charges << " charges), lapsed "
      << format(lapsed) << "\n"
      << "closing balance " << format(closing) << "; held by running calls " << format(held) << "\n"
      << "credit line " << format(line) << ": used " << format(std::max<MicroCredits>(0, -closing)) << " now, at most "
      << format(std::max<MicroCredits>(0, -lowest)) << " in this period\n";
  return 0;
}

int cmd_rates(const Config& config, const CreditsArgs& a, std::ostream& out) {
  bool history = std::find(a.flags.begin(), a.flags.end(), "history") != a.flags.end();
  auto db = open_db(config);
  auto rows = credits::stored_rates(db->handle(), history);
  if (rows.empty() && !history) {
    // The server has not started with this database yet: what the config says.
    for (const auto& r : config.credits.rates)
      if (r.pico_per_unit > 0) rows.push_back(credits::RateRow{r.resource, r.unit, r.pico_per_unit, 0});
  }
  if (rows.empty()) {
    out << "no rates: every call is free\n";
    return 0;
  }
  out << std::left << std::setw(32) << "resource" << std::right << std::setw(20) << "credits/unit" << "  "
      << std::left << std::setw(10) << "unit" << "since\n";
  for (const auto& r : rows)
    out << std::left << std::setw(32) << r.resource << std::right << std::setw(20)
        << credits::format_rate(r.pico_per_unit) << "  " << std::left << std::setw(10) << r.unit
        << (r.effective_ms ? rfc3339_seconds(r.effective_ms) : std::string("(config; not yet used by a server)")) << "\n";
  return 0;
}

int cmd_verify(const Config& config, std::ostream& out) {
  auto db = open_db(config);
  auto lock = db->lock();
  db->exec("BEGIN");
  auto v = credits::verify(db->handle(), credits::system_now_ms());
  db->exec("ROLLBACK");
  if (v.ok) {
    out << "credit ledger consistent: " << v.accounts << " accounts, " << v.holds_open << " open holds\n";
    return 0;
  }
  out << "credit ledger INCONSISTENT:\n";
  for (const auto& p : v.problems) out << "  " << p << "\n";
  return 1;
}

}  // namespace

std::optional<int64_t> parse_utc_date(const std::string& text) {
  std::tm tm{};
  std::istringstream in(text);
  if (text.size() == 10) in >> std::get_time(&tm, "%Y-%m-%d");
  else in >> std::get_time(&tm, "%Y-%m-%dT%H:%M:%S");
  if (in.fail()) return std::nullopt;
  std::string rest;
  in >> rest;
  if (!(rest.empty() || rest == "Z")) return std::nullopt;
  const std::tm given = tm;
  const int64_t t = static_cast<int64_t>(timegm(&tm));
  // timegm normalises: 2027-02-31 would quietly be 2027-03-03. Only dates that exist pass.
  if (tm.tm_year != given.tm_year || tm.tm_mon != given.tm_mon || tm.tm_mday != given.tm_mday ||
      tm.tm_hour != given.tm_hour || tm.tm_min != given.tm_min || tm.tm_sec != given.tm_sec)
    return std::nullopt;
  return t * 1000;
}

int64_t grant_credits(const Config& config, const std::string& project, const std::string& user, MicroCredits amount,
                      std::optional<int64_t> expires_ms, const std::string& granted_by, const std::string& note) {
  const ProjectConfig& p = project_of(config, project);
  auto db = open_db(config);
  db->exec("PRAGMA synchronous=FULL");  // a grant is money: it must survive power loss
  auto store = store_for(*db, config);
  // A running server that decides holds in memory is asked to share the ledger first, so the
  // grant (a new sub-budget can tighten a user's limit) applies to every hold after the COMMIT.
  LedgerVisit visit(
      config.database,
      [&] {
        store.begin();
        try {
          store.bump_epoch();
          store.commit();
        } catch (...) {
          store.rollback();
          throw;
        }
      },
      kServerShareWait);
  if (!visit.shared())
    std::cerr << "warning: could not ask a running scigate server to share the ledger first (" << visit.problem()
              << "); a running server applies this grant within ~50 ms\n";
  store.begin();
  try {
    store.load();
    store.ensure_accounts();
    int64_t id = store.grant(p.credit_account, user, amount, expires_ms, granted_by, note);
    store.flush();
    store.bump_epoch();  // a running server reloads before its next operation
    store.commit();
    return id;
  } catch (...) {
    store.rollback();
    throw;
  }
}

int credits_command(const Config& config, const CreditsArgs& a, std::ostream& out) {
  // An option a command does not take is refused: money commands must not read
  // "--expire=2027-01-01" (a typo) as "never expires".
  static const std::map<std::string, std::pair<std::set<std::string>, std::set<std::string>>> kTakes = {
      {"grant", {{"project", "expires", "days", "note", "user", "by"}, {}}},
      {"balance", {{"project", "format"}, {}}},
      {"statement", {{"project", "since", "format"}, {}}},
      {"rates", {{}, {"history"}}},
      {"verify", {{}, {}}}};
  if (auto it = kTakes.find(a.command); it != kTakes.end()) {
    for (const auto& [k, v] : a.options)
      if (!it->second.first.count(k))
        throw std::invalid_argument("credits " + a.command + " takes no option --" + k);
    for (const auto& f : a.flags)
      if (!it->second.second.count(f))
        throw std::invalid_argument("credits " + a.command + " takes no option --" + f +
                                    (it->second.first.count(f) ? " without a value" : ""));
  }
  if (a.command == "grant") return cmd_grant(config, a, out);
  if (a.command == "balance") return cmd_balance(config, a, out);
  if (a.command == "statement") return cmd_statement(config, a, out);
  if (a.command == "rates") return cmd_rates(config, a, out);
  if (a.command == "verify") return cmd_verify(config, out);
  throw std::invalid_argument("unknown credits command: " + a.command +
                              " (grant, balance, statement, rates, verify)");
}

}  // namespace scigate::cli
