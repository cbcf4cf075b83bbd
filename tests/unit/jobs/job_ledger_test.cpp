// The job ledger against a scripted scheduler: transitions, one poll for all jobs, restart.
#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <filesystem>
#include <thread>

#include "tests/support/eventually.hpp"
#include "connectors/scheduler/job_ledger.hpp"
#include "server/state/database.hpp"

using namespace scigate;
using namespace scigate::jobs;
namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace {

// What the test says the scheduler knows; poll() answers from it and counts its calls.
struct Script {
  std::mutex m;
  std::map<std::string, JobStatus> known, finals;
  int polls = 0;
  std::size_t largest_poll = 0;
  int submitted = 0;
};

class ScriptedScheduler final : public Scheduler {
 public:
  explicit ScriptedScheduler(std::shared_ptr<Script> s) : s_(std::move(s)) {}
  std::string kind() const override { return "scripted"; }
  asio::awaitable<std::string> submit(JobSpec spec) override {
    std::lock_guard g(s_->m);
    std::string id = std::to_string(100 + s_->submitted++);
    JobStatus st;
    st.native_id = id;
    st.state = JobState::kQueued;
    st.native_state = "PENDING";
    s_->known[id] = st;
    co_return id;
  }
  asio::awaitable<std::vector<JobStatus>> poll(std::vector<std::string> ids) override {
    std::lock_guard g(s_->m);
    ++s_->polls;
    s_->largest_poll = std::max(s_->largest_poll, ids.size());
    std::vector<JobStatus> out;
    for (const auto& id : ids)
      if (auto it = s_->known.find(id); it != s_->known.end()) out.push_back(it->second);
    co_return out;
  }
  asio::awaitable<void> cancel(std::string id) override { co_return; }
  asio::awaitable<std::optional<JobStatus>> final_status(std::string id) override {
    std::lock_guard g(s_->m);
    if (auto it = s_->finals.find(id); it != s_->finals.end()) co_return it->second;
    co_return std::nullopt;
  }

 private:
  std::shared_ptr<Script> s_;
};

struct Fixture {
  fs::path dir;
  Config config;
  UnmeteredLedger ledger;
  std::shared_ptr<Script> script = std::make_shared<Script>();
  Fixture() {
    char tmpl[] = "/tmp/scigate-jobledger-XXXXXX";
    dir = ::mkdtemp(tmpl);
    config = parse_config("[[sites]]\nid = \"s\"\nscheduler = \"slurm\"\npoll_interval_ms = 10\n", dir, "t.toml");
    state::Database db(dir / "db");
    db.migrate(state::schema_migrations());
  }
  ~Fixture() { fs::remove_all(dir); }
  std::unique_ptr<JobService> service() {
    auto s = script;
    return std::make_unique<JobService>(config, dir / "db", ledger,
                                        [s](const SiteConfig&) { return std::make_unique<ScriptedScheduler>(s); });
  }
};

struct Running {
  asio::io_context io;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work{io.get_executor()};
  std::thread thread;
  JobService& svc;
  explicit Running(JobService& s) : svc(s) {
    svc.start(io);
    thread = std::thread([this] { io.run(); });
  }
  // As the server does (App::drain_writers): the service's database thread may still post a
  // poller's completion to `io`; it must do so before `io` is destroyed (ASan saw one land in
  // a dead io_context).
  ~Running() {
    work.reset();
    io.stop();
    thread.join();
    svc.stop();
  }
};

using scigate::test::eventually;

JobRecord submit(Running& r, JobService& svc, const std::string& name) {
  SubmitRequest req;
  req.spec.name = name;
  req.spec.script = "true";
  req.spec.project = "p";
  req.spec.principal = "alice";
  auto fut = asio::co_spawn(r.io, svc.submit(std::move(req)), asio::use_future);
  auto v = fut.get();
  REQUIRE(std::holds_alternative<JobRecord>(v));
  return std::get<JobRecord>(v);
}

}  // namespace

TEST_CASE("job ledger: transitions are recorded, one poll covers every job, final state from final_status") {
  Fixture f;
  std::string id_a, id_b;
  {
    auto svc = f.service();
    Running r(*svc);
    auto a = submit(r, *svc, "a");
    auto b = submit(r, *svc, "b");
    auto c = submit(r, *svc, "c");
    id_a = a.id;
    id_b = b.id;
    CHECK(a.state == JobState::kQueued);
    CHECK(a.id.size() == 14);
    CHECK(a.id.rfind("j-", 0) == 0);
    CHECK(svc->get("p", a.id));
    CHECK_FALSE(svc->get("other", a.id));  // another project does not see it

    {
      std::lock_guard g(f.script->m);
      f.script->known[a.native_id].state = JobState::kActive;
      f.script->known[a.native_id].native_state = "RUNNING";
      f.script->known[a.native_id].start_ms = 1000;
    }
    CHECK(eventually([&] { return svc->get("p", a.id)->state == JobState::kActive; }));
    {
      // a leaves the scheduler; its end comes from final_status (sacct, the exit file).
      std::lock_guard g(f.script->m);
      f.script->known.erase(a.native_id);
      JobStatus fin;
      fin.native_id = a.native_id;
      fin.state = JobState::kCompleted;
      fin.native_state = "COMPLETED";
      fin.exit_code = 0;
      fin.start_ms = 1000;
      fin.end_ms = 2000;
      f.script->finals[a.native_id] = fin;
      f.script->known[b.native_id].state = JobState::kFailed;
      f.script->known[b.native_id].native_state = "OUT_OF_MEMORY";
      f.script->known[b.native_id].exit_code = 137;
    }
    CHECK(eventually([&] { return svc->get("p", a.id)->state == JobState::kCompleted; }));
    CHECK(eventually([&] { return svc->get("p", b.id)->state == JobState::kFailed; }));
    auto ra = *svc->get("p", a.id);
    CHECK(ra.exit_code == 0);
    REQUIRE(ra.events.size() == 4);
    CHECK(ra.events[0].state == JobState::kNew);
    CHECK(ra.events[1].state == JobState::kQueued);
    CHECK(ra.events[2].state == JobState::kActive);
    CHECK(ra.events[3].state == JobState::kCompleted);
    CHECK(eventually([&] { return svc->get("p", a.id)->settled; }));
    CHECK(svc->get("p", b.id)->native_state == "OUT_OF_MEMORY");
    {
      std::lock_guard g(f.script->m);
      CHECK(f.script->largest_poll == 3);  // all active jobs in one poll()
    }
    bool more = false;
    ListFilter lf;
    lf.limit = 2;
    auto page = svc->list("p", lf, &more);
    CHECK(page.size() == 2);
    CHECK(more);
    lf.before = std::make_pair(page.back().created_ms, page.back().id);
    auto rest = svc->list("p", lf, &more);
    REQUIRE(rest.size() == 1);
    CHECK_FALSE(more);
    CHECK(rest[0].id != page[0].id);
    CHECK(rest[0].id != page[1].id);
    lf.before.reset();
    lf.state = JobState::kQueued;
    lf.limit = 50;
    auto queued = svc->list("p", lf, &more);
    REQUIRE(queued.size() == 1);
    CHECK(queued[0].id == c.id);
  }
  // Restart: the table is read again; final jobs stay final, the queued one is tracked again.
  {
    auto svc = f.service();
    Running r(*svc);
    auto ra = svc->get("p", id_a);
    REQUIRE(ra);
    CHECK(ra->state == JobState::kCompleted);
    CHECK(ra->events.size() == 4);
    CHECK(svc->get("p", id_b)->state == JobState::kFailed);
    int before;
    {
      std::lock_guard g(f.script->m);
      before = f.script->polls;
    }
    CHECK(eventually([&] {
      std::lock_guard g(f.script->m);
      return f.script->polls > before;
    }));
  }
}
