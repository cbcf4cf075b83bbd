#include "connectors/http/curl_client.hpp"
#include "server/common/thread_name.hpp"

#include <curl/curl.h>

#include <algorithm>
#include <atomic>
#include <cctype>
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

struct CurlClient::Impl {
  CURLM* multi = nullptr;
  std::mutex m;  // guards the queues and `stop`
  std::deque<std::unique_ptr<Transfer>> to_add;
  std::deque<uint64_t> to_cancel;
  // Transfers started and not finished. A cancel may arrive before its transfer reaches the
  // thread: it is kept for the next round while the id is still here.
  std::unordered_set<uint64_t> live;
  bool stop = false;
  std::atomic<uint64_t> next_id{1};
  std::atomic<uint64_t> started{0};
  std::atomic<std::size_t> in_flight{0};
  // Owned by the thread only:
  std::unordered_map<uint64_t, std::unique_ptr<Transfer>> active;
  std::thread thread;

  ~Impl() {
    if (multi) curl_multi_cleanup(multi);
  }
  void wake() { curl_multi_wakeup(multi); }

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

  bool configure(Transfer& t) {
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
    return true;
  }

  void run() {
    std::vector<std::function<void()>> round_end;
    t_round_end = &round_end;
    while (true) {
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
        t->response.cancelled = true;
        t->response.status = 0;
        t->response.error = "cancelled";
        finish(std::move(t));
      }
      if (stopping) {
        for (auto& [id, t] : active) {
          curl_multi_remove_handle(multi, t->easy);
          t->response.cancelled = true;
          t->response.status = 0;
          t->response.error = "the client is shutting down";
          finish(std::move(t));
        }
        active.clear();
        run_round_end(round_end);
        t_round_end = nullptr;
        return;
      }
      int running = 0;
      curl_multi_perform(multi, &running);
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
          // code; the connect time (set for a reused connection too) tells them apart.
          curl_off_t connect_us = 0;
          curl_easy_getinfo(t->easy, CURLINFO_CONNECT_TIME_T, &connect_us);
          t->response.connect_failed = result == CURLE_COULDNT_CONNECT || result == CURLE_COULDNT_RESOLVE_HOST ||
                                       (t->response.timed_out && connect_us == 0);
          std::string what = !t->abort_reason.empty() ? t->abort_reason
                             : t->errbuf[0]         ? std::string(t->errbuf)
                                                    : std::string(curl_easy_strerror(result));
          t->response.error = what;
        }
        finish(std::move(t));
      }
      run_round_end(round_end);
      curl_multi_poll(multi, nullptr, 0, 1000, nullptr);
    }
  }
};

CurlClient::CurlClient() : impl_(std::make_shared<Impl>()) {
  global_init_once();
  impl_->multi = curl_multi_init();
  if (!impl_->multi) throw std::runtime_error("curl_multi_init failed");
  curl_multi_setopt(impl_->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
  impl_->thread = std::thread([impl = impl_.get()] {
    name_this_thread("sg-http");
    impl->run();
  });
}

CurlClient::~CurlClient() {
  {
    std::lock_guard g(impl_->m);
    impl_->stop = true;
  }
  impl_->wake();
  if (impl_->thread.joinable()) impl_->thread.join();
  // Requests added after the thread ended never started.
  std::deque<std::unique_ptr<Transfer>> left;
  {
    std::lock_guard g(impl_->m);
    left.swap(impl_->to_add);
  }
  for (auto& t : left) {
    t->response.cancelled = true;
    t->response.error = "the client is shutting down";
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
