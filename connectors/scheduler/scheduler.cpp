#include "connectors/scheduler/scheduler.hpp"

#include <cctype>

namespace scigate::jobs {

std::string_view to_string(JobState s) {
  switch (s) {
    case JobState::kNew: return "NEW";
    case JobState::kQueued: return "QUEUED";
    case JobState::kActive: return "ACTIVE";
    case JobState::kCompleted: return "COMPLETED";
    case JobState::kFailed: return "FAILED";
    case JobState::kCanceled: return "CANCELED";
  }
  return "NEW";
}

std::optional<JobState> parse_job_state(std::string_view s) {
  std::string up;
  for (char c : s) up += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (auto st : {JobState::kNew, JobState::kQueued, JobState::kActive, JobState::kCompleted, JobState::kFailed,
                  JobState::kCanceled})
    if (to_string(st) == up) return st;
  return std::nullopt;
}

}  // namespace scigate::jobs
