#include "server/common/utf8.hpp"
#include "server/transport/stdio_transport.hpp"
#include "server/common/thread_name.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>

#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <deque>
#include <future>
#include <thread>

#include "server/observability/log.hpp"

namespace scigate::transport {
namespace asio = boost::asio;

namespace {

// Writes whole lines to stdout from one thread, so a slow reader never blocks an I/O thread.
class LineWriter {
 public:
  explicit LineWriter(int fd) : fd_(fd), thread_([this] {
    name_this_thread("sg-stdout");
    loop();
  }) {}
  ~LineWriter() {
    {
      std::lock_guard g(mutex_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  void write(const json& message) {
    std::string line = jsonrpc::dump(message);
    line.push_back('\n');
    {
      std::lock_guard g(mutex_);
      queue_.push_back(std::move(line));
    }
    cv_.notify_one();
  }

 private:
  void loop() {
    std::unique_lock l(mutex_);
    for (;;) {
      cv_.wait(l, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty() && stop_) return;
      std::string line = std::move(queue_.front());
      queue_.pop_front();
      l.unlock();
      const char* p = line.data();
      std::size_t left = line.size();
      while (left > 0) {
        ssize_t n = ::write(fd_, p, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;  // the client is gone; keep draining so callers never block
        p += n;
        left -= static_cast<std::size_t>(n);
      }
      l.lock();
    }
  }
  int fd_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;
  bool stop_ = false;
  std::thread thread_;
};

struct Running {
  std::mutex mutex;
  std::condition_variable cv;
  std::size_t count = 0;
  std::unordered_map<uint64_t, std::function<void()>> cancels;
  uint64_t next = 0;
};

}  // namespace

void run_stdio(asio::io_context& io, mcp::Dispatcher& dispatcher, const Principal& principal,
               const StdioOptions& options) {
  LineWriter writer(options.out_fd);
  auto session = std::make_shared<mcp::LegacySession>("stdio");
  session->owner = principal;
  session->set_outlet([&writer](const json& m) { writer.write(m); });
  dispatcher.on_tools_changed_legacy = [session] {
    session->send(jsonrpc::make_notification("notifications/tools/list_changed", nullptr));
  };
  Running running;
  jsonrpc::Limits limits{options.max_message_bytes, options.max_depth};

  // One strand for the whole stream: requests start in the order they were read (initialize
  // before what follows it) and interleave only where a handler awaits.
  auto strand = asio::make_strand(io);
  // One audit record per line refused before a tool call could record it: malformed JSON-RPC,
  // and the dispatcher's error answers (unknown method, unsupported version, bad params).
  auto audit_refusal = [&options, &principal](int code, const std::string& message, const std::string& method,
                                              const std::string& tool) {
    if (!options.audit) return;
    EdgeRefusal e;
    e.rpc_code = code;
    e.reason = message;
    e.transport = "stdio";
    e.rpc_method = method;
    e.tool = utf8_prefix(tool, kMaxAuditedName);
    e.principal = &principal;
    options.audit->append(edge_refusal_record(e));
  };
  auto dispatch_line = [&](std::string line) {
    auto parsed = jsonrpc::parse(line, limits);
    if (!parsed.message) {
      audit_refusal(parsed.error->code, parsed.error->message, "", "");
      writer.write(jsonrpc::make_error(*parsed.error));
      return;
    }
    auto signal = std::make_shared<asio::cancellation_signal>();
    mcp::Inbound in;
    in.message = std::move(*parsed.message);
    in.transport = mcp::Transport::kStdio;
    in.principal = principal;
    in.session = session;
    in.channel = "stdio";
    in.notify = [&writer](const json& m) { writer.write(m); };
    auto flag = in.cancellation;
    in.cancel = [flag, signal, strand] {
      flag->cancel();
      asio::post(strand, [signal] { signal->emit(asio::cancellation_type::terminal); });
    };
    uint64_t id;
    {
      std::lock_guard g(running.mutex);
      id = running.next++;
      ++running.count;
      running.cancels[id] = in.cancel;
    }
    std::string method = in.message.method;
    std::string tool = method == "tools/call" && in.message.params.is_object() && in.message.params.contains("name") &&
                               in.message.params["name"].is_string()
                           ? in.message.params["name"].get<std::string>()
                           : std::string();
    asio::co_spawn(strand, dispatcher.handle(std::move(in)),
                   asio::bind_cancellation_slot(
                       signal->slot(), [&running, &writer, id, signal, audit_refusal, method = std::move(method),
                                        tool = std::move(tool)](std::exception_ptr ep, mcp::Outbound out) {
                         if (ep) {
                           log::error("stdio_request_failed", {{"detail", "exception escaped the dispatcher"}});
                         } else if (out.response) {
                           // Tool calls that reached the pipeline were audited there.
                           if (!out.audited && out.response->contains("error")) {
                             const json& err = (*out.response)["error"];
                             audit_refusal(err.value("code", 0), err.value("message", std::string()), method, tool);
                           }
                           writer.write(*out.response);
                         }
                         std::lock_guard g(running.mutex);
                         running.cancels.erase(id);
                         --running.count;
                         running.cv.notify_all();
                       }));
  };

  // Read stdin on this thread: regular files and terminals cannot be registered with epoll, and a
  // plain read() works for all of them.
  std::string pending;
  bool discarding = false;  // inside a line that is already over the limit
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(options.in_fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    std::size_t start = 0;
    for (std::size_t i = 0; i < static_cast<std::size_t>(n); ++i) {
      if (buf[i] != '\n') continue;
      if (!discarding) {
        pending.append(buf + start, i - start);
        if (!pending.empty() && pending.back() == '\r') pending.pop_back();
        if (!pending.empty()) dispatch_line(std::move(pending));
      }
      pending.clear();
      discarding = false;
      start = i + 1;
    }
    if (!discarding) {
      pending.append(buf + start, static_cast<std::size_t>(n) - start);
      if (pending.size() > options.max_message_bytes) {
        const std::string why = "message exceeds the limit of " + std::to_string(options.max_message_bytes) + " bytes";
        audit_refusal(jsonrpc::kInvalidRequest, why, "", "");  // (as HTTP's 413 is)
        writer.write(jsonrpc::make_error(nullptr, jsonrpc::kInvalidRequest, why));
        pending.clear();
        pending.shrink_to_fit();
        discarding = true;
      }
    }
  }
  if (!discarding && !pending.empty()) dispatch_line(std::move(pending));

  // EOF: the client is gone or done, and the spec asks servers to exit promptly. End open
  // subscriptions, cancel what still runs, and wait only for the handlers to unwind (holds
  // released, audit records written). Calls that already finished have been answered.
  // Posted to the strand so it runs after every request read so far has started (and, for
  // subscriptions/listen, registered itself).
  std::promise<void> stopped;
  asio::post(strand, [&] {
    dispatcher.close_subscriptions();
    std::lock_guard g(running.mutex);
    for (auto& [id, cancel] : running.cancels) cancel();
    stopped.set_value();
  });
  stopped.get_future().wait();
  std::unique_lock l(running.mutex);
  running.cv.wait_for(l, std::chrono::seconds(10), [&] { return running.count == 0; });
  dispatcher.on_tools_changed_legacy = nullptr;
  session->set_outlet(nullptr);
}

}  // namespace scigate::transport
