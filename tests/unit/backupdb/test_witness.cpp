// The witness's decisions (backupdb/include/keyline/backupdb/witness.h, C2SP tlog-witness
// "add-checkpoint"): it cosigns a log's growth proved consistent, and refuses a forked tree (another
// root at its size, or a proof from another tree), a checkpoint signed by another key, an unknown
// log and a stale old size (409 with its size, text/x.tlog.size); its state survives a restart and a
// state file edited by hand is refused. The trees are core's MemoryTree, the keys Ed25519.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "keyline/backupdb/witness.h"
#include "keyline/core/checkpoint.h"
#include "keyline/core/error.h"
#include "keyline/core/merkle.h"
#include "keyline/core/tlog_cosignature.h"

using namespace keyline;
namespace merkle = core::merkle;
namespace tlog = core::tlog;

namespace {

const std::string kOrigin = "keyline.test/log";

merkle::Hash leaf(int i, int fork = 0) {
  const std::string s = "entry " + std::to_string(i) + "/" + std::to_string(fork);
  return merkle::leaf_hash(reinterpret_cast<const std::uint8_t*>(s.data()), s.size());
}

struct Fixture {
  std::string dir;
  core::note::Ed25519Signer log_key = core::note::Ed25519Signer("keyline.test/log", core::SecureBytes(32, 7));
  core::note::Ed25519Signer other_key = core::note::Ed25519Signer("keyline.test/log", core::SecureBytes(32, 8));
  tlog::Cosigner cosigner = tlog::Cosigner("witness.test/w1", core::SecureBytes(32, 1));
  merkle::MemoryTree tree;

  Fixture() {
    char tmpl[] = "/tmp/keyline-witness-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    dir = std::string(tmpl) + "/state";
  }
  ~Fixture() { std::system(("rm -rf " + dir.substr(0, dir.size() - 6)).c_str()); }

  backupdb::Witness make() {
    return backupdb::Witness({core::note::Ed25519Verifier(kOrigin, log_key.public_key())}, cosigner, dir);
  }
  void grow(merkle::MemoryTree& t, int to, int fork = 0) {
    for (int i = static_cast<int>(t.size()); i < to; ++i) t.append(leaf(i, fork));
  }
  std::string note(const merkle::MemoryTree& t, const core::note::NoteSigner& key, const std::string& origin = kOrigin) {
    return tlog::sign_checkpoint({origin, t.size(), t.root(), {}}, {&key});
  }
  static std::string body(std::uint64_t old, const std::vector<merkle::Hash>& proof, const std::string& note) {
    std::string b = "old " + std::to_string(old) + "\n";
    for (const auto& h : proof) b += core::to_base64(h.data(), h.size()) + "\n";
    return b + "\n" + note;
  }
};

}  // namespace

TEST_CASE("witness: cosigns the first checkpoint, then growth proved consistent, the cosignature verifies") {
  Fixture f;
  auto w = f.make();
  f.grow(f.tree, 5);
  const std::string n5 = f.note(f.tree, f.log_key);
  const auto a = w.add_checkpoint(Fixture::body(0, {}, n5), 1700000000);
  REQUIRE(a.status == 200);
  CHECK(tlog::verified_cosigners(n5 + a.body, {f.cosigner.key()}) == std::vector<std::string>{"witness.test/w1"});
  // The cosigned note still opens under the log key (the witness line is ignored there).
  CHECK(tlog::open_checkpoint(n5 + a.body, core::note::Ed25519Verifier(kOrigin, f.log_key.public_key()), kOrigin).checkpoint.size == 5);

  const auto proof = [&](std::uint64_t from, std::uint64_t to) { return merkle::consistency_proof(f.tree, from, to); };
  f.grow(f.tree, 300);
  CHECK(w.add_checkpoint(Fixture::body(5, proof(5, 300), f.note(f.tree, f.log_key)), 1700000001).status == 200);
  CHECK(w.head(kOrigin)->size == 300);
  // The same checkpoint again (old = size): cosigned again, nothing to prove.
  CHECK(w.add_checkpoint(Fixture::body(300, {}, f.note(f.tree, f.log_key)), 1700000002).status == 200);
}

TEST_CASE("witness: a forked tree is refused: another root at its size (409), a proof from another tree (422)") {
  Fixture f;
  auto w = f.make();
  f.grow(f.tree, 9);
  REQUIRE(w.add_checkpoint(Fixture::body(0, {}, f.note(f.tree, f.log_key)), 1).status == 200);

  merkle::MemoryTree fork;
  for (int i = 0; i < 9; ++i) fork.append(leaf(i, i < 6 ? 0 : 1));  // leaves 6.. differ: the log rewrote history
  const auto same_size = w.add_checkpoint(Fixture::body(9, {}, f.note(fork, f.log_key)), 2);
  CHECK(same_size.status == 409);
  CHECK(same_size.content_type == "text/x.tlog.size");
  CHECK(same_size.body == "9\n");

  f.grow(fork, 20, 1);
  const auto grown = w.add_checkpoint(Fixture::body(9, merkle::consistency_proof(fork, 9, 20), f.note(fork, f.log_key)), 3);
  CHECK(grown.status == 422);
  // A proof of the right tree with one bit flipped.
  f.grow(f.tree, 20);
  auto p = merkle::consistency_proof(f.tree, 9, 20);
  p[0][3] ^= 1;
  CHECK(w.add_checkpoint(Fixture::body(9, p, f.note(f.tree, f.log_key)), 4).status == 422);
  CHECK(w.head(kOrigin)->size == 9);  // nothing moved
  // The three signed fork attempts are kept as evidence (the spec's MAY).
  CHECK(std::system(("test $(ls " + f.dir + "/evidence | wc -l) -eq 3").c_str()) == 0);
  CHECK(w.add_checkpoint(Fixture::body(9, merkle::consistency_proof(f.tree, 9, 20), f.note(f.tree, f.log_key)), 5).status == 200);
}

TEST_CASE("witness: another key (403), an unknown log (404), a stale old size (409), bad requests (400)") {
  Fixture f;
  auto w = f.make();
  f.grow(f.tree, 4);
  CHECK(w.add_checkpoint(Fixture::body(0, {}, f.note(f.tree, f.other_key)), 1).status == 403);
  const core::note::Ed25519Signer stranger("stranger.test/log", core::SecureBytes(32, 5));
  CHECK(w.add_checkpoint(Fixture::body(0, {}, f.note(f.tree, stranger, "stranger.test/log")), 1).status == 404);
  CHECK(!w.head(kOrigin));

  REQUIRE(w.add_checkpoint(Fixture::body(0, {}, f.note(f.tree, f.log_key)), 1).status == 200);
  f.grow(f.tree, 8);
  const auto stale = w.add_checkpoint(Fixture::body(0, {}, f.note(f.tree, f.log_key)), 2);
  CHECK(stale.status == 409);
  CHECK(stale.body == "4\n");
  CHECK(w.add_checkpoint(Fixture::body(9, {}, f.note(f.tree, f.log_key)), 2).status == 400);  // old > size
  CHECK(w.add_checkpoint("old 04\n\n" + f.note(f.tree, f.log_key), 2).status == 400);
  CHECK(w.add_checkpoint("old 4\nnot-base64\n\n" + f.note(f.tree, f.log_key), 2).status == 400);
  CHECK(w.add_checkpoint("old 4\n", 2).status == 400);
  CHECK(w.add_checkpoint(Fixture::body(0, {f.tree.root()}, f.note(f.tree, f.log_key)), 2).status == 400);
}

TEST_CASE("witness: the state survives a restart (no second first checkpoint), a state file edited by hand is refused") {
  Fixture f;
  f.grow(f.tree, 6);
  {
    auto w = f.make();
    REQUIRE(w.add_checkpoint(Fixture::body(0, {}, f.note(f.tree, f.log_key)), 1).status == 200);
  }
  auto again = f.make();
  REQUIRE(again.head(kOrigin));
  CHECK(again.head(kOrigin)->size == 6);
  merkle::MemoryTree fork;
  f.grow(fork, 6, 1);
  CHECK(again.add_checkpoint(Fixture::body(0, {}, f.note(fork, f.log_key)), 2).status == 409);

  // Whoever edits the state to roll the witness back must forge the log's signature.
  std::string path;
  const std::string cmd = "ls " + f.dir + "/*.checkpoint > " + f.dir + "/list";
  REQUIRE(std::system(cmd.c_str()) == 0);
  std::ifstream list(f.dir + "/list");
  std::getline(list, path);
  std::ofstream(path, std::ios::trunc) << "keyline.test/log\n1\n" << core::to_base64(f.tree.root().data(), 32) << "\n\n"
                                        << "\xE2\x80\x94 keyline.test/log AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
  CHECK_THROWS_AS(f.make(), core::ConfigError);
}
