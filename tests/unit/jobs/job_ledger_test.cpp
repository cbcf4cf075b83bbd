// The job ledger against a scripted scheduler: transitions, one poll for all jobs, restart.
#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_future.hpp>

#include <filesystem>
#include <thread>

#include "tests/support/eventually.hpp"
#include "connectors/scheduler/job_ledger.hpp"
#include "server/common/time_format.hpp"
#include "server/state/database.hpp"

using namespace scigate;
using namespace scigate::jobs;
namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace {

// What the test says the scheduler knows; poll() answers from it and counts its calls.
struct Script {
  std::mutex m;
  std::map<std::string, JobStatus> known;
  std::map<std::string, std::vector<JobStatus>> finals;  // what sacct -c has under an id, oldest first
  int polls = 0;
  std::size_t largest_poll = 0;
  int submitted = 0;
  std::chrono::milliseconds submit_delay{0};  // sbatch taking its time (the wait is cancellable)
  // An answer lost on the way back: the job is taken (kept in `known`) but submit() throws
  // "unavailable", as sbatch does on "Socket timed out" after slurmctld queued the job.
  bool lose_submit_answer = false;
  bool drop_submit = false;   // submit()'s answer is lost and the scheduler never got the job
  bool controller_down = false;  // submit() never reaches the scheduler
  bool lookup_fails = false;  // find_submitted() cannot reach the scheduler
  int lookups = 0;
  std::size_t largest_lookup = 0;  // most jobs asked for in one find_submitted()
};

class ScriptedScheduler final : public Scheduler {
 public:
  explicit ScriptedScheduler(std::shared_ptr<Script> s) : s_(std::move(s)) {}
  std::string kind() const override { return "scripted"; }
  asio::awaitable<std::string> submit(JobSpec spec) override {
    if (s_->drop_submit)  // sent, answer lost, and slurmctld never queued it
      throw SubmitOutcomeUnknown(Error{ErrorCode::kBackendUnavailable, "the Slurm site is unavailable: Socket timed out", {}, {}});
    if (s_->controller_down)  // never reached: nothing to look for
      throw ErrorException(Error{ErrorCode::kBackendUnavailable, "the Slurm site is unavailable: Connection refused", {}, {}});
    if (s_->submit_delay.count() > 0) {
      asio::steady_timer t(co_await asio::this_coro::executor, s_->submit_delay);
      co_await t.async_wait(asio::use_awaitable);
    }
    std::lock_guard g(s_->m);
    std::string id = std::to_string(100 + s_->submitted++);
    JobStatus st;
    st.native_id = id;
    st.state = JobState::kQueued;
    st.native_state = "PENDING";
    st.comment = spec.gateway_id;
    s_->known[id] = st;
    if (s_->lose_submit_answer)
      throw SubmitOutcomeUnknown(Error{ErrorCode::kBackendUnavailable, "the Slurm site is unavailable: sbatch: Socket timed out", {}, {}});
    co_return id;
  }
  asio::awaitable<std::map<std::string, std::string>> find_submitted(std::vector<Submitted> jobs) override {
    std::lock_guard g(s_->m);
    ++s_->lookups;
    s_->largest_lookup = std::max(s_->largest_lookup, jobs.size());
    if (s_->lookup_fails) throw ErrorException(Error{ErrorCode::kBackendUnavailable, "squeue: Socket timed out", {}, {}});
    std::map<std::string, std::string> found;
    for (const auto& j : jobs)
      for (const auto& [id, st] : s_->known)
        if (st.comment == j.gateway_id) found[j.gateway_id] = id;
    co_return found;
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
  asio::awaitable<std::vector<JobStatus>> final_status(std::string id) override {
    std::lock_guard g(s_->m);
    if (auto it = s_->finals.find(id); it != s_->finals.end()) co_return it->second;
    co_return std::vector<JobStatus>{};
  }

 private:
  std::shared_ptr<Script> s_;
};

// Holds for every job and keeps what each settlement charged for.
class RecordingLedger final : public Ledger {
 public:
  asio::awaitable<ReserveResult> reserve(HoldRequest request) override {
    ReserveResult r;
    r.hold.id = "h" + std::to_string(++holds);
    r.hold.amount = 1'000'000'000;
    r.hold.project = request.project;
    co_return r;
  }
  asio::awaitable<MicroCredits> settle(Hold, Usage actual, nlohmann::json) override {
    std::lock_guard g(m);
    settled.push_back(std::move(actual));
    co_return 1;
  }
  asio::awaitable<void> release(Hold) override {
    std::lock_guard g(m);
    ++released;
    co_return;
  }
  asio::awaitable<bool> extend(Hold h, std::chrono::seconds timeout) override {
    std::lock_guard g(m);
    extended.emplace_back(h.id, timeout);
    co_return !voided.count(h.id);
  }
  std::mutex m;
  std::vector<Usage> settled;
  std::vector<std::pair<std::string, std::chrono::seconds>> extended;
  std::set<std::string> voided;  // holds the sweeper took: extend() answers false
  int holds = 0, released = 0;
};

template <class L>
struct BasicFixture {
  fs::path dir;
  Config config;
  L ledger;
  std::shared_ptr<Script> script = std::make_shared<Script>();
  BasicFixture() {
    char tmpl[] = "/tmp/scigate-jobledger-XXXXXX";
    dir = ::mkdtemp(tmpl);
    config = parse_config("[[sites]]\nid = \"s\"\nscheduler = \"slurm\"\npoll_interval_ms = 10\n", dir, "t.toml");
    state::Database db(dir / "db");
    db.migrate(state::schema_migrations());
  }
  ~BasicFixture() { fs::remove_all(dir); }
  std::unique_ptr<JobService> service() {
    auto s = script;
    return std::make_unique<JobService>(config, dir / "db", ledger,
                                        [s](const SiteConfig&) { return std::make_unique<ScriptedScheduler>(s); });
  }
};

using Fixture = BasicFixture<UnmeteredLedger>;

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

int poll_count(Script& s) {
  std::lock_guard g(s.m);
  return s.polls;
}

SubmitRequest plain_request(const std::string& name) {
  SubmitRequest req;
  req.spec.name = name;
  req.spec.script = "true";
  req.spec.project = "p";
  req.spec.principal = "alice";
  return req;
}

JobRecord submit(Running& r, JobService& svc, const std::string& name) {
  SubmitRequest req = plain_request(name);
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
      f.script->finals[a.native_id] = {fin};
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

TEST_CASE("job ledger: a job is charged for what the scheduler allocated, kept across a restart") {
  BasicFixture<RecordingLedger> f;
  std::string id;
  {
    auto svc = f.service();
    Running r(*svc);
    SubmitRequest req = plain_request("gpu");
    req.spec.resources.tasks = 2;
    req.spec.resources.gpus = 1;  // of any type
    auto v = asio::co_spawn(r.io, svc->submit(std::move(req)), asio::use_future).get();
    REQUIRE(std::holds_alternative<JobRecord>(v));
    auto job = std::get<JobRecord>(v);
    id = job.id;
    {
      // Running on a whole node: 64 CPUs and an A100.
      std::lock_guard g(f.script->m);
      auto& st = f.script->known[job.native_id];
      st.state = JobState::kActive;
      st.native_state = "RUNNING";
      st.start_ms = 1'000;
      st.alloc_nodes = 1;
      st.alloc_cpus = 64;
      st.alloc_gpus = 1;
      st.gpu_type = "a100";
    }
    REQUIRE(eventually([&] { return svc->get("p", id)->alloc_cpus == 64; }));
    CHECK(svc->get("p", id)->alloc_gpu_type == "a100");
    {
      // sacct at the end reports CPUs but no GPUs: what squeue saw is kept.
      std::lock_guard g(f.script->m);
      auto& st = f.script->known[job.native_id];
      st.state = JobState::kCompleted;
      st.native_state = "COMPLETED";
      st.end_ms = 1'000 + 1'800'000;  // half an hour
      st.alloc_gpus = 0;
      st.gpu_type.clear();
    }
    REQUIRE(eventually([&] { return svc->get("p", id)->settled; }));
    std::lock_guard g(f.ledger.m);
    REQUIRE(f.ledger.settled.size() == 1);
    std::map<std::string, double> used;
    for (const auto& line : f.ledger.settled[0].lines) used[line.resource] += line.quantity;
    CHECK(used["cpu_core_hour"] == Approx(32.0));   // 64 CPUs x 0.5 h, not the 2 asked for
    CHECK(used["gpu_hour:a100"] == Approx(0.5));    // the type it got
    CHECK(used.count("gpu_hour") == 0);
  }
  auto svc = f.service();
  Running r(*svc);
  auto again = svc->get("p", id);
  REQUIRE(again);
  CHECK(again->alloc_cpus == 64);
  CHECK(again->alloc_gpus == 1);
  CHECK(again->alloc_gpu_type == "a100");
}

TEST_CASE("job ledger: a job waiting in the queue keeps its hold, extended once a day and after a restart") {
  BasicFixture<RecordingLedger> f;
  std::string hold;
  {
    auto svc = f.service();
    Running r(*svc);
    SubmitRequest req = plain_request("queued");
    req.spec.resources.walltime = std::chrono::hours(2);
    auto v = asio::co_spawn(r.io, svc->submit(std::move(req)), asio::use_future).get();
    REQUIRE(std::holds_alternative<JobRecord>(v));
    hold = std::get<JobRecord>(v).hold_id;
    const int polls = poll_count(*f.script);
    REQUIRE(eventually([&] { return poll_count(*f.script) >= polls + 5; }));
    std::lock_guard g(f.ledger.m);
    CHECK(f.ledger.extended.empty());  // just made with its whole timeout
  }
  // A restart cannot know when the last process extended it: at once, then not again today.
  {
    auto svc = f.service();
    Running r(*svc);
    REQUIRE(eventually([&] {
      std::lock_guard g(f.ledger.m);
      return !f.ledger.extended.empty();
    }));
    const int polls = poll_count(*f.script);
    REQUIRE(eventually([&] { return poll_count(*f.script) >= polls + 5; }));
    std::lock_guard g(f.ledger.m);
    REQUIRE(f.ledger.extended.size() == 1);
    CHECK(f.ledger.extended[0].first == hold);
    CHECK(f.ledger.extended[0].second == std::chrono::hours(2 + 24 * 14));  // walltime + queue time
    f.ledger.extended.clear();
  }
  // The job ends and is settled; a later restart finds it final and leaves its hold alone.
  {
    std::lock_guard g(f.script->m);
    for (auto& [id, st] : f.script->known) {
      st.state = JobState::kCompleted;
      st.native_state = "COMPLETED";
      st.start_ms = 1'000;
      st.end_ms = 2'000;
    }
  }
  {
    auto svc = f.service();
    Running r(*svc);
    REQUIRE(eventually([&] {
      std::lock_guard g(f.ledger.m);
      return !f.ledger.settled.empty();
    }));
  }
  {
    std::lock_guard g(f.ledger.m);
    f.ledger.extended.clear();
  }
  auto svc = f.service();
  Running r(*svc);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // 20 poll intervals
  std::lock_guard g(f.ledger.m);
  CHECK(f.ledger.extended.empty());
}

TEST_CASE("job ledger: a caller that gives up during the submit still gets its job tracked and held") {
  BasicFixture<RecordingLedger> f;
  f.script->submit_delay = std::chrono::milliseconds(300);
  auto svc = f.service();
  Running r(*svc);
  SubmitRequest req = plain_request("slow-sbatch");
  // The client cancels (or the call's deadline passes) while sbatch runs: the scheduler may
  // have taken the job, so the submission must finish and be recorded, not be called refused.
  asio::cancellation_signal cancel;
  auto fut = asio::co_spawn(r.io, svc->submit(std::move(req)), asio::bind_cancellation_slot(cancel.slot(), asio::use_future));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  asio::post(r.io, [&] { cancel.emit(asio::cancellation_type::terminal); });
  auto v = fut.get();
  REQUIRE(std::holds_alternative<JobRecord>(v));
  const auto& job = std::get<JobRecord>(v);
  CHECK(job.state == JobState::kQueued);
  CHECK_FALSE(job.native_id.empty());
  CHECK_FALSE(job.hold_id.empty());  // still held: the job is charged when it ends
  bool more = false;
  auto listed = svc->list("p", ListFilter{}, &more);
  REQUIRE(listed.size() == 1);
  CHECK(listed[0].native_id == job.native_id);
  std::lock_guard g(f.ledger.m);
  CHECK(f.ledger.settled.empty());
  CHECK(f.ledger.released == 0);
}

TEST_CASE("job ledger: a submit whose answer was lost is found by its comment, not called refused") {
  BasicFixture<RecordingLedger> f;
  f.script->lose_submit_answer = true;
  auto svc = f.service();
  Running r(*svc);
  auto v = asio::co_spawn(r.io, svc->submit(plain_request("taken")), asio::use_future).get();
  REQUIRE(std::holds_alternative<JobRecord>(v));
  auto job = std::get<JobRecord>(v);
  CHECK(job.state == JobState::kQueued);
  CHECK(job.native_id == "100");
  {
    std::lock_guard g(f.ledger.m);
    CHECK(f.ledger.released == 0);  // its hold stays: the job will run and be charged
  }
  // Not found right away is not proof (slurmctld may still be working on it): unconfirmed,
  // held, left to the poller.
  f.script->lose_submit_answer = false;
  f.script->drop_submit = true;
  int lookups_before = f.script->lookups;
  auto w = asio::co_spawn(r.io, svc->submit(plain_request("dropped")), asio::use_future).get();
  REQUIRE(std::holds_alternative<Error>(w));
  CHECK(std::get<Error>(w).message.find("did not confirm") != std::string::npos);
  CHECK(f.script->lookups == lookups_before + 1);
  {
    std::lock_guard g(f.ledger.m);
    CHECK(f.ledger.released == 0);
  }
  // A controller that was never reached took nothing: refused at once, no lookup.
  f.script->drop_submit = false;
  f.script->controller_down = true;
  auto down = asio::co_spawn(r.io, svc->submit(plain_request("down")), asio::use_future).get();
  REQUIRE(std::holds_alternative<Error>(down));
  CHECK(std::get<Error>(down).message.find("Connection refused") != std::string::npos);
  CHECK(f.script->lookups == lookups_before + 1);
  {
    std::lock_guard g(f.ledger.m);
    CHECK(f.ledger.released == 1);
  }
  // A changed comment alone (the owner's scontrol, a site plugin) does not stop tracking...
  {
    std::lock_guard g(f.script->m);
    f.script->known["100"].comment = "changed-by-the-job";
    f.script->known["100"].state = JobState::kActive;
    f.script->known["100"].native_state = "RUNNING";
    f.script->known["100"].start_ms = unix_now_ms();
  }
  REQUIRE(eventually([&] { return svc->get("p", job.id)->state == JobState::kActive; }));
  // ...but a job submitted well after ours under our numeric id is another job: ours is lost.
  {
    std::lock_guard g(f.script->m);
    f.script->known["100"].comment = "j-000000000000";
    f.script->known["100"].submit_ms = unix_now_ms() + 120'000;
  }
  REQUIRE(eventually([&] { return svc->get("p", job.id)->state == JobState::kFailed; }));
  CHECK(svc->get("p", job.id)->native_state == "lost");
  CHECK(svc->get("p", job.id)->reason.find("is now another job") != std::string::npos);
}

TEST_CASE("job ledger: a submit that cannot be confirmed stays NEW, and the poller adopts or fails it later") {
  BasicFixture<RecordingLedger> f;
  f.script->lose_submit_answer = true;
  f.script->lookup_fails = true;
  std::string taken_id, dropped_id;
  {
    auto svc = f.service();
    Running r(*svc);
    // Sent, answer lost, never queued: also unconfirmed, and the poller finds it missing.
    f.script->drop_submit = true;
    auto d = asio::co_spawn(r.io, svc->submit(plain_request("never")), asio::use_future).get();
    REQUIRE(std::holds_alternative<Error>(d));
    f.script->drop_submit = false;
    auto v = asio::co_spawn(r.io, svc->submit(plain_request("unsure")), asio::use_future).get();
    REQUIRE(std::holds_alternative<Error>(v));
    const auto& e = std::get<Error>(v);
    CHECK(e.code == ErrorCode::kBackendUnavailable);
    CHECK(e.message.find("did not confirm job") != std::string::npos);
    CHECK(e.hint.find("do not submit again yet") != std::string::npos);
    bool more = false;
    auto listed = svc->list("p", ListFilter{}, &more);
    REQUIRE(listed.size() == 2);
    for (const auto& j : listed) {
      (j.name == "unsure" ? taken_id : dropped_id) = j.id;
      CHECK(j.state == JobState::kNew);  // neither refused nor released
    }
    CHECK(f.script->lookups == 6);  // asked three times each before answering
    std::lock_guard g(f.ledger.m);
    CHECK(f.ledger.released == 0);
  }
  // Later (a restart here), the scheduler answers again: the job it has is adopted; the one it
  // does not have is lost once it has been missing long enough (10 minutes), charged nothing.
  {
    state::Database db(f.dir / "db");
    db.exec("UPDATE jobs SET created_ms = created_ms - 120000 WHERE name = 'unsure'");
    db.exec("UPDATE jobs SET created_ms = created_ms - 700000 WHERE name = 'never'");
  }
  f.script->lookup_fails = false;
  int lookups_before = f.script->lookups;
  auto svc = f.service();
  Running r(*svc);
  REQUIRE(eventually([&] { return svc->get("p", taken_id)->state == JobState::kQueued; }));
  {
    std::lock_guard g(f.script->m);
    CHECK(f.script->lookups == lookups_before + 1);  // both asked for in one query
    CHECK(f.script->largest_lookup == 2);
  }
  CHECK(svc->get("p", taken_id)->native_id == "100");
  REQUIRE(eventually([&] { return svc->get("p", dropped_id)->settled; }));
  auto dropped = *svc->get("p", dropped_id);
  CHECK(dropped.state == JobState::kFailed);
  CHECK(dropped.native_state == "lost");
  std::lock_guard g(f.ledger.m);
  REQUIRE_FALSE(f.ledger.settled.empty());
  CHECK(f.ledger.settled.back().lines.empty());  // never ran: nothing charged
}

// Slurm's completion log (sacct -c) keeps every job that ever had a native id: after slurmctld
// loses its state and counts from 1 again, the id of a job of ours may also name older and
// later jobs. The record that is ours is taken, and only ours; sacct -c reports a name and
// start/end times, no comment and no submit time.
TEST_CASE("job ledger: of the final records under a reused native id, the job's own is taken") {
  BasicFixture<RecordingLedger> f;
  auto svc = f.service();
  Running r(*svc);
  auto seen = submit(r, *svc, "seen");          // native 100: seen running, then gone
  auto same = submit(r, *svc, "same");          // 101: never seen running
  auto taken = submit(r, *svc, "taken");        // 102
  auto restarted = submit(r, *svc, "restarted");  // 103: seen running, only a later run logged
  auto unlogged = submit(r, *svc, "unlogged");  // 104: only an older job's end is logged
  auto requeued = submit(r, *svc, "requeued");  // 105: seen running, run again by an administrator
  const int64_t now = unix_now_ms();
  const int64_t ran = (now / 1000 - 30) * 1000;  // whole seconds, as Slurm prints them
  {
    std::lock_guard g(f.script->m);
    for (const char* id : {"100", "103", "105"}) {
      f.script->known[id].state = JobState::kActive;
      f.script->known[id].native_state = "RUNNING";
      f.script->known[id].start_ms = ran;
    }
  }
  REQUIRE(eventually([&] { return svc->get("p", seen.id)->state == JobState::kActive &&
                                  svc->get("p", restarted.id)->state == JobState::kActive &&
                                  svc->get("p", requeued.id)->state == JobState::kActive; }));
  auto record = [](const std::string& native, const std::string& name, int64_t start_ms, int exit_code) {
    JobStatus s;
    s.native_id = native;
    s.name = name;
    s.state = exit_code == 0 ? JobState::kCompleted : JobState::kFailed;
    s.native_state = exit_code == 0 ? "COMPLETED" : "FAILED";
    s.exit_code = exit_code;
    s.start_ms = start_ms;
    s.end_ms = start_ms + 2000;
    return s;
  };
  const int64_t before = now - 86'400'000;  // a day before ours: an older job with the id
  const int64_t later = now + 3'600'000;    // an hour after: a job that took the id after a loss
  {
    std::lock_guard g(f.script->m);
    f.script->known.clear();  // all of them left slurmctld (purged, or its state was lost)
    // The one that started when ours was seen running is ours, between an older and a later
    // job, even renamed since (scontrol update JobName).
    f.script->finals["100"] = {record("100", "old", before, 0), record("100", "renamed", ran, 3),
                               record("100", "seen", later, 0)};
    // Never seen running: the first of our name after ours was submitted.
    f.script->finals["101"] = {record("101", "same", before, 9), record("101", "same", now + 1000, 4),
                               record("101", "same", later, 0)};
    // Only a job of another name ended under the id since: ours was lost with slurmctld's state.
    f.script->finals["102"] = {record("102", "other", later, 0)};
    // Ours was seen running at `ran`; a run of our name that started later is another job.
    f.script->finals["103"] = {record("103", "restarted", later, 0)};
    // An older job's end alone says nothing about ours: lost only after five rounds without one.
    f.script->finals["104"] = {record("104", "unlogged", before, 0)};
    // slurmctld's own record carries the comment: ours, though it started again later.
    f.script->finals["105"] = {record("105", "requeued", later, 0)};
    f.script->finals["105"][0].comment = requeued.id;
  }
  REQUIRE(eventually([&] {
    for (const auto* j : {&seen, &same, &taken, &restarted, &unlogged, &requeued})
      if (!svc->get("p", j->id)->settled) return false;
    return true;
  }));
  auto a = *svc->get("p", seen.id);
  CHECK(a.state == JobState::kFailed);
  CHECK(a.exit_code == 3);
  auto b = *svc->get("p", same.id);
  CHECK(b.state == JobState::kFailed);
  CHECK(b.exit_code == 4);
  auto c = *svc->get("p", taken.id);
  CHECK(c.native_state == "lost");
  CHECK(c.reason.find("is now another job (name \"other\")") != std::string::npos);
  CHECK_FALSE(c.exit_code);
  auto d = *svc->get("p", restarted.id);
  CHECK(d.native_state == "lost");
  CHECK(d.reason.find("is now another job (started at another time)") != std::string::npos);
  auto e = *svc->get("p", unlogged.id);
  CHECK(e.native_state == "lost");
  CHECK(e.reason.find("no record of its end") != std::string::npos);
  CHECK_FALSE(e.exit_code);
  auto g = *svc->get("p", requeued.id);
  CHECK(g.state == JobState::kCompleted);
  CHECK(g.exit_code == 0);
}

// A job's state only moves forward: a word the connector does not know (reported as NEW) or a
// QUEUED after ACTIVE keeps what was known, with the scheduler's own word recorded.
TEST_CASE("job ledger: an unknown native state or a QUEUED after ACTIVE does not move a job back") {
  Fixture f;
  auto svc = f.service();
  Running r(*svc);
  auto job = submit(r, *svc, "forward");
  REQUIRE(job.state == JobState::kQueued);
  auto report = [&](JobState st, const std::string& native) {
    std::lock_guard g(f.script->m);
    f.script->known[job.native_id].state = st;
    f.script->known[job.native_id].native_state = native;
    if (st == JobState::kActive) f.script->known[job.native_id].start_ms = unix_now_ms();
  };
  report(JobState::kNew, "PENDING_SOMETHING_NEW");
  REQUIRE(eventually([&] { return svc->get("p", job.id)->native_state == "PENDING_SOMETHING_NEW"; }));
  CHECK(svc->get("p", job.id)->state == JobState::kQueued);
  report(JobState::kActive, "RUNNING");
  REQUIRE(eventually([&] { return svc->get("p", job.id)->state == JobState::kActive; }));
  report(JobState::kQueued, "REQUEUED");
  REQUIRE(eventually([&] { return svc->get("p", job.id)->native_state == "REQUEUED"; }));
  CHECK(svc->get("p", job.id)->state == JobState::kActive);
  report(JobState::kNew, "RUNNING_SOMEHOW");
  REQUIRE(eventually([&] { return svc->get("p", job.id)->native_state == "RUNNING_SOMEHOW"; }));
  CHECK(svc->get("p", job.id)->state == JobState::kActive);
  auto events = svc->get("p", job.id)->events;
  REQUIRE(events.size() == 3);  // NEW, QUEUED, ACTIVE: nothing backwards
  CHECK(events[2].state == JobState::kActive);
}
