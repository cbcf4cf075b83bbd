#pragma once
// The model registry as the server uses it: the catalog (ModelCatalog) on a connection and a
// thread of its own (state::DbWorker), so that no query or availability update runs on an I/O
// thread. The tools (query_model_registry, get_model) read through it; the inference connector
// calls set_served() after each GET /v1/models of a backend.
//
// Thread-safety: every method may be called from any coroutine; the work runs in order on the
// worker thread and the coroutine resumes on its own executor. A `visible` predicate runs on the
// worker thread, so it must be thread-safe (PolicyEngine::could_permit is). Cancellation: an
// awaiting call that is cancelled still lets the queued statement finish; its result is dropped.
#include <boost/asio/awaitable.hpp>

#include <filesystem>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "connectors/registry/model_catalog.hpp"
#include "server/state/db_worker.hpp"

namespace scigate::registry {

class ModelRegistry {
 public:
  // Opens its own connection to the server's database (already migrated by App).
  explicit ModelRegistry(const std::filesystem::path& database) : worker_(database) {}

  boost::asio::awaitable<std::variant<ModelPage, QueryError>> query(ModelFilter filter, ModelCatalog::Visible visible);
  boost::asio::awaitable<std::optional<ModelRecord>> get(std::string id);
  // See ModelCatalog::set_served: replaces `backend`'s served set; returns the ids the catalog
  // does not know (worth a log line: a backend serves a model no manifest describes).
  boost::asio::awaitable<std::vector<std::string>> set_served(std::string backend, std::vector<std::string> model_ids,
                                                              int64_t now_ms);
  // See ModelCatalog::retain_backends.
  boost::asio::awaitable<std::size_t> retain_backends(std::vector<std::string> configured);
  // See ModelCatalog::all_terms; terms_now() reads on the calling thread (start-up, before the
  // worker has anything to do).
  using Terms = std::map<std::string, ModelCatalog::Terms>;
  boost::asio::awaitable<Terms> terms();
  Terms terms_now() { return ModelCatalog(worker_.db()).all_terms(); }
  // retain_backends on the calling thread (start-up, with no inference connector to do it).
  std::size_t retain_backends_now(const std::vector<std::string>& configured) {
    return ModelCatalog(worker_.db()).retain_backends(configured);
  }

  // Waits for queued work (App::drain_writers).
  void join() { worker_.join(); }

 private:
  state::DbWorker worker_;
};

}  // namespace scigate::registry
