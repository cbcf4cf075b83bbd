#pragma once
// Policy test files (`scigate policy test`, docs/POLICY.md#testing-a-policy): a policy file and
// cases, each a call (principal, roles, tool, arguments, time) with the decision expected.
// Cases of one file run in order against one engine, so rate limits can be tested with
// `repeat`.
#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "policies/policy.hpp"

namespace scigate::policy {

struct TestCaseResult {
  std::string name;
  int line = 0;
  bool passed = false;
  std::string failure;  // what differed from the expectation
  Decision decision;
};

struct TestFileResult {
  std::string file;
  std::string policy_file;
  std::vector<TestCaseResult> cases;
};

// Throws PolicyError (FILE:LINE:COLUMN) when the test file or the policy it names is broken.
TestFileResult run_policy_tests(const std::filesystem::path& file);

// An RFC 3339 date-time ("2025-01-06T10:00:00Z", "2025-01-06T11:00:00+01:00"; without an
// offset: UTC). nullopt when the text is not one.
std::optional<std::chrono::system_clock::time_point> parse_time(const std::string& text);

}  // namespace scigate::policy
