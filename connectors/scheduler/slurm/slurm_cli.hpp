#pragma once
// Slurm through its command-line tools: sbatch --parsable to submit, ONE squeue for all the
// jobs a poll asks about, sacct -c (jobcomp/filetxt) for jobs slurmctld has forgotten, scancel.
// Every command runs with an argument vector (no shell) through run_command, off the I/O
// threads' time, with a scrubbed environment: PATH, SLURM_CONF and TZ only, so that neither
// the server's secrets reach a job nor SQUEUE_FORMAT-like variables change what we parse. A
// job's environment is exactly its spec's (plus PATH when it sets none): sbatch runs with that
// environment and --export=ALL, which avoids --export's comma-separated list (values may hold
// commas) and --export=NONE's login-environment lookup on the node.
//
// Thread-safety: all methods may be called concurrently from any executor.
#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "connectors/scheduler/scheduler.hpp"
#include "server/common/command_runner.hpp"

namespace scigate::jobs {

struct SlurmCliOptions {
  std::filesystem::path slurm_conf;  // SLURM_CONF for every command ("" = Slurm's default)
  std::filesystem::path bin_dir;     // where sbatch, squeue... are ("" = this process's PATH)
  std::chrono::milliseconds command_timeout{std::chrono::seconds(30)};
  std::string job_path = "/usr/local/bin:/usr/bin:/bin";  // PATH of a job whose spec sets none
  std::size_t max_output = 64 << 20;  // squeue's answer for many thousand jobs fits
};

class SlurmCliScheduler : public Scheduler {
 public:
  explicit SlurmCliScheduler(SlurmCliOptions options);
  std::string kind() const override { return "slurm-cli"; }

  boost::asio::awaitable<std::string> submit(JobSpec spec) override;
  boost::asio::awaitable<std::vector<JobStatus>> poll(std::vector<std::string> native_ids) override;
  boost::asio::awaitable<void> cancel(std::string native_id) override;
  boost::asio::awaitable<std::vector<JobStatus>> final_status(std::string native_id) override;
  boost::asio::awaitable<std::map<std::string, std::string>> find_submitted(std::vector<Submitted> jobs) override;

  // The pieces, for tests and the benchmark.
  std::vector<std::string> sbatch_argv(const JobSpec& spec) const;
  std::map<std::string, std::string> sbatch_environment(const JobSpec& spec) const;
  std::vector<std::string> squeue_argv(const std::string& id_list) const;
  std::vector<std::string> squeue_by_name_argv(const std::string& names) const;  // comma-separated
  std::vector<std::string> scancel_argv(const std::string& id) const;
  std::vector<std::string> sacct_argv(const std::string& id) const;
  static std::vector<JobStatus> parse_squeue(std::string_view out);
  static std::vector<JobStatus> parse_sacct(std::string_view out, std::string_view native_id);
  static std::string parse_sbatch(std::string_view out);  // "" when it is not an id
  uint64_t commands_run() const { return commands_.load(); }

 private:
  std::string program(const char* name) const;
  std::map<std::string, std::string> base_environment() const;
  boost::asio::awaitable<CommandResult> run(std::vector<std::string> argv, std::map<std::string, std::string> env,
                                            std::string stdin_data = {});

  SlurmCliOptions options_;
  std::atomic<uint64_t> commands_{0};
};

}  // namespace scigate::jobs
