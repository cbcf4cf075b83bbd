#include "policies/project_policies.hpp"
#include "server/common/thread_name.hpp"

#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "server/common/crypto.hpp"
#include "server/observability/log.hpp"

namespace scigate {

Decision decide_for_project(const policy::Policy* policy, const PolicyQuery& q, RateLimiter* limiter,
                            const nlohmann::json* input_schema) {
  // No project (only tools that need none get here without one) and projects without a policy
  // file: the membership policy. A caller who does not act for the project never reaches its
  // policy, so no rule of a project can admit an outsider.
  if (!policy || q.project.empty() || !q.principal.member_of(q.project)) return MembershipPolicy{}.decide(q);
  return policy->decide(q, limiter, input_schema);
}

std::vector<ProjectPolicies::Source> ProjectPolicies::sources_from(const Config& config) {
  std::vector<Source> out;
  for (const auto& p : config.projects)
    if (!p.policy.empty()) out.push_back(Source{p.id, p.policy});
  return out;
}

ProjectPolicies::ProjectPolicies(std::vector<Source> sources) : sources_(std::move(sources)) {
  current_.store(load_all());
}

ProjectPolicies::~ProjectPolicies() { stop_watching(); }

std::shared_ptr<const ProjectPolicies::Snapshot> ProjectPolicies::load_all(std::filesystem::path* failed) const {
  auto snap = std::make_shared<Snapshot>();
  std::map<std::filesystem::path, std::shared_ptr<const policy::Policy>> by_file;  // a file shared by projects is read once
  for (const auto& s : sources_) {
    auto& p = by_file[s.file];
    if (!p) {
      try {
        p = std::make_shared<const policy::Policy>(policy::Policy::load(s.file));
      } catch (const PolicyError&) {
        if (failed) *failed = s.file;
        throw;
      }
    }
    snap->by_project[s.project] = p;
  }
  return snap;
}

std::shared_ptr<const policy::Policy> ProjectPolicies::policy_for(const std::string& project) const {
  auto snap = current_.load(std::memory_order_acquire);
  auto it = snap->by_project.find(project);
  return it == snap->by_project.end() ? nullptr : it->second;
}

Decision ProjectPolicies::decide(const PolicyQuery& q) const {
  auto snap = current_.load(std::memory_order_acquire);
  auto it = snap->by_project.find(q.project);
  if (it == snap->by_project.end()) return decide_for_project(nullptr, q, nullptr);
  return decide_for_project(it->second.get(), q, &limiter_, schema_lookup_ ? schema_lookup_(q.tool) : nullptr);
}

bool ProjectPolicies::may_list(const Principal& principal, const std::string& tool) const {
  // Without a project only the tools that need none are reachable, and those are permitted.
  if (principal.projects.empty()) return true;
  auto snap = current_.load(std::memory_order_acquire);
  for (const auto& project : principal.projects) {
    auto it = snap->by_project.find(project);
    if (it == snap->by_project.end()) {
      if (membership_.may_list(principal, tool)) return true;
      continue;
    }
    if (it->second->could_permit(principal, project, tool)) return true;
  }
  return false;
}

bool ProjectPolicies::could_permit(const Principal& principal, const std::string& project, const std::string& tool,
                                   const nlohmann::json& fixed) const {
  if (project.empty() || !principal.member_of(project)) return false;
  auto snap = current_.load(std::memory_order_acquire);
  auto it = snap->by_project.find(project);
  if (it == snap->by_project.end()) return true;  // the membership policy: members may call everything
  return it->second->could_permit_with(principal, project, tool, fixed, schema_lookup_ ? schema_lookup_(tool) : nullptr);
}

nlohmann::json ProjectPolicies::limits_for(const Principal& principal, const std::string& project) const {
  if (project.empty() || !principal.member_of(project)) return nullptr;
  auto snap = current_.load(std::memory_order_acquire);
  auto it = snap->by_project.find(project);
  if (it == snap->by_project.end()) return nullptr;
  return it->second->limits_for(principal, project, &limiter_, std::chrono::system_clock::now());
}

std::optional<std::string> ProjectPolicies::reload_from(const char* trigger) {
  std::lock_guard lock(reload_mutex_);
  auto old = current_.load(std::memory_order_acquire);
  auto hash_in = [](const Snapshot& snap, const std::string& project) {
    auto it = snap.by_project.find(project);
    return it == snap.by_project.end() ? std::string() : it->second->hash();
  };
  std::vector<ReloadEvent> events;
  std::shared_ptr<const Snapshot> fresh;
  std::filesystem::path failed;
  try {
    fresh = load_all(&failed);
  } catch (const PolicyError& e) {
    log::error("policy_reload_failed", {{"trigger", trigger}, {"detail", e.what()}, {"effect", "the previous policy stays in force"}});
    for (const auto& s : sources_)
      if (s.file == failed) events.push_back(ReloadEvent{trigger, s.project, s.file, false, hash_in(*old, s.project), "", e.what()});
    if (reload_observer_ && !events.empty()) reload_observer_(events);
    return std::string(e.what());
  }
  current_.store(fresh, std::memory_order_release);
  nlohmann::json hashes = nlohmann::json::object();
  for (const auto& [project, p] : fresh->by_project) hashes[project] = p->hash();
  log::info("policy_reloaded", {{"trigger", trigger}, {"policies", hashes}});
  for (const auto& s : sources_) {
    std::string now = hash_in(*fresh, s.project), before = hash_in(*old, s.project);
    if (now != before) events.push_back(ReloadEvent{trigger, s.project, s.file, true, now, before, ""});
  }
  if (reload_observer_ && !events.empty()) reload_observer_(events);
  return std::nullopt;
}

namespace {

struct Fingerprint {
  bool exists = false;
  off_t size = 0;
  int64_t mtime_ns = 0;
  ino_t inode = 0;
  bool operator==(const Fingerprint&) const = default;
};

Fingerprint fingerprint(const std::filesystem::path& f) {
  struct stat st {};
  if (::stat(f.c_str(), &st) != 0) return {};
  return Fingerprint{true, st.st_size, static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
                     st.st_ino};
}

std::optional<std::string> file_hash(const std::filesystem::path& f) {
  std::ifstream in(f, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  return crypto::sha256_hex(ss.str());
}

}  // namespace

void ProjectPolicies::watch(std::chrono::milliseconds interval, std::function<void()> on_reloaded) {
  stop_watching();
  {
    std::lock_guard lock(watch_mutex_);
    stop_ = false;
  }
  if (sources_.empty()) return;  // nothing to watch
  watcher_ = std::thread([this, interval, cb = std::move(on_reloaded)] {
    name_this_thread("sg-policy-watch");
    watch_loop(interval, cb);
  });
}

void ProjectPolicies::stop_watching() {
  {
    std::lock_guard lock(watch_mutex_);
    stop_ = true;
  }
  watch_cv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
}

void ProjectPolicies::watch_loop(std::chrono::milliseconds interval, std::function<void()> on_reloaded) {
  auto take = [&] {
    std::vector<Fingerprint> fps;
    for (const auto& s : sources_) fps.push_back(fingerprint(s.file));
    return fps;
  };
  // Empty: the first poll compares the files with what was loaded, so a change made between
  // loading and watching is not missed.
  std::vector<Fingerprint> seen;
  std::string failed_content;  // the content whose reload failed, so it is reported once
  bool warned_missing = false;
  for (;;) {
    {
      std::unique_lock lock(watch_mutex_);
      if (watch_cv_.wait_for(lock, interval, [this] { return stop_; })) return;
    }
    std::vector<Fingerprint> now = take();
    bool missing = false;
    for (std::size_t i = 0; i < now.size(); ++i)
      if (!now[i].exists) {
        missing = true;
        if (!warned_missing)
          log::warn("policy_file_missing", {{"file", sources_[i].file.string()},
                                            {"effect", "the policy in force stays until the file is back"}});
      }
    warned_missing = missing;
    if (missing || now == seen) continue;
    seen = now;
    // Metadata changed; reload only if some content did (touch, or a rewrite with the same
    // bytes, changes nothing).
    std::string on_disk, in_force;
    bool readable = true;
    auto snap = current_.load(std::memory_order_acquire);
    for (const auto& s : sources_) {
      auto h = file_hash(s.file);
      readable = readable && h.has_value();
      on_disk += h.value_or("") + "\n";
      auto it = snap->by_project.find(s.project);
      in_force += (it == snap->by_project.end() ? "" : it->second->hash()) + "\n";
    }
    if (!readable || on_disk == in_force || on_disk == failed_content) continue;
    if (reload_from("file_change")) {
      failed_content = on_disk;
      continue;
    }
    failed_content.clear();
    if (on_reloaded) on_reloaded();
  }
}

}  // namespace scigate
