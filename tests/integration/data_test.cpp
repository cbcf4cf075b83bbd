// Data staging through the real binary: storage areas on real directories, a real nginx on
// 127.0.0.1 (Debian's package) for downloads, redirects, credentials, slow bodies and uploads,
// a lying server for broken lengths, a small tmpfs for a full disk, and a server killed during a
// download that resumes it with a Range request.
#include <catch2/catch.hpp>

#include <sys/mount.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "server/common/crypto.hpp"
#include "server_process.hpp"
#include "tests/support/eventually.hpp"
#include "tests/support/files.hpp"
#include "tests/support/nginx_server.hpp"
#include "tool_call.hpp"

using namespace scigate::itest;
using scigate::test::eventually;
using scigate::test::LyingServer;
using scigate::test::NginxServer;
namespace fs = std::filesystem;

using scigate::test::random_bytes;
using scigate::test::slurp;
using scigate::test::write_file;

namespace {

int temp_files(const fs::path& root) {
  int n = 0;
  if (!fs::exists(root)) return 0;
  for (auto& e : fs::recursive_directory_iterator(root))
    if (e.path().filename().string().rfind(".scigate-", 0) == 0) ++n;
  return n;
}

std::string code_of(const json& result) {
  if (!result.value("isError", false)) return "";
  return result["_meta"]["io.scigate/error"].value("code", "");
}

std::string message_of(const json& result) {
  if (!result.value("isError", false)) return "";
  return result["_meta"]["io.scigate/error"].value("message", "");
}

#define NGINX_OR_SKIP(server)                                  \
  std::string nginx_skip_;                                     \
  auto server = NginxServer::start(&nginx_skip_, 512 * 1024);  \
  if (!server) {                                               \
    WARN("SKIPPED: " << nginx_skip_);                          \
    return;                                                    \
  }

// A server whose demo project reaches the nginx (and the lying server) on 127.0.0.1.
std::string data_config(const std::string& extra = "") {
  return R"([data]
max_concurrent = 4

[data.http]
allowed_hosts = ["127.0.0.1", "127.0.0.2", "169.254.169.254", "example.invalid"]
allowed_networks = ["127.0.0.1/32"]
retries = 1
stall_timeout_s = 3
)" + extra;
}

json stage(Client& c, const std::string& key, json args) {
  return call_tool(c, key, "stage_data", std::move(args));
}

json transfer(Client& c, const std::string& key, const std::string& id) {
  auto r = call_tool(c, key, "get_transfer", {{"transfer_id", id}});
  REQUIRE(r["isError"] == false);
  return r["structuredContent"];
}

json wait_transfer(Client& c, const std::string& key, const std::string& id, std::chrono::seconds limit = std::chrono::seconds(60)) {
  json t;
  REQUIRE(eventually(
      [&] {
        t = transfer(c, key, id);
        return t["final"].get<bool>() && t["credits"]["settled"].get<bool>();
      },
      limit, std::chrono::milliseconds(100)));
  return t;
}

}  // namespace

TEST_CASE("data: the file tools and an area-to-area copy through the server", "[data]") {
  ServerProcess s(data_config());
  fs::path scratch = s.dir() / "data" / "demo" / "scratch";
  write_file(scratch / "in" / "notes.txt", "line one\nline two\n");
  Client c(s.port());
  auto areas = call_tool(c, s.user_key(), "list_files", json::object());
  REQUIRE(areas["isError"] == false);
  CHECK(areas["structuredContent"]["areas"][0]["uri"] == "area://scratch/");
  auto read = call_tool(c, s.user_key(), "read_file", {{"uri", "area://scratch/in/notes.txt"}});
  CHECK(read["structuredContent"]["text"] == "line one\nline two\n");
  CHECK(code_of(call_tool(c, s.user_key(), "read_file", {{"uri", "area://scratch/../../scigate.toml"}})) == "forbidden");

  auto r = stage(c, s.user_key(), {{"source", "area://scratch/in"}, {"destination", "area://scratch/out"},
                                   {"recursive", true}, {"wait_s", 30}});
  INFO(r.dump());
  REQUIRE(r["isError"] == false);
  CHECK(r["structuredContent"]["state"] == "COMPLETED");
  CHECK(r["structuredContent"]["files_done"] == 1);
  CHECK(slurp(scratch / "out" / "notes.txt") == "line one\nline two\n");
  auto st = call_tool(c, s.user_key(), "stat_file", {{"uri", "area://scratch/out/notes.txt"}, {"sha256", true}});
  CHECK(st["structuredContent"]["sha256"] == scigate::crypto::sha256_hex("line one\nline two\n"));
  auto list = call_tool(c, s.user_key(), "list_transfers", json::object());
  CHECK(list["structuredContent"]["transfers"].size() == 1);
}

TEST_CASE("data: downloads from nginx are checked, redirects re-checked, credentials from the config", "[data]") {
  NGINX_OR_SKIP(nginx);
  std::string data = random_bytes(3'000'000, 11);
  write_file(nginx->root() / "data.bin", data);
  ServerProcess s(data_config(), false);
  fs::create_directories(s.dir() / "secrets");
  std::ofstream(s.dir() / "secrets" / "token") << "s3cret\n";
  s.merge_config("[[data.sources]]\nurl = \"" + nginx->url("/private/") +
                 "\"\nbearer_token_file = \"secrets/token\"\nprojects = [\"demo\"]\n");
  s.start();
  fs::path scratch = s.dir() / "data" / "demo" / "scratch";
  Client c(s.port());
  std::string sha = scigate::crypto::sha256_hex(data);

  auto r = stage(c, s.user_key(), {{"source", nginx->url("/files/data.bin")}, {"destination", "area://scratch/dl/"},
                                   {"sha256", sha}, {"wait_s", 60}});
  INFO(r.dump());
  REQUIRE(r["isError"] == false);
  CHECK(r["structuredContent"]["state"] == "COMPLETED");
  CHECK(r["structuredContent"]["bytes_total"] == 3'000'000);
  CHECK(r["structuredContent"]["sha256"] == sha);
  CHECK(slurp(scratch / "dl" / "data.bin") == data);
  // Charged by the bytes moved: 0.003 GB x 0.01 credits.
  CHECK(r["structuredContent"]["credits"]["cost"].get<double>() == Approx(0.00003));

  // A relative redirect to the same server is followed.
  auto ok = stage(c, s.user_key(), {{"source", nginx->url("/redirect/ok")}, {"destination", "area://scratch/viaredirect.bin"},
                                    {"wait_s", 60}});
  REQUIRE(ok["isError"] == false);
  CHECK(slurp(scratch / "viaredirect.bin") == data);

  // Redirects to loopback or a metadata address are refused before any connection is made.
  auto loop = stage(c, s.user_key(), {{"source", nginx->url("/redirect/loopback")}, {"destination", "area://scratch/x"}});
  CHECK(code_of(loop) == "policy_denied");
  CHECK(message_of(loop).find("loopback") != std::string::npos);
  auto meta = stage(c, s.user_key(), {{"source", nginx->url("/redirect/metadata")}, {"destination", "area://scratch/x"}});
  CHECK(code_of(meta) == "policy_denied");
  CHECK(message_of(meta).find("metadata") != std::string::npos);
  auto direct = stage(c, s.user_key(), {{"source", "http://169.254.169.254/latest/meta-data/"}, {"destination", "area://scratch/x"}});
  CHECK(code_of(direct) == "policy_denied");
  auto endless = stage(c, s.user_key(), {{"source", nginx->url("/redirect/loop")}, {"destination", "area://scratch/x"}});
  CHECK(code_of(endless) == "policy_denied");
  CHECK(message_of(endless).find("redirects") != std::string::npos);
  CHECK(code_of(stage(c, s.user_key(), {{"source", "https://not-allowed.example.org/x"}, {"destination", "area://scratch/x"}})) ==
        "policy_denied");
  CHECK(code_of(stage(c, s.user_key(), {{"source", nginx->url("/files/missing.bin")}, {"destination", "area://scratch/x"}})) ==
        "not_found");
  CHECK(code_of(stage(c, s.user_key(), {{"source", "http://user:pw@127.0.0.1/x"}, {"destination", "area://scratch/x"}})) ==
        "invalid_arguments");

  // /private/ needs the bearer token of [[data.sources]]: sent for that prefix only.
  auto priv = stage(c, s.user_key(), {{"source", nginx->url("/private/data.bin")}, {"destination", "area://scratch/private.bin"},
                                      {"wait_s", 60}});
  INFO(priv.dump());
  REQUIRE(priv["isError"] == false);
  CHECK(slurp(scratch / "private.bin") == data);
  CHECK(s.log().find("s3cret") == std::string::npos);
  CHECK(temp_files(scratch) == 0);
}

TEST_CASE("data: servers that send fewer or more bytes than announced leave no file", "[data]") {
  std::string why;
  auto liar = LyingServer::start(std::string(SCIGATE_SOURCE_DIR) + "/tests/support/lying_http.py", &why);
  if (!liar) {
    WARN("SKIPPED: " << why);
    return;
  }
  ServerProcess s(data_config());
  fs::path scratch = s.dir() / "data" / "demo" / "scratch";
  Client c(s.port());
  auto shorter = stage(c, s.user_key(), {{"source", liar->url("/short")}, {"destination", "area://scratch/short.bin"},
                                         {"wait_s", 60}});
  INFO(shorter.dump());
  CHECK(code_of(shorter) == "integrity_failed");
  CHECK(message_of(shorter).find("announced 1000000") != std::string::npos);
  CHECK_FALSE(fs::exists(scratch / "short.bin"));
  auto longer = stage(c, s.user_key(), {{"source", liar->url("/grows")}, {"destination", "area://scratch/grows.bin"},
                                        {"wait_s", 60}});
  INFO(longer.dump());
  CHECK(code_of(longer) == "integrity_failed");
  CHECK_FALSE(fs::exists(scratch / "grows.bin"));
  // A 206 with the first half, though nothing was asked for and the size was not announced.
  auto partial = stage(c, s.user_key(), {{"source", liar->url("/partial")}, {"destination", "area://scratch/partial.bin"},
                                         {"wait_s", 60}});
  INFO(partial.dump());
  CHECK(partial["isError"] == true);
  CHECK(message_of(partial).find("only part of the file") != std::string::npos);
  CHECK_FALSE(fs::exists(scratch / "partial.bin"));
  auto stalled = stage(c, s.user_key(), {{"source", liar->url("/stall")}, {"destination", "area://scratch/stall.bin"},
                                         {"wait_s", 60}});
  INFO(stalled.dump());
  CHECK(stalled["isError"] == true);
  CHECK_FALSE(fs::exists(scratch / "stall.bin"));
  CHECK(temp_files(scratch) == 0);
}

TEST_CASE("data: a slow download is cancelled mid-transfer and pays for what moved", "[data]") {
  NGINX_OR_SKIP(nginx);
  write_file(nginx->root() / "big.bin", random_bytes(8'000'000, 5));
  ServerProcess s(data_config());
  fs::path scratch = s.dir() / "data" / "demo" / "scratch";
  Client c(s.port());
  auto r = stage(c, s.user_key(), {{"source", nginx->url("/slow/big.bin")}, {"destination", "area://scratch/big.bin"}});
  REQUIRE(r["isError"] == false);
  std::string id = r["structuredContent"]["transfer_id"];
  CHECK(eventually([&] { return transfer(c, s.user_key(), id)["bytes_done"].get<int64_t>() > 500'000; },
                   std::chrono::seconds(20)));
  auto cancelled = call_tool(c, s.user_key(), "cancel_transfer", {{"transfer_id", id}});
  REQUIRE(cancelled["isError"] == false);
  auto t = wait_transfer(c, s.user_key(), id);
  CHECK(t["state"] == "CANCELED");
  CHECK_FALSE(fs::exists(scratch / "big.bin"));
  CHECK(temp_files(scratch) == 0);
  CHECK(t["credits"]["cost"].get<double>() < t["credits"]["held"].get<double>());
}

TEST_CASE("data: a server killed mid-download resumes it with a Range request after restart", "[data]") {
  NGINX_OR_SKIP(nginx);
  std::string data = random_bytes(6'000'000, 9);
  write_file(nginx->root() / "resume.bin", data);
  ServerProcess s(data_config());
  fs::path scratch = s.dir() / "data" / "demo" / "scratch";
  std::string id;
  {
    Client c(s.port());
    auto r = stage(c, s.user_key(), {{"source", nginx->url("/slow/resume.bin")}, {"destination", "area://scratch/resume.bin"}});
    REQUIRE(r["isError"] == false);
    id = r["structuredContent"]["transfer_id"];
    CHECK(eventually([&] { return transfer(c, s.user_key(), id)["bytes_done"].get<int64_t>() > 1'500'000; },
                     std::chrono::seconds(20)));
  }
  s.kill_hard();
  CHECK_FALSE(fs::exists(scratch / "resume.bin"));
  CHECK(temp_files(scratch) == 1);
  s.start();
  Client c(s.port());
  auto t = wait_transfer(c, s.user_key(), id, std::chrono::seconds(60));
  INFO(t.dump());
  CHECK(t["state"] == "COMPLETED");
  CHECK(t["attempts"] == 2);
  CHECK(t["sha256"] == scigate::crypto::sha256_hex(data));
  CHECK(slurp(scratch / "resume.bin") == data);
  CHECK(temp_files(scratch) == 0);
  // nginx saw the second attempt ask for the rest only.
  std::string log = slurp(nginx->access_log());
  CHECK(log.find("\" 206 ") != std::string::npos);
  // The hold was settled once, by the bytes moved.
  CHECK(t["credits"]["settled"] == true);
  auto usage = call_tool(c, s.user_key(), "get_usage", json::object())["structuredContent"];
  CHECK(usage["held"].get<double>() == 0);
}

TEST_CASE("data: uploads by PUT go only where a source allows them", "[data]") {
  NGINX_OR_SKIP(nginx);
  ServerProcess s(data_config(), false);
  s.merge_config("[[data.sources]]\nurl = \"" + nginx->url("/upload/") + "\"\nallow_upload = true\n");
  s.start();
  std::string data = random_bytes(2'500'000, 4);
  write_file(s.dir() / "data" / "demo" / "scratch" / "result.bin", data);
  Client c(s.port());
  auto up = stage(c, s.user_key(), {{"source", "area://scratch/result.bin"}, {"destination", nginx->url("/upload/run1/result.bin")},
                                    {"wait_s", 60}});
  INFO(up.dump());
  REQUIRE(up["isError"] == false);
  CHECK(up["structuredContent"]["state"] == "COMPLETED");
  CHECK(up["structuredContent"]["sha256"] == scigate::crypto::sha256_hex(data));
  CHECK(slurp(nginx->root().parent_path() / "upload" / "run1" / "result.bin") == data);
  auto refused = stage(c, s.user_key(), {{"source", "area://scratch/result.bin"}, {"destination", nginx->url("/files/x.bin")}});
  CHECK(code_of(refused) == "forbidden");
}

TEST_CASE("data: a full file system (a small tmpfs) and a quota end the transfer cleanly", "[data]") {
  NGINX_OR_SKIP(nginx);
  write_file(nginx->root() / "three.bin", random_bytes(3'000'000, 2));
  ServerProcess s(data_config(), false);
  fs::path tiny = s.dir() / "tiny";
  fs::create_directories(tiny);
  // Unmounted whatever happens below (before the server's directory is removed).
  struct Unmount {
    fs::path path;
    bool mounted = false;
    ~Unmount() {
      if (mounted) ::umount2(path.c_str(), MNT_DETACH);
    }
  } guard{tiny};
  bool mounted = ::mount("tmpfs", tiny.c_str(), "tmpfs", 0, "size=1m") == 0;
  guard.mounted = mounted;
  // One merge per [[data.areas]] entry: merge_config gathers a header's keys into one block.
  s.merge_config("[[data.areas]]\nid = \"tiny\"\nproject = \"demo\"\nroot = \"tiny\"\n");
  s.merge_config("[[data.areas]]\nid = \"capped\"\nproject = \"demo\"\nroot = \"capped\"\nquota_bytes = 2000000\n");
  s.start();
  Client c(s.port());
  if (mounted) {
    auto full = stage(c, s.user_key(), {{"source", nginx->url("/files/three.bin")}, {"destination", "area://tiny/three.bin"},
                                        {"wait_s", 60}});
    INFO(full.dump());
    CHECK(code_of(full) == "quota_exceeded");
    CHECK(message_of(full).find("full") != std::string::npos);
    CHECK_FALSE(fs::exists(tiny / "three.bin"));
    CHECK(temp_files(tiny) == 0);
    s.stop();
    guard.mounted = ::umount(tiny.c_str()) != 0;
  } else {
    WARN("SKIPPED the ENOSPC part: cannot mount a tmpfs here (not root, or no CAP_SYS_ADMIN); the quota part runs");
  }
  if (!s.running()) s.start();
  Client c2(s.port());
  auto over = stage(c2, s.user_key(), {{"source", nginx->url("/files/three.bin")}, {"destination", "area://capped/three.bin"}});
  CHECK(code_of(over) == "quota_exceeded");
}

TEST_CASE("data: two transfers to one destination: the second is refused while the first runs", "[data]") {
  NGINX_OR_SKIP(nginx);
  write_file(nginx->root() / "big.bin", random_bytes(8'000'000, 6));
  ServerProcess s(data_config());
  Client c(s.port());
  auto first = stage(c, s.user_key(), {{"source", nginx->url("/slow/big.bin")}, {"destination", "area://scratch/same.bin"}});
  REQUIRE(first["isError"] == false);
  auto second = stage(c, s.user_key(), {{"source", nginx->url("/files/big.bin")}, {"destination", "area://scratch/same.bin"}});
  CHECK(code_of(second) == "conflict");
  call_tool(c, s.user_key(), "cancel_transfer", {{"transfer_id", first["structuredContent"]["transfer_id"]}});
}

TEST_CASE("data: stage_data reports progress while it waits, and runs as a task the client polls", "[data]") {
  NGINX_OR_SKIP(nginx);
  std::string data = random_bytes(1'500'000, 8);
  write_file(nginx->root() / "progress.bin", data);
  ServerProcess s(data_config());
  fs::path scratch = s.dir() / "data" / "demo" / "scratch";

  // Inline with wait_s and a progress token: notifications/progress on the SSE stream, then the
  // transfer, COMPLETED.
  auto req = modern_request(7, "tools/call", {{"name", "stage_data"},
                                              {"arguments", {{"source", nginx->url("/slow/progress.bin")},
                                                             {"destination", "area://scratch/p1.bin"},
                                                             {"wait_s", 60}}}});
  req["params"]["_meta"]["progressToken"] = "stage";
  Client c(s.port());
  auto r = c.request(http::verb::post, "/mcp", modern_headers(s.user_key(), "tools/call", "stage_data"), req.dump());
  REQUIRE(r.status == 200);
  CHECK(r.header("content-type") == "text/event-stream");
  CHECK(r.body.find("notifications/progress") != std::string::npos);
  CHECK(r.body.find("of 1.4 MiB") != std::string::npos);  // "transfer x-...: 512.0 KiB of 1.4 MiB, 512.0 KiB/s"
  auto last = r.body.rfind("data: ");
  REQUIRE(last != std::string::npos);
  auto final_msg = json::parse(r.body.substr(last + 6, r.body.find('\n', last) - last - 6));
  CHECK(final_msg["result"]["structuredContent"]["state"] == "COMPLETED");
  CHECK(slurp(scratch / "p1.bin") == data);

  // As a task (2026-07-28, the tasks extension declared): created at once, polled to its end.
  auto treq = modern_request(8, "tools/call", {{"name", "stage_data"},
                                               {"arguments", {{"source", nginx->url("/slow/progress.bin")},
                                                              {"destination", "area://scratch/p2.bin"}}}});
  treq["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"]["extensions"]["io.modelcontextprotocol/tasks"] =
      json::object();
  auto created = c.request(http::verb::post, "/mcp", modern_headers(s.user_key(), "tools/call", "stage_data"), treq.dump());
  REQUIRE(created.status == 200);
  auto task = created.json_body()["result"];
  INFO(task.dump());
  REQUIRE(task["resultType"] == "task");
  std::string task_id = task["taskId"];
  json got;
  bool saw_message = false;
  REQUIRE(eventually(
      [&] {
        auto g = modern_request(9, "tasks/get", {{"taskId", task_id}});
        g["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"]["extensions"]["io.modelcontextprotocol/tasks"] =
            json::object();
        got = c.request(http::verb::post, "/mcp", modern_headers(s.user_key(), "tasks/get", task_id), g.dump())
                  .json_body()["result"];
        if (got.value("statusMessage", "").find("transfer x-") != std::string::npos) saw_message = true;
        return got["status"] != "working";
      },
      std::chrono::seconds(60), std::chrono::milliseconds(200)));
  INFO(got.dump());
  CHECK(got["status"] == "completed");
  CHECK(got["result"]["structuredContent"]["state"] == "COMPLETED");
  CHECK(saw_message);  // the task's statusMessage carried the transfer's progress
  CHECK(slurp(scratch / "p2.bin") == data);
}
