// HPKE against RFC 9180 Appendix A.1.1 (tests/vectors/hpke_rfc9180_a1.txt): every published value is
// recomputed and compared, so a wrong key schedule step, nonce or ciphertext fails the test.
#include <doctest/doctest.h>

#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "keyline/core/bytes.h"
#include "keyline/core/error.h"
#include "keyline/core/hpke.h"
#include "testenv.h"

using namespace keyline::core;
namespace hpke = keyline::core::hpke;

namespace {

using Fields = std::map<std::string, std::string>;

struct VectorFile {
  Fields setup;
  std::vector<Fields> encryptions;
  std::vector<Fields> exports;
};

VectorFile load_vectors() {
  const std::string path = keyline::test::source_dir() + "/tests/vectors/hpke_rfc9180_a1.txt";
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "cannot read " << path);
  VectorFile v;
  Fields* cur = &v.setup;
  std::string line;
  bool first = true;
  while (std::getline(in, line)) {
    if (first) {
      REQUIRE(line == "# RFC 9180 Appendix A.1.1");
      first = false;
    }
    if (line.empty() || line[0] == '#') continue;
    if (line == "encryption") {
      v.encryptions.emplace_back();
      cur = &v.encryptions.back();
      continue;
    }
    if (line == "export") {
      v.exports.emplace_back();
      cur = &v.exports.back();
      continue;
    }
    const auto colon = line.find(':');
    REQUIRE_MESSAGE(colon != std::string::npos, "bad vector line: " << line);
    std::string value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(' '));
    (*cur)[line.substr(0, colon)] = value;
  }
  return v;
}

Bytes hex_field(const Fields& f, const std::string& name) {
  const auto it = f.find(name);
  REQUIRE_MESSAGE(it != f.end(), "vector field missing: " << name);
  return from_hex(it->second);
}
SecureBytes secret_field(const Fields& f, const std::string& name) {
  const Bytes b = hex_field(f, name);
  return SecureBytes(b.begin(), b.end());
}
Bytes to_bytes(const SecureBytes& s) { return Bytes(s.begin(), s.end()); }

}  // namespace

TEST_CASE("HPKE: RFC 9180 A.1.1 base setup, key schedule, encryptions and exports") {
  const VectorFile v = load_vectors();
  const Fields& s = v.setup;
  CHECK(hex_field(s, "mode") == Bytes{0x00});
  CHECK(hex_field(s, "kem_id") == Bytes{0x00, 0x20});
  CHECK(hex_field(s, "kdf_id") == Bytes{0x00, 0x01});
  CHECK(hex_field(s, "aead_id") == Bytes{0x00, 0x01});
  const Bytes info = hex_field(s, "info");

  // DeriveKeyPair (section 7.1.3) for both parties.
  const hpke::KeyPair eph = hpke::derive_key_pair(secret_field(s, "ikmE"));
  CHECK(to_bytes(eph.secret_key) == hex_field(s, "skEm"));
  CHECK(eph.public_key == hex_field(s, "pkEm"));
  const hpke::KeyPair rec = hpke::derive_key_pair(secret_field(s, "ikmR"));
  CHECK(to_bytes(rec.secret_key) == hex_field(s, "skRm"));
  CHECK(rec.public_key == hex_field(s, "pkRm"));
  CHECK(hpke::public_key_of(secret_field(s, "skRm")) == hex_field(s, "pkRm"));

  // Encap / Decap.
  Bytes enc;
  const SecureBytes shared = hpke::encap_with(hex_field(s, "pkRm"), secret_field(s, "skEm"), enc);
  CHECK(enc == hex_field(s, "enc"));
  CHECK(to_bytes(shared) == hex_field(s, "shared_secret"));
  CHECK(to_bytes(hpke::decap(hex_field(s, "enc"), secret_field(s, "skRm"))) == hex_field(s, "shared_secret"));

  // Key schedule (section 5.1).
  CHECK(hpke::key_schedule_context(info) == hex_field(s, "key_schedule_context"));
  CHECK(to_bytes(hpke::key_schedule_secret(secret_field(s, "shared_secret"))) == hex_field(s, "secret"));

  hpke::SenderSetup sender = hpke::setup_base_s_with(hex_field(s, "pkRm"), info, secret_field(s, "skEm"));
  CHECK(sender.enc == hex_field(s, "enc"));
  CHECK(to_bytes(sender.context.key()) == hex_field(s, "key"));
  CHECK(sender.context.base_nonce() == hex_field(s, "base_nonce"));
  CHECK(to_bytes(sender.context.exporter_secret()) == hex_field(s, "exporter_secret"));
  hpke::Context receiver = hpke::setup_base_r(hex_field(s, "enc"), secret_field(s, "skRm"), info);
  CHECK(to_bytes(receiver.key()) == hex_field(s, "key"));
  CHECK(receiver.base_nonce() == hex_field(s, "base_nonce"));
  CHECK(to_bytes(receiver.exporter_secret()) == hex_field(s, "exporter_secret"));

  // Encryptions (section 5.2): the published sequence numbers, reached by sealing in order, so the
  // counter itself is tested and not only ComputeNonce.
  REQUIRE(v.encryptions.size() == 6);
  std::map<std::uint64_t, const Fields*> by_seq;
  for (const auto& e : v.encryptions) by_seq[std::stoull(e.at("seq"))] = &e;
  REQUIRE(by_seq.size() == 6);
  for (std::uint64_t seq : {0ull, 1ull, 2ull, 4ull, 255ull, 256ull}) REQUIRE(by_seq.count(seq) == 1);
  const std::uint64_t last = by_seq.rbegin()->first;
  for (std::uint64_t seq = 0; seq <= last; ++seq) {
    REQUIRE(sender.context.seq() == seq);
    REQUIRE(receiver.seq() == seq);
    const auto it = by_seq.find(seq);
    if (it == by_seq.end()) {
      // Sequence numbers the RFC does not list: still sealed and opened, to advance both counters.
      const Bytes aad = {'x'};
      const Bytes ct = sender.context.seal(aad, Bytes{1, 2, 3});
      CHECK(receiver.open(aad, ct) == SecureBytes{1, 2, 3});
      continue;
    }
    const Fields& e = *it->second;
    CAPTURE(seq);
    CHECK(sender.context.compute_nonce(seq) == hex_field(e, "nonce"));
    const Bytes ct = sender.context.seal(hex_field(e, "aad"), hex_field(e, "pt"));
    CHECK(ct == hex_field(e, "ct"));
    CHECK(to_bytes(receiver.open(hex_field(e, "aad"), hex_field(e, "ct"))) == hex_field(e, "pt"));
  }

  // Exported values (section 5.3).
  REQUIRE(v.exports.size() == 3);
  for (const auto& x : v.exports) {
    const std::size_t length = std::stoul(x.at("L"));
    CHECK(to_bytes(sender.context.export_secret(hex_field(x, "exporter_context"), length)) ==
          hex_field(x, "exported_value"));
    CHECK(to_bytes(receiver.export_secret(hex_field(x, "exporter_context"), length)) ==
          hex_field(x, "exported_value"));
  }

  // The single-shot wire form with the RFC's ephemeral key is enc || first ciphertext.
  const Fields& e0 = *by_seq.at(0);
  const Bytes pt0 = hex_field(e0, "pt");
  const Bytes wire = hpke::seal_with(hex_field(s, "pkRm"), info, hex_field(e0, "aad"),
                                     SecureBytes(pt0.begin(), pt0.end()), secret_field(s, "skEm"));
  Bytes expect = hex_field(s, "enc");
  const Bytes ct0 = hex_field(e0, "ct");
  expect.insert(expect.end(), ct0.begin(), ct0.end());
  CHECK(wire == expect);
  CHECK(to_bytes(hpke::open(secret_field(s, "skRm"), info, hex_field(e0, "aad"), wire)) == pt0);
}

TEST_CASE("HPKE: single-shot round trip with fresh keys, and every failure refused") {
  const hpke::KeyPair r = hpke::generate_key_pair();
  const Bytes info = {'k', 'p', 's'};
  const Bytes aad = {'a', 'a', 'd'};
  const SecureBytes pt = {0xDE, 0xAD, 0xBE, 0xEF};
  const Bytes wire = hpke::seal(r.public_key, info, aad, pt);
  REQUIRE(wire.size() == hpke::kEncSize + pt.size() + hpke::kTagSize);
  CHECK(hpke::open(r.secret_key, info, aad, wire) == pt);
  // Two seals of the same message differ (fresh ephemeral key each time).
  CHECK(hpke::seal(r.public_key, info, aad, pt) != wire);

  CHECK_THROWS_AS(hpke::open(r.secret_key, Bytes{'x'}, aad, wire), CryptoError);
  CHECK_THROWS_AS(hpke::open(r.secret_key, info, Bytes{'x'}, wire), CryptoError);
  const hpke::KeyPair other = hpke::generate_key_pair();
  CHECK_THROWS_AS(hpke::open(other.secret_key, info, aad, wire), CryptoError);
  for (std::size_t i = 0; i < wire.size(); ++i) {
    Bytes bad = wire;
    bad[i] ^= 0x01;
    CAPTURE(i);
    CHECK_THROWS_AS(hpke::open(r.secret_key, info, aad, bad), CryptoError);
  }
  CHECK_THROWS_AS(hpke::open(r.secret_key, info, aad, Bytes(wire.begin(), wire.begin() + 47)), CryptoError);
  CHECK_THROWS_AS(hpke::seal(Bytes(31, 9), info, aad, pt), CryptoError);
  CHECK_THROWS_AS(hpke::open(SecureBytes(31, 9), info, aad, wire), CryptoError);
}

TEST_CASE("HPKE: a receiver that fails to open does not advance its sequence number") {
  const hpke::KeyPair r = hpke::generate_key_pair();
  hpke::SenderSetup s = hpke::setup_base_s(r.public_key, {});
  hpke::Context rc = hpke::setup_base_r(s.enc, r.secret_key, {});
  const Bytes c0 = s.context.seal({}, Bytes{1});
  const Bytes c1 = s.context.seal({}, Bytes{2});
  CHECK_THROWS_AS(rc.open({}, c1), CryptoError);  // out of order: nonce for seq 0 does not fit
  CHECK(rc.seq() == 0);
  CHECK(rc.open({}, c0) == SecureBytes{1});
  CHECK(rc.open({}, c1) == SecureBytes{2});
  CHECK(rc.seq() == 2);
}

TEST_CASE("HPKE: low-order X25519 public keys are refused (RFC 9180 section 7.1.4)") {
  // Points of small order on Curve25519 (RFC 7748 section 6.1 says the all-zero output must be
  // checked): u = 0, u = 1, and the order-8 point 0xe0eb7a7c...
  const std::vector<Bytes> low_order = {
      Bytes(32, 0x00),
      from_hex("0100000000000000000000000000000000000000000000000000000000000000"),
      from_hex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
      from_hex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
      from_hex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
  };
  const hpke::KeyPair r = hpke::generate_key_pair();
  const hpke::KeyPair e = hpke::generate_key_pair();
  for (const auto& pk : low_order) {
    CAPTURE(to_hex(pk));
    // As the recipient's key (sender side) and as enc (receiver side).
    Bytes enc;
    CHECK_THROWS_AS(hpke::encap_with(pk, e.secret_key, enc), CryptoError);
    CHECK_THROWS_AS(hpke::seal(pk, {}, {}, Bytes{1}), CryptoError);
    CHECK_THROWS_AS(hpke::decap(pk, r.secret_key), CryptoError);
    Bytes wire = pk;
    wire.resize(32 + 16, 0);
    CHECK_THROWS_AS(hpke::open(r.secret_key, {}, {}, wire), CryptoError);
  }
}
