#pragma once
// Slurm through slurmrestd, OpenAPI v0.0.38 (Slurm 22.05), in either of its two set-ups:
//   - a unix socket with rest_auth/local: slurmrestd takes the caller's uid from the socket
//     (SO_PEERCRED); when the gateway runs as root it may name the user with
//     X-SLURM-USER-NAME (JobSpec::run_as, else `user_name`);
//   - TCP with rest_auth/jwt: every request carries X-SLURM-USER-NAME and X-SLURM-USER-TOKEN.
//     The token comes from a file (as `scontrol token` writes it, with or without the
//     "SLURM_JWT=" prefix), re-read whenever the file changes, so an operator (or a cron job)
//     can rotate it without a restart. A token that is not a JWT, or whose "exp" has passed,
//     is not sent (slurmctld would drop the connection, which reads as an answer lost); one
//     that expires within a day is logged (`slurm_token_expiring`) once.
// One HTTP/1.1 request per connection, each bounded by `request_timeout`. poll() is ONE
// GET /jobs for all ids, filtered here. Slurm forgets finished jobs after MinJobAge and
// v0.0.38 has no accounting without slurmdbd, so final_status() asks slurmrestd and, when
// `sacct` is configured, also `sacct -c` on this machine (see SlurmCliScheduler).
//
// Errors: slurmrestd answers failures with HTTP 500 and `errors[]`; codes 2000-2999 (ESLURM_*,
// e.g. 2000 "Invalid partition name specified") are the job's fault -> kBackendRejected;
// anything else (no answer, 401, a bad token, communication codes) -> kBackendUnavailable.
//
// Thread-safety: all methods may be called concurrently from any executor.
#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "connectors/scheduler/scheduler.hpp"
#include "connectors/scheduler/slurm/slurm_cli.hpp"
#include "server/common/error.hpp"

namespace scigate::jobs {

struct SlurmRestOptions {
  std::filesystem::path unix_socket;  // rest_auth/local; or
  std::string url;                    // "http://127.0.0.1:6820" for rest_auth/jwt
  std::string user_name;              // X-SLURM-USER-NAME (required with a token)
  std::filesystem::path token_file;   // JWT, re-read when it changes
  std::string token;                  // or the JWT itself (tests)
  std::string api_version = "v0.0.38";
  std::chrono::milliseconds request_timeout{std::chrono::seconds(15)};
  std::size_t max_response = 256 << 20;  // GET /jobs on a busy site is big
  std::string job_path = "/usr/local/bin:/usr/bin:/bin";  // PATH of a job whose spec sets none
  std::filesystem::path default_working_directory = "/tmp";  // slurmrestd has no "current" one
  std::optional<SlurmCliOptions> sacct;  // for final_status of forgotten jobs
};

class SlurmRestScheduler : public Scheduler {
 public:
  explicit SlurmRestScheduler(SlurmRestOptions options);
  ~SlurmRestScheduler() override;
  std::string kind() const override { return "slurm-rest"; }

  boost::asio::awaitable<std::string> submit(JobSpec spec) override;
  boost::asio::awaitable<std::vector<JobStatus>> poll(std::vector<std::string> native_ids) override;
  boost::asio::awaitable<void> cancel(std::string native_id) override;
  boost::asio::awaitable<std::vector<JobStatus>> final_status(std::string native_id) override;
  boost::asio::awaitable<std::map<std::string, std::string>> find_submitted(std::vector<Submitted> jobs) override;

  // The pieces, for tests and the benchmark.
  nlohmann::json submit_body(const JobSpec& spec) const;
  static std::optional<JobStatus> parse_job(const nlohmann::json& job);
  static std::vector<JobStatus> parse_jobs(const nlohmann::json& body);
  // A failed answer as an Error (rejected or unavailable, see above).
  static Error error_from(int http_status, const nlohmann::json& body, const std::string& what);
  uint64_t requests_sent() const { return requests_.load(); }

  struct Reply {
    int status = 0;
    nlohmann::json body;  // discarded() when it was not JSON
    std::string raw;
  };
  // One request; throws ErrorException(kBackendUnavailable) when slurmrestd cannot be reached
  // or does not answer in time.
  boost::asio::awaitable<Reply> request(std::string method, std::string path, std::string body,
                                        std::string user_name = {});

 private:
  std::string token();
  std::string path(const std::string& rest) const;

  SlurmRestOptions options_;
  std::string host_, port_;  // from url
  std::mutex token_mutex_;
  std::string token_cache_;
  std::filesystem::file_time_type token_mtime_{};
  std::uintmax_t token_size_ = 0;
  std::atomic<int64_t> token_warned_exp_ms_{0};  // the token whose coming expiry was logged
  std::unique_ptr<SlurmCliScheduler> sacct_;
  std::atomic<uint64_t> requests_{0};
};

}  // namespace scigate::jobs
