// The credit ledger through the real binary: what the server charges, what get_usage shows, what
// `scigate credits` reports, and what survives SIGKILL.
#include <catch2/catch.hpp>

#include <fstream>

#include <signal.h>

#include <atomic>
#include <random>
#include <sstream>
#include <thread>

#include <sqlite3.h>

#include <map>
#include <mutex>
#include <set>

#include "server_process.hpp"
#include "tests/support/eventually.hpp"

using namespace scigate::itest;
using http::verb;

namespace {

json call_tool(Client& c, const std::string& key, const std::string& tool, json args, json extra_meta = nullptr) {
  auto req = modern_request(1, "tools/call", {{"name", tool}, {"arguments", std::move(args)}});
  if (extra_meta.is_object())
    for (auto it = extra_meta.begin(); it != extra_meta.end(); ++it) req["params"]["_meta"][it.key()] = it.value();
  auto r = c.request(verb::post, "/mcp", modern_headers(key, "tools/call", tool), req.dump());
  REQUIRE(r.status == 200);
  return r.json_body()["result"];
}

json credits_json(const ServerProcess& s, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {binary(), "credits"};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back("--config");
  argv.push_back(s.config_path());
  std::string out;
  REQUIRE(run_command(argv, &out) == 0);
  std::vector<json> lines;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) lines.push_back(json::parse(line));
  REQUIRE_FALSE(lines.empty());
  return lines.back();  // balance: the project; statement: the summary
}

std::string credits_text(const ServerProcess& s, const std::vector<std::string>& args, int expect = 0) {
  std::vector<std::string> argv = {binary(), "credits"};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back("--config");
  argv.push_back(s.config_path());
  std::string out;
  CHECK(run_command(argv, &out) == expect);
  return out;
}

}  // namespace

TEST_CASE("credits: a priced demo call is charged, shows in get_usage, and the CLI agrees") {
  ServerProcess s;
  Client c(s.port());
  auto free_call = call_tool(c, s.user_key(), "echo", {{"text", "hi"}});
  CHECK(free_call["isError"] == false);
  auto slept = call_tool(c, s.user_key(), "sleep", {{"seconds", 0.2}, {"steps", 1}});
  REQUIRE(slept["isError"] == false);

  auto usage = call_tool(c, s.user_key(), "get_usage", json::object());
  REQUIRE(usage["isError"] == false);
  auto u = usage["structuredContent"];
  CHECK(u["metered"] == true);
  CHECK(u["project"] == "demo");
  CHECK(u["balance"].dump() == "999.7");  // 1000 − (0.2 s × 1/s + 0.1 per call)
  CHECK(u["available"].dump() == "999.7");
  CHECK(u["held"] == 0);
  REQUIRE(u["recent_charges"].size() == 1);  // echo is free: no charge, no hold
  CHECK(u["recent_charges"][0]["tool"] == "sleep");
  CHECK(u["recent_charges"][0]["amount"].dump() == "0.3");
  CHECK(u["recent_charges"][0]["user"] == "demo");
  CHECK(u["rates"].size() == 9);  // sleep: per call and per second; jobs: core-hours and per submit; quantum: qubit-gates; data: GB staged; tokens in and out for two models
  CHECK(usage["content"][0]["text"].get<std::string>().find("balance 999.7 credits") != std::string::npos);
  CHECK(s.wait_for_log("\"cost\":300000"));  // the audit record carries what was posted

  auto bal = credits_json(s, {"balance", "--project", "demo", "--format", "json"});
  CHECK(bal["balance"] == "999.7");
  CHECK(bal["balance_micro"] == 999'700'000);
  CHECK(bal["held"] == "0");
  auto st = credits_json(s, {"statement", "--project", "demo", "--format", "jsonl"});
  CHECK(st["kind"] == "summary");
  CHECK(st["granted"] == "1000");
  CHECK(st["charged"] == "0.3");
  CHECK(st["charges"] == 1);
  CHECK(st["closing_balance_micro"] == 999'700'000);
  std::string text = credits_text(s, {"statement", "--project", "demo"});
  CHECK(text.find("charge") != std::string::npos);
  CHECK(text.find("closing balance 999.7") != std::string::npos);
  std::string rates = credits_text(s, {"rates"});
  CHECK(rates.find("sleep_second") != std::string::npos);
  CHECK(rates.find("call:sleep") != std::string::npos);
  CHECK(credits_text(s, {"verify"}).find("consistent") != std::string::npos);
}

TEST_CASE("credits: a call the project cannot pay is refused with the price, and a CLI grant lets it through") {
  // 10,000 credits per second slept: a 0.2 s sleep needs 2000.1 of the demo's 1000.
  ServerProcess s("[credits.rates]\n\"sleep_second\" = { credits = 10000, unit = \"s\" }\n");
  Client c(s.port());
  auto refused = call_tool(c, s.user_key(), "sleep", {{"seconds", 0.2}, {"steps", 1}});
  REQUIRE(refused["isError"] == true);
  auto err = refused["_meta"]["io.scigate/error"];
  CHECK(err["code"] == "insufficient_credits");
  CHECK(err["message"] ==
        "sleep needs 2000.1 credits (0.2 s × 10000/s + 1 call × 0.1/call), 1000 available in project demo; a manager "
        "can grant more with `scigate credits grant`");
  CHECK(err["hint"].get<std::string>().find("scigate credits grant --project demo") != std::string::npos);
  CHECK(s.wait_for_log("\"error_code\":\"insufficient_credits\""));

  // A mistyped option or a date that does not exist grants nothing (they read as "never
  // expires" and as 2027-03-03 before).
  credits_text(s, {"grant", "--project", "demo", "5", "--expire=2027-01-01"}, 2);
  credits_text(s, {"grant", "--project", "demo", "5", "--expires", "2027-02-31"}, 2);
  std::string out = credits_text(s, {"grant", "--project", "demo", "3000", "--days", "30", "--note", "top-up"});
  CHECK(out.find("granted 3000 credits to project demo") != std::string::npos);
  auto ok = call_tool(c, s.user_key(), "sleep", {{"seconds", 0.2}, {"steps", 1}});
  CHECK(ok["isError"] == false);
  auto bal = credits_json(s, {"balance", "--project", "demo", "--format", "json"});
  CHECK(bal["balance"] == "1999.9");  // 1000 + 3000 − 2000.1, drawn from the expiring grant first
  REQUIRE(bal["grants"].size() == 2);
  CHECK(bal["grants"][0]["remaining"] == "999.9");
  CHECK(bal["grants"][0]["note"] == "top-up");
  CHECK(bal["grants"][1]["remaining"] == "1000");
  auto u = call_tool(c, s.user_key(), "get_usage", json::object())["structuredContent"];
  CHECK(u["balance"].dump() == "1999.9");
}

TEST_CASE("credits: get_usage shows a member its own charges, a manager everyone's, and the limits its policy sets") {
  ServerProcess s("", false);
  std::ofstream(s.dir() / "policies" / "physics.toml") << R"(
[[rules]]
id = "short-sleeps"
effect = "permit"
principals = ["role:member"]
tools = ["sleep", "echo", "get_usage"]
[rules.when]
seconds = { max = 5, optional = true }

[[rules]]
id = "robots-never-sleep"
effect = "forbid"
principals = ["service:*"]
tools = ["sleep"]

[[rules]]
id = "office-echo"
effect = "permit"
principals = ["role:manager"]
tools = ["echo"]
[rules.context]
hours = "08:00-20:00"

[[rate_limits]]
id = "sleep-rate"
tools = ["sleep"]
per = "principal"
rate = "10/minute"
burst = 3
)";
  s.merge_config("[[projects]]\nid = \"physics\"\nmembers = [\"demo\", \"bea\"]\nmanagers = [\"max\"]\n"
                 "policy = \"policies/physics.toml\"\n");
  s.merge_config("[[projects]]\nid = \"open\"\nmembers = [\"bea\"]\n");
  s.start();
  credits_text(s, {"grant", "--project", "physics", "100"});
  credits_text(s, {"grant", "--project", "open", "100"});
  std::string bea = create_key(s, "bea"), max = create_key(s, "max");
  Client c(s.port());
  json physics = {{"io.scigate/project", "physics"}};
  for (const auto& key : {bea, bea, max, s.user_key()})
    REQUIRE(call_tool(c, key, "sleep", {{"seconds", 0.05}, {"steps", 1}}, physics)["isError"] == false);

  // A member: its own charges only, and the rules that concern it with the tokens left.
  auto as_bea = call_tool(c, bea, "get_usage", json::object(), physics);
  REQUIRE(as_bea["isError"] == false);
  json u = as_bea["structuredContent"];
  CHECK(u["shown"] == "own");
  REQUIRE(u["recent_charges"].size() == 2);
  for (const auto& ch : u["recent_charges"]) CHECK(ch["user"] == "bea");
  const json& pol = u["policy"];
  REQUIRE(pol.is_object());
  CHECK(pol["policy_hash"].get<std::string>().size() == 64);
  REQUIRE(pol["rules"].size() == 1);  // not the robots' forbid, not the managers' permit
  CHECK(pol["rules"][0]["id"] == "short-sleeps");
  CHECK(pol["rules"][0]["effect"] == "permit");
  CHECK(pol["rules"][0]["requires"] == json::array({"seconds at most 5 (when given)"}));
  REQUIRE(pol["rate_limits"].size() == 1);
  const json& rl = pol["rate_limits"][0];
  CHECK(rl["id"] == "sleep-rate");
  CHECK(rl["limit"] == "10 calls per minute per principal");
  CHECK(rl["burst"] == 3);
  // Two of three taken; a sixth of a token a second comes back.
  CHECK(rl["available"].get<double>() >= 1.0);
  CHECK(rl["available"].get<double>() < 2.0);
  CHECK(as_bea["content"][0]["text"].get<std::string>().find("Rate limit sleep-rate: 10 calls per minute per principal, 1 left now") !=
        std::string::npos);

  // A manager: everyone's charges, and its own rules (the office-hours permit too).
  json m = call_tool(c, max, "get_usage", json::object(), physics)["structuredContent"];
  CHECK(m["shown"] == "project");
  std::multiset<std::string> users;
  for (const auto& ch : m["recent_charges"]) users.insert(ch["user"].get<std::string>());
  CHECK(users == std::multiset<std::string>{"bea", "bea", "demo", "max"});
  REQUIRE(m["policy"]["rules"].size() == 2);
  CHECK(m["policy"]["rules"][1]["id"] == "office-echo");
  CHECK(m["policy"]["rules"][1]["window"] == "08:00-20:00 (UTC)");
  CHECK(m["policy"]["rate_limits"][0]["available"].get<double>() >= 2.0);  // max's own bucket

  // A project without a policy file: no limits beyond membership.
  json o = call_tool(c, bea, "get_usage", json::object(), {{"io.scigate/project", "open"}})["structuredContent"];
  CHECK(o["project"] == "open");
  CHECK(o["policy"].is_null());
}

TEST_CASE("credits cli: a grant that tightens a user's limit binds the server's very next call") {
  // 10 credits per second slept + 0.1 per call: 0.03 s costs 0.4.
  ServerProcess s("[credits.rates]\n\"sleep_second\" = { credits = 10, unit = \"s\" }\n", false);
  s.merge_config("[[projects]]\nid = \"lab\"\nmembers = [\"demo\", \"u0\", \"u1\", \"u2\"]\n");
  s.start();
  credits_text(s, {"grant", "--project", "lab", "100"});
  Client c(s.port());
  json lab = {{"io.scigate/project", "lab"}};
  auto sleep_for = [&](const std::string& key) {
    return call_tool(c, key, "sleep", {{"seconds", 0.03}, {"steps", 1}}, lab);
  };
  for (int round = 0; round < 3; ++round) {
    std::string user = "u" + std::to_string(round);
    std::string key = create_key(s, user);
    // The server owns the ledger alone again (it takes it back ~1 s after the last CLI grant)
    // and decides the user's holds in memory, without a transaction.
    REQUIRE(scigate::test::eventually([&] { return metric(s.port(), "scigate_credit_ledger_alone") == 1; },
                                      std::chrono::seconds(20)));
    int64_t memory_holds = metric(s.port(), "scigate_credit_memory_holds_total");
    REQUIRE(sleep_for(key)["isError"] == false);
    CHECK(metric(s.port(), "scigate_credit_memory_holds_total") > memory_holds);
    int64_t yields = metric(s.port(), "scigate_credit_yields_total");
    // A sub-budget of 0.1, less than one call (0.4). The server looks for other writers only
    // every 50 ms; the CLI made it share the ledger before granting.
    credits_text(s, {"grant", "--project", "lab", "--user", user, "0.1"});
    auto refused = sleep_for(key);
    REQUIRE(refused["isError"] == true);
    CHECK(refused["_meta"]["io.scigate/error"]["code"] == "insufficient_credits");
    CHECK(refused["_meta"]["io.scigate/error"]["message"].get<std::string>().find(user + "'s sub-budget") !=
          std::string::npos);
    CHECK(metric(s.port(), "scigate_credit_yields_total") == yields + 1);
  }
  // demo, without a sub-budget, is not bound by theirs.
  CHECK(sleep_for(s.user_key())["isError"] == false);
}

TEST_CASE("credits cli: a sub-budget bounds its user, a credit line lets the project run into debt, and the statement settles it") {
  // 10 credits per second slept + 0.1 per call: 0.03 s costs 0.4, 0.1 s 1.1.
  ServerProcess s("[credits.rates]\n\"sleep_second\" = { credits = 10, unit = \"s\" }\n", false);
  s.merge_config("[[projects]]\nid = \"lab\"\nmembers = [\"demo\", \"bea\"]\ncredit_line = 2\n");
  s.start();
  credits_text(s, {"grant", "--project", "lab", "1"});
  CHECK(credits_text(s, {"grant", "--project", "lab", "--user", "bea", "0.5", "--by", "pi"})
            .find("granted 0.5 credits to bea's sub-budget in project lab") != std::string::npos);
  std::string bea = create_key(s, "bea");
  Client c(s.port());
  json lab = {{"io.scigate/project", "lab"}};
  auto sleep_for = [&](const std::string& key, double seconds) {
    return call_tool(c, key, "sleep", {{"seconds", seconds}, {"steps", 1}}, lab);
  };

  // The grants came from another process while the server held in memory: the CLI made it
  // share the ledger first, so they bind bea's very next call (no wait for the server's poll).
  // bea is held to her sub-budget, though the project could pay.
  auto refused = sleep_for(bea, 0.05);
  REQUIRE(refused["isError"] == true);
  CHECK(refused["_meta"]["io.scigate/error"]["message"].get<std::string>().find(
            "0.5 available in bea's sub-budget in project lab") != std::string::npos);
  REQUIRE(sleep_for(bea, 0.03)["isError"] == false);  // 0.4 of her 0.5
  // demo has no sub-budget: the project's balance, then its credit line.
  REQUIRE(sleep_for(s.user_key(), 0.1)["isError"] == false);  // balance 0.6 -> -0.5
  auto over = sleep_for(s.user_key(), 0.2);                    // 2.1 > 1.5 available
  REQUIRE(over["isError"] == true);
  CHECK(over["_meta"]["io.scigate/error"]["code"] == "insufficient_credits");
  CHECK(over["_meta"]["io.scigate/error"]["message"].get<std::string>().find("1.5 available in project lab") !=
        std::string::npos);
  REQUIRE(sleep_for(s.user_key(), 0.13)["isError"] == false);  // 1.4: balance -1.9, the most the line is used

  auto bal = credits_json(s, {"balance", "--project", "lab", "--format", "json"});
  CHECK(bal["balance"] == "-1.9");
  CHECK(bal["credit_line"] == "2");
  CHECK(bal["credit_line_used"] == "1.9");
  // A new grant repays the debt first.
  credits_text(s, {"grant", "--project", "lab", "1"});
  bal = credits_json(s, {"balance", "--project", "lab", "--format", "json"});
  CHECK(bal["balance"] == "-0.9");
  CHECK(bal["credit_line_used"] == "0.9");

  std::string out;
  REQUIRE(run_command({binary(), "credits", "statement", "--project", "lab", "--format", "jsonl", "--config", s.config_path()},
                      &out) == 0);
  std::vector<json> rows;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) rows.push_back(json::parse(line));
  REQUIRE(!rows.empty());
  json summary = rows.back();
  rows.pop_back();
  CHECK(summary["kind"] == "summary");
  CHECK(summary["granted"] == "2");
  CHECK(summary["charged"] == "2.9");
  CHECK(summary["charges"] == 3);
  CHECK(summary["closing_balance"] == "-0.9");
  CHECK(summary["credit_line"] == "2");
  CHECK(summary["credit_line_used"] == "0.9");
  CHECK(summary["credit_line_peak"] == "1.9");  // for settlement: the most used during the period
  int allowances = 0, sub_budget_charges = 0;
  for (const auto& r : rows) {
    if (r["kind"] == "allowance") {
      ++allowances;
      CHECK(r["user"] == "bea");
      CHECK(r["amount"] == "0.5");
      CHECK(r["detail"]["granted_by"] == "pi");
    }
    if (r["kind"] == "charge" && r.value("sub_budget", false)) {
      ++sub_budget_charges;
      CHECK(r["user"] == "bea");
      CHECK(r["amount"] == "-0.4");
    }
  }
  CHECK(allowances == 1);
  CHECK(sub_budget_charges == 1);
  std::string text = credits_text(s, {"statement", "--project", "lab"});
  CHECK(text.find("(sub-budget)") != std::string::npos);
  CHECK(text.find("sub-budget of bea, grant") != std::string::npos);
  CHECK(credits_text(s, {"verify"}).find("consistent") != std::string::npos);
}

TEST_CASE("credits: a retried call with an idempotency key is answered again and charged once") {
  ServerProcess s;
  Client c(s.port());
  json key = {{"io.scigate/idempotency_key", "retry-1"}};
  auto first = call_tool(c, s.user_key(), "sleep", {{"seconds", 0.1}, {"steps", 1}}, key);
  auto again = call_tool(c, s.user_key(), "sleep", {{"seconds", 0.1}, {"steps", 1}}, key);
  CHECK(first["structuredContent"] == again["structuredContent"]);
  auto other = call_tool(c, s.user_key(), "sleep", {{"seconds", 0.3}, {"steps", 1}}, key);
  CHECK(other["isError"] == true);
  CHECK(other["_meta"]["io.scigate/error"]["code"] == "conflict");
  CHECK(s.wait_for_log("\"outcome\":\"replayed\""));
  auto st = credits_json(s, {"statement", "--project", "demo", "--format", "jsonl"});
  CHECK(st["charges"] == 1);
  CHECK(st["charged"] == "0.2");
}

namespace {

// Rows of a query on the server's database (read-only, beside the running server), as strings.
std::vector<std::vector<std::string>> query(const std::filesystem::path& db_path, const std::string& sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK);
  std::vector<std::vector<std::string>> rows;
  while (sqlite3_step(st) == SQLITE_ROW) {
    std::vector<std::string> row;
    for (int i = 0; i < sqlite3_column_count(st); ++i) {
      const unsigned char* v = sqlite3_column_text(st, i);
      row.push_back(v ? reinterpret_cast<const char*>(v) : "");
    }
    rows.push_back(std::move(row));
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  return rows;
}

}  // namespace

TEST_CASE("credits: SIGKILL under load, then restart: every answered call is audited and charged once, the books match the audit, no hold is left") {
  // fsync: answers wait for the WAL's fsync. commit: the un-keyed calls (holds in memory) are
  // answered from the writer's journal before their commit, and replayed at the restart.
  const std::string durability = GENERATE(as<std::string>{}, "fsync", "commit");
  INFO("durability = " << durability);
  ServerProcess s("[server]\ndurability = \"" + durability + "\"\n", false);
  // This test is about crashes, not policy: the demo policy's sleep rate limit would refuse
  // most calls before they hold anything.
  std::ofstream(s.dir() / "policies" / "demo.toml")
      << "[[rules]]\nid = \"members-all\"\neffect = \"permit\"\nprincipals = [\"role:member\"]\n";
  s.start();
  std::mt19937 rng(std::random_device{}());
  std::set<std::string> answered_keys;  // idempotency keys of calls a client saw succeed
  std::mutex m;
  for (int round = 0; round < 3; ++round) {
    std::atomic<bool> stop{false};
    std::atomic<int> answered{0};
    std::vector<std::thread> clients;
    for (int t = 0; t < 8; ++t)
      clients.emplace_back([&, t] {
        try {
          Client c(s.port());
          for (int i = 0; !stop; ++i) {
            double seconds = 0.001 * ((t * 7 + i) % 40);
            json params = {{"name", "sleep"}, {"arguments", {{"seconds", seconds}, {"steps", 1}}}};
            // Every other call carries an idempotency key: its hold is a row in the database
            // (for the replay), which restart recovery must void if the call died with the server.
            std::string key;
            if (i % 2 == 0) {
              key = "r" + std::to_string(round) + "-t" + std::to_string(t) + "-" + std::to_string(i);
              params["_meta"]["io.scigate/idempotency_key"] = key;
            }
            auto r = c.request(verb::post, "/mcp", modern_headers(s.user_key(), "tools/call", "sleep"),
                               modern_request(i, "tools/call", params).dump());
            auto body = r.json_body();
            if (r.status == 200 && body.contains("result") && body["result"]["isError"] == false) {
              ++answered;
              if (!key.empty()) {
                std::lock_guard g(m);
                answered_keys.insert(key);
              }
            }
          }
        } catch (const std::exception&) {
          // the server died under us
        }
      });
    std::this_thread::sleep_for(std::chrono::milliseconds(200 + rng() % 600));
    kill(s.pid(), SIGKILL);
    while (s.running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    stop = true;
    for (auto& th : clients) th.join();
    INFO("round " << round << ": " << answered << " calls answered before the kill");
    CHECK(answered > 0);
    s.start();  // restart recovery voids the holds of the calls that died
    std::string v = credits_text(s, {"verify"});
    CHECK(v.find("credit ledger consistent: 1 accounts, 0 open holds") != std::string::npos);
    std::string out;
    int rc = run_command({binary(), "audit", "verify", "--config", s.config_path()}, &out);
    INFO(out);
    CHECK(rc == 0);
  }
  CHECK(s.wait_for_log("credit_ledger_owned"));
  const auto db = s.dir() / "scigate.db";
  if (durability == "commit") {
    // The un-keyed calls (holds in memory) go through the journal: one more shows it.
    auto count = [&](const char* sql) { return std::stoll(query(db, sql)[0][0]); };
    const char* kCharges = "SELECT COUNT(*) FROM credit_postings WHERE kind = 'charge'";
    const char* kRecords = "SELECT COUNT(*) FROM audit_log WHERE tool = 'sleep'";
    const int64_t charges = count(kCharges), records = count(kRecords);
    Client c(s.port());
    REQUIRE(call_tool(c, s.user_key(), "sleep", {{"seconds", 0.001}, {"steps", 1}})["isError"] == false);
    CHECK(metric(s.port(), "scigate_state_journaled_total") >= 2);  // its settle and its record
    // Answered from the journal, committed within the writer's linger: the books below are
    // read from the file by other processes, so wait until its charge and record are in it.
    CHECK(scigate::test::eventually([&] { return count(kCharges) == charges + 1 && count(kRecords) == records + 1; }));
  }
  // No call is recorded twice (a journal entry replayed although it had been committed).
  CHECK(query(db, "SELECT COUNT(*) FROM (SELECT request_id FROM audit_log GROUP BY request_id HAVING COUNT(*) > 1)")[0][0] == "0");

  // No hold row is open: the keyed calls' holds were settled or voided by recovery.
  CHECK(query(db, "SELECT COUNT(*) FROM credit_holds WHERE state = 'open'")[0][0] == "0");
  INFO("keyed holds voided at recovery: "
       << query(db, "SELECT COUNT(*) FROM credit_holds WHERE void_reason IS NOT NULL")[0][0]);

  // Every call a client saw answered is in the audit log, as ok, and charged.
  std::map<std::string, std::string> audited;  // idempotency key -> cost
  for (const auto& row : query(db, "SELECT details, cost FROM audit_log WHERE tool = 'sleep' AND outcome = 'ok'")) {
    json d = json::parse(row[0], nullptr, false);
    if (d.is_object() && d.contains("idempotency_key")) audited[d["idempotency_key"].get<std::string>()] = row[1];
  }
  std::vector<std::string> missing;
  for (const auto& k : answered_keys)
    if (!audited.count(k) || audited[k] == "0") missing.push_back(k);
  INFO(answered_keys.size() << " keyed calls answered, " << audited.size() << " audited");
  CHECK(answered_keys.size() > 20);  // the load was real
  CHECK(missing.empty());
  if (!missing.empty()) FAIL("answered but not audited and charged: " << missing.front());

  // The books match the audit, call by call: each charge posting has the ok audit record of
  // its request with the same amount, and each audited charge has its posting (one: a key
  // charged twice would show as two postings of one request).
  auto postings = query(db, "SELECT request_id, -amount FROM credit_postings WHERE kind = 'charge' ORDER BY seq");
  auto records = query(db, "SELECT request_id, cost FROM audit_log WHERE tool = 'sleep' AND cost > 0");
  std::map<std::string, std::string> charged, recorded;
  for (const auto& p : postings) {
    CHECK(charged.count(p[0]) == 0);
    charged[p[0]] = p[1];
  }
  for (const auto& r : records) recorded[r[0]] = r[1];
  CHECK(postings.size() > 20);
  CHECK(charged == recorded);

  // And the balance is the grants minus those charges, exactly.
  auto bal = credits_json(s, {"balance", "--project", "demo", "--format", "json"});
  auto st = credits_json(s, {"statement", "--project", "demo", "--format", "jsonl"});
  CHECK(st["closing_balance_micro"] == bal["balance_micro"]);
  CHECK(st["charges"].get<std::size_t>() == postings.size());
  CHECK(bal["held"] == "0");
  int64_t grants = std::stoll(query(db, "SELECT SUM(amount) FROM credit_postings WHERE kind = 'grant'")[0][0]);
  int64_t spent = 0;
  for (const auto& p : postings) spent += std::stoll(p[1]);
  CHECK(bal["balance_micro"].get<int64_t>() == grants - spent);
}

TEST_CASE("credits: with durability = commit, calls are answered while the database is locked, and a SIGKILL then loses none of them") {
  ServerProcess s("[server]\ndurability = \"commit\"\n", false);
  std::ofstream(s.dir() / "policies" / "demo.toml")
      << "[[rules]]\nid = \"members-all\"\neffect = \"permit\"\nprincipals = [\"role:member\"]\n";
  s.start();
  REQUIRE(s.wait_for_log("credit_ledger_owned"));  // holds in memory: settles can be journaled
  const auto db = s.dir() / "scigate.db";
  int64_t balance_before = credits_json(s, {"balance", "--project", "demo", "--format", "json"})["balance_micro"];

  // Another connection takes the write lock, as a long transaction would: nothing the server
  // writes can commit now.
  sqlite3* blocker = nullptr;
  REQUIRE(sqlite3_open(db.c_str(), &blocker) == SQLITE_OK);
  REQUIRE(sqlite3_exec(blocker, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK);
  Client c(s.port());
  const int calls = 12;
  for (int i = 1; i <= calls; ++i) {
    auto result = call_tool(c, s.user_key(), "sleep", {{"seconds", 0.001 * i}, {"steps", 1}});
    INFO(result.dump());
    CHECK(result["isError"] == false);  // answered from the journal, before any commit
  }
  CHECK(query(db, "SELECT COUNT(*) FROM audit_log WHERE tool = 'sleep'")[0][0] == "0");  // (read: not blocked)
  kill(s.pid(), SIGKILL);
  while (s.running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  sqlite3_exec(blocker, "ROLLBACK", nullptr, nullptr, nullptr);
  sqlite3_close(blocker);

  s.start();  // replays the journal before it serves
  CHECK(s.wait_for_log("state_journal_replayed"));
  std::set<std::string> audited;
  std::map<std::string, std::string> recorded;  // request id -> cost
  for (const auto& row :
       query(db, "SELECT details, cost, request_id FROM audit_log WHERE tool = 'sleep' AND outcome = 'ok'")) {
    json d = json::parse(row[0], nullptr, false);
    CHECK(std::stoll(row[1]) >= 100000);  // at least "call:sleep" = 0.1
    recorded[row[2]] = row[1];
    if (d.is_object() && d.contains("arguments")) audited.insert(d["arguments"]["seconds"].dump());
  }
  CHECK(audited.size() == static_cast<std::size_t>(calls));
  // Each call charged once, as its record says.
  std::map<std::string, std::string> charged;
  int64_t spent = 0;
  for (const auto& p : query(db, "SELECT request_id, -amount FROM credit_postings WHERE kind = 'charge'")) {
    CHECK(charged.count(p[0]) == 0);
    charged[p[0]] = p[1];
    spent += std::stoll(p[1]);
  }
  CHECK(charged == recorded);
  std::string v = credits_text(s, {"verify"});
  CHECK(v.find("credit ledger consistent: 1 accounts, 0 open holds") != std::string::npos);
  auto bal = credits_json(s, {"balance", "--project", "demo", "--format", "json"});
  CHECK(bal["balance_micro"].get<int64_t>() == balance_before - spent);
  std::string out;
  CHECK(run_command({binary(), "audit", "verify", "--config", s.config_path()}, &out) == 0);
  INFO(out);
}
