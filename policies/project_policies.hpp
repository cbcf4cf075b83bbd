#pragma once
// The policy engine the server runs: one compiled policy file per project (docs/POLICY.md);
// projects without a file get the built-in MembershipPolicy. A project's policy is consulted
// only for calls for that project, after the caller's membership there is established, so one
// project's rules can never widen access in another.
//
// Thread-safety: decide() and may_list() run concurrently on any thread and never wait for a
// reload: they read an immutable snapshot through an atomic shared_ptr. reload() (SIGHUP, the
// file watcher) builds a complete new snapshot and swaps it in, or keeps the old one whole.
// Rate-limit buckets live outside the snapshot and survive reloads while a limit's settings
// are unchanged.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "policies/policy.hpp"
#include "policies/rate_limiter.hpp"
#include "policies/rules.hpp"
#include "server/config/config.hpp"

namespace scigate {

// Membership first (also checked by the pipeline; repeated here so the engine is safe on its
// own), then the project's policy, or the membership policy where there is none. Shared by the
// engine and `scigate policy test`.
Decision decide_for_project(const policy::Policy* policy, const PolicyQuery& query, RateLimiter* limiter,
                            const nlohmann::json* input_schema = nullptr);

class ProjectPolicies final : public PolicyEngine {
 public:
  struct Source {
    std::string project;
    std::filesystem::path file;
  };
  static std::vector<Source> sources_from(const Config& config);

  // Loads every file; throws PolicyError ("FILE:LINE:COLUMN: ...") when one is broken.
  explicit ProjectPolicies(std::vector<Source> sources);
  ~ProjectPolicies() override;

  // The tool's input schema by name, for the defaults of arguments a call leaves out. Set once,
  // before the engine is shared between threads.
  using SchemaLookup = std::function<const nlohmann::json*(const std::string& tool)>;
  void set_schema_lookup(SchemaLookup lookup) { schema_lookup_ = std::move(lookup); }

  Decision decide(const PolicyQuery& query) const override;
  bool may_list(const Principal& principal, const std::string& tool) const override;
  // Membership, then the project's policy (Policy::could_permit_with), or the membership
  // policy where the project has no file.
  bool could_permit(const Principal& principal, const std::string& project, const std::string& tool,
                    const nlohmann::json& fixed) const override;
  // What a reload did to one project's policy, for the audit log: a new policy in force
  // (`accepted`), or a broken file refused while the previous one stays (`error` says why).
  struct ReloadEvent {
    std::string trigger;  // "sighup", "file_change", "request"
    std::string project;
    std::filesystem::path file;
    bool accepted = false;
    std::string hash;           // accepted: the new policy's; refused: the one still in force
    std::string previous_hash;  // accepted: the one it replaced
    std::string error;          // refused: "FILE:LINE:COLUMN: what"
  };
  // Called after each reload with one event per project whose policy changed or whose file was
  // refused (a reload that changes nothing reports nothing). Runs on the reloading thread (a
  // signal handler's I/O thread, the watcher); set once, before the engine is shared.
  void set_reload_observer(std::function<void(const std::vector<ReloadEvent>&)> observer) {
    reload_observer_ = std::move(observer);
  }

  nlohmann::json limits_for(const Principal& principal, const std::string& project) const override;
  // Re-reads every file; all are swapped in, or none (the error names file:line:column).
  // Logs policy_reloaded or policy_reload_failed, and tells the reload observer.
  std::optional<std::string> reload() override { return reload_from("request"); }
  // The same, with what asked for it ("sighup", "file_change") in the log line.
  std::optional<std::string> reload_from(const char* trigger);

  // Polls the files every `interval` (size, mtime, inode; then the content hash) and reloads
  // when a file's content changed; after a successful reload calls `on_reloaded` on the
  // watcher thread. A file that is briefly missing (an editor's rename-on-save) is waited for.
  void watch(std::chrono::milliseconds interval, std::function<void()> on_reloaded);
  void stop_watching();

  // The policy in force for a project (null: the built-in membership policy).
  std::shared_ptr<const policy::Policy> policy_for(const std::string& project) const;

 private:
  struct Snapshot {
    std::map<std::string, std::shared_ptr<const policy::Policy>> by_project;
  };
  // Throws PolicyError; *failed (when given) is then the file that could not be used.
  std::shared_ptr<const Snapshot> load_all(std::filesystem::path* failed = nullptr) const;
  void watch_loop(std::chrono::milliseconds interval, std::function<void()> on_reloaded);

  std::vector<Source> sources_;
  std::atomic<std::shared_ptr<const Snapshot>> current_;
  MembershipPolicy membership_;
  SchemaLookup schema_lookup_;
  std::function<void(const std::vector<ReloadEvent>&)> reload_observer_;
  mutable RateLimiter limiter_;
  std::mutex reload_mutex_;

  std::mutex watch_mutex_;
  std::condition_variable watch_cv_;
  bool stop_ = false;
  std::thread watcher_;
};

}  // namespace scigate
