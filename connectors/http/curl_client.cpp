#include "connectors/http/curl_client.hpp"
#include "server/common/thread_name.hpp"

#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <curl/curl.h>
#include <sys/epoll.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <unordered_map>
#include <unordered_set>

namespace scigate::http {

namespace {

struct GlobalInit {
  GlobalInit() { curl_global_init(CURL_GLOBAL_DEFAULT); }
};

void global_init_once() { static GlobalInit init; }

// The client thread's work for the end of the current round (at_round_end); null elsewhere.
thread_local std::vector<std::function<void()>>* t_round_end = nullptr;

void run_round_end(std::vector<std::function<void()>>& hooks) {
  while (!hooks.empty()) {  // a hook may add another
    std::vector<std::function<void()>> now;
    now.swap(hooks);
    for (auto& fn : now) fn();
  }
}

std::string trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return std::string(s);
}

}  // namespace

struct Transfer {
  uint64_t id = 0;
  CURL* easy = nullptr;
  curl_slist* headers = nullptr;
  curl_slist* resolve = nullptr;
  Request request;
  Response response;
  std::unique_ptr<CurlClient::Completion> completion;
  char errbuf[CURL_ERROR_SIZE] = {0};
  std::string abort_reason;  // set when a callback stopped the transfer
  bool head_done = false;    // on_headers was called for the final response
  std::chrono::steady_clock::time_point t0;

  ~Transfer() {
    if (easy) curl_easy_cleanup(easy);
    if (headers) curl_slist_free_all(headers);
    if (resolve) curl_slist_free_all(resolve);
  }
};

namespace {

size_t on_body(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t len = size * n;
  if (t->request.on_data) {
    if (!t->request.on_data(std::string_view(data, len))) {
      t->abort_reason = "the receiver stopped the transfer";
      return CURL_WRITEFUNC_ERROR;
    }
    return len;
  }
  if (t->response.body.size() + len > t->request.max_body) {
    t->abort_reason = "the response is larger than " + std::to_string(t->request.max_body) + " bytes";
    return CURL_WRITEFUNC_ERROR;
  }
  t->response.body.append(data, len);
  return len;
}

size_t on_header(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t len = size * n;
  std::string_view line(data, len);
  if (line.rfind("HTTP/", 0) == 0) {
    t->response.headers.clear();  // a new response (after 100-continue or a redirect)
    return len;
  }
  if ((line == "\r\n" || line == "\n") && t->request.on_headers && !t->head_done) {
    long status = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
    if (status >= 200) {
      t->head_done = true;
      if (!t->request.on_headers(status, t->response.headers)) {
        t->abort_reason = "the receiver stopped the transfer";
        return 0;
      }
    }
    return len;
  }
  auto colon = line.find(':');
  if (colon == std::string_view::npos) return len;
  std::string name(line.substr(0, colon));
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  t->response.headers[name] = trim(line.substr(colon + 1));
  return len;
}

size_t on_read_body(char* buf, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  long got = t->request.on_read(buf, size * n);
  if (got < 0) {
    t->abort_reason = "the sender stopped the transfer";
    return CURL_READFUNC_ABORT;
  }
  return static_cast<size_t>(got);
}

}  // namespace

// What both drivers share: the queues callers fill from any thread, the transfers curl runs, and
// the steps of a round. A round's steps run in the driving context only (the client's thread,
// or whoever holds ReactorDriver::drive).
struct CurlClient::Impl {
  CURLM* multi = nullptr;
  std::mutex m;  // guards the queues and `stop`
  std::deque<std::unique_ptr<Transfer>> to_add;
  std::deque<uint64_t> to_cancel;
  // Transfers started and not finished. A cancel may arrive before its transfer reaches the
  // driving context: it is kept for the next round while the id is still here.
  std::unordered_set<uint64_t> live;
  bool stop = false;
  std::atomic<uint64_t> next_id{1};
  std::atomic<uint64_t> started{0};
  std::atomic<std::size_t> in_flight{0};
  // Owned by the driving context only:
  std::unordered_map<uint64_t, std::unique_ptr<Transfer>> active;
  std::vector<std::function<void()>> round_end;

  Impl() {
    multi = curl_multi_init();
    if (!multi) throw std::runtime_error("curl_multi_init failed");
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
  }
  virtual ~Impl() {
    if (multi) curl_multi_cleanup(multi);
  }
  // Asks the driving context to take what was queued (from any thread).
  virtual void wake() = 0;
  // Ends the driving context: what is in flight completes as cancelled. Called once, by
  // ~CurlClient, on any thread but a callback's.
  virtual void shut_down() = 0;

  void finish(std::unique_ptr<Transfer> t) {
    t->response.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t->t0).count();
    auto c = std::move(t->completion);
    Response r = std::move(t->response);
    {
      std::lock_guard g(m);
      live.erase(t->id);
    }
    t.reset();  // the easy handle goes before the caller resumes
    in_flight.fetch_sub(1);
    c->complete(std::move(r));
  }

  static void fail(Transfer& t, bool cancelled, const char* why) {
    t.response.cancelled = cancelled;
    t.response.status = 0;
    t.response.error = why;
  }

  void configure(Transfer& t) {
    CURL* e = t.easy;
    const Request& q = t.request;
    curl_easy_setopt(e, CURLOPT_PRIVATE, &t);
    curl_easy_setopt(e, CURLOPT_URL, q.url.c_str());
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t.errbuf);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, q.protocols.c_str());
    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, q.protocols.c_str());
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, q.follow_redirects ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(q.connect_timeout.count()));
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(q.timeout.count()));
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, &t);
    if (q.decode_content) curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");  // whatever curl can decode
    if (q.proxy) curl_easy_setopt(e, CURLOPT_PROXY, q.proxy->c_str());
    if (q.buffer_size) curl_easy_setopt(e, CURLOPT_BUFFERSIZE, static_cast<long>(q.buffer_size));
    if (q.max_recv_bytes_per_s > 0)
      curl_easy_setopt(e, CURLOPT_MAX_RECV_SPEED_LARGE, static_cast<curl_off_t>(q.max_recv_bytes_per_s));
    if (q.low_speed_time.count() > 0) {
      curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, q.low_speed_bytes_per_s);
      curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, static_cast<long>(q.low_speed_time.count()));
    }
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    for (const auto& h : q.headers) t.headers = curl_slist_append(t.headers, h.c_str());
    // curl adds "Expect: 100-continue" to large POSTs, which costs a round trip.
    t.headers = curl_slist_append(t.headers, "Expect:");
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, t.headers);
    for (const auto& r : q.resolve) t.resolve = curl_slist_append(t.resolve, r.c_str());
    if (t.resolve) curl_easy_setopt(e, CURLOPT_RESOLVE, t.resolve);
    if (q.on_read) {
      curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read_body);
      curl_easy_setopt(e, CURLOPT_READDATA, &t);
      if (q.upload_size >= 0) curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(q.upload_size));
      if (q.method != "PUT") curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, q.method.c_str());
    } else if (q.method == "GET" && q.body.empty()) {
      curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else if (q.method == "HEAD") {
      curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else {
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(q.body.size()));
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, q.body.data());
      if (q.method != "POST") curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, q.method.c_str());
    }
  }

  // Hands what callers queued to curl; returns true once the client is stopping.
  bool take_queued() {
    std::deque<std::unique_ptr<Transfer>> adds;
    std::deque<uint64_t> cancels;
    bool stopping;
    {
      std::lock_guard g(m);
      adds.swap(to_add);
      cancels.swap(to_cancel);
      stopping = stop;
    }
    for (auto& t : adds) {
      CURLMcode rc = curl_multi_add_handle(multi, t->easy);
      if (rc != CURLM_OK) {
        t->response.error = std::string("cannot start the request: ") + curl_multi_strerror(rc);
        finish(std::move(t));
        continue;
      }
      uint64_t id = t->id;
      active.emplace(id, std::move(t));
    }
    for (uint64_t id : cancels) {
      auto it = active.find(id);
      if (it == active.end()) {
        std::lock_guard g(m);
        if (live.count(id)) to_cancel.push_back(id);  // its add is on the way
        continue;
      }
      curl_multi_remove_handle(multi, it->second->easy);
      auto t = std::move(it->second);
      active.erase(it);
      fail(*t, true, "cancelled");
      finish(std::move(t));
    }
    return stopping;
  }

  // Completes every transfer still running (the client is going away).
  void cancel_active() {
    for (auto& [id, t] : active) {
      curl_multi_remove_handle(multi, t->easy);
      fail(*t, true, "the client is shutting down");
      finish(std::move(t));
    }
    active.clear();
  }

  // Completes the transfers curl has finished.
  void reap() {
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi, &left)) {
      if (msg->msg != CURLMSG_DONE) continue;
      Transfer* raw = nullptr;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, reinterpret_cast<char**>(&raw));
      CURLcode result = msg->data.result;
      curl_multi_remove_handle(multi, msg->easy_handle);
      auto it = active.find(raw->id);
      if (it == active.end()) continue;
      auto t = std::move(it->second);
      active.erase(it);
      if (char* ip = nullptr; curl_easy_getinfo(t->easy, CURLINFO_PRIMARY_IP, &ip) == CURLE_OK && ip)
        t->response.remote_address = ip;
      if (result == CURLE_OK) {
        curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->response.status);
      } else {
        // A stream keeps the status it had (206, then cut short): the caller may resume.
        if (t->request.on_headers) curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->response.status);
        else t->response.status = 0;
        t->response.partial = result == CURLE_PARTIAL_FILE;
        t->response.timed_out = result == CURLE_OPERATION_TIMEDOUT;
        // libcurl reports the connect timeout and the whole-exchange timeout with the same
        // code. The connect time alone does not tell them apart: libcurl 7.88 reports 0 for a
        // reused connection, so a slow answer on one read as "could not connect" (retried as
        // unreachable, counted against the backend). A request that was written went over a
        // connection that was up.
        // (libcurl keeps the request size of a first attempt on a pooled connection that died
        // when it retries on a new one: only with no new connection made does it prove one.)
        curl_off_t connect_us = 0;
        long request_bytes = 0, new_connections = 0;
        curl_easy_getinfo(t->easy, CURLINFO_CONNECT_TIME_T, &connect_us);
        curl_easy_getinfo(t->easy, CURLINFO_REQUEST_SIZE, &request_bytes);
        curl_easy_getinfo(t->easy, CURLINFO_NUM_CONNECTS, &new_connections);
        const bool connected =
            connect_us > 0 || t->response.status != 0 || (new_connections == 0 && request_bytes > 0);
        t->response.connect_failed = result == CURLE_COULDNT_CONNECT || result == CURLE_COULDNT_RESOLVE_HOST ||
                                     (t->response.timed_out && !connected);
        std::string what = !t->abort_reason.empty() ? t->abort_reason
                           : t->errbuf[0]         ? std::string(t->errbuf)
                                                  : std::string(curl_easy_strerror(result));
        t->response.error = what;
      }
      finish(std::move(t));
    }
  }

  // Marks the calling thread as the driving context for at_round_end while it lives.
  struct Round {
    explicit Round(Impl& impl) : impl(impl) { t_round_end = &impl.round_end; }
    ~Round() {
      run_round_end(impl.round_end);
      t_round_end = nullptr;
    }
    Impl& impl;
  };
};

namespace {

// A thread of its own, waiting in curl_multi_poll (level-triggered) and woken by
// curl_multi_wakeup. Callbacks may block it (a disk write, an upload's producer).
struct ThreadDriver final : CurlClient::Impl {
  std::thread thread;

  ThreadDriver() {
    thread = std::thread([this] {
      name_this_thread("sg-http");
      run();
    });
  }
  ~ThreadDriver() override {
    if (thread.joinable()) shut_down();
  }
  void wake() override { curl_multi_wakeup(multi); }

  void shut_down() override {
    {
      std::lock_guard g(m);
      stop = true;
    }
    wake();
    if (thread.joinable()) thread.join();
  }

  void run() {
    Round round(*this);
    while (true) {
      if (take_queued()) {
        cancel_active();
        return;
      }
      int running = 0;
      curl_multi_perform(multi, &running);
      reap();
      run_round_end(round_end);
      curl_multi_poll(multi, nullptr, 0, 1000, nullptr);
    }
  }
};

// libcurl driven by an Asio reactor (curl_multi_socket_action), on the I/O threads that run
// the executor: a request, its answer and the caller's resumption need no other thread and
// no hand-off between threads. Callbacks must not block (they run on an I/O thread).
//
// Asio's epoll reactor is edge-triggered, and curl reads a socket in bounded pieces, so a
// socket can stay readable without a new edge. curl's sockets therefore go into an epoll set
// of their own, level-triggered like curl_multi_poll, and only that set's descriptor is
// watched by Asio: whenever the set has something ready, a round takes everything it reports
// (epoll_wait with no wait) until it reports nothing. Asio's wait is re-armed before the set
// is read, so an edge that comes during a round is never lost (at worst it wakes an empty one).
struct ReactorDriver final : CurlClient::Impl {
  // Everything below and curl's multi handle are used by the holder of `drive` only: one I/O
  // thread at a time, whichever runs a handler.
  std::mutex drive;
  int epoll_fd = -1;
  boost::asio::posix::stream_descriptor watch;
  boost::asio::steady_timer timer;
  bool closed = false;
  bool kick = false;  // curl asked for a timeout action now (it must not be called from its callback)
  std::atomic<bool> queued_round{false};  // a round for queued work is posted
  std::weak_ptr<ReactorDriver> self;

  explicit ReactorDriver(boost::asio::any_io_executor ex) : watch(ex), timer(ex) {
    epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd < 0) throw std::runtime_error(std::string("epoll_create1: ") + std::strerror(errno));
    watch.assign(epoll_fd);
    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, &ReactorDriver::on_socket);
    curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, this);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, &ReactorDriver::on_timer);
    curl_multi_setopt(multi, CURLMOPT_TIMERDATA, this);
  }
  ~ReactorDriver() override { close(); }

  static std::shared_ptr<ReactorDriver> make(boost::asio::any_io_executor ex) {
    auto d = std::make_shared<ReactorDriver>(std::move(ex));
    d->self = d;
    std::lock_guard g(d->drive);
    d->arm();
    return d;
  }

  void wake() override {
    if (queued_round.exchange(true)) return;
    boost::asio::post(watch.get_executor(), [w = self] {
      if (auto d = w.lock()) {
        d->queued_round = false;
        d->round(false, false);
      }
    });
  }

  void shut_down() override {
    {
      std::lock_guard g(m);
      stop = true;
    }
    std::lock_guard g(drive);
    if (closed) return;
    Round r(*this);
    take_queued();
    cancel_active();
    close();
  }

  // Under `drive`. Ends curl's multi handle first (it may still tell its callbacks of sockets).
  void close() {
    if (closed) return;
    closed = true;
    if (multi) curl_multi_cleanup(multi);
    multi = nullptr;
    boost::system::error_code ec;
    timer.cancel();
    watch.cancel(ec);
    watch.close(ec);  // closes epoll_fd
    epoll_fd = -1;
  }

  void arm() {
    watch.async_wait(boost::asio::posix::descriptor_base::wait_read, [w = self](const boost::system::error_code& ec) {
      if (ec == boost::asio::error::operation_aborted) return;
      if (auto d = w.lock()) d->round(true, true);
    });
  }

  // One round: queued adds and cancels, curl's due timeouts, and, when the set signalled
  // (`read_set`), every socket it reports ready until it reports none. `rearm` for the wait's
  // own completion only: one wait is outstanding at any time.
  void round(bool read_set, bool rearm) {
    std::lock_guard g(drive);
    if (closed) return;
    Round r(*this);
    if (rearm) arm();  // before reading the set: see the class comment
    if (take_queued()) return;  // ~CurlClient is on its way; shut_down() completes the rest
    settle();
    if (!read_set) return;
    epoll_event events[64];
    for (int pass = 0; pass < 16; ++pass) {
      int n = epoll_wait(epoll_fd, events, 64, 0);
      if (n <= 0) return;
      for (int i = 0; i < n; ++i) {
        int flags = 0;
        if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP)) flags |= CURL_CSELECT_IN;
        if (events[i].events & EPOLLOUT) flags |= CURL_CSELECT_OUT;
        if (events[i].events & EPOLLERR) flags |= CURL_CSELECT_ERR;
        int running = 0;
        curl_multi_socket_action(multi, static_cast<curl_socket_t>(events[i].data.fd), flags, &running);
      }
      settle();
    }
    // Still busy after 16 passes: let the I/O thread serve others, then go on (the wait
    // outstanding stays as it is).
    boost::asio::post(watch.get_executor(), [w = self] {
      if (auto d = w.lock()) d->round(true, false);
    });
  }

  // Runs the timeout actions curl asked for "now" and completes what finished.
  void settle() {
    for (;;) {
      reap();
      if (!kick) return;
      kick = false;
      int running = 0;
      curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
    }
  }

  void on_timeout() {
    std::lock_guard g(drive);
    if (closed) return;
    Round r(*this);
    int running = 0;
    curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
    settle();
  }

  static int on_socket(CURL*, curl_socket_t s, int what, void* user, void*) {
    auto* d = static_cast<ReactorDriver*>(user);
    if (d->epoll_fd < 0) return 0;
    if (what == CURL_POLL_REMOVE) {
      epoll_ctl(d->epoll_fd, EPOLL_CTL_DEL, s, nullptr);  // gone already if curl closed it: fine
      return 0;
    }
    epoll_event ev{};
    ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0u) | (what & CURL_POLL_OUT ? EPOLLOUT : 0u);
    ev.data.fd = s;
    if (epoll_ctl(d->epoll_fd, EPOLL_CTL_MOD, s, &ev) != 0 && errno == ENOENT)
      epoll_ctl(d->epoll_fd, EPOLL_CTL_ADD, s, &ev);
    return 0;
  }

  static int on_timer(CURLM*, long timeout_ms, void* user) {
    auto* d = static_cast<ReactorDriver*>(user);
    if (d->closed) return 0;
    if (timeout_ms < 0) {
      d->timer.cancel();
    } else if (timeout_ms == 0) {
      d->kick = true;  // settle() runs it once curl has returned
    } else {
      d->timer.expires_after(std::chrono::milliseconds(timeout_ms));
      d->timer.async_wait([w = d->self](const boost::system::error_code& ec) {
        if (ec == boost::asio::error::operation_aborted) return;
        if (auto p = w.lock()) p->on_timeout();
      });
    }
    return 0;
  }
};

}  // namespace

CurlClient::CurlClient() {
  global_init_once();
  impl_ = std::make_shared<ThreadDriver>();
}

CurlClient::CurlClient(boost::asio::any_io_executor executor) {
  global_init_once();
  impl_ = ReactorDriver::make(std::move(executor));
}

CurlClient::~CurlClient() {
  impl_->shut_down();
  // Requests added after the driver stopped never started.
  std::deque<std::unique_ptr<Transfer>> left;
  {
    std::lock_guard g(impl_->m);
    left.swap(impl_->to_add);
  }
  for (auto& t : left) {
    Impl::fail(*t, true, "the client is shutting down");
    impl_->finish(std::move(t));
  }
}

void CancelToken::cancel() {
  std::function<void()> fn;
  {
    std::lock_guard g(m_);
    if (cancelled_) return;
    cancelled_ = true;
    fn = std::move(canceller_);
  }
  if (fn) fn();
}

bool CancelToken::cancelled() const {
  std::lock_guard g(m_);
  return cancelled_;
}

bool CancelToken::arm(std::function<void()> canceller) {
  std::lock_guard g(m_);
  if (cancelled_) return false;
  canceller_ = std::move(canceller);
  return true;
}

void CurlClient::at_round_end(std::function<void()> fn) {
  if (t_round_end) t_round_end->push_back(std::move(fn));
  else fn();
}

uint64_t CurlClient::started() const { return impl_->started.load(); }
std::size_t CurlClient::in_flight() const { return impl_->in_flight.load(); }

void CurlClient::start(Request request, std::unique_ptr<Completion> completion, boost::asio::cancellation_slot slot) {
  auto t = std::make_unique<Transfer>();
  t->id = impl_->next_id.fetch_add(1);
  t->request = std::move(request);
  t->completion = std::move(completion);
  t->t0 = std::chrono::steady_clock::now();
  impl_->in_flight.fetch_add(1);
  impl_->started.fetch_add(1);
  t->easy = curl_easy_init();
  if (!t->easy) {
    t->response.error = "curl_easy_init failed";
    impl_->finish(std::move(t));
    return;
  }
  impl_->configure(*t);
  uint64_t id = t->id;
  {
    std::lock_guard g(impl_->m);
    impl_->live.insert(id);
  }
  // A cancel, from any thread: queued for the client's thread, which removes the transfer and
  // completes it as cancelled (or drops the cancel when the transfer has finished).
  std::weak_ptr<Impl> weak = impl_;
  auto cancel = [weak, id] {
    if (auto impl = weak.lock()) {
      {
        std::lock_guard g(impl->m);
        if (impl->stop || !impl->live.count(id)) return;  // finished already
        impl->to_cancel.push_back(id);
      }
      impl->wake();
    }
  };
  if (slot.is_connected()) slot.assign([cancel](boost::asio::cancellation_type) { cancel(); });
  if (t->request.cancel_token && !t->request.cancel_token->arm(cancel)) {
    t->response.cancelled = true;
    t->response.error = "cancelled";
    impl_->finish(std::move(t));
    return;
  }
  {
    std::lock_guard g(impl_->m);
    if (!impl_->stop) {
      impl_->to_add.push_back(std::move(t));
    }
  }
  if (t) {
    t->response.cancelled = true;
    t->response.error = "the client is shutting down";
    impl_->finish(std::move(t));
    return;
  }
  impl_->wake();
}

}  // namespace scigate::http
