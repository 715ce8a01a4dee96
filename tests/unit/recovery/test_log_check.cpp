// The online log check of restore and fetch (docs/recovery.md section 7) against a log served over
// a real socket by core's HTTP server, built with core's library (MemoryTree, Ed25519 note signer):
// the good path, then an attacker who serves a wrong proof, a checkpoint under another key, another
// record's leaf, or a forked tree after a good one. Each refusal leaves the state file as it was.
#include <doctest/doctest.h>

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

#include "keyline/core/checkpoint.h"
#include "keyline/core/http.h"
#include "keyline/core/http_server.h"
#include "keyline/core/merkle.h"
#include "keyline/core/record_leaf.h"
#include "keyline/core/tlog_tiles.h"
#include "keyline/recovery/errors.h"
#include "keyline/recovery/log_check.h"
#include "keyline/recovery/log_monitor.h"
#include "keyline/recovery/recovery.h"

using namespace keyline;
namespace merkle = core::merkle;

namespace {

const std::string kOrigin = "keyline.test/log";

// A Luhn-valid IMEI per n (ISO/IEC 7812-1 Annex B check digit over the first 14 digits).
core::Imei imei_of(int n) {
  char body[15];
  std::snprintf(body, sizeof body, "357805%08d", n);
  int sum = 0;
  for (int i = 13; i >= 0; --i) {
    int d = body[i] - '0';
    if ((13 - i) % 2 == 0) d = d * 2 > 9 ? d * 2 - 9 : d * 2;
    sum += d;
  }
  return core::Imei::parse(std::string(body) + static_cast<char>('0' + (10 - sum % 10) % 10));
}

core::Record record_of(int n, bool shared_imei = false) {
  core::Record r;
  char chip[21];
  std::snprintf(chip, sizeof chip, "4B4C0001%012X", n);
  r.chip_id = core::ChipId::parse(chip);
  r.imei = shared_imei ? core::Imei::parse("357805023984942") : imei_of(n);
  r.backup = core::Bytes(40, static_cast<std::uint8_t>(n));
  r.certificates = {core::Bytes(20, 0x30)};
  return r;
}

merkle::Hash leaf_of(const core::Record& r) {
  return merkle::leaf_hash(core::encode_record_leaf(r.chip_id, r.imei, r.hash()));
}

std::string b64(const merkle::Hash& h) { return core::to_base64(h.data(), h.size()); }

std::string hashes_json(const std::vector<merkle::Hash>& v) {
  std::string out = "[";
  for (const auto& h : v) out += (out.size() > 1 ? ",\"" : "\"") + b64(h) + "\"";
  return out + "]";
}

// A log the test controls: the tree, the key, and what a hostile server does instead.
struct TestLog {
  std::mutex m;
  merkle::MemoryTree tree;
  std::map<std::string, std::uint64_t> index;  // chip ID -> leaf
  std::vector<core::Bytes> entries;            // what the tiles' entry bundles hold
  bool tamper_tile = false;                    // one bit of the first level-0 tile flipped
  core::note::Ed25519Signer key = core::note::Ed25519Signer::generate(kOrigin);
  core::note::Ed25519Signer other = core::note::Ed25519Signer::generate(kOrigin);
  bool sign_with_other = false;
  bool flip_proof = false;
  bool flip_consistency = false;
  bool not_integrated = false;
  const merkle::MemoryTree* serve_tree = nullptr;  // a forked tree served instead of `tree`
  std::atomic<int> consistency_requests{0};

  void add(const core::Record& r) {
    index[r.chip_id.str()] = tree.size();
    entries.push_back(core::encode_record_leaf(r.chip_id, r.imei, r.hash()));
    tree.append(merkle::leaf_hash(entries.back()));
  }
  const merkle::MemoryTree& shown() const { return serve_tree ? *serve_tree : tree; }

  core::http::Reply checkpoint() {
    core::tlog::Checkpoint c{kOrigin, shown().size(), shown().root(), {}};
    const core::note::NoteSigner* s = sign_with_other ? &other : &key;
    return {200, "text/plain; charset=utf-8", core::tlog::sign_checkpoint(c, {s}), {}, {}, false, false};
  }

  core::http::Reply proof(const std::string& chip, std::uint64_t size) {
    if (not_integrated)
      return {404, "application/problem+json", core::http::problem_json(404, "not integrated", "wait", "/problems/not-integrated"),
              {{"Retry-After", "1"}}, {}, false, false};
    const auto it = index.find(chip);
    if (it == index.end() || it->second >= size) return {404, "application/problem+json", "{}", {}, {}, false, false};
    auto p = merkle::inclusion_proof(shown(), it->second, size);
    if (flip_proof && !p.empty()) p[0][0] ^= 1;
    const std::string body = "{\"leaf_index\":" + std::to_string(it->second) + ",\"tree_size\":" + std::to_string(size) +
                             ",\"leaf_hash\":\"" + b64(shown().subtree(0, it->second)) + "\",\"proof\":" + hashes_json(p) + "}";
    return {200, "application/json", body, {}, {}, false, false};
  }

  core::http::Reply consistency(std::uint64_t from, std::uint64_t to) {
    ++consistency_requests;
    auto p = from == 0 || from == to ? std::vector<merkle::Hash>{} : merkle::consistency_proof(shown(), from, to);
    if (flip_consistency && !p.empty()) p.back()[5] ^= 1;
    const std::string body = "{\"size1\":" + std::to_string(from) + ",\"size2\":" + std::to_string(to) + ",\"proof\":" + hashes_json(p) + "}";
    return {200, "application/json", body, {}, {}, false, false};
  }

  core::http::Reply tile(const core::tlog::TileId& id) {
    core::Bytes data;
    if (id.entries) {
      const auto first = entries.begin() + static_cast<std::ptrdiff_t>(id.index * 256);
      data = core::tlog::encode_entry_bundle(std::vector<core::Bytes>(first, first + id.width));
    } else {
      data = core::tlog::tile_data(shown(), id);
    }
    if (tamper_tile && !id.entries && id.level == 0 && id.index == 0) data[40] ^= 1;
    return {200, "application/octet-stream", std::string(data.begin(), data.end()), {}, {}, false, false};
  }

  core::http::Reply handle(const core::http::Request& req) {
    std::lock_guard<std::mutex> l(m);
    const std::string& t = req.target;
    if (t == "/v1/log/checkpoint") return checkpoint();
    const auto q = t.find('?');
    const std::string query = q == std::string::npos ? "" : t.substr(q + 1);
    if (t.rfind("/v1/records/", 0) == 0 && req.path.size() > 18 && req.path.substr(req.path.size() - 6) == "/proof") {
      const std::string chip = req.path.substr(12, req.path.size() - 18);
      const std::uint64_t size = query.rfind("tree_size=", 0) == 0 ? std::stoull(query.substr(10)) : shown().size();
      return proof(chip, size);
    }
    if (req.path.rfind("/v1/log/tile/", 0) == 0) return tile(core::tlog::parse_tile_path(req.path.substr(8)));
    if (req.path == "/v1/log/consistency") {
      const auto amp = query.find('&');
      return consistency(std::stoull(query.substr(5, amp - 5)), std::stoull(query.substr(amp + 4)));
    }
    return {404, "application/json", "{}", {}, {}, false, false};
  }
};

struct Served {
  TestLog log;
  core::http::Server server;
  std::string dir;
  recovery::DbOptions db;
  recovery::LogOptions opts;

  static core::http::ServerOptions options() {
    core::http::ServerOptions o;
    o.listen = "127.0.0.1:0";
    o.limits.workers = 2;
    o.limits.io_threads = 1;
    return o;
  }
  Served() : server(options(), [this](const core::http::Request& r) { return log.handle(r); }) {
    server.start();
    char tmpl[] = "/tmp/keyline-logcheck-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    dir = tmpl;
    db.url = "http://127.0.0.1:" + std::to_string(server.port());
    db.attempts = 1;
    opts.log_key = core::note::Ed25519Verifier(kOrigin, log.key.public_key()).text();
    opts.state_file = dir + "/state/log-state";  // a directory that does not exist yet
  }
  ~Served() {
    server.stop();
    std::system(("rm -rf " + dir).c_str());
  }
  void check(const core::Record& r) { recovery::check_record_in_log(db, opts, r, nullptr); }
  core::ErrorCode refusal(const core::Record& r) {
    try {
      check(r);
    } catch (const core::Error& e) {
      return e.code();
    }
    FAIL("the log check passed");
    return core::ErrorCode::Io;
  }
  std::string state() {
    std::ifstream f(opts.state_file);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
  }
};

}  // namespace

TEST_CASE("log check: a record in the log passes, the state file keeps the checkpoint, then follows its growth") {
  Served s;
  for (int i = 0; i < 5; ++i) s.log.add(record_of(i));
  s.check(record_of(3));
  CHECK(s.state() == "5 " + b64(s.log.tree.root()) + " " + kOrigin + "\n");
  CHECK(s.log.consistency_requests == 0);  // first sight: nothing to be consistent with

  for (int i = 5; i < 300; ++i) s.log.add(record_of(i));
  s.check(record_of(299));
  CHECK(s.log.consistency_requests == 1);
  CHECK(s.state() == "300 " + b64(s.log.tree.root()) + " " + kOrigin + "\n");
  s.check(record_of(0));  // same size, same root: no proof needed
  CHECK(s.log.consistency_requests == 1);
}

TEST_CASE("log check: a proof that does not verify, another key, another record's leaf are refused (exit 3), state untouched") {
  Served s;
  for (int i = 0; i < 9; ++i) s.log.add(record_of(i));
  s.check(record_of(1));
  const std::string before = s.state();

  s.log.flip_proof = true;
  CHECK(s.refusal(record_of(4)) == recovery::errc::LogNotVerified);
  s.log.flip_proof = false;

  s.log.sign_with_other = true;  // same name, another key: the pinned key's signature is missing
  CHECK(s.refusal(record_of(4)) == recovery::errc::LogNotVerified);
  s.log.sign_with_other = false;

  // The DB serves a record other than the one the log holds for that chip.
  core::Record swapped = record_of(4);
  swapped.backup[0] ^= 0xFF;
  CHECK(s.refusal(swapped) == recovery::errc::LogNotVerified);

  // A record the log does not hold at all.
  CHECK(s.refusal(record_of(77)) == recovery::errc::LogNotVerified);
  CHECK(s.state() == before);
  CHECK(recovery::exit_code_for(core::Error(recovery::errc::LogNotVerified, "x")) == 3);
}

TEST_CASE("log check: a forked tree after a good checkpoint is refused (exit 5) naming both sizes and roots") {
  Served s;
  for (int i = 0; i < 6; ++i) s.log.add(record_of(i));
  s.check(record_of(2));
  const std::string before = s.state();
  const std::string seen_root = b64(s.log.tree.root());

  // Another tree holding the same record: entry 5 is another record, so every root differs.
  merkle::MemoryTree fork;
  for (int i = 0; i < 5; ++i) fork.append(leaf_of(record_of(i)));
  fork.append(leaf_of(record_of(50)));
  s.log.serve_tree = &fork;
  try {
    s.check(record_of(2));
    FAIL("a fork at the same size passed");
  } catch (const core::Error& e) {
    CHECK(e.code() == recovery::errc::LogFork);
    const std::string what = e.what();
    CHECK(what.find("size 6 root " + seen_root) != std::string::npos);
    CHECK(what.find("size 6 root " + b64(fork.root())) != std::string::npos);
    CHECK(recovery::exit_code_for(e) == 5);
  }
  for (int i = 6; i < 20; ++i) fork.append(leaf_of(record_of(i)));  // the fork grows: no proof from 6 can hold
  CHECK(s.refusal(record_of(2)) == recovery::errc::LogFork);

  merkle::MemoryTree smaller;
  for (int i = 0; i < 4; ++i) smaller.append(leaf_of(record_of(i)));
  s.log.serve_tree = &smaller;  // a rolled-back tree
  CHECK(s.refusal(record_of(2)) == recovery::errc::LogFork);

  s.log.serve_tree = nullptr;
  for (int i = 6; i < 40; ++i) s.log.add(record_of(i));
  s.log.flip_consistency = true;  // the honest tree grew, but the proof is tampered
  CHECK(s.refusal(record_of(2)) == recovery::errc::LogFork);
  CHECK(s.state() == before);

  s.log.flip_consistency = false;
  s.check(record_of(2));
  CHECK(s.state() == "40 " + b64(s.log.tree.root()) + " " + kOrigin + "\n");
}

TEST_CASE("log check: a record not yet integrated is waited for, then exit 4, --no-log-check checks nothing") {
  Served s;
  s.log.add(record_of(0));
  s.log.not_integrated = true;
  s.opts.integration_wait = std::chrono::milliseconds(1500);
  std::thread integrate([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    std::lock_guard<std::mutex> l(s.log.m);
    s.log.not_integrated = false;
  });
  s.check(record_of(0));  // waited for the checkpoint that holds it
  integrate.join();
  CHECK(s.state().find("1 ") == 0);
  s.log.not_integrated = true;
  s.opts.integration_wait = std::chrono::milliseconds(0);
  CHECK(s.refusal(record_of(0)) == recovery::errc::LogNotIntegrated);
  CHECK(recovery::exit_code_for(core::Error(recovery::errc::LogNotIntegrated, "x")) == 4);
  s.opts.skip = true;
  const std::string before = s.state();
  s.check(record_of(0));
  CHECK(s.state() == before);
}

TEST_CASE("log key: exactly one of --log-key / --log-key-file, a vkey text, a file with a newline") {
  recovery::LogOptions o;
  CHECK_THROWS_AS(recovery::load_log_key(o), core::ConfigError);
  const auto key = core::note::Ed25519Signer::generate(kOrigin);
  const std::string vkey = core::note::Ed25519Verifier(kOrigin, key.public_key()).text();
  o.log_key = vkey;
  CHECK(recovery::load_log_key(o).key_id() == key.key_id());
  char tmpl[] = "/tmp/keyline-logkey-XXXXXX";
  const int fd = ::mkstemp(tmpl);
  REQUIRE(fd >= 0);
  const std::string line = vkey + "\n";
  REQUIRE(::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()));
  ::close(fd);
  o.log_key_file = tmpl;
  CHECK_THROWS_AS(recovery::load_log_key(o), core::ConfigError);  // both
  o.log_key.clear();
  CHECK(recovery::load_log_key(o).key_id() == key.key_id());
  ::unlink(tmpl);
  o.log_key_file.clear();
  o.log_key = "keyline.test/log+00000000+AQ==";
  CHECK_THROWS_AS(recovery::load_log_key(o), core::ConfigError);
}

TEST_CASE("log state: round trip with an origin holding spaces, malformed lines are LogStateBad (exit 2)") {
  recovery::LogState st;
  merkle::Hash h{};
  h[0] = 7;
  st["keyline public DB"] = {18446744073709551615ull, h};
  st["other"] = {0, merkle::empty_root()};
  char tmpl[] = "/tmp/keyline-logstate-XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  const std::string path = std::string(tmpl) + "/a/b/state";
  recovery::write_log_state(path, st);
  const auto back = recovery::read_log_state(path);
  CHECK(back.size() == 2);
  CHECK(back.at("keyline public DB").size == 18446744073709551615ull);
  CHECK(back.at("keyline public DB").root == h);
  CHECK(recovery::read_log_state(std::string(tmpl) + "/none").empty());
  const std::string good_root = core::to_base64(h.data(), h.size());
  for (const std::string& bad : {"5 " + good_root, "x " + good_root + " o", "18446744073709551616 " + good_root + " o",
                                std::string("5 AAAA o"), "-1 " + good_root + " o", "5 " + good_root + " o\n6 " + good_root + " o"}) {
    CAPTURE(bad);
    std::ofstream(path) << bad << "\n";
    try {
      recovery::read_log_state(path);
      FAIL("parsed");
    } catch (const core::Error& e) {
      CHECK(e.code() == recovery::errc::LogStateBad);
      CHECK(recovery::exit_code_for(e) == 2);
    }
  }
  std::system((std::string("rm -rf ") + tmpl).c_str());
}

TEST_CASE("log answers: wrong types, negative or missing fields, non-base64 hashes are refused") {
  for (const char* bad : {"[]", "{}", "{\"leaf_index\":-1,\"tree_size\":2,\"leaf_hash\":\"\",\"proof\":[]}",
                          "{\"leaf_index\":\"0\",\"tree_size\":2,\"leaf_hash\":\"\",\"proof\":[]}",
                          "{\"leaf_index\":0,\"tree_size\":2,\"leaf_hash\":\"!!\",\"proof\":[]}",
                          "{\"leaf_index\":0,\"tree_size\":2,\"leaf_hash\":\"AA==\",\"proof\":{}}", "not json"}) {
    CAPTURE(bad);
    CHECK_THROWS_AS(recovery::parse_inclusion_answer(bad), core::Error);
  }
  CHECK_THROWS_AS(recovery::parse_consistency_answer("{\"size1\":1,\"size2\":3,\"proof\":[]}", 2, 3), core::Error);
  CHECK(recovery::parse_consistency_answer("{\"size1\":2,\"size2\":3,\"proof\":[\"AA==\"]}", 2, 3).size() == 1);
}

TEST_CASE("log monitor: every tile and entry recomputed, then growth followed, a tampered tile and a fork are refused") {
  Served s;
  for (int i = 0; i < 600; ++i) s.log.add(record_of(i));  // two full level-0 tiles and a partial one
  recovery::MonitorOptions mo{s.db, s.opts, true};
  auto r = recovery::monitor_log(mo, nullptr);
  CHECK(r.head.size == 600);
  CHECK(r.entries_read == 600);
  CHECK(r.duplicates.empty());
  CHECK(!r.seen);
  CHECK(s.state() == "600 " + b64(s.log.tree.root()) + " " + kOrigin + "\n");

  for (int i = 600; i < 700; ++i) s.log.add(record_of(i));
  r = recovery::monitor_log(mo, nullptr);
  REQUIRE(r.seen);
  CHECK(r.seen->size == 600);
  CHECK(s.log.consistency_requests == 1);

  s.log.tamper_tile = true;
  mo.entries = false;  // the hash tiles alone: level 1 no longer matches the tampered level 0
  const std::string before = s.state();
  CHECK_THROWS_WITH_AS(recovery::monitor_log(mo, nullptr), doctest::Contains("tiles"), core::Error);
  mo.entries = true;  // from the entries: the tampered level-0 tile itself differs
  CHECK_THROWS_WITH_AS(recovery::monitor_log(mo, nullptr), doctest::Contains("tile/0/000"), core::Error);
  s.log.tamper_tile = false;

  merkle::MemoryTree fork;
  for (int i = 0; i < 700; ++i) fork.append(leaf_of(record_of(i == 650 ? 9999 : i)));
  s.log.serve_tree = &fork;
  try {
    recovery::monitor_log(mo, nullptr);
    FAIL("the monitor took a fork");
  } catch (const core::Error& e) {
    CHECK(e.code() == recovery::errc::LogFork);
  }
  CHECK(s.state() == before);
}

TEST_CASE("log monitor: a chip ID logged twice and an IMEI logged twice are reported") {
  Served s;
  for (int i = 0; i < 8; ++i) s.log.add(record_of(i));
  s.log.add(record_of(100, true));
  s.log.add(record_of(101, true));  // another chip with the same IMEI
  core::Record again = record_of(3);
  again.backup[0] ^= 0x55;  // a second, different record for chip 3
  s.log.add(again);
  const auto r = recovery::monitor_log(recovery::MonitorOptions{s.db, s.opts, true}, nullptr);
  bool chip_twice = false;
  for (const auto& d : r.duplicates) chip_twice = chip_twice || d.find("chip ID " + record_of(3).chip_id.str() + " is logged twice: leaves 3 and 10") != std::string::npos;
  CHECK(chip_twice);
  CHECK(r.duplicates.size() == 3);  // chip 3 (and its IMEI, the same record's) at leaf 10, the IMEI of leaves 8 and 9
  bool imei_twice = false;
  for (const auto& d : r.duplicates) imei_twice = imei_twice || d.find("IMEI 357805023984942 is logged twice: leaves 8 and 9") != std::string::npos;
  CHECK(imei_twice);
  CHECK(recovery::format_monitor_report(r).find("DUPLICATE chip ID") != std::string::npos);
}

TEST_CASE("offline bundle: fetch's evidence travels with the record and is checked with the pinned key, no network") {
  Served s;
  for (int i = 0; i < 12; ++i) s.log.add(record_of(i));
  const core::Record rec = record_of(7);
  const auto ev = recovery::check_record_in_log(s.db, s.opts, rec, nullptr);
  REQUIRE(ev);
  CHECK(ev->proof.leaf_index == 7);
  const std::string bundle = recovery::bundle_with_log(rec.to_json(), *ev);
  CHECK(core::Record::from_json(bundle).hash() == rec.hash());  // still the record
  const std::string state = s.state();
  s.server.stop();  // offline from here
  recovery::check_bundle_in_log(s.opts, bundle, rec, nullptr);
  CHECK(s.state() == state);

  auto refused = [&](const std::string& b, const core::Record& r, recovery::LogOptions o) {
    try {
      recovery::check_bundle_in_log(o, b, r, nullptr);
    } catch (const core::Error& e) {
      return e.code();
    }
    FAIL("the bundle passed");
    return core::ErrorCode::Io;
  };
  CHECK(refused(rec.to_json(), rec, s.opts) == recovery::errc::LogNotVerified);  // no evidence
  auto bad = *ev;
  bad.proof.proof[0][3] ^= 1;
  CHECK(refused(recovery::bundle_with_log(rec.to_json(), bad), rec, s.opts) == recovery::errc::LogNotVerified);
  core::Record other = record_of(7);
  other.backup[1] ^= 1;  // the same chip's evidence put on another record
  CHECK(refused(recovery::bundle_with_log(other.to_json(), *ev), other, s.opts) == recovery::errc::LogNotVerified);
  auto another_key = s.opts;
  another_key.log_key = core::note::Ed25519Verifier(kOrigin, s.log.other.public_key()).text();
  CHECK(refused(bundle, rec, another_key) == recovery::errc::LogNotVerified);
  // The state saw another tree of the same size: a fork, even offline.
  recovery::LogState forked;
  merkle::Hash root{};
  root[0] = 1;
  forked[kOrigin] = {12, root};
  recovery::write_log_state(s.opts.state_file, forked);
  CHECK(refused(bundle, rec, s.opts) == recovery::errc::LogFork);
  auto skip = s.opts;
  skip.skip = true;
  CHECK_NOTHROW(recovery::check_bundle_in_log(skip, rec.to_json(), rec, nullptr));
}
