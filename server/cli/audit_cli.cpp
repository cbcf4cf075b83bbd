#include "server/cli/audit_cli.hpp"

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <thread>

#include "policies/audit_checkpoint.hpp"
#include "policies/audit_query.hpp"
#include "policies/audit_time.hpp"
#include "policies/audit_verify.hpp"
#include "policies/canonical_json.hpp"
#include "server/config/config.hpp"
#include "server/state/database.hpp"

namespace scigate::cli {
namespace fs = std::filesystem;
namespace {

constexpr const char* kUsage = R"(usage:
  scigate audit verify [--config FILE] [--pubkey FILE] [--checkpoints FILE]
  scigate audit verify --export FILE [--checkpoints FILE] [--pubkey FILE]
  scigate audit export [--config FILE] [--since TIME] [--until TIME] [--project P] [--format jsonl] [--output FILE]
  scigate audit tail   [--config FILE] [-n N] [--follow] [--format jsonl|text]
  scigate audit pubkey [--config FILE]
TIME: RFC 3339 (2026-03-01T12:00:00Z), a date (2026-03-01), Unix milliseconds, or a span back from now (90m, 24h, 7d).)";

struct Args {
  std::map<std::string, std::string> options;
  std::vector<std::string> flags;
  bool has(const std::string& f) const { return std::find(flags.begin(), flags.end(), f) != flags.end(); }
  std::string opt(const std::string& k, const std::string& d = "") const {
    auto it = options.find(k);
    return it == options.end() ? d : it->second;
  }
};

Args parse(const std::vector<std::string>& a, const std::vector<std::string>& with_value,
           const std::vector<std::string>& flags) {
  Args out;
  for (std::size_t i = 3; i < a.size(); ++i) {
    std::string s = a[i];
    if (s == "-n") s = "--lines";
    if (s.rfind("--", 0) != 0) throw std::invalid_argument("unexpected argument \"" + s + "\"\n" + kUsage);
    auto eq = s.find('=');
    std::string key = s.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    if (std::find(with_value.begin(), with_value.end(), key) != with_value.end()) {
      if (eq != std::string::npos) out.options[key] = s.substr(eq + 1);
      else if (i + 1 < a.size()) out.options[key] = a[++i];
      else throw std::invalid_argument("--" + key + " needs a value");
    } else if (std::find(flags.begin(), flags.end(), key) != flags.end() && eq == std::string::npos) {
      out.flags.push_back(key);
    } else {
      throw std::invalid_argument("unknown option --" + key + "\n" + kUsage);
    }
  }
  return out;
}

Config config_of(const Args& args) {
  fs::path p = args.opt("config");
  if (p.empty())
    if (const char* e = std::getenv("SCIGATE_CONFIG"); e && *e) p = e;
  if (p.empty()) p = "scigate.toml";
  return load_config(p);
}

fs::path need_database(const Config& cfg) {
  if (!fs::exists(cfg.database)) throw std::runtime_error("no database at " + cfg.database.string());
  return cfg.database;
}

int64_t time_arg(const Args& args, const std::string& name, int64_t now) {
  auto t = audit::parse_time(args.opt(name), now);
  if (!t) throw std::invalid_argument("--" + name + " \"" + args.opt(name) + "\" is not a time\n" + kUsage);
  return *t;
}

int64_t count_arg(const std::string& text, const std::string& name) {
  if (text.empty() || text.size() > 9 || text.find_first_not_of("0123456789") != std::string::npos)
    throw std::invalid_argument(name + " must be a whole number");
  return std::stoll(text);
}

std::string text_line(const AuditRowView& r) {
  std::string s = std::to_string(r.seq) + "\t" + audit::format_time(r.time_ms) + "\t" +
                  (r.principal.empty() ? "-" : std::string(r.principal)) + "\t" +
                  (r.project.empty() ? "-" : std::string(r.project)) + "\t" + (r.tool.empty() ? "-" : std::string(r.tool)) +
                  "\t" + std::string(r.outcome);
  if (!r.error_code.empty()) s += " (" + std::string(r.error_code) + ")";
  s += "\tcost " + std::to_string(r.cost) + "\t" + std::to_string(r.duration_us) + " us\t" + std::string(r.request_id);
  return s;
}

int cmd_verify(const std::vector<std::string>& a) {
  Args args = parse(a, {"config", "pubkey", "checkpoints", "export"}, {});
  AuditVerifyOptions o;
  if (auto pk = args.opt("pubkey"); !pk.empty()) o.key = audit::SigningKey::load(pk);
  if (auto cp = args.opt("checkpoints"); !cp.empty()) o.checkpoint_file = fs::path(cp);
  // Asked for explicitly: a missing or empty checkpoint file is a failure, not a note.
  o.require_checkpoints = !args.opt("pubkey").empty() || !args.opt("checkpoints").empty();
  AuditVerification v;
  if (auto file = args.opt("export"); !file.empty()) {
    // Offline: the export, the checkpoints and the public key are all it needs.
    if (file == "-") {
      v = verify_audit_export(std::cin, o);
    } else {
      std::ifstream in(file);
      if (!in) throw std::runtime_error("cannot read " + file);
      v = verify_audit_export(in, o);
    }
  } else {
    Config cfg = config_of(args);
    if (!o.checkpoint_file) o.checkpoint_file = cfg.audit.checkpoint_file;
    if (!o.key && fs::exists(cfg.audit.signing_key)) o.key = audit::SigningKey::load(cfg.audit.signing_key);
    v = verify_audit_log(need_database(cfg), o);
  }
  std::cout << describe(v);
  return v.ok ? 0 : 1;
}

int cmd_export(const std::vector<std::string>& a) {
  Args args = parse(a, {"config", "since", "until", "project", "format", "output"}, {});
  if (auto f = args.opt("format", "jsonl"); f != "jsonl")
    throw std::invalid_argument("--format: only jsonl is supported");
  Config cfg = config_of(args);
  const int64_t now = audit::now_ms();
  audit::EventFilter f;
  nlohmann::json header = nlohmann::json::object();
  header["version"] = 1;
  header["canonical"] = "RFC 8785";
  // Taken before the snapshot: every checkpoint signed up to now names a record the snapshot has.
  header["exported_at_ms"] = now;
  header["exported_at"] = audit::format_time(now);
  header["to_end"] = args.opt("until").empty();
  if (auto p = args.opt("project"); !p.empty()) {
    f.projects = std::vector<std::string>{p};
    header["project"] = p;
  }
  audit::AuditReader reader(need_database(cfg));
  reader.begin_snapshot();
  int64_t last = reader.last_seq();
  header["log_last_seq"] = last;
  // By time, the export is the run of records from the first at or after --since to the last
  // before --until, so that it verifies as one chain (a record's time is when its request
  // arrived; records are appended when calls end, so times are not quite in seq order).
  if (!args.opt("since").empty()) {
    int64_t since = time_arg(args, "since", now);
    header["since"] = audit::format_time(since);
    f.from_seq = reader.first_seq_since(since).value_or(last + 1);
    header["from_seq"] = *f.from_seq;
  }
  if (!args.opt("until").empty()) {
    int64_t until = time_arg(args, "until", now);
    header["until"] = audit::format_time(until);
    f.to_seq = reader.last_seq_before(until).value_or(0);
  }
  std::ofstream file;
  std::ostream* out = &std::cout;
  if (auto path = args.opt("output"); !path.empty()) {
    file.open(path, std::ios::trunc);
    if (!file) throw std::runtime_error("cannot write " + path);
    out = &file;
  }
  nlohmann::json h = nlohmann::json::object();
  h["scigate_audit_export"] = header;
  *out << canonical::dump(h) << "\n";
  int64_t n = 0;
  std::string line;
  reader.scan(f, [&](const AuditRowView& r) {
    line.clear();
    append_audit_message(line, r, true);
    line.push_back('\n');
    out->write(line.data(), static_cast<std::streamsize>(line.size()));
    ++n;
    return true;
  });
  reader.end_snapshot();
  out->flush();
  if (!*out) throw std::runtime_error("writing the export failed");
  std::cerr << "exported " << n << " records\n";
  return 0;
}

volatile std::sig_atomic_t g_stop = 0;

int cmd_tail(const std::vector<std::string>& a) {
  Args args = parse(a, {"config", "lines", "format"}, {"follow"});
  std::string format = args.opt("format", "jsonl");
  if (format != "jsonl" && format != "text") throw std::invalid_argument("--format must be jsonl or text");
  int64_t n = count_arg(args.opt("lines", "10"), "-n");
  Config cfg = config_of(args);
  audit::AuditReader reader(need_database(cfg));
  auto print = [&](const AuditRowView& r) {
    if (format == "text") std::cout << text_line(r) << "\n";
    else std::cout << audit_export_line(r) << "\n";
  };
  int64_t last = reader.last_seq();
  audit::EventFilter f;
  f.from_seq = std::max<int64_t>(1, last - n + 1);
  int64_t printed = f.from_seq.value() - 1;
  if (n > 0)
    reader.scan(f, [&](const AuditRowView& r) {
      print(r);
      printed = r.seq;
      return true;
    });
  else
    printed = last;
  std::cout.flush();
  if (!args.has("follow")) return 0;
  std::signal(SIGINT, [](int) { g_stop = 1; });
  std::signal(SIGTERM, [](int) { g_stop = 1; });
  while (!g_stop && std::cout) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    audit::EventFilter next;
    next.cursor = printed;
    reader.scan(next, [&](const AuditRowView& r) {
      print(r);
      printed = r.seq;
      return true;
    });
    std::cout.flush();
  }
  return 0;
}

int cmd_pubkey(const std::vector<std::string>& a) {
  Args args = parse(a, {"config"}, {});
  Config cfg = config_of(args);
  if (!fs::exists(cfg.audit.signing_key))
    throw std::runtime_error("no audit signing key at " + cfg.audit.signing_key.string() +
                             " (the server creates it when it first starts; so does scigate init)");
  auto key = audit::SigningKey::load(cfg.audit.signing_key);
  std::cout << key.public_pem();
  std::cerr << "key id " << key.key_id() << " (Ed25519; checkpoints in " << cfg.audit.checkpoint_file.string()
            << ")\n";
  return 0;
}

}  // namespace

int run_audit(const std::vector<std::string>& a) {
  if (a.size() < 3) throw std::invalid_argument(kUsage);
  const std::string& sub = a[2];
  if (sub == "verify") return cmd_verify(a);
  if (sub == "export") return cmd_export(a);
  if (sub == "tail") return cmd_tail(a);
  if (sub == "pubkey") return cmd_pubkey(a);
  throw std::invalid_argument("unknown audit command \"" + sub + "\"\n" + kUsage);
}

}  // namespace scigate::cli
