#include "connectors/http/body_stream.hpp"

#include <boost/asio/use_awaitable.hpp>

#include <atomic>

namespace scigate::http {
namespace asio = boost::asio;

struct BodyStream::State {
  explicit State(asio::any_io_executor ex) : bell(ex, 1) {}
  mutable std::mutex m;
  std::string pending;  // arrived, not yet taken by next()
  bool has_head = false;
  long status = 0;
  std::map<std::string, std::string> headers;
  bool done = false;
  Response final;
  std::size_t limit = 0;
  // One slot: a ring while one is pending is coalesced. Thread-safe (try_send from curl's thread).
  asio::experimental::concurrent_channel<void(boost::system::error_code)> bell;

  std::atomic<bool> ring_due{false};  // a ring waits for the end of the client's round

  void ring() { bell.try_send(boost::system::error_code{}); }
  // From the client's thread: one ring per round, however many heads, pieces and ends it saw.
  static void ring_soon(const std::shared_ptr<State>& s) {
    if (s->ring_due.exchange(true)) return;
    CurlClient::at_round_end([s] {
      s->ring_due = false;
      s->ring();
    });
  }
};

namespace {

struct StreamCompletion final : CurlClient::Completion {
  explicit StreamCompletion(std::shared_ptr<BodyStream::State> s) : state(std::move(s)) {}
  void complete(Response r) override {
    {
      std::lock_guard g(state->m);
      state->final = std::move(r);
      if (!state->has_head && state->final.status != 0) {
        // An answer without a body: its head arrives with the end.
        state->has_head = true;
        state->status = state->final.status;
        state->headers = state->final.headers;
      }
      state->done = true;
    }
    BodyStream::State::ring_soon(state);
  }
  std::shared_ptr<BodyStream::State> state;
};

}  // namespace

BodyStream::BodyStream(CurlClient& client, Request request, asio::any_io_executor executor)
    : state_(std::make_shared<State>(executor)), token_(std::make_shared<CancelToken>()) {
  state_->limit = request.max_body;
  std::weak_ptr<State> weak = state_;
  request.on_headers = [weak](long status, const std::map<std::string, std::string>& headers) {
    auto s = weak.lock();
    if (!s) return false;
    {
      std::lock_guard g(s->m);
      s->has_head = true;
      s->status = status;
      s->headers = headers;
    }
    State::ring_soon(s);
    return true;
  };
  request.on_data = [weak](std::string_view piece) {
    auto s = weak.lock();
    if (!s) return false;
    {
      std::lock_guard g(s->m);
      if (s->pending.size() + piece.size() > s->limit) return false;  // the reader fell behind
      s->pending.append(piece);
    }
    State::ring_soon(s);
    return true;
  };
  request.cancel_token = token_;
  client.start(std::move(request), std::make_unique<StreamCompletion>(state_));
}

BodyStream::~BodyStream() {
  if (!finished()) token_->cancel();
}

bool BodyStream::finished() const {
  std::lock_guard g(state_->m);
  return state_->done;
}

void BodyStream::cancel() { token_->cancel(); }

long BodyStream::status() const {
  std::lock_guard g(state_->m);
  return state_->status;
}

std::string BodyStream::header(const std::string& lower_name) const {
  std::lock_guard g(state_->m);
  auto it = state_->headers.find(lower_name);
  return it == state_->headers.end() ? std::string() : it->second;
}

asio::awaitable<void> BodyStream::head() {
  for (;;) {
    {
      std::lock_guard g(state_->m);
      if (state_->has_head || state_->done) co_return;
    }
    try {
      co_await state_->bell.async_receive(asio::use_awaitable);
    } catch (...) {
      token_->cancel();
      throw;
    }
  }
}

asio::awaitable<std::optional<std::string>> BodyStream::next() {
  for (;;) {
    {
      std::lock_guard g(state_->m);
      if (!state_->pending.empty()) {
        std::string out;
        out.swap(state_->pending);
        co_return out;
      }
      if (state_->done) {
        final_ = state_->final;
        if (state_->final.status == 0 && state_->final.error.empty()) final_.error = "no answer";
        co_return std::nullopt;
      }
    }
    try {
      co_await state_->bell.async_receive(asio::use_awaitable);
    } catch (...) {
      token_->cancel();
      throw;
    }
  }
}

}  // namespace scigate::http
