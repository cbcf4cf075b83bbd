#include "connectors/registry/model_registry.hpp"

#include <functional>

namespace scigate::registry {

namespace asio = boost::asio;

// Each function is built before the co_await that runs it: GCC 12 destroys a lambda written
// inside a co_await expression twice.

asio::awaitable<std::variant<ModelPage, QueryError>> ModelRegistry::query(ModelFilter filter,
                                                                          ModelCatalog::Visible visible) {
  std::variant<ModelPage, QueryError> out;
  std::function<void(state::Database&)> fn = [&out, &filter, &visible](state::Database& db) {
    out = ModelCatalog(db).query(filter, visible);
  };
  co_await worker_.run(std::move(fn));
  co_return out;
}

asio::awaitable<std::optional<ModelRecord>> ModelRegistry::get(std::string id) {
  std::optional<ModelRecord> out;
  std::function<void(state::Database&)> fn = [&out, &id](state::Database& db) { out = ModelCatalog(db).get(id); };
  co_await worker_.run(std::move(fn));
  co_return out;
}

asio::awaitable<std::vector<std::string>> ModelRegistry::set_served(std::string backend,
                                                                    std::vector<std::string> model_ids,
                                                                    int64_t now_ms) {
  std::vector<std::string> unknown;
  std::function<void(state::Database&)> fn = [&](state::Database& db) {
    unknown = ModelCatalog(db).set_served(backend, model_ids, now_ms);
  };
  co_await worker_.run(std::move(fn));
  co_return unknown;
}

asio::awaitable<std::size_t> ModelRegistry::retain_backends(std::vector<std::string> configured) {
  std::size_t removed = 0;
  std::function<void(state::Database&)> fn = [&](state::Database& db) {
    removed = ModelCatalog(db).retain_backends(configured);
  };
  co_await worker_.run(std::move(fn));
  co_return removed;
}

asio::awaitable<ModelRegistry::Terms> ModelRegistry::terms() {
  Terms out;
  std::function<void(state::Database&)> fn = [&out](state::Database& db) { out = ModelCatalog(db).all_terms(); };
  co_await worker_.run(std::move(fn));
  co_return out;
}

}  // namespace scigate::registry
