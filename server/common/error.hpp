#pragma once
// One error type for the whole server. `message` and `hint` are for the caller (a model or a
// person); `detail` is for the logs only and never leaves the process.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace scigate {

enum class ErrorCode {
  kInvalidArguments,     // arguments do not fit the tool's schema or its rules
  kNotFound,             // the thing named does not exist (or is not visible to the caller)
  kPolicyDenied,         // the project's policy forbids this call
  kInsufficientCredits,  // the project cannot pay for the worst case of this call
  kRateLimited,          // too many calls; retry later
  kBackendRejected,      // the backend refused the work (bad script, unknown partition, ...)
  kBackendUnavailable,   // the backend could not be reached or failed
  kCancelled,            // the caller cancelled the call
  kTimeout,              // a deadline passed
  kUnauthenticated,      // no or bad credentials
  kForbidden,            // authenticated, but not allowed to do this
  kConflict,             // state changed underneath (idempotency key reused with other args, ...)
  kQuotaExceeded,        // a storage quota (the area's, or the file system's) does not hold the data
  kIntegrityFailed,      // data did not arrive whole (a checksum or length that does not match)
  kInternal,             // a bug; the caller gets a correlation id, the log gets the detail
};

std::string_view to_string(ErrorCode code);

struct Error {
  ErrorCode code = ErrorCode::kInternal;
  std::string message;  // safe to show the caller
  std::string hint;     // what the caller can do about it (may be empty)
  std::string detail;   // for the logs only
  int64_t retry_after_ms = 0;  // for kRateLimited (and busy backends): when a retry can succeed

  static Error invalid_arguments(std::string message, std::string hint = {}) {
    return {ErrorCode::kInvalidArguments, std::move(message), std::move(hint), {}};
  }
  static Error internal(std::string detail) {
    return {ErrorCode::kInternal, "internal error", {}, std::move(detail)};
  }
};

// Carries an Error out of a connector (a scheduler, a storage area, a backend) through code that
// returns something else; the tool turns it back into ToolResult::failure. Not for bugs.
class ErrorException : public std::runtime_error {
 public:
  explicit ErrorException(Error e) : std::runtime_error(e.message), error_(std::move(e)) {}
  const Error& error() const { return error_; }

 private:
  Error error_;
};

}  // namespace scigate
