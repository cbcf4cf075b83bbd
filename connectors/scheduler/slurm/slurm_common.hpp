#pragma once
// What the Slurm connectors (CLI and REST) share: Slurm's job states in PSI/J terms, exit codes
// in both of Slurm's spellings, times, TRES strings, and the checks and the batch script that
// turn a JobSpec into something Slurm accepts. Plain functions, no I/O: unit-tested with
// outputs captured from a real Slurm 22.05.
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "connectors/scheduler/scheduler.hpp"

namespace scigate::jobs::slurm {

// A Slurm job state, long ("OUT_OF_MEMORY") or compact ("OOM"), with anything after the first
// space dropped ("CANCELLED by 0"), in PSI/J terms. Unknown states are nullopt (the caller keeps
// the job as it was and logs). Per `man squeue`: PD CF RD RF RH RV queued; R CG RQ RS SI SE SO
// ST S active; CD completed; CA cancelled; BF DL F NF OOM PR TO failed.
std::optional<JobState> map_state(std::string_view native);
// The reason a failed state gives by itself ("walltime exceeded" for TIMEOUT...), or "".
std::string failure_reason(std::string_view native);
// Fills state, native_state and (for the failure states) reason; `slurm_reason` is Slurm's own
// reason field ("None" and "" are ignored). Returns false for an unknown state.
bool apply_state(JobStatus& st, std::string_view native, std::string_view slurm_reason);

// "3:0" (sacct, scontrol: code:signal).
bool parse_code_signal(std::string_view s, JobStatus& st);
// A raw wait status (squeue -O exit_code, slurmrestd's exit_code): 768 is exit 3, 15 SIGTERM.
void apply_wait_status(int64_t status, JobStatus& st);

// "2026-11-21T22:49:55" in the local time zone (as Slurm prints) to unix ms; "N/A", "Unknown",
// "None", "" are nullopt.
std::optional<int64_t> parse_time(std::string_view s);

// Allocated GPUs from a TRES string ("cpu=4,mem=1G,node=1,gres/gpu:a100=2" -> 2, "a100"). The
// type is "" when none is listed or several are ("gres/gpu:a100=1,gres/gpu:v100=1" -> 2, "").
int tres_gpus(std::string_view tres, std::string* type = nullptr);

// Walltime in whole minutes, rounded up, at least 1 (Slurm's granularity).
int64_t walltime_minutes(std::chrono::seconds walltime);

// The batch script Slurm runs: the spec's script (with "#!/bin/bash" added when it has no "#!"
// line), or `exec 'executable' 'arg'...` with every word single-quoted.
std::string batch_script(const JobSpec& spec);
std::string shell_quote(std::string_view word);

// Rejects what must never reach Slurm, whatever the tools layer checked: control characters in
// names, partitions, accounts; environment names that are not identifiers or that would steer
// Slurm itself (SLURM_*, SBATCH_*, ...); relative paths. Throws ErrorException
// (kInvalidArguments).
void check_spec(const JobSpec& spec);

// Creates the job's working directory and the directories of its output files (Slurm creates
// neither; the job ledger names them beneath the project's area). Directories created here are
// given to `spec.run_as` when the gateway runs as root, so the job can write its output;
// existing ones are left as they are. Throws ErrorException (kBackendUnavailable) on failure.
void prepare_job_directories(const JobSpec& spec);

// "sbatch: error: Batch job submission failed: Invalid partition name specified" ->
// "Invalid partition name specified" (the messages of all lines, joined with "; ").
std::string slurm_message(std::string_view stderr_text);
// Slurm's message for a refused job, with what the caller can do where Slurm's words do not
// say it (a script over max_script_size reads "Pathname ... too long").
std::string explain_rejection(std::string message, size_t script_bytes);
// Whether a command's stderr says the controller could not be reached (not that it refused).
bool looks_unreachable(std::string_view stderr_text);
// Slurm's words for a request that was sent but whose answer was lost: the outcome is unknown.
bool answer_lost(std::string_view text);

// The comma-separated native ids in chunks small enough for one command line.
std::vector<std::string> id_lists(const std::vector<std::string>& ids, size_t per_list = 1000);
bool valid_job_id(std::string_view id);

}  // namespace scigate::jobs::slurm
