#include <catch2/catch.hpp>

#include <boost/asio/thread_pool.hpp>

#include <chrono>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>

#include "server/common/thread_name.hpp"

namespace {

// The names of this process's threads, as top -H and perf read them.
std::multiset<std::string> thread_names() {
  std::multiset<std::string> out;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream in(task.path() / "comm");
    std::string name;
    std::getline(in, name);
    out.insert(name);
  }
  return out;
}

}  // namespace

TEST_CASE("thread names: each thread of a pool gets its own name, and long names are cut to 15 characters") {
  boost::asio::thread_pool pool(3);
  scigate::name_pool_threads(pool, 3, "t-pool");
  auto names = thread_names();
  CHECK(names.count("t-pool-1") == 1);
  CHECK(names.count("t-pool-2") == 1);
  CHECK(names.count("t-pool-3") == 1);

  boost::asio::thread_pool one(1);
  scigate::name_pool_threads(one, 1, "t-single");  // one thread: no number
  CHECK(thread_names().count("t-single") == 1);

  std::string seen;
  std::thread u([&] {
    scigate::name_this_thread("sg-a-name-longer-than-fifteen");
    char buf[32] = {0};
    pthread_getname_np(pthread_self(), buf, sizeof buf);
    seen = buf;
  });
  u.join();
  CHECK(seen == "sg-a-name-longe");

  // A pool said to have more threads than it has: named as far as it goes, within a second.
  boost::asio::thread_pool two(2);
  auto t0 = std::chrono::steady_clock::now();
  scigate::name_pool_threads(two, 3, "t-short");
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3));
  std::size_t short_named = 0;
  for (const auto& n : thread_names()) short_named += n.rfind("t-short-", 0) == 0;
  CHECK(short_named == 2);
  pool.join();
  one.join();
  two.join();
}
