// How the Slurm connectors classify a failed submit: refused (nothing was taken, the hold is
// released), unknown (the request may have reached slurmctld: SubmitOutcomeUnknown, the ledger
// looks the job up by its comment), or taken (an id). The real Slurm cannot be made to lose an
// answer on demand, so these drive the connectors with stand-ins that print exactly what
// sbatch 22.05 prints in each case, and with a Unix-socket peer that answers as slurmrestd
// 0.0.38 does (or cuts the connection). The happy paths run against the real Slurm in
// tests/integration/slurm_test.cpp.
#include <catch2/catch.hpp>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <string>
#include <mutex>
#include <thread>

#include "connectors/scheduler/slurm/slurm_cli.hpp"
#include "connectors/scheduler/slurm/slurm_rest.hpp"
#include "server/common/crypto.hpp"
#include "server/common/time_format.hpp"
#include "support/files.hpp"
#include "support/run_blocking.hpp"

using namespace scigate;
using namespace scigate::jobs;
using scigate::test::run_blocking;
using scigate::test::TempDir;
using scigate::test::write_file;
namespace fs = std::filesystem;

namespace {

JobSpec spec_in(const fs::path& dir) {
  JobSpec s;
  s.gateway_id = "j-0123456789ab";
  s.name = "outcome";
  s.script = "#!/bin/sh\ntrue\n";
  s.resources.walltime = std::chrono::seconds(60);
  s.working_directory = dir;
  s.stdout_path = dir / "out";
  s.stderr_path = dir / "err";
  return s;
}

// Installs `body` as the program `name` in `bin` (a /bin/sh script that first drains stdin,
// as sbatch reads the batch script from it).
void install(const fs::path& bin, const std::string& name, const std::string& body) {
  write_file(bin / name, "#!/bin/sh\ncat > /dev/null\n" + body);
  fs::permissions(bin / name, fs::perms::owner_all);
}

enum class Outcome { kId, kUnknown, kRefused, kRejected };

Outcome classify(Scheduler& s, const JobSpec& spec, std::string* id_or_message) {
  try {
    *id_or_message = run_blocking(s.submit(spec));
    return Outcome::kId;
  } catch (const SubmitOutcomeUnknown& e) {
    *id_or_message = e.error().message;
    return Outcome::kUnknown;
  } catch (const ErrorException& e) {
    *id_or_message = e.error().message;
    return e.error().code == ErrorCode::kBackendRejected ? Outcome::kRejected : Outcome::kRefused;
  }
}

// One connection at a time on a Unix socket (or 127.0.0.1, as slurmrestd with rest_auth/jwt):
// reads a whole HTTP request, then answers with `reply` (a raw HTTP response; "" = close
// without a word).
class RawHttpPeer {
 public:
  explicit RawHttpPeer(fs::path socket) : path_(std::move(socket)) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    REQUIRE(path_.string().size() < sizeof a.sun_path);
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path_.c_str());
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(fd_, 8) == 0);
    thread_ = std::thread([this] { serve(); });
  }
  RawHttpPeer() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    socklen_t len = sizeof a;
    REQUIRE(::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    port_ = ntohs(a.sin_port);
    REQUIRE(::listen(fd_, 8) == 0);
    thread_ = std::thread([this] { serve(); });
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int requests() {
    std::lock_guard g(m_);
    return requests_;
  }
  std::string last_request() {
    std::lock_guard g(m_);
    return request_;
  }
  ~RawHttpPeer() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    thread_.join();
    ::close(fd_);
  }
  void answer(std::string reply) {
    std::lock_guard g(m_);
    reply_ = std::move(reply);
  }
  std::string last_method() {
    std::lock_guard g(m_);
    return method_;
  }

 private:
  void serve() {
    while (!stop_) {
      int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      std::string in;
      char buf[4096];
      std::size_t need = std::string::npos;
      while (need == std::string::npos || in.size() < need) {
        ssize_t n = ::read(c, buf, sizeof buf);
        if (n <= 0) break;
        in.append(buf, static_cast<std::size_t>(n));
        auto end = in.find("\r\n\r\n");
        if (need == std::string::npos && end != std::string::npos) {
          std::size_t length = 0;
          auto cl = in.find("Content-Length: ");
          if (cl != std::string::npos && cl < end) length = std::stoul(in.substr(cl + 16));
          need = end + 4 + length;
        }
      }
      std::string reply;
      {
        std::lock_guard g(m_);
        method_ = in.substr(0, in.find(' '));
        request_ = in;
        ++requests_;
        reply = reply_;
      }
      // MSG_NOSIGNAL: a client that gave up already must not kill the test binary with SIGPIPE.
      if (!reply.empty()) (void)!::send(c, reply.data(), reply.size(), MSG_NOSIGNAL);
      ::close(c);
    }
  }
  std::mutex m_;
  fs::path path_;
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::string reply_;
  std::string method_;
  std::string request_;
  int requests_ = 0;
  int port_ = 0;
};

std::string http_json(int status, const std::string& body) {
  return "HTTP/1.1 " + std::to_string(status) + " X\r\nContent-Type: application/json\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
}

}  // namespace

TEST_CASE("slurm cli: a failed sbatch is called refused, rejected or unknown by what it printed") {
  TempDir t("sbatch-outcome");
  fs::path bin = t.path / "bin";
  fs::create_directories(bin);
  SlurmCliOptions o;
  o.bin_dir = bin;
  o.command_timeout = std::chrono::milliseconds(500);
  SlurmCliScheduler cli(o);
  auto spec = spec_in(t.path);
  std::string said;

  // sbatch --parsable's answer: the id (";cluster" on federated sites). A warning on stderr
  // next to an id does not make it a failure.
  install(bin, "sbatch", "echo 4242\necho 'sbatch: error: Socket timed out on send/recv operation' >&2\nexit 0\n");
  CHECK(classify(cli, spec, &said) == Outcome::kId);
  CHECK(said == "4242");

  // slurmctld took the request; its answer did not come back: the job may exist.
  for (const char* lost : {"Socket timed out on send/recv operation", "Zero Bytes were transmitted or received"}) {
    INFO(lost);
    install(bin, "sbatch", std::string("echo 'sbatch: error: Batch job submission failed: ") + lost + "' >&2\nexit 1\n");
    CHECK(classify(cli, spec, &said) == Outcome::kUnknown);
  }
  // sbatch still waiting when its time ran out: the request may be in slurmctld's queue.
  install(bin, "sbatch", "sleep 5\n");
  CHECK(classify(cli, spec, &said) == Outcome::kUnknown);
  // Success without an id: something was queued, under an id we cannot read.
  install(bin, "sbatch", "echo 'Submitted to the void'\nexit 0\n");
  CHECK(classify(cli, spec, &said) == Outcome::kUnknown);
  CHECK_THAT(said, Catch::Contains("unexpected answer"));

  // slurmctld never reached: nothing was taken, the caller may simply retry.
  install(bin, "sbatch",
          "echo 'sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)' "
          ">&2\nexit 1\n");
  CHECK(classify(cli, spec, &said) == Outcome::kRefused);
  CHECK_THAT(said, Catch::Contains("unavailable"));
  // Slurm said no: a rejection the caller can act on, with Slurm's reason.
  install(bin, "sbatch",
          "echo 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2\nexit 1\n");
  CHECK(classify(cli, spec, &said) == Outcome::kRejected);
  CHECK_THAT(said, Catch::Contains("Invalid partition name"));
  // No sbatch at all: it never ran.
  fs::remove(bin / "sbatch");
  CHECK(classify(cli, spec, &said) == Outcome::kRefused);
}

TEST_CASE("slurm cli: jobs whose submit is unconfirmed are looked up in one squeue per 200 names") {
  TempDir t("squeue-names");
  fs::path bin = t.path / "bin";
  fs::create_directories(bin);
  // Records each command line; answers with no jobs.
  install(bin, "squeue", "echo \"$@\" >> " + (t.path / "calls").string() + "\n");
  SlurmCliOptions o;
  o.bin_dir = bin;
  SlurmCliScheduler cli(o);
  std::vector<Scheduler::Submitted> asked;
  for (int i = 0; i < 250; ++i) asked.push_back({"j-" + std::to_string(i), "name-" + std::to_string(i % 201)});
  CHECK(run_blocking(cli.find_submitted(asked)).empty());
  std::string calls = test::slurp(t.path / "calls");
  CHECK(std::count(calls.begin(), calls.end(), '\n') == 2);  // 201 distinct names: 200 + 1
  CHECK_THAT(calls, Catch::Contains("--name=name-0,name-1,name-10,"));
  // squeue that cannot reach slurmctld: an error, never "not there".
  install(bin, "squeue", "echo 'slurm_load_jobs error: Unable to contact slurm controller (connect failure)' >&2\nexit 1\n");
  CHECK_THROWS_AS(run_blocking(cli.find_submitted(asked)), ErrorException);
}

TEST_CASE("slurm rest: a submit cut after the request went out is unknown, a refused connection is not") {
  TempDir t("rest-outcome");
  SlurmRestOptions o;
  o.unix_socket = t.path / "slurmrestd.socket";
  o.request_timeout = std::chrono::milliseconds(2000);
  SlurmRestScheduler rest(o);
  auto spec = spec_in(t.path);
  std::string said;

  // No slurmrestd listening: the request never left. The caller (an agent) is told so, not
  // where the site's socket is.
  CHECK(classify(rest, spec, &said) == Outcome::kRefused);
  CHECK_THAT(said, Catch::Contains("slurmrestd could not be reached"));
  CHECK(said.find(o.unix_socket.string()) == std::string::npos);

  RawHttpPeer peer(o.unix_socket);
  peer.answer(http_json(200, R"({"job_id":77,"step_id":"batch","errors":[],"warnings":[]})"));
  CHECK(classify(rest, spec, &said) == Outcome::kId);
  CHECK(said == "77");
  CHECK(peer.last_method() == "POST");

  // The connection closed without an answer after the POST went out: slurmctld may have it.
  peer.answer("");
  CHECK(classify(rest, spec, &said) == Outcome::kUnknown);
  // A 200 that is not JSON: something answered, we cannot read what.
  peer.answer("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 10\r\n\r\n<html>oops");
  CHECK(classify(rest, spec, &said) == Outcome::kUnknown);
  // slurmrestd passed it on and slurmctld's answer was lost.
  peer.answer(http_json(500, R"j({"errors":[{"error_number":5004,"error":"Socket timed out on send/recv operation")j"
                             R"j(,"description":"slurm_submit_batch_job()"}],"job_id":0})j"));
  CHECK(classify(rest, spec, &said) == Outcome::kUnknown);
  // slurmrestd could not reach slurmctld at all: nothing taken.
  peer.answer(http_json(500, R"j({"errors":[{"error_number":1007,"error":"Unable to contact slurm controller (connect failure)")j"
                             R"j(,"description":"slurm_submit_batch_job()"}],"job_id":0})j"));
  CHECK(classify(rest, spec, &said) == Outcome::kRefused);
  // Slurm's own refusal (ESLURM_INVALID_PARTITION_NAME).
  peer.answer(http_json(500, R"j({"errors":[{"error_number":2015,"error":"Invalid partition name specified")j"
                             R"j(,"description":"slurm_submit_batch_job()"}],"job_id":0})j"));
  CHECK(classify(rest, spec, &said) == Outcome::kRejected);
  CHECK_THAT(said, Catch::Contains("Invalid partition name"));

  // A cut GET is only unavailable: asking again is harmless.
  peer.answer("");
  try {
    run_blocking(rest.poll({"1"}));
    FAIL("a poll cut without an answer succeeded");
  } catch (const SubmitOutcomeUnknown&) {
    FAIL("a cut poll was taken for an unknown submit");
  } catch (const ErrorException& e) {
    CHECK(e.error().code == ErrorCode::kBackendUnavailable);
  }
  CHECK(peer.last_method() == "GET");
}

// slurmctld drops the connection of a request whose JWT is expired or malformed, and slurmrestd
// 22.05 then answers 5005 "Zero Bytes were transmitted or received" -- as when slurmctld's
// answer is lost: a submit sent with such a token would be unknown, and its job held while the
// site cannot even be asked. The token is checked before anything is sent.
TEST_CASE("slurm rest: a JWT that has expired or is not a JWT is not sent, and the error says so") {
  TempDir t("rest-token");
  RawHttpPeer peer;
  peer.answer(http_json(200, R"({"job_id":78,"step_id":"batch","errors":[],"warnings":[]})"));
  SlurmRestOptions o;
  o.url = peer.url();
  o.user_name = "agent";
  o.token_file = t.path / "slurm.jwt";
  o.request_timeout = std::chrono::milliseconds(2000);
  SlurmRestScheduler rest(o);
  auto spec = spec_in(t.path);
  std::string said;
  // As `scontrol token` writes it (HS256; the signature is the site's business).
  auto jwt = [](int64_t exp_s, const std::string& extra) {
    return "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." +
           crypto::base64url_encode(R"({"exp":)" + std::to_string(exp_s) + R"(,"iat":1795514769,"sun":"agent")" + extra + "}") +
           ".c2lnbmF0dXJl";
  };
  const int64_t now_s = unix_now_ms() / 1000;

  write_file(o.token_file, "SLURM_JWT=" + jwt(now_s - 5, "") + "\n");
  CHECK(classify(rest, spec, &said) == Outcome::kRefused);  // not unknown: nothing was sent
  CHECK_THAT(said, Catch::Contains("slurmrestd token expired at " + rfc3339_seconds((now_s - 5) * 1000)));
  CHECK(said.find(o.token_file.string()) == std::string::npos);  // the agent is not told where it lives
  try {
    run_blocking(rest.poll({"1"}));
    FAIL("a poll went out with an expired token");
  } catch (const ErrorException& e) {
    CHECK(e.error().code == ErrorCode::kBackendUnavailable);
    CHECK_THAT(e.error().hint, Catch::Contains("scontrol token"));
    CHECK_THAT(e.error().detail, Catch::Contains(o.token_file.string()));
  }
  // About to expire: slurmctld's clock may be ahead, and it would expire on the way.
  write_file(o.token_file, "SLURM_JWT=" + jwt(now_s + 20, R"(,"x":1)") + "\n");
  CHECK(classify(rest, spec, &said) == Outcome::kRefused);
  CHECK_THAT(said, Catch::Contains("within a minute"));
  CHECK(peer.requests() == 0);

  // Renewed in the file (another length: the file's mtime may not have moved): used at once.
  std::string renewed = jwt(now_s + 3600, R"(,"renewed":true)");
  write_file(o.token_file, "SLURM_JWT=" + renewed + "\n");
  CHECK(classify(rest, spec, &said) == Outcome::kId);
  CHECK(said == "78");
  CHECK(peer.requests() == 1);
  CHECK_THAT(peer.last_request(), Catch::Contains("X-SLURM-USER-TOKEN: " + renewed));

  write_file(o.token_file, "not-a-valid-token\n");
  CHECK(classify(rest, spec, &said) == Outcome::kRefused);
  CHECK_THAT(said, Catch::Contains("slurmrestd token is not a JWT"));
  CHECK(peer.requests() == 1);
}
