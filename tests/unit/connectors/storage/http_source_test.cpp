// The outbound rules for HTTP sources: URL parsing, the host allow-list, and the addresses
// refused after DNS (loopback, private, link-local, metadata) unless a network is allowed.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include "connectors/storage/http_source.hpp"

using namespace scigate;
using namespace scigate::storage;

TEST_CASE("http sources: addresses refused after resolution", "[data][http]") {
  AddressPolicy strict({});
  for (std::string a : {"127.0.0.1", "127.1.2.3", "10.0.0.5", "172.16.0.1", "172.31.255.255", "192.168.1.1",
                        "169.254.169.254", "169.254.1.1", "100.64.0.1", "100.100.100.200", "0.0.0.0", "224.0.0.1",
                        "255.255.255.255", "::1", "::", "fd00:ec2::254", "fc00::1", "fe80::1", "ff02::1",
                        "::ffff:127.0.0.1", "::ffff:10.1.2.3", "64:ff9b::a9fe:a9fe", "2001:db8::1"}) {
    INFO(a);
    CHECK(strict.refuse(a));
  }
  CHECK(*strict.refuse("169.254.169.254") == "a cloud metadata address");
  CHECK(*strict.refuse("fd00:ec2::254") == "a cloud metadata address");
  CHECK(*strict.refuse("::ffff:127.0.0.1") == "a loopback address");
  for (std::string a : {"93.184.216.34", "1.1.1.1", "172.32.0.1", "2606:4700::1111", "::ffff:8.8.8.8"}) {
    INFO(a);
    CHECK_FALSE(strict.refuse(a));
  }
  AddressPolicy lab({"127.0.0.1/32", "10.1.0.0/16", "fd12::/16"});
  CHECK_FALSE(lab.refuse("127.0.0.1"));
  CHECK(lab.refuse("127.0.0.2"));
  CHECK_FALSE(lab.refuse("10.1.200.3"));
  CHECK(lab.refuse("10.2.0.1"));
  CHECK_FALSE(lab.refuse("fd12::5"));
  CHECK(lab.refuse("169.254.169.254"));  // not in any allowed network
}

TEST_CASE("http sources: URLs and the host allow-list", "[data][http]") {
  auto u = parse_url("https://Data.Example.org:8443/a/b%20c.h5?x=1#frag");
  REQUIRE(std::holds_alternative<Url>(u));
  const Url& url = std::get<Url>(u);
  CHECK(url.scheme == "https");
  CHECK(url.host == "data.example.org");
  CHECK(url.port == 8443);
  CHECK(url.path == "/a/b%20c.h5?x=1");
  CHECK(url.last_segment == "b c.h5");
  CHECK(url.url.find("#frag") == std::string::npos);
  CHECK(std::get<Url>(parse_url("http://[::1]/x")).host == "::1");
  CHECK(std::get<Url>(parse_url("http://h/x")).port == 80);
  CHECK(std::get<Url>(parse_url("https://h/a/../b")).path == "/b");
  CHECK(std::holds_alternative<Error>(parse_url("ftp://h/x")));
  CHECK(std::holds_alternative<Error>(parse_url("https://user:pw@h/x")));
  CHECK(std::holds_alternative<Error>(parse_url("not a url")));

  auto hop = resolve_redirect("https://h/a/b", "../c");
  REQUIRE(std::holds_alternative<Url>(hop));
  CHECK(std::get<Url>(hop).url == "https://h/c");
  CHECK(std::get<Url>(resolve_redirect("https://h/a", "http://127.0.0.1:9/x")).host == "127.0.0.1");

  std::vector<std::string> allowed = {"data.example.org", "*.zenodo.org", "127.0.0.1", "[::1]"};
  CHECK(host_allowed(allowed, "data.example.org"));
  CHECK(host_allowed(allowed, "a.b.zenodo.org"));
  CHECK_FALSE(host_allowed(allowed, "zenodo.org"));
  CHECK_FALSE(host_allowed(allowed, "evilzenodo.org"));
  CHECK_FALSE(host_allowed(allowed, "data.example.org.evil.com"));
  CHECK(host_allowed(allowed, "127.0.0.1"));
  CHECK(host_allowed(allowed, "::1"));
  CHECK_FALSE(host_allowed({}, "data.example.org"));
}

TEST_CASE("http sources: the allow-list and the address rule before any connection", "[data][http]") {
  DataHttpConfig cfg;
  AddressPolicy strict({});
  auto none = check_target(std::get<Url>(parse_url("http://localhost/x")), cfg, strict);
  REQUIRE(std::holds_alternative<Error>(none));
  CHECK(std::get<Error>(none).code == ErrorCode::kPolicyDenied);
  CHECK(std::get<Error>(none).message.find("not one this site") != std::string::npos);
  cfg.allowed_hosts = {"localhost", "169.254.169.254"};
  auto loop = check_target(std::get<Url>(parse_url("http://localhost:8080/x")), cfg, strict);
  REQUIRE(std::holds_alternative<Error>(loop));
  CHECK(std::get<Error>(loop).message.find("loopback") != std::string::npos);
  auto meta = check_target(std::get<Url>(parse_url("http://169.254.169.254/latest/meta-data/")), cfg, strict);
  REQUIRE(std::holds_alternative<Error>(meta));
  CHECK(std::get<Error>(meta).message.find("metadata") != std::string::npos);
  AddressPolicy lab({"127.0.0.1/32", "::1/128"});
  auto ok = check_target(std::get<Url>(parse_url("http://localhost:8080/x")), cfg, lab);
  REQUIRE(std::holds_alternative<CheckedTarget>(ok));
  const auto& t = std::get<CheckedTarget>(ok);
  CHECK((t.address == "127.0.0.1" || t.address == "::1"));
  CHECK(t.resolve_entry.rfind("localhost:8080:", 0) == 0);
}

TEST_CASE("http sources: credentials come from [[data.sources]] files, by prefix and project", "[data][http]") {
  char tmpl[] = "/tmp/scigate-sources-XXXXXX";
  std::filesystem::path dir = ::mkdtemp(tmpl);
  std::ofstream(dir / "token") << "s3cret\n";
  std::ofstream(dir / "headers") << "# comment\nX-Api-Key: k1\n";
  DataConfig d;
  DataSourceConfig a;
  a.url = "https://data.example.org/a/";
  a.projects = {"p"};
  a.bearer_token_file = dir / "token";
  a.headers_file = dir / "headers";
  a.allow_upload = true;
  d.sources.push_back(a);
  DataSourceConfig broken;
  broken.url = "https://broken.example.org/";
  broken.bearer_token_file = dir / "missing";
  d.sources.push_back(broken);
  auto h = source_headers(d, "p", "https://data.example.org/a/file.h5");
  CHECK(h.headers == std::vector<std::string>{"Authorization: Bearer s3cret", "X-Api-Key: k1"});
  CHECK(h.upload_allowed);
  CHECK(source_headers(d, "q", "https://data.example.org/a/file.h5").headers.empty());
  CHECK(source_headers(d, "p", "https://data.example.org/b/file.h5").headers.empty());
  CHECK_FALSE(source_headers(d, "p", "https://data.example.org/b/file.h5").upload_allowed);
  // A prefix without its trailing slash still ends at a boundary: not another host's credentials.
  DataSourceConfig bare;
  bare.url = "https://bare.example.org";
  bare.bearer_token_file = dir / "token";
  d.sources.push_back(bare);
  CHECK(source_headers(d, "p", "https://bare.example.org/x").headers.size() == 1);
  CHECK(source_headers(d, "p", "https://bare.example.org?x=1").headers.size() == 1);
  CHECK(source_headers(d, "p", "https://bare.example.org.evil.net/x").headers.empty());
  CHECK(source_headers(d, "p", "https://bare.example.organic/x").headers.empty());
  auto bad = source_headers(d, "p", "https://broken.example.org/x");
  REQUIRE(bad.error);
  CHECK(bad.error->message.find("cannot be read") != std::string::npos);
  CHECK(bad.error->message.find("missing") == std::string::npos);  // paths stay in the log detail
  std::filesystem::remove_all(dir);
}
