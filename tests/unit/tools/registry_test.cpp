#include <catch2/catch.hpp>

#include "tools/builtin.hpp"
#include "tools/registry.hpp"

using namespace scigate;

namespace {
struct Fake : Tool {
  explicit Fake(std::string name, json schema = json::parse(R"({"type":"object"})")) {
    d.name = std::move(name);
    d.description = "fake";
    d.input_schema = std::move(schema);
  }
  const ToolDescriptor& descriptor() const override { return d; }
  boost::asio::awaitable<ToolResult> call(const json&, CallContext&) override { co_return ToolResult::success(nullptr, ""); }
  ToolDescriptor d;
};
}  // namespace

TEST_CASE("registry: tools are listed by name whatever the registration order") {
  ToolRegistry r;
  r.add(std::make_unique<Fake>("zeta"));
  r.add(std::make_unique<Fake>("alpha"));
  r.add(std::make_unique<Fake>("mid"));
  REQUIRE(r.tools().size() == 3);
  CHECK(r.tools()[0]->descriptor().name == "alpha");
  CHECK(r.tools()[2]->descriptor().name == "zeta");
  CHECK(r.find("mid") != nullptr);
  CHECK(r.find("nope") == nullptr);
}

TEST_CASE("registry: bad descriptors are caught at start-up") {
  ToolRegistry r;
  r.add(std::make_unique<Fake>("a"));
  CHECK_THROWS_AS(r.add(std::make_unique<Fake>("a")), std::invalid_argument);
  CHECK_THROWS_AS(r.add(std::make_unique<Fake>("has space")), std::invalid_argument);
  CHECK_THROWS_AS(r.add(std::make_unique<Fake>("b", json::parse(R"({"type":"string"})"))), std::invalid_argument);
  auto big = std::make_unique<Fake>("c");
  big->d.description = std::string(2048, 'x');
  CHECK_THROWS_AS(r.add(std::move(big)), std::invalid_argument);
}

TEST_CASE("registry: validation messages point at the offending member") {
  ToolRegistry r;
  r.add(std::make_unique<Fake>("job", json::parse(R"({
    "type":"object",
    "properties":{"resources":{"type":"object","properties":{"nodes":{"type":"integer","minimum":1}}},
                  "tags":{"type":"array","items":{"type":"string"}}},
    "required":["resources"]})")));
  const Tool& t = *r.find("job");
  CHECK_FALSE(r.validate_arguments(t, json{{"resources", {{"nodes", 2}}}}));
  auto e = r.validate_arguments(t, json{{"resources", {{"nodes", 0}}}});
  REQUIRE(e);
  CHECK(e->code == ErrorCode::kInvalidArguments);
  CHECK(e->message.find("arguments.resources.nodes") != std::string::npos);
  auto e2 = r.validate_arguments(t, json{{"resources", json::object()}, {"tags", {"a", 3}}});
  REQUIRE(e2);
  CHECK(e2->message.find("arguments.tags[1]") != std::string::npos);
  auto e3 = r.validate_arguments(t, json::object());
  REQUIRE(e3);
  CHECK(e3->message.find("resources") != std::string::npos);
}

TEST_CASE("registry: a pattern never runs on a string longer than its maxLength") {
  ToolRegistry r;
  // std::regex recurses per character: "[0-9]+" over a long digit run overflowed the stack.
  CHECK_THROWS_AS(r.add(std::make_unique<Fake>("unbounded", json::parse(R"({
    "type":"object","properties":{"memory":{"type":"string","pattern":"^[0-9]+G$"}}})"))),
                  std::invalid_argument);
  CHECK_THROWS_AS(r.add(std::make_unique<Fake>("keys", json::parse(R"({
    "type":"object","patternProperties":{"^x":{"type":"string"}}})"))),
                  std::invalid_argument);
  r.add(std::make_unique<Fake>("job", json::parse(R"({
    "type":"object",
    "properties":{"memory":{"type":"string","maxLength":32,"pattern":"^[0-9]+G$"},
                  "pattern":{"type":"string"}}})")));
  const Tool& t = *r.find("job");
  CHECK_FALSE(r.validate_arguments(t, json{{"memory", "64G"}}));
  CHECK_FALSE(r.validate_arguments(t, json{{"pattern", std::string(100000, '9')}}));  // a property, not the keyword
  auto bad = r.validate_arguments(t, json{{"memory", "64 gigs"}});
  REQUIRE(bad);
  CHECK(bad->message.find("arguments.memory") != std::string::npos);
  CHECK(bad->message.find("pattern") != std::string::npos);
  // A million digits: refused by maxLength, and the pattern is never tried (this crashed before).
  auto huge = r.validate_arguments(t, json{{"memory", std::string(1000000, '1') + "G"}});
  REQUIRE(huge);
  CHECK(huge->message.find("arguments.memory") != std::string::npos);
  CHECK(huge->message.find("length") != std::string::npos);
  // The schema clients see is the one the tool declared.
  CHECK(ToolRegistry::to_wire(t.descriptor())["inputSchema"]["properties"]["memory"]["pattern"] == "^[0-9]+G$");
}

TEST_CASE("registry: the built-in list depends on config") {
  Config c;
  CHECK(tools::make_registry(c).tools().size() == 1);
  c.demo_tools = true;
  auto r = tools::make_registry(c);
  CHECK(r.tools().size() == 3);
  for (auto* t : r.tools()) {
    auto wire = ToolRegistry::to_wire(t->descriptor());
    CHECK(wire["description"].get<std::string>().size() < 2048);
    CHECK(wire["inputSchema"]["type"] == "object");
    CHECK(wire.contains("annotations"));
  }
}
