#include "server/protocol/mcp_session.hpp"

#include "server/common/crypto.hpp"

namespace scigate::mcp {

std::shared_ptr<LegacySession> SessionStore::create(const Principal& owner) {
  // 128 bits from the CSPRNG: session ids are unguessable, so knowing one is a capability.
  auto s = std::make_shared<LegacySession>(crypto::random_hex(16));
  s->owner = owner;
  const std::string key = owner.owner_id();
  std::shared_ptr<LegacySession> evicted;
  {
    std::lock_guard g(mutex_);
    std::size_t& mine = per_owner_[key];
    if (mine >= per_principal_) {
      // The owner's least recently used session makes room (a scan, only at the limit).
      auto oldest = sessions_.end();
      for (auto it = sessions_.begin(); it != sessions_.end(); ++it)
        if (it->second->owner && it->second->owner->owner_id() == key &&
            (oldest == sessions_.end() || it->second->last_used() < oldest->second->last_used()))
          oldest = it;
      if (oldest != sessions_.end()) {
        evicted = std::move(oldest->second);
        sessions_.erase(oldest);
        --mine;
      }
    }
    if (sessions_.size() >= max_) {
      if (mine == 0) per_owner_.erase(key);
      s = nullptr;
    } else {
      sessions_.emplace(s->id(), s);
      ++mine;
    }
  }
  if (evicted) evicted->set_outlet(nullptr);
  return s;
}

void SessionStore::forget_locked(const LegacySession& s) {
  if (!s.owner) return;
  auto it = per_owner_.find(s.owner->owner_id());
  if (it == per_owner_.end()) return;
  if (--it->second == 0) per_owner_.erase(it);
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
    forget_locked(*s);
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
        forget_locked(*it->second);
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
