// Recovery's witness requirement (--witness-key, --witnesses N; docs/transparency.md, "Witness")
// against a log served over a real socket by core's HTTP server: an uncosigned checkpoint is refused
// (exit 3) and leaves the state file unwritten, a cosigned one passes, a cosignature by an unlisted
// witness or over another tree does not count, and N above the keys given is a usage error.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

#include "keyline/core/checkpoint.h"
#include "keyline/core/http_server.h"
#include "keyline/core/merkle.h"
#include "keyline/core/record_leaf.h"
#include "keyline/core/tlog_cosignature.h"
#include "keyline/recovery/errors.h"
#include "keyline/recovery/log_check.h"
#include "keyline/recovery/recovery.h"

using namespace keyline;
namespace merkle = core::merkle;
namespace tlog = core::tlog;

namespace {

const std::string kOrigin = "keyline.test/log";

core::Record record_of(int n) {
  core::Record r;
  char chip[21];
  std::snprintf(chip, sizeof chip, "4B4C0002%012X", n);
  r.chip_id = core::ChipId::parse(chip);
  r.imei = core::Imei::parse("357805023984942");
  r.backup = core::Bytes(40, static_cast<std::uint8_t>(n));
  r.certificates = {core::Bytes(20, 0x30)};
  return r;
}

std::string b64(const merkle::Hash& h) { return core::to_base64(h.data(), h.size()); }

// Three records in a log; the checkpoint served with the cosignature lines the test chooses.
struct WitnessedLog {
  std::mutex m;
  merkle::MemoryTree tree;
  core::note::Ed25519Signer key = core::note::Ed25519Signer::generate(kOrigin);
  tlog::Cosigner w1 = tlog::Cosigner::generate("witness.test/w1");
  tlog::Cosigner w2 = tlog::Cosigner::generate("witness.test/w2");
  std::vector<const tlog::Cosigner*> cosigners;
  bool cosign_other_size = false;  // a cosignature over another tree size than the one served
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
  WitnessedLog() : server(options(), [this](const core::http::Request& r) { return handle(r); }) {
    for (int i = 0; i < 3; ++i) {
      const auto r = record_of(i);
      tree.append(merkle::leaf_hash(core::encode_record_leaf(r.chip_id, r.imei, r.hash())));
    }
    server.start();
    char tmpl[] = "/tmp/keyline-logwitness-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    dir = tmpl;
    db.url = "http://127.0.0.1:" + std::to_string(server.port());
    db.attempts = 1;
    opts.log_key = core::note::Ed25519Verifier(kOrigin, key.public_key()).text();
    opts.state_file = dir + "/log-state";
    opts.witness_keys = {w1.key().text()};
    opts.witnesses = 1;
  }
  ~WitnessedLog() {
    server.stop();
    std::system(("rm -rf " + dir).c_str());
  }

  core::http::Reply handle(const core::http::Request& req) {
    std::lock_guard<std::mutex> l(m);
    if (req.path == "/v1/log/checkpoint") {
      const tlog::Checkpoint c{kOrigin, tree.size(), tree.root(), {}};
      std::string note = tlog::sign_checkpoint(c, {&key});
      const tlog::Checkpoint other{kOrigin, tree.size() + 1, tree.root(), {}};
      for (const auto* w : cosigners) note += w->cosign(tlog::checkpoint_text(cosign_other_size ? other : c), 1700000000) + "\n";
      return {200, "text/plain; charset=utf-8", note, {}, {}, false, false};
    }
    const int n = req.path.find("4B4C0002000000000001") != std::string::npos ? 1 : -1;
    if (n < 0) return {404, "application/json", "{}", {}, {}, false, false};
    std::string proof = "[";
    for (const auto& h : merkle::inclusion_proof(tree, 1, tree.size())) proof += (proof.size() > 1 ? ",\"" : "\"") + b64(h) + "\"";
    const std::string body = "{\"leaf_index\":1,\"tree_size\":" + std::to_string(tree.size()) + ",\"leaf_hash\":\"" +
                             b64(tree.subtree(0, 1)) + "\",\"proof\":" + proof + "]}";
    return {200, "application/json", body, {}, {}, false, false};
  }

  core::ErrorCode refusal() {
    try {
      recovery::check_record_in_log(db, opts, record_of(1), nullptr);
    } catch (const core::Error& e) {
      return e.code();
    }
    FAIL("the log check passed");
    return core::ErrorCode::Io;
  }
  bool state_written() const { return ::access(opts.state_file.c_str(), F_OK) == 0; }
};

}  // namespace

TEST_CASE("log witness: --witnesses 1 refuses an uncosigned checkpoint (exit 3, no state), accepts a cosigned one") {
  WitnessedLog s;
  CHECK(s.refusal() == recovery::errc::LogNotWitnessed);
  CHECK(recovery::exit_code_for(core::Error(recovery::errc::LogNotWitnessed, "x")) == 3);
  CHECK_FALSE(s.state_written());

  s.cosigners = {&s.w1};
  recovery::check_record_in_log(s.db, s.opts, record_of(1), nullptr);
  CHECK(s.state_written());
}

TEST_CASE("log witness: an unlisted witness or a cosignature over another tree does not count, N above the keys is usage") {
  WitnessedLog s;
  s.cosigners = {&s.w2};  // a real cosignature, by a witness the user did not pin
  CHECK(s.refusal() == recovery::errc::LogNotWitnessed);

  s.cosigners = {&s.w1};
  s.cosign_other_size = true;  // w1's line is over a tree the log does not serve: a listed key's line fails
  CHECK(s.refusal() == recovery::errc::LogNotWitnessed);
  s.cosign_other_size = false;

  s.opts.witnesses = 2;
  CHECK(s.refusal() == core::ErrorCode::Usage);
  s.opts.witness_keys.push_back(s.w2.key().text());
  CHECK(s.refusal() == recovery::errc::LogNotWitnessed);  // one of two
  s.cosigners = {&s.w1, &s.w2};
  recovery::check_record_in_log(s.db, s.opts, record_of(1), nullptr);
}

TEST_CASE("log witness: one --witness-key given twice (or under another name) is usage, never two witnesses") {
  WitnessedLog s;
  s.cosigners = {&s.w1};
  s.opts.witnesses = 2;
  s.opts.witness_keys = {s.w1.key().text(), s.w1.key().text()};
  CHECK(s.refusal() == core::ErrorCode::Usage);
  const tlog::CosignerKey alias("witness.test/alias", s.w1.key().public_key());
  s.opts.witness_keys = {s.w1.key().text(), alias.text()};
  CHECK(s.refusal() == core::ErrorCode::Usage);
  CHECK_FALSE(s.state_written());
}
