// backupdb/src/read_batch.h: lookups that arrive together share one fetch, each gets its own answer
// (found, absent, or the fetch's error), and a lone lookup never waits for company.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "read_batch.h"

using namespace keyline::backupdb;

namespace {

RecordPtr record(const std::string& chip) {
  auto r = std::make_shared<StoredRecord>();
  r->chip_id = chip;
  return r;
}

}  // namespace

TEST_CASE("read batch: a lone lookup is fetched at once, absent keys are nullptr") {
  std::vector<std::vector<std::string>> fetched;
  ReadBatcher b(1, 32, [&](const std::vector<std::string>& keys) {
    fetched.push_back(keys);
    std::unordered_map<std::string, RecordPtr> out;
    for (const auto& k : keys)
      if (k != "absent") out.emplace(k, record(k));
    return out;
  });
  REQUIRE(b.get("A").get() != nullptr);
  CHECK(b.get("A")->chip_id == "A");
  CHECK(b.get("absent").get() == nullptr);
  CHECK(fetched.size() == 3);
  CHECK(b.stats().batches == 3);
}

TEST_CASE("read batch: lookups waiting while a batch is out go together, each gets its own record") {
  std::mutex m;
  std::condition_variable cv;
  bool release = false;
  std::atomic<int> calls{0};
  std::vector<std::size_t> sizes;
  ReadBatcher b(1, 32, [&](const std::vector<std::string>& keys) {
    std::unique_lock<std::mutex> g(m);
    sizes.push_back(keys.size());
    if (calls++ == 0) cv.wait(g, [&] { return release; });  // the first batch holds the one slot
    std::unordered_map<std::string, RecordPtr> out;
    for (const auto& k : keys) out.emplace(k, record(k));
    return out;
  });
  std::thread first([&] { CHECK(b.get("first")->chip_id == "first"); });
  while (calls == 0) std::this_thread::yield();
  std::vector<std::thread> rest;
  std::atomic<int> wrong{0};
  for (int i = 0; i < 10; ++i)
    rest.emplace_back([&, i] {
      const std::string key = i == 9 ? "K0" : "K" + std::to_string(i);  // K0 asked twice
      if (b.get(key)->chip_id != key) ++wrong;
    });
  while (b.stats().lookups < 1) std::this_thread::yield();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the ten queue behind the slot
  {
    std::lock_guard<std::mutex> g(m);
    release = true;
  }
  cv.notify_all();
  first.join();
  for (auto& t : rest) t.join();
  CHECK(wrong == 0);
  CHECK(b.stats().lookups == 11);
  REQUIRE(sizes.size() == 2);  // the lone first, then the ten as one batch
  CHECK(sizes[1] == 9);        // K0 once
}

TEST_CASE("read batch: a failed fetch fails every lookup of its batch, and the next batch runs") {
  std::atomic<bool> fail{true};
  ReadBatcher b(2, 4, [&](const std::vector<std::string>& keys) {
    if (fail) throw std::runtime_error("database gone");
    std::unordered_map<std::string, RecordPtr> out;
    for (const auto& k : keys) out.emplace(k, record(k));
    return out;
  });
  CHECK_THROWS_AS(b.get("A"), std::runtime_error);
  fail = false;
  CHECK(b.get("A")->chip_id == "A");
}

TEST_CASE("read batch: the array parameter") {
  CHECK(array_literal({}) == "{}");
  CHECK(array_literal({"0123456789ABCDEF0123"}) == "{0123456789ABCDEF0123}");
  CHECK(array_literal({"A", "B"}) == "{A,B}");
}
