#include "tools/quantum/run_quantum_circuit.hpp"

#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <mutex>
#include <random>

#include "connectors/quantum/qasm/qasm3_writer.hpp"

namespace scigate::tools {
namespace asio = boost::asio;
using quantum::Circuit;
using quantum::OpKind;

namespace {

const char* kInputSchema = R"json({
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "source": {"type": "string", "minLength": 1, "maxLength": 1048576,
               "description": "the circuit in OpenQASM 2.0 or 3.0"},
    "language": {"type": "string", "enum": ["auto", "openqasm2", "openqasm3"], "default": "auto",
                 "description": "auto: from the OPENQASM line (2.0 when there is none)"},
    "shots": {"type": "integer", "minimum": 0, "maximum": 100000000, "default": 1024},
    "seed": {"type": "integer", "minimum": 0, "maximum": 9007199254740991,
             "description": "makes the sampled counts reproducible; a random one is chosen and returned when absent"},
    "backend": {"type": "string", "enum": ["statevector"], "default": "statevector",
                "description": "statevector: the exact simulator here; another name: a quantum device (a job)"},
    "precision": {"type": "string", "enum": ["double", "single"], "default": "double",
                  "description": "single halves the memory (complex64)"},
    "return_statevector": {"type": "boolean", "default": false},
    "observables": {
      "type": "array", "maxItems": 64,
      "description": "Pauli strings (qubit 0 rightmost) or sums of weighted ones; expectation values of the final state",
      "items": {"oneOf": [
        {"type": "string", "maxLength": 64, "pattern": "^[IXYZ]{1,64}$"},
        {"type": "array", "minItems": 1, "maxItems": 256, "items": {
          "type": "object", "additionalProperties": false, "required": ["pauli"],
          "properties": {"pauli": {"type": "string", "maxLength": 64, "pattern": "^[IXYZ]{1,64}$"}, "coeff": {"type": "number", "default": 1}}}}
      ]}
    }
  },
  "required": ["source"]
})json";

const char* kOutputSchema = R"json({
  "type": "object",
  "properties": {
    "backend": {"type": "string"}, "qubits": {"type": "integer"}, "clbits": {"type": "integer"},
    "shots": {"type": "integer"}, "seed": {"type": "integer"},
    "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
    "gates": {"type": "integer"}, "gate_counts": {"type": "object"},
    "statevector": {"type": "array"}, "expectation_values": {"type": "array", "items": {"type": "number"}},
    "timing": {"type": "object"},
    "job_id": {"type": "string"}, "state": {"type": "string"}, "final": {"type": "boolean"}
  },
  "required": ["backend", "qubits"]
})json";

quantum::QasmVersion version_of(const json& args) {
  std::string l = args.value("language", "auto");
  if (l == "openqasm2") return quantum::QasmVersion::kV2;
  if (l == "openqasm3") return quantum::QasmVersion::kV3;
  return quantum::QasmVersion::kAuto;
}

bool mid_circuit(const Circuit& c) { return !c.measurements_terminal(); }

uint64_t runs_for(bool mid, uint64_t shots) { return mid ? std::max<uint64_t>(shots, 1) : 1; }

// Credits: qubits x operations (per simulated run), and the same in 2^20 amplitudes x
// operations so that a site can price the state's exponential size; both lines are always
// reported. Operations are gates, measurements, resets and global phases: each is at least one
// pass over the state (3,000 gphase or a few resets on 20 qubits took seconds and cost nothing
// when only gates counted). `fraction` < 1: the part done when a run was cut short.
Usage sim_usage(int qubits, uint64_t ops, uint64_t runs, double fraction = 1.0) {
  Usage u;
  double qg = double(qubits) * double(ops) * double(runs) * fraction;
  double mamp = std::ldexp(1.0, qubits - 20) * double(ops) * double(runs) * fraction;
  std::string of = std::to_string(ops) + " operations" + (runs > 1 ? " x " + std::to_string(runs) + " runs" : "") +
                   (fraction < 1.0 ? " x " + std::to_string(static_cast<int>(fraction * 100)) + "% done" : "");
  u.add(RunQuantumCircuitTool::kQubitGateResource, qg, std::to_string(qubits) + " qubits x " + of);
  u.add(RunQuantumCircuitTool::kAmplitudeGateResource, mamp, "2^" + std::to_string(qubits) + " amplitudes x " + of);
  return u;
}

std::vector<quantum::Observable> observables_of(const json& args) {
  std::vector<quantum::Observable> out;
  auto it = args.find("observables");
  if (it == args.end()) return out;
  for (const auto& o : *it) {
    quantum::Observable obs;
    if (o.is_string()) {
      obs.terms.emplace_back(o.get<std::string>(), 1.0);
    } else {
      for (const auto& t : o) obs.terms.emplace_back(t.at("pauli").get<std::string>(), t.value("coeff", 1.0));
    }
    out.push_back(std::move(obs));
  }
  return out;
}

json gate_counts(const Circuit& c) {
  std::map<std::string, int64_t> n;
  for (const auto& op : c.ops)
    if (op.kind == OpKind::kGate) ++n[op.name];
  json j = json::object();
  for (const auto& [k, v] : n) j[k] = v;
  return j;
}

struct Outcome {
  std::variant<quantum::SimResult, Error> result = Error::internal("not run");
  double seconds = 0;
};

json result_json(const quantum::ParsedCircuit& pc, const quantum::SimResult& r, const json& args, uint64_t seed,
                 const std::string& backend, double parse_ms, double run_ms) {
  const Circuit& c = pc.circuit;
  json j = json::object();
  j["backend"] = backend;
  j["language"] = pc.version == quantum::QasmVersion::kV3 ? "openqasm3" : "openqasm2";
  j["qubits"] = c.num_qubits;
  j["clbits"] = c.num_clbits;
  j["shots"] = args.value("shots", 1024);
  j["seed"] = seed;
  json counts = json::object();
  for (const auto& [k, v] : r.counts) counts[k] = v;
  j["counts"] = std::move(counts);
  j["gates"] = c.gate_count();
  j["gate_counts"] = gate_counts(c);
  if (!r.statevector.empty()) {
    json sv = json::array();
    for (const auto& a : r.statevector) sv.push_back(json::array({a.real(), a.imag()}));
    j["statevector"] = std::move(sv);
  }
  if (!r.expectation_values.empty()) j["expectation_values"] = r.expectation_values;
  json sim = json::object();
  sim["precision"] = args.value("precision", "double");
  sim["passes_over_state"] = r.passes;
  sim["operations_after_fusion"] = r.ops_applied;
  sim["threads"] = r.threads;
  sim["simd"] = r.simd ? "avx2" : "portable";
  sim["memory_bytes"] = r.memory_bytes;
  sim["shots_sampled_from_one_state"] = r.sampled_once;
  j["simulator"] = std::move(sim);
  json timing = json::object();
  timing["parse_ms"] = parse_ms;
  timing["run_ms"] = run_ms;
  j["timing"] = std::move(timing);
  return j;
}

std::string result_text(const json& j) {
  std::string t = j["qubits"].dump() + " qubits, " + j["gates"].dump() + " gates on " + j["backend"].get<std::string>();
  std::vector<std::pair<int64_t, std::string>> top;
  for (auto it = j["counts"].begin(); it != j["counts"].end(); ++it) top.emplace_back(it.value().get<int64_t>(), it.key());
  std::sort(top.rbegin(), top.rend());
  if (!top.empty()) {
    t += "; counts:";
    for (std::size_t i = 0; i < top.size() && i < 8; ++i) t += " " + top[i].second + "=" + std::to_string(top[i].first);
    if (top.size() > 8) t += " ... (" + std::to_string(top.size()) + " outcomes)";
  }
  if (j.contains("expectation_values")) t += "; expectation values " + j["expectation_values"].dump();
  char buf[64];
  std::snprintf(buf, sizeof buf, " (%.1f ms)", j["timing"].value("run_ms", 0.0));
  return t + buf;
}

// What the pool thread and the call's executor share: progress is reported on the executor,
// and never after the call has answered.
struct ProgressRelay {
  std::mutex m;
  ProgressReporter reporter;
  bool finished = false;
};


// --- remote devices (a job of the job ledger) ---------------------------------------------------

json remote_payload(const std::string& qasm3, uint64_t shots, const std::string& site, const Circuit& c) {
  json p = json::object();
  p["kind"] = "quantum-sampler";
  p["qasm3"] = qasm3;
  p["shots"] = shots;
  p["qubits"] = c.num_qubits;
  p["gates"] = c.gate_count();
  json line = json::object();
  line["resource"] = RunQuantumCircuitTool::shot_resource(site);
  line["quantity"] = static_cast<double>(shots);
  line["how"] = std::to_string(shots) + " shots on " + site;
  p["usage"] = json::array({line});
  return p;
}

json remote_json(const quantum::ParsedCircuit& pc, const jobs::JobRecord& r, uint64_t shots, double parse_ms) {
  const Circuit& c = pc.circuit;
  json j = json::object();
  j["backend"] = r.site;
  j["language"] = pc.version == quantum::QasmVersion::kV3 ? "openqasm3" : "openqasm2";
  j["qubits"] = c.num_qubits;
  j["clbits"] = c.num_clbits;
  j["shots"] = shots;
  j["gates"] = c.gate_count();
  j["gate_counts"] = gate_counts(c);
  j["job_id"] = r.id;
  j["state"] = std::string(jobs::to_string(r.state));
  j["final"] = jobs::is_final(r.state);
  if (r.result.is_object() && r.result.contains("counts")) {
    j["counts"] = r.result["counts"];
    if (r.result.contains("quantum_seconds")) j["quantum_seconds"] = r.result["quantum_seconds"];
  } else {
    j["counts"] = json::object();
  }
  json timing = json::object();
  timing["parse_ms"] = parse_ms;
  if (r.start_ms && r.end_ms) timing["run_ms"] = static_cast<double>(*r.end_ms - *r.start_ms);
  j["timing"] = std::move(timing);
  return j;
}

std::string submitted_text(const jobs::JobRecord& r) {
  return "submitted to " + r.site + " as job " + r.id + " (" + std::string(jobs::to_string(r.state)) +
         "); follow it with get_job or wait_job: its counts appear in the job's result when it completes";
}

Error remote_failure(const jobs::JobRecord& r) {
  std::string what = "job " + r.id + " on " + r.site + " ended " + std::string(jobs::to_string(r.state)) +
                     (r.reason.empty() ? "" : ": " + r.reason);
  if (r.state == jobs::JobState::kCanceled) return Error{ErrorCode::kCancelled, what, {}, {}};
  return Error{ErrorCode::kBackendRejected, what, "get_job " + r.id + " has the device's own state", {}};
}

}  // namespace

RunQuantumCircuitTool::RunQuantumCircuitTool(const Config& full, jobs::JobService* jobs)
    : config_(full.quantum), jobs_(jobs), pool_(static_cast<std::size_t>(std::max(1, full.quantum.concurrency))) {
  const QuantumConfig& config = full.quantum;
  if (jobs_)
    for (const auto& site : full.sites)
      if (site.scheduler == "ibm-runtime") remote_.push_back(site.id);
  descriptor_.name = "run_quantum_circuit";
  descriptor_.title = "Run a quantum circuit";
  descriptor_.description =
      "Runs an OpenQASM 2.0 or 3.0 circuit (include \"qelib1.inc\" or \"stdgates.inc\" for the standard gates) and "
      "returns measurement counts keyed as Qiskit does (bit 0 rightmost, registers separated by spaces, the last "
      "declared leftmost). backend \"statevector\" is the exact simulator: shots (default 1024) are sampled, seed "
      "makes them reproducible; return_statevector gives the final amplitudes of small circuits as [re, im] pairs; "
      "observables (Pauli strings such as \"ZZI\", qubit 0 rightmost, or lists of {pauli, coeff}) give expectation "
      "values. Memory grows as 2^qubits: 16 bytes per amplitude (8 with precision \"single\"). Credits are charged "
      "per qubit x gate. Errors name the line and column of the source.";
  if (!remote_.empty())
    descriptor_.description +=
        " Other backends are quantum devices: the circuit must use the device's native gates and coupling "
        "(q[i] is physical qubit i); it runs as a job (credits per shot) and the call returns its job_id at once "
        "(follow with get_job / wait_job: the counts are in the job's result), unless called as a task, which "
        "waits for the counts.";
  descriptor_.input_schema = json::parse(kInputSchema);
  for (const auto& id : remote_) descriptor_.input_schema["properties"]["backend"]["enum"].push_back(id);
  descriptor_.output_schema = json::parse(kOutputSchema);
  descriptor_.annotations = ToolAnnotations{.read_only = true, .destructive = false, .idempotent = false, .open_world = false};
  // A large circuit can run for minutes: clients with MCP tasks may poll for it instead of
  // holding the call open (docs/PROTOCOL.md "Tasks").
  descriptor_.task_support = TaskSupport::kOptional;
  limits_.max_qubits = config.max_qubits;

  quantum::SimOptions o;
  o.fusion = config.fusion;
  o.max_fused_qubits = config.max_fused_qubits;
  o.threads = config.threads;
  o.max_memory_bytes = config.max_memory_mb << 20;
  o.max_statevector_qubits = config.max_statevector_qubits;
  backends_["statevector"] = std::make_unique<quantum::StatevectorBackend>(o);
}

RunQuantumCircuitTool::~RunQuantumCircuitTool() {
  pool_.stop();
  pool_.join();
}

std::variant<quantum::ParsedCircuit, Error> RunQuantumCircuitTool::parse(const json& args) const {
  return quantum::parse_qasm(args.at("source").get_ref<const std::string&>(), version_of(args), limits_);
}

std::variant<json, Error> RunQuantumCircuitTool::derive_facts(const json& args) const {
  auto parsed = parse(args);
  if (auto* e = std::get_if<Error>(&parsed)) return *e;
  const Circuit& c = std::get<quantum::ParsedCircuit>(parsed).circuit;
  json f = json::object();
  f["qubits"] = c.num_qubits;
  f["clbits"] = c.num_clbits;
  f["gates"] = c.gate_count();
  f["operations"] = c.ops.size();  // what credits count: gates, measurements, resets, phases
  f["mid_circuit_measurement"] = mid_circuit(c);
  return f;
}

Usage RunQuantumCircuitTool::worst_case_usage(const json& args) const {
  if (!args.contains("qubits") || !args.contains("gates")) return {};
  // A device run is a job with its own hold (shots x the device's rate), taken at submit.
  if (args.value("backend", "statevector") != "statevector") return {};
  bool mid = args.value("mid_circuit_measurement", false);
  const uint64_t ops = args.contains("operations") ? args["operations"].get<uint64_t>() : args["gates"].get<uint64_t>();
  return sim_usage(args["qubits"].get<int>(), ops, runs_for(mid, args.value("shots", uint64_t{1024})));
}

asio::awaitable<ToolResult> RunQuantumCircuitTool::call(const json& args, CallContext& ctx) {
  auto t0 = std::chrono::steady_clock::now();
  auto parsed = parse(args);
  if (auto* e = std::get_if<Error>(&parsed)) co_return ToolResult::failure(*e);
  auto pc = std::make_shared<quantum::ParsedCircuit>(std::get<quantum::ParsedCircuit>(std::move(parsed)));
  double parse_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  std::string backend_name = args.value("backend", "statevector");
  if (std::find(remote_.begin(), remote_.end(), backend_name) != remote_.end())
    co_return co_await call_remote(pc, args, ctx, backend_name);
  auto b = backends_.find(backend_name);
  if (b == backends_.end())
    co_return ToolResult::failure(Error::invalid_arguments("no quantum backend " + backend_name, "use statevector"));
  uint64_t shots = args.value("shots", uint64_t{1024});
  if (shots > static_cast<uint64_t>(config_.max_shots))
    co_return ToolResult::failure(Error::invalid_arguments(
        std::to_string(shots) + " shots exceed this server's limit of " + std::to_string(config_.max_shots),
        "ask for at most " + std::to_string(config_.max_shots)));
  uint64_t seed = args.contains("seed") ? args["seed"].get<uint64_t>() : (uint64_t{std::random_device{}()} << 21) ^ std::random_device{}();
  seed &= (uint64_t{1} << 53) - 1;  // JSON numbers stay exact

  auto request = std::make_shared<quantum::RunRequest>();
  request->sim.shots = shots;
  request->sim.seed = seed;
  request->sim.return_statevector = args.value("return_statevector", false);
  request->sim.observables = observables_of(args);
  request->precision = args.value("precision", "double") == "single" ? quantum::Precision::kSingle : quantum::Precision::kDouble;
  auto flag = ctx.cancellation;
  auto deadline = ctx.deadline;
  request->cancelled = [flag, deadline] { return flag->cancelled() || std::chrono::steady_clock::now() > deadline; };
  auto relay = std::make_shared<ProgressRelay>();
  relay->reporter = ctx.progress;
  auto exec = co_await asio::this_coro::executor;
  // The fraction of the work done (every 1%): a run cut short by the caller or the deadline is
  // charged for that much, not nothing.
  auto done = std::make_shared<std::atomic<double>>(0.0);
  const bool report = ctx.progress.enabled();
  request->progress = [relay, exec, done, report](double f) {
    done->store(f);
    if (!report) return;
    asio::post(exec, [relay, f] {
      std::lock_guard lock(relay->m);
      if (!relay->finished) relay->reporter.report(std::floor(f * 100), 100.0, "simulating");
    });
  };

  quantum::QuantumBackend* backend = b->second.get();
  // Posted to the pool and posted back (not co_spawned onto the pool), with the initiation
  // built outside the co_await expression (GCC 12 miscompiles lambdas inside one).
  auto initiation = [this, backend, pc, request](auto handler) {
        asio::post(pool_, [backend, pc, request, handler = std::move(handler)]() mutable {
          std::exception_ptr error;
          Outcome out;
          auto start = std::chrono::steady_clock::now();
          try {
            out.result = backend->run(pc->circuit, *request);
          } catch (...) {
            error = std::current_exception();
          }
          out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
          auto ex = asio::get_associated_executor(handler);
          asio::post(ex, [handler = std::move(handler), error, out = std::move(out)]() mutable {
            std::move(handler)(error, std::move(out));
          });
        });
  };
  Outcome outcome = co_await asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr, Outcome)>(
      std::move(initiation), asio::use_awaitable);
  {
    std::lock_guard lock(relay->m);
    relay->finished = true;
  }
  if (auto* e = std::get_if<Error>(&outcome.result)) {
    Error err = *e;
    const bool cut = err.code == ErrorCode::kCancelled;
    if (cut && !flag->cancelled()) {
      err.code = ErrorCode::kTimeout;
      err.message = "the simulation ran past the call's deadline";
      err.hint = "use fewer qubits, gates or shots";
    }
    ToolResult failed = ToolResult::failure(std::move(err));
    if (cut && done->load() > 0)
      failed.usage = sim_usage(pc->circuit.num_qubits, pc->circuit.ops.size(), runs_for(mid_circuit(pc->circuit), shots),
                               std::min(1.0, done->load()));
    co_return failed;
  }
  const auto& r = std::get<quantum::SimResult>(outcome.result);
  json structured = result_json(*pc, r, args, seed, backend_name, parse_ms, outcome.seconds * 1000);
  ctx.audit_fields["qubits"] = pc->circuit.num_qubits;
  ctx.audit_fields["gates"] = pc->circuit.gate_count();
  ctx.audit_fields["backend"] = backend_name;
  ToolResult tr = ToolResult::success(structured, result_text(structured));
  tr.usage = sim_usage(pc->circuit.num_qubits, pc->circuit.ops.size(), runs_for(mid_circuit(pc->circuit), shots));
  co_return tr;
}

asio::awaitable<ToolResult> RunQuantumCircuitTool::call_remote(std::shared_ptr<quantum::ParsedCircuit> pc,
                                                               const json& args, CallContext& ctx, std::string site) {
  auto t0 = std::chrono::steady_clock::now();
  if (args.contains("observables") || args.value("return_statevector", false))
    co_return ToolResult::failure(Error::invalid_arguments(
        "a quantum device returns measurement counts only",
        "use backend \"statevector\" for state vectors and expectation values"));
  uint64_t shots = args.value("shots", uint64_t{1024});
  if (shots == 0)
    co_return ToolResult::failure(Error::invalid_arguments("a device run needs at least one shot", "ask for shots >= 1"));
  if (!pc->circuit.has_measurements())
    co_return ToolResult::failure(Error::invalid_arguments("the circuit measures nothing, so a device would return no counts",
                                                           "add measure instructions"));
  auto text = quantum::write_openqasm3(pc->circuit);
  if (auto* e = std::get_if<Error>(&text)) co_return ToolResult::failure(*e);

  jobs::SubmitRequest req;
  req.site = site;
  req.request_id = ctx.request_id;
  req.spec.name = "circuit";
  req.spec.project = ctx.project;
  req.spec.principal = ctx.principal.name;
  req.spec.payload = remote_payload(std::get<std::string>(text), shots, site, pc->circuit);
  double parse_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  auto submitted = co_await jobs_->submit(std::move(req));
  if (auto* e = std::get_if<Error>(&submitted)) co_return ToolResult::failure(*e);
  jobs::JobRecord rec = std::get<jobs::JobRecord>(std::move(submitted));
  ctx.audit_fields["job_id"] = rec.id;
  ctx.audit_fields["backend"] = site;
  ctx.audit_fields["qubits"] = pc->circuit.num_qubits;
  ctx.audit_fields["shots"] = shots;
  if (ctx.task_id.empty()) {
    json j = remote_json(*pc, rec, shots, parse_ms);
    co_return ToolResult::success(j, submitted_text(rec));
  }

  // As a task, nobody waits on the call: follow the job to its end and answer with the counts.
  asio::steady_timer timer(co_await asio::this_coro::executor);
  std::optional<jobs::JobState> last;
  int reports = 0;
  for (;;) {
    auto r = jobs_->get(ctx.project, rec.id);
    if (!r) co_return ToolResult::failure(Error::internal("job " + rec.id + " vanished from the ledger"));
    rec = std::move(*r);
    if (jobs::is_final(rec.state)) break;
    bool past_deadline =
        ctx.deadline.time_since_epoch().count() != 0 && std::chrono::steady_clock::now() >= ctx.deadline;
    if (ctx.cancelled() || past_deadline) {
      // The caller no longer wants the run: the device should not spend the project's shots.
      auto cancelled = co_await jobs_->cancel(ctx.project, rec.id);
      (void)cancelled;
      co_return ToolResult::failure(Error{ctx.cancelled() ? ErrorCode::kCancelled : ErrorCode::kTimeout,
                                          "job " + rec.id + " on " + site + " was cancelled before it ended", {}, {}});
    }
    if (!last || *last != rec.state) {
      ctx.progress.report(++reports, std::nullopt, "job " + rec.id + " is " + std::string(jobs::to_string(rec.state)));
      last = rec.state;
    }
    timer.expires_after(std::chrono::milliseconds(200));
    co_await timer.async_wait(asio::use_awaitable);
  }
  if (rec.state != jobs::JobState::kCompleted) co_return ToolResult::failure(remote_failure(rec));
  json structured = remote_json(*pc, rec, shots, parse_ms);
  co_return ToolResult::success(structured, result_text(structured));
}

}  // namespace scigate::tools
