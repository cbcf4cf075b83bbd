#pragma once
// Where circuits run in the call: a local backend (the embedded simulator) answers run() in one
// blocking call, made from a worker pool. Backends are shared by all calls: run() must be safe
// to call concurrently. Remote devices are not QuantumBackends: their runs are long, so they are
// job-ledger sites (jobs::Scheduler, connectors/quantum/ibm/ibm_runtime.hpp) and a run is a job.
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

class QuantumBackend {
 public:
  virtual ~QuantumBackend() = default;
  virtual const std::string& name() const = 0;

  virtual std::variant<SimResult, Error> run(const Circuit& circuit, const RunRequest& request) = 0;
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
