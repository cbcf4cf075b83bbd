#pragma once
// Where circuits run. A local backend (the embedded simulator) answers run() in one blocking
// call, made from a worker pool; a remote backend (a QPU service) will implement submit/poll/
// cancel instead and have its runs followed through the job ledger. Backends are shared by all
// calls: run() must be safe to call concurrently.
#include <functional>
#include <string>
#include <variant>

#include "connectors/quantum/circuit.hpp"
#include "connectors/quantum/statevector/simulator.hpp"
#include "server/common/error.hpp"

namespace scigate::quantum {

// What one run may ask for beyond the circuit.
struct RunRequest {
  SimRequest sim;  // shots, seed, state vector, observables
  Precision precision = Precision::kDouble;
  std::function<bool()> cancelled;          // polled; true stops the run
  std::function<void(double)> progress;     // fraction done, from the running thread
};

// A remote run's state, mapped onto the job states (PSI/J) of connectors/scheduler.
struct RemoteStatus {
  std::string state;         // QUEUED, ACTIVE, COMPLETED, FAILED, CANCELED
  std::string native_state;  // the service's word for it
  std::optional<SimResult> result;
};

class QuantumBackend {
 public:
  virtual ~QuantumBackend() = default;
  virtual const std::string& name() const = 0;
  virtual bool remote() const { return false; }

  // Local backends: the whole run, blocking. Remote ones answer kBackendRejected.
  virtual std::variant<SimResult, Error> run(const Circuit& circuit, const RunRequest& request) = 0;

  // Remote backends: hand the circuit over and return the service's id; then poll and cancel.
  virtual std::variant<std::string, Error> submit(const Circuit&, const RunRequest&) { return not_remote(); }
  virtual std::variant<RemoteStatus, Error> poll(const std::string&) { return not_remote(); }
  virtual std::optional<Error> cancel(const std::string&) { return not_remote(); }

 private:
  Error not_remote() const {
    return Error{ErrorCode::kBackendRejected, "backend " + name() + " runs circuits locally; it has no remote jobs", {}, {}};
  }
};

// The embedded state-vector simulator as a backend; `options` bound every run (memory, threads).
class StatevectorBackend final : public QuantumBackend {
 public:
  explicit StatevectorBackend(SimOptions options) : options_(std::move(options)) {}
  const std::string& name() const override { return name_; }
  const SimOptions& options() const { return options_; }
  std::variant<SimResult, Error> run(const Circuit& circuit, const RunRequest& request) override {
    SimOptions o = options_;
    o.precision = request.precision;
    o.cancelled = request.cancelled;
    o.progress = request.progress;
    return run_statevector(circuit, request.sim, o);
  }

 private:
  std::string name_ = "statevector";
  SimOptions options_;
};

}  // namespace scigate::quantum
