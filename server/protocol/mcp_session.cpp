#include "server/protocol/mcp_session.hpp"

#include "server/common/crypto.hpp"

namespace scigate::mcp {

std::shared_ptr<LegacySession> SessionStore::create() {
  // 128 bits from the CSPRNG: session ids are unguessable, so knowing one is a capability.
  auto s = std::make_shared<LegacySession>(crypto::random_hex(16));
  std::lock_guard g(mutex_);
  if (sessions_.size() >= max_) return nullptr;
  sessions_.emplace(s->id(), s);
  return s;
}

std::shared_ptr<LegacySession> SessionStore::find(const std::string& id) {
  std::lock_guard g(mutex_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return nullptr;
  it->second->touch();
  return it->second;
}

bool SessionStore::erase(const std::string& id) {
  std::shared_ptr<LegacySession> s;
  {
    std::lock_guard g(mutex_);
    auto it = sessions_.find(id);
    if (it == sessions_.end()) return false;
    s = std::move(it->second);
    sessions_.erase(it);
  }
  s->set_outlet(nullptr);
  return true;
}

std::size_t SessionStore::expire(std::chrono::steady_clock::duration idle) {
  auto cutoff = std::chrono::steady_clock::now() - idle;
  std::vector<std::shared_ptr<LegacySession>> dead;
  {
    std::lock_guard g(mutex_);
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      if (it->second->last_used() < cutoff) {
        dead.push_back(std::move(it->second));
        it = sessions_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& s : dead) s->set_outlet(nullptr);
  return dead.size();
}

std::size_t SessionStore::size() const {
  std::lock_guard g(mutex_);
  return sessions_.size();
}

std::vector<std::shared_ptr<LegacySession>> SessionStore::all() const {
  std::lock_guard g(mutex_);
  std::vector<std::shared_ptr<LegacySession>> out;
  for (const auto& [id, s] : sessions_) out.push_back(s);
  return out;
}

}  // namespace scigate::mcp
