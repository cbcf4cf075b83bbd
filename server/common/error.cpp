#include "server/common/error.hpp"

namespace scigate {

std::string_view to_string(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArguments: return "invalid_arguments";
    case ErrorCode::kNotFound: return "not_found";
    case ErrorCode::kPolicyDenied: return "policy_denied";
    case ErrorCode::kInsufficientCredits: return "insufficient_credits";
    case ErrorCode::kRateLimited: return "rate_limited";
    case ErrorCode::kBackendRejected: return "backend_rejected";
    case ErrorCode::kBackendUnavailable: return "backend_unavailable";
    case ErrorCode::kCancelled: return "cancelled";
    case ErrorCode::kTimeout: return "timeout";
    case ErrorCode::kUnauthenticated: return "unauthenticated";
    case ErrorCode::kForbidden: return "forbidden";
    case ErrorCode::kConflict: return "conflict";
    case ErrorCode::kQuotaExceeded: return "quota_exceeded";
    case ErrorCode::kIntegrityFailed: return "integrity_failed";
    case ErrorCode::kInternal: return "internal";
  }
  return "internal";
}

}  // namespace scigate
