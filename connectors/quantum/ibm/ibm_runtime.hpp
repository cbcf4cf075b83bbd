#pragma once
// A quantum device behind IBM's Qiskit Runtime REST API, as one more site of the job ledger:
// a circuit run there is a job (gateway id, states, credits held and settled, get_job,
// wait_job, tasks), exactly as a Slurm job is. docs/QUANTUM.md "Remote devices".
//
// The service, as this connector uses it:
//   - IAM: POST <iam_url>/identity/token (form grant_type=urn:ibm:params:oauth:grant-type:apikey,
//     apikey=...) -> a bearer token, cached until a minute before it expires; a 401 from the
//     runtime drops it and the request is tried once more with a fresh one. The API key is read
//     from its file each time a token is fetched (so it can be rotated) and never logged.
//   - Every runtime call carries Authorization: Bearer, Service-CRN and IBM-API-Version.
//   - GET /v1/backends/<b>/configuration (n_qubits, basis_gates, coupling_map), cached for an
//     hour: the circuit is checked against it BEFORE anything is sent (check_native).
//   - POST /v1/jobs {program_id: "sampler", backend, params: {pubs: [[qasm3, null, shots]],
//     version: 2}} -> {id}. The circuit text is written from the parsed circuit
//     (write_openqasm3), so the device gets exactly what was checked.
//   - GET /v1/jobs/<id> for each active job on each poll (the service has no batch status
//     call that filters by ids); status Queued / Running / Completed / Failed / Cancelled map
//     to QUEUED / ACTIVE / COMPLETED / FAILED / CANCELED. "Cancelled - Ran too long" is the
//     service's time limit: FAILED, never CANCELED.
//   - GET /v1/jobs/<id>/results once Completed: per register, one hex sample per shot
//     ("0x3": bit i = bit i of the register) -> counts keyed as the simulator keys them
//     (Qiskit's form: registers separated by spaces, the last declared leftmost).
//   - POST /v1/jobs/<id>/cancel (204; 409 for a job already final is not an error).
//
// Errors: the service's 400/404/409 on submit (a bad circuit, an unknown backend, usage over
// the instance's limit) are the job's fault -> kBackendRejected with the service's message;
// no answer, 5xx, 429, or credentials the service refuses -> kBackendUnavailable.
//
// Thread-safety: all methods may be called concurrently from any executor.
#include <chrono>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "connectors/http/curl_client.hpp"
#include "connectors/quantum/qasm/qasm3_writer.hpp"
#include "connectors/scheduler/scheduler.hpp"
#include "server/common/error.hpp"
#include "server/config/config.hpp"

namespace scigate::quantum {

class IbmRuntimeScheduler final : public jobs::Scheduler {
 public:
  explicit IbmRuntimeScheduler(IbmRuntimeSiteConfig options);
  ~IbmRuntimeScheduler() override;
  std::string kind() const override { return "ibm-runtime"; }
  bool runs_payloads() const override { return true; }

  // spec.payload: {"kind": "quantum-sampler", "qasm3": text, "shots": n}.
  boost::asio::awaitable<std::string> submit(jobs::JobSpec spec) override;
  boost::asio::awaitable<std::vector<jobs::JobStatus>> poll(std::vector<std::string> native_ids) override;
  boost::asio::awaitable<void> cancel(std::string native_id) override;
  boost::asio::awaitable<std::vector<jobs::JobStatus>> final_status(std::string native_id) override;

  // The device's native instructions (fetched and cached). Throws ErrorException.
  boost::asio::awaitable<DeviceTarget> target();

  // The pieces, for tests.
  static std::optional<jobs::JobStatus> parse_job(const nlohmann::json& job);
  // {"counts": {...}, "registers": [...], "shots": n} from a results body (ordered as sent).
  static std::optional<nlohmann::json> counts_from_results(const std::string& body, std::string* why);
  static DeviceTarget parse_configuration(const std::string& name, const nlohmann::json& config);
  uint64_t requests_sent() const { return http_.started(); }

 private:
  struct Reply {
    long status = 0;
    nlohmann::json body;
    std::string raw;
  };
  boost::asio::awaitable<Reply> api(std::string method, std::string path, std::string body);
  boost::asio::awaitable<std::string> token(bool refresh);
  boost::asio::awaitable<std::optional<jobs::JobStatus>> status_of(std::string id);

  IbmRuntimeSiteConfig options_;
  http::CurlClient http_;
  std::mutex mutex_;
  std::string token_;
  std::chrono::steady_clock::time_point token_expiry_{};
  std::optional<DeviceTarget> target_;
  std::chrono::steady_clock::time_point target_time_{};
};

}  // namespace scigate::quantum
