// Station pool and claim logic against the real PostgreSQL cluster, the real SoftHSM token and real
// emulated devices (the keyline-device program, over TCP).
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include <botan/auto_rng.h>
#include <botan/curve25519.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/pkcs8.h>

#include "keyline/core/apdu.h"
#include "keyline/core/applet_protocol.h"
#include "keyline/core/cplc.h"
#include "keyline/core/error.h"
#include "keyline/core/imei.h"
#include "keyline/core/vpcd.h"
#include "keyline/core/pq.h"
#include "keyline/station/config.h"
#include "keyline/station/errors.h"
#include "keyline/station/keys.h"
#include "keyline/station/personalize.h"
#include "keyline/station/pool.h"
#include "station_fixture.h"
#include "testenv.h"

namespace fs = std::filesystem;
using namespace keyline;
using namespace keyline::station;

using test_fixture::count;
using test_fixture::Fleet;
using test_fixture::fresh_station_db;

namespace {

// The pool and claim tests' station.
StationConfig station_config() {
  static const StationConfig cfg = test_fixture::fixture_station_config("itest-station");
  return cfg;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream o(path, std::ios::trunc);
  o << text;
}

}  // namespace

TEST_CASE("pool generate continues after every serial ever held: no IMEI is made twice across runs") {
  auto db = fresh_station_db("st_gen");
  const auto [a1, a2] = pool_generate_imeis(db, "35780502", 10);
  CHECK(a1 == core::Imei::from_tac_serial("35780502", 0).str());
  CHECK(a2 == core::Imei::from_tac_serial("35780502", 9).str());
  // Spend the whole pool the way a claim does (row deleted, IMEI remembered as spent).
  db.exec("WITH c AS (DELETE FROM pool.imei RETURNING imei) INSERT INTO pool.imei_spent (imei) SELECT imei FROM c");
  CHECK(pool_status(db).imeis == 0);
  const auto [b1, b2] = pool_generate_imeis(db, "35780502", 5);
  CHECK(b1 == core::Imei::from_tac_serial("35780502", 10).str());
  CHECK(b2 == core::Imei::from_tac_serial("35780502", 14).str());
  // A third run while some are still in the pool.
  const auto [c1, c2] = pool_generate_imeis(db, "35780502", 3);
  CHECK(c1 == core::Imei::from_tac_serial("35780502", 15).str());
  CHECK(c2 == core::Imei::from_tac_serial("35780502", 17).str());
  CHECK(count(db, "SELECT count(*) FROM (SELECT imei FROM pool.imei UNION ALL SELECT imei FROM pool.imei_spent) x") ==
        18);
  CHECK(count(db, "SELECT count(DISTINCT imei) FROM (SELECT imei FROM pool.imei UNION ALL SELECT imei FROM "
                  "pool.imei_spent) x") == 18);
  // Another TAC has its own serials.
  CHECK(pool_generate_imeis(db, "49015420", 2).first == core::Imei::from_tac_serial("49015420", 0).str());
  const auto st = pool_status(db);
  CHECK(st.imeis == 10);
  CHECK(st.imeis_spent == 10);
  CHECK(st.tacs == "35780502,49015420");
}

TEST_CASE("pool generate refuses a bad TAC, a bad count and an exhausted TAC range, changing nothing") {
  auto db = fresh_station_db("st_genbad");
  CHECK_THROWS_AS(pool_generate_imeis(db, "3578050", 1), core::FormatError);
  CHECK_THROWS_AS(pool_generate_imeis(db, "3578050A", 1), core::FormatError);
  CHECK_THROWS_AS(pool_generate_imeis(db, "35780502", 0), core::ConfigError);
  db.exec("INSERT INTO pool.imei_spent (imei) VALUES ($1)", {core::Imei::from_tac_serial("35780502", 999998).str()});
  CHECK_THROWS_AS(pool_generate_imeis(db, "35780502", 2), core::Error);
  CHECK(pool_status(db).imeis == 0);
  CHECK(pool_generate_imeis(db, "35780502", 1).first == core::Imei::from_tac_serial("35780502", 999999).str());
}

TEST_CASE("pool import refuses a file with one bad line atomically, and skips spent and present IMEIs") {
  auto db = fresh_station_db("st_imp");
  const std::string dir = test::testenv_dir();
  const std::string bad = dir + "/station-import-bad.csv";
  // Line 4 has a wrong Luhn digit (357805023984942 is the valid vector).
  write_text(bad, "imei,note\n260531793113837,a\n490154203237518,b\n357805023984943,c\n");
  try {
    pool_import_csv(db, bad);
    FAIL("a bad line was accepted");
  } catch (const core::FormatError& e) {
    CHECK(e.code() == core::ErrorCode::BadImei);
    CHECK(std::string(e.what()).find("line 4") != std::string::npos);
  }
  CHECK(pool_status(db).imeis == 0);

  db.exec("INSERT INTO pool.imei_spent (imei) VALUES ('490154203237518')");
  const std::string good = dir + "/station-import-good.csv";
  write_text(good, "imei\r\n\"260531793113837\",x\r\n\r\n490154203237518\r\n 357805023984942 ,y\r\n260531793113837\r\n");
  const auto r = pool_import_csv(db, good);
  CHECK(r.added == 2);
  CHECK(r.skipped == 2);  // the spent one and the duplicate
  CHECK(count(db, "SELECT count(*) FROM pool.imei WHERE imei = '490154203237518'") == 0);
  const auto again = pool_import_csv(db, good);
  CHECK(again.added == 0);
  CHECK(pool_status(db).imeis == 2);
  CHECK_THROWS_AS(pool_import_csv(db, dir + "/no-such-file.csv"), core::IoError);
}

TEST_CASE("pre-generated keys are wrapped by the token and unwrap to the stored public halves") {
  const auto cfg = station_config();
  auto keys = StationKeys::open(cfg, 2);
  auto db = fresh_station_db("st_keys");
  CHECK(pool_generate_keys(db, *keys.token, 3) == 3);
  CHECK(pool_status(db).keys == 3);
  const auto r = db.exec(
      "SELECT id, identity_wrapped, identity_public, transport_wrapped, transport_public FROM pool.device_key ORDER BY id");
  REQUIRE(r.rows() == 3);
  std::set<core::Bytes> seen;
  for (int i = 0; i < 3; ++i) {
    const std::int64_t id = r.int64(i, 0);
    const core::Bytes identity_public = r.bytea(i, 2), transport_public = r.bytea(i, 4);
    const auto idk = keys.token->unwrap_data(key_label::wrap, r.bytea(i, 1),
                                             pool_key_aad(id, KeyKind::Identity, identity_public));
    const auto trk = keys.token->unwrap_data(key_label::wrap, r.bytea(i, 3),
                                             pool_key_aad(id, KeyKind::Transport, transport_public));
    // The public halves derived from the unwrapped private keys are the row's, byte for byte.
    const PublicHalves derived = derive_public_halves(idk, trk);
    CHECK(derived.identity == identity_public);
    CHECK(derived.transport == transport_public);
    CHECK(transport_public.size() == 32);
    CHECK(seen.insert(identity_public).second);  // three different key sets
    // The wrapped form is not the key itself.
    auto w = r.bytea(i, 3);
    CHECK(std::search(w.begin(), w.end(), trk.begin(), trk.end()) == w.end());
  }
}

TEST_CASE("8 concurrent station threads never hand one IMEI twice; an empty pool refuses at the claim") {
  const auto cfg = station_config();
  std::string ci;
  auto db = fresh_station_db("st_claim", &ci);
  pool_generate_imeis(db, "35780502", 12);
  Fleet fleet(16, pki_path(cfg, pki_file::root));

  auto keys = StationKeys::open(cfg, 8);
  StationConfig pcfg = cfg;
  Personalizer p(pcfg, keys, nullptr);  // no public DB: records stay in the outbox
  std::vector<DeviceResult> results(fleet.endpoints().size());
  std::atomic<std::size_t> next{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      core::pq::Connection conn(ci);
      for (std::size_t i; (i = next++) < results.size();) results[i] = p.personalize(fleet.endpoints()[i], conn);
    });
  }
  for (auto& t : threads) t.join();

  std::set<std::string> imeis;
  int claimed = 0, empty = 0;
  for (const auto& r : results) {
    INFO(r.endpoint << ": " << r.error);
    CHECK(r.chip_id.size() == 20);
    if (r.error_code == static_cast<int>(errc::PoolEmpty)) {
      ++empty;
      CHECK(r.reached == Step::Claim);
      CHECK(r.imei.empty());
      continue;
    }
    ++claimed;
    CHECK(r.in_outbox);
    CHECK(r.error_code == static_cast<int>(errc::PublishPending));
    CHECK(imeis.insert(r.imei).second);
  }
  CHECK(claimed == 12);
  CHECK(empty == 4);
  CHECK(imeis.size() == 12);
  CHECK(pool_status(db).imeis == 0);
  CHECK(pool_status(db).imeis_spent == 12);
  CHECK(count(db, "SELECT count(DISTINCT imei) FROM journal.device WHERE state = 'backed_up'") == 12);
  CHECK(count(db, "SELECT count(*) FROM journal.device WHERE identity_wrapped IS NOT NULL") == 0);
  CHECK(count(db, "SELECT count(*) FROM secret.device") == 12);
  CHECK(count(db, "SELECT count(*) FROM journal.outbox WHERE published_at IS NULL") == 12);
  // Two audit rows per signature, two signatures per device.
  CHECK(count(db, "SELECT count(*) FROM journal.audit WHERE event = 'sign.begin'") == 24);
  CHECK(count(db, "SELECT count(*) FROM journal.audit WHERE event = 'sign.done'") == 24);

  // The claimed devices are personalized: a second run refuses them before any claim.
  pool_generate_imeis(db, "35780502", 2);
  core::pq::Connection conn(ci);
  for (const auto& r : results) {
    if (r.imei.empty()) continue;
    const auto again = p.personalize(r.endpoint, conn);
    CHECK_FALSE(again.done);
    // The outbox still holds the record (no public DB): the station resumes it rather than re-claiming.
    CHECK(again.imei == r.imei);
    break;
  }
  CHECK(pool_status(db).imeis == 2);
}

TEST_CASE("pool key source: a claim takes one pre-generated key set and deletes it") {
  const auto cfg = station_config();
  std::string ci;
  auto db = fresh_station_db("st_poolkeys", &ci);
  auto keys = StationKeys::open(cfg, 2);
  pool_generate_imeis(db, "35780502", 2);
  pool_generate_keys(db, *keys.token, 1);
  const auto pub = db.exec("SELECT identity_public FROM pool.device_key").bytea(0, 0);
  Fleet fleet(2, pki_path(cfg, pki_file::root));
  StationConfig pcfg = cfg;
  pcfg.key_source = "pool";
  Personalizer p(pcfg, keys, nullptr);
  const auto r1 = p.personalize(fleet.endpoints()[0], db);
  CHECK(r1.in_outbox);
  CHECK(db.exec("SELECT identity_public FROM journal.device WHERE imei = $1", {r1.imei}).bytea(0, 0) == pub);
  CHECK(pool_status(db).keys == 0);
  const auto r2 = p.personalize(fleet.endpoints()[1], db);
  CHECK(r2.error_code == static_cast<int>(errc::PoolEmpty));
  CHECK(r2.reached == Step::Claim);
  // The IMEI claim rolled back with the missing key set: it is still in the pool.
  CHECK(pool_status(db).imeis == 1);
  CHECK(count(db, "SELECT count(*) FROM journal.device") == 1);
}

TEST_CASE("a certificate that fails the profile lint: audit says sign.failed, the IMEI is voided, the device stays blank") {
  const auto cfg = station_config();
  std::string ci;
  auto db = fresh_station_db("st_lint", &ci);
  auto keys = StationKeys::open(cfg, 2);
  pool_generate_imeis(db, "35780502", 2);
  Fleet fleet(1, pki_path(cfg, pki_file::root));
  StationConfig bad = cfg;
  bad.hw_type = "not-an-oid";  // complete_config refuses this; set directly to reach the lint
  Personalizer p(bad, keys, nullptr);
  const auto r = p.personalize(fleet.endpoints()[0], db);
  INFO(r.error);
  CHECK_FALSE(r.done);
  CHECK(r.reached == Step::Issue);
  CHECK(r.error_code == static_cast<int>(core::ErrorCode::CertificateLint));
  CHECK(r.error.find("voided") != std::string::npos);
  CHECK(db.exec("SELECT state FROM journal.device WHERE imei = $1", {r.imei}).text(0, 0) == "void");
  // Both sign.begin rows commit with the claim; each ends in sign.failed (the transport certificate
  // was never signed because the identity certificate failed first).
  const auto audit =
      db.exec("SELECT event || '/' || cert_kind FROM journal.audit WHERE imei = $1 ORDER BY id", {r.imei});
  REQUIRE(audit.rows() == 4);
  CHECK(audit.text(0, 0) == "sign.begin/identity");
  CHECK(audit.text(1, 0) == "sign.begin/transport");
  CHECK(audit.text(2, 0) == "sign.failed/identity");
  CHECK(audit.text(3, 0) == "sign.failed/transport");
  CHECK(count(db, "SELECT count(*) FROM journal.audit WHERE event = 'sign.failed' AND detail LIKE '%hwType%'") == 1);

  // The same device with a good profile gets a fresh IMEI; the voided one is never reused.
  Personalizer good(cfg, keys, nullptr);
  const auto r2 = good.personalize(fleet.endpoints()[0], db);
  INFO(r2.error);
  CHECK(r2.in_outbox);
  CHECK(r2.imei != r.imei);
  CHECK(pool_status(db).imeis == 0);
}

TEST_CASE("two threads on one chip: one claims, the other gets JournalConflict and its IMEI goes back") {
  const auto cfg = station_config();
  std::string ci;
  auto db = fresh_station_db("st_conflict", &ci);
  auto keys = StationKeys::open(cfg, 4);
  pool_generate_imeis(db, "35780502", 4);
  Fleet fleet(1, pki_path(cfg, pki_file::root));
  Personalizer p(cfg, keys, nullptr);
  // Both threads read the blank device before either claims.
  std::atomic<int> arrived{0};
  p.set_step_hook([&](Step s, const std::string&) {
    if (s != Step::ReadDevice) return;
    ++arrived;
    for (int i = 0; i < 500 && arrived < 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  });
  DeviceResult r[2];
  std::thread a([&] {
    core::pq::Connection c(ci);
    r[0] = p.personalize(fleet.endpoints()[0], c);
  });
  std::thread b([&] {
    core::pq::Connection c(ci);
    r[1] = p.personalize(fleet.endpoints()[0], c);
  });
  a.join();
  b.join();
  REQUIRE(arrived == 2);
  const int loser = r[0].error_code == static_cast<int>(errc::JournalConflict) ? 0 : 1;
  INFO(r[0].error << " | " << r[1].error);
  CHECK(r[loser].error_code == static_cast<int>(errc::JournalConflict));
  CHECK(r[loser].reached == Step::Claim);
  CHECK(r[1 - loser].in_outbox);
  CHECK(count(db, "SELECT count(*) FROM journal.device") == 1);
  // Only the winner's IMEI left the pool.
  CHECK(pool_status(db).imeis == 3);
  CHECK(pool_status(db).imeis_spent == 1);
}

TEST_CASE("a claim left behind for a device another station then personalized is voided, the device refused") {
  const auto cfg = station_config();
  std::string ci_a, ci_b;
  auto db_a = fresh_station_db("st_deadclaim_a", &ci_a);
  auto db_b = fresh_station_db("st_deadclaim_b", &ci_b);
  auto keys = StationKeys::open(cfg, 2);
  pool_generate_imeis(db_a, "35780502", 2);
  pool_generate_imeis(db_b, "49015420", 2);
  Fleet fleet(1, pki_path(cfg, pki_file::root));
  // Station A stops right after its claim (as if it lost power).
  Personalizer a(cfg, keys, nullptr);
  a.set_step_hook([](Step s, const std::string&) {
    if (s == Step::Claim) throw std::runtime_error("station A stopped after the claim");
  });
  const auto ra = a.personalize(fleet.endpoints()[0], db_a);
  CHECK(ra.reached == Step::Claim);
  CHECK(db_a.exec("SELECT state FROM journal.device WHERE imei = $1", {ra.imei}).text(0, 0) == "claimed");
  // Station B personalizes the device meanwhile.
  Personalizer b(cfg, keys, nullptr);
  const auto rb = b.personalize(fleet.endpoints()[0], db_b);
  CHECK(rb.in_outbox);
  // Station A comes back: the device is refused, A's claim is voided, nothing else is claimed.
  Personalizer a2(cfg, keys, nullptr);
  const auto ra2 = a2.personalize(fleet.endpoints()[0], db_a);
  INFO(ra2.error);
  CHECK(ra2.error_code == static_cast<int>(errc::AlreadyPersonalized));
  CHECK(ra2.reached == Step::ReadDevice);
  CHECK(db_a.exec("SELECT state FROM journal.device WHERE imei = $1", {ra.imei}).text(0, 0) == "void");
  CHECK(pool_status(db_a).imeis == 1);
  CHECK(count(db_a, "SELECT count(*) FROM journal.device") == 1);
}

TEST_CASE("the pool tables keep an aggressive autovacuum; the secret DB has no column for key material") {
  auto db = fresh_station_db("st_schema");
  for (const char* table : {"imei", "device_key"}) {
    INFO(table);
    const auto opts = db.exec(
        "SELECT array_to_string(c.reloptions, ',') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'pool' AND c.relname = $1",
        {table});
    REQUIRE(opts.rows() == 1);
    CHECK(opts.text(0, 0).find("autovacuum_vacuum_scale_factor=0") != std::string::npos);
    CHECK(opts.text(0, 0).find("autovacuum_vacuum_cost_delay=0") != std::string::npos);
  }
  CHECK(count(db,
              "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'secret' AND"
              " (data_type = 'bytea' OR column_name ~* 'private|wrapped|pkcs8|secret')") == 0);
  // Migrations are idempotent: a second run applies nothing.
  CHECK(migrate_station_db(db) == 0);
}

namespace {

// Rows of the station DB that would show a device was certified or handed to the public DB.
void check_nothing_certified(core::pq::Connection& db) {
  CHECK(count(db, "SELECT count(*) FROM journal.device WHERE state <> 'void'") == 0);
  CHECK(count(db, "SELECT count(*) FROM journal.device WHERE identity_cert IS NOT NULL") == 0);
  CHECK(count(db, "SELECT count(*) FROM journal.audit WHERE event = 'sign.done'") == 0);
  CHECK(count(db, "SELECT count(*) FROM journal.outbox") == 0);
  CHECK(count(db, "SELECT count(*) FROM secret.device") == 0);
}

core::Bytes other_transport_public() {
  Botan::AutoSeeded_RNG rng;
  return Botan::Curve25519_PrivateKey(rng).public_value();
}

}  // namespace

TEST_CASE("a pool row whose transport_public was swapped: refused before any certificate, quarantined, nothing published") {
  const auto cfg = station_config();
  auto db = fresh_station_db("st_swapped_pub");
  auto keys = StationKeys::open(cfg, 2);
  pool_generate_imeis(db, "35780502", 2);
  pool_generate_keys(db, *keys.token, 2);
  const std::int64_t bad_id = count(db, "SELECT min(id) FROM pool.device_key");
  const core::Bytes swapped = other_transport_public();
  db.exec("UPDATE pool.device_key SET transport_public = $2 WHERE id = $1", {bad_id, swapped});
  Fleet fleet(1, pki_path(cfg, pki_file::root));
  StationConfig pcfg = cfg;
  pcfg.key_source = "pool";
  Personalizer p(pcfg, keys, nullptr);

  const auto r = p.personalize(fleet.endpoints()[0], db);
  INFO(r.error);
  CHECK_FALSE(r.done);
  CHECK_FALSE(r.in_outbox);
  CHECK(r.error_code == static_cast<int>(errc::KeyMismatch));
  CHECK(r.reached == Step::Claim);
  check_nothing_certified(db);
  CHECK(count(db, "SELECT count(*) FROM journal.audit") == 0);
  // The IMEI went back; the key set left the pool for the quarantine, with its reason.
  CHECK(pool_status(db).imeis == 2);
  CHECK(pool_status(db).keys == 1);
  const auto q = db.exec("SELECT id, transport_public, reason FROM pool.device_key_quarantine");
  REQUIRE(q.rows() == 1);
  CHECK(q.int64(0, 0) == bad_id);
  CHECK(q.bytea(0, 1) == swapped);
  CHECK(q.text(0, 2).find("pool key set") != std::string::npos);

  // The line is not blocked: the same (still blank) device takes the next key set, certified for it.
  const auto r2 = p.personalize(fleet.endpoints()[0], db);
  INFO(r2.error);
  CHECK(r2.in_outbox);
  const auto j = db.exec("SELECT transport_public FROM journal.device WHERE imei = $1", {r2.imei});
  REQUIRE(j.rows() == 1);
  CHECK(j.bytea(0, 0) != swapped);
}

TEST_CASE("a pool row wrapped for its row but whose keys do not give its public halves: the station derives, compares, refuses") {
  const auto cfg = station_config();
  auto db = fresh_station_db("st_derived_pub");
  auto keys = StationKeys::open(cfg, 2);
  pool_generate_imeis(db, "35780502", 1);
  // A key set as a faulty generator (or anyone holding the token) could write it: each blob opens for
  // its row and stated public half, but the transport key is not that public half's.
  Botan::AutoSeeded_RNG rng;
  const Botan::ECDSA_PrivateKey identity(rng, Botan::EC_Group("secp256r1"));
  const Botan::Curve25519_PrivateKey transport(rng);
  const core::Bytes identity_pub = identity.subject_public_key();
  const core::Bytes stated_transport_pub = other_transport_public();
  const std::int64_t id = 777;
  db.exec("INSERT INTO pool.device_key (id, identity_wrapped, identity_public, transport_wrapped, transport_public,"
          " wrap_key_label) VALUES ($1, $2, $3, $4, $5, $6)",
          {id,
           keys.token->wrap_data(key_label::wrap, Botan::PKCS8::BER_encode(identity),
                                 pool_key_aad(id, KeyKind::Identity, identity_pub)),
           identity_pub,
           keys.token->wrap_data(key_label::wrap, transport.get_x(),
                                 pool_key_aad(id, KeyKind::Transport, stated_transport_pub)),
           stated_transport_pub, std::string(key_label::wrap)});
  Fleet fleet(1, pki_path(cfg, pki_file::root));
  StationConfig pcfg = cfg;
  pcfg.key_source = "pool";
  Personalizer p(pcfg, keys, nullptr);
  const auto r = p.personalize(fleet.endpoints()[0], db);
  INFO(r.error);
  CHECK(r.error_code == static_cast<int>(errc::KeyMismatch));
  CHECK(r.error.find("transport key does not give the stored transport public half") != std::string::npos);
  check_nothing_certified(db);
  CHECK(count(db, "SELECT count(*) FROM pool.device_key_quarantine WHERE id = 777") == 1);
  CHECK(pool_status(db).imeis == 1);
}

TEST_CASE("a wrapped blob moved to another row does not unwrap: pool rows and journal rows") {
  const auto cfg = station_config();
  auto db = fresh_station_db("st_moved_blob");
  auto keys = StationKeys::open(cfg, 2);
  pool_generate_keys(db, *keys.token, 2);
  const auto r = db.exec(
      "SELECT id, identity_wrapped, identity_public, transport_wrapped, transport_public FROM pool.device_key ORDER BY id");
  REQUIRE(r.rows() == 2);
  const std::int64_t a = r.int64(0, 0), b = r.int64(1, 0);
  const core::Bytes a_idw = r.bytea(0, 1), a_idp = r.bytea(0, 2), a_trw = r.bytea(0, 3), a_trp = r.bytea(0, 4);
  // Control: in its own row the blob opens.
  CHECK_NOTHROW(keys.token->unwrap_data(key_label::wrap, a_idw, pool_key_aad(a, KeyKind::Identity, a_idp)));
  // The whole key set of row a copied into row b (its public halves too): b's id is in the AAD.
  CHECK_THROWS_AS(keys.token->unwrap_data(key_label::wrap, a_idw, pool_key_aad(b, KeyKind::Identity, a_idp)),
                  core::CryptoError);
  CHECK_THROWS_AS(keys.token->unwrap_data(key_label::wrap, a_trw, pool_key_aad(b, KeyKind::Transport, a_trp)),
                  core::CryptoError);
  // Beside another public half, or as the other kind of key, it does not open either.
  CHECK_THROWS_AS(keys.token->unwrap_data(key_label::wrap, a_idw, pool_key_aad(a, KeyKind::Identity, r.bytea(1, 2))),
                  core::CryptoError);
  CHECK_THROWS_AS(keys.token->unwrap_data(key_label::wrap, a_trw, pool_key_aad(a, KeyKind::Identity, a_trp)),
                  core::CryptoError);
  // Through the station: row b now holds row a's blobs and public halves; a is gone (as if claimed).
  db.exec("UPDATE pool.device_key SET identity_wrapped = $2, identity_public = $3, transport_wrapped = $4,"
          " transport_public = $5 WHERE id = $1",
          {b, a_idw, a_idp, a_trw, a_trp});
  db.exec("DELETE FROM pool.device_key WHERE id = $1", {a});
  pool_generate_imeis(db, "35780502", 1);
  Fleet fleet(1, pki_path(cfg, pki_file::root));
  StationConfig pcfg = cfg;
  pcfg.key_source = "pool";
  Personalizer p(pcfg, keys, nullptr);
  const auto res = p.personalize(fleet.endpoints()[0], db);
  INFO(res.error);
  CHECK(res.error_code == static_cast<int>(errc::KeyMismatch));
  check_nothing_certified(db);
  CHECK(count(db, "SELECT count(*) FROM pool.device_key_quarantine") == 1);

  // Journal rows are bound to their chip: a blob made for one chip does not open for another.
  const core::ChipId chip1 = core::ChipId::parse("4B4C0001000000010001"), chip2 = core::ChipId::parse("4B4C0001000000020001");
  const core::SecureBytes secret(32, 0x42);
  const auto w = keys.token->wrap_data(key_label::wrap, secret, journal_key_aad(chip1, KeyKind::Transport, a_trp));
  CHECK(keys.token->unwrap_data(key_label::wrap, w, journal_key_aad(chip1, KeyKind::Transport, a_trp)) == secret);
  CHECK_THROWS_AS(keys.token->unwrap_data(key_label::wrap, w, journal_key_aad(chip2, KeyKind::Transport, a_trp)),
                  core::CryptoError);
}

TEST_CASE("resume: a journal row whose transport_public was changed is voided, nothing certified for it") {
  const auto cfg = station_config();
  auto db = fresh_station_db("st_resume_swapped");
  auto keys = StationKeys::open(cfg, 2);
  pool_generate_imeis(db, "35780502", 2);
  Fleet fleet(1, pki_path(cfg, pki_file::root));
  Personalizer first(cfg, keys, nullptr);
  first.set_step_hook([](Step s, const std::string&) {
    if (s == Step::Claim) throw std::runtime_error("stopped after the claim");
  });
  const auto r1 = first.personalize(fleet.endpoints()[0], db);
  REQUIRE(r1.reached == Step::Claim);
  const core::Bytes swapped = other_transport_public();
  db.exec("UPDATE journal.device SET transport_public = $2 WHERE imei = $1", {r1.imei, swapped});

  Personalizer again(cfg, keys, nullptr);
  const auto r2 = again.personalize(fleet.endpoints()[0], db);
  INFO(r2.error);
  CHECK(r2.error_code == static_cast<int>(errc::KeyMismatch));
  CHECK_FALSE(r2.in_outbox);
  CHECK(db.exec("SELECT state FROM journal.device WHERE imei = $1", {r1.imei}).text(0, 0) == "void");
  check_nothing_certified(db);
  // The device stayed blank and is personalized with a new IMEI on the next run.
  const auto r3 = again.personalize(fleet.endpoints()[0], db);
  INFO(r3.error);
  CHECK(r3.in_outbox);
  CHECK(r3.imei != r1.imei);
}

TEST_CASE("migration 0006: a live row whose old blobs were wiped is voided and the blank device gets a new claim") {
  const auto cfg = station_config();
  auto db = fresh_station_db("st_mig6");
  auto keys = StationKeys::open(cfg, 2);
  pool_generate_imeis(db, "35780502", 2);
  Fleet fleet(1, pki_path(cfg, pki_file::root));
  Personalizer first(cfg, keys, nullptr);
  first.set_step_hook([](Step s, const std::string&) {
    if (s == Step::Claim) throw std::runtime_error("stopped after the claim");
  });
  const auto r1 = first.personalize(fleet.endpoints()[0], db);
  REQUIRE(r1.reached == Step::Claim);
  // What 0006 does to live rows (its statement, run again here on a row made after it).
  db.exec("UPDATE journal.device SET identity_wrapped = NULL, transport_wrapped = NULL"
          " WHERE state IN ('claimed', 'issued', 'stored')");
  Personalizer again(cfg, keys, nullptr);
  const auto r2 = again.personalize(fleet.endpoints()[0], db);
  INFO(r2.error);
  CHECK(r2.in_outbox);
  CHECK(r2.imei != r1.imei);
  const auto old = db.exec("SELECT state, void_reason FROM journal.device WHERE imei = $1", {r1.imei});
  CHECK(old.text(0, 0) == "void");
  CHECK(old.text(0, 1).find("migration 0006") != std::string::npos);
}

namespace {

// A device on a real socket that speaks the vpcd framing and answers SELECT, GET DATA CPLC and
// STATUS, the latter with whatever bytes the test gives: what a broken chip or a rewriting proxy
// between station and device could send.
class FakeDevice {
 public:
  explicit FakeDevice(core::SecureBytes status_answer) : m_status(std::move(status_answer)) {
    m_listen = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(m_listen, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(m_listen, 4) == 0);
    socklen_t len = sizeof a;
    ::getsockname(m_listen, reinterpret_cast<sockaddr*>(&a), &len);
    m_endpoint = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
    m_thread = std::thread([this] { serve(); });
  }
  ~FakeDevice() {
    ::shutdown(m_listen, SHUT_RDWR);
    ::close(m_listen);
    m_thread.join();
  }
  const std::string& endpoint() const { return m_endpoint; }
  static core::Cplc cplc() { return core::Cplc::make(0x4B4C, 0x0001, 0xA1B2C3D4, 0xE5F6); }

 private:
  void serve() {
    for (int fd; (fd = ::accept(m_listen, nullptr, nullptr)) >= 0;) {
      core::FrameDecoder dec;
      std::uint8_t buf[4096];
      for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) {
        dec.feed(buf, static_cast<std::size_t>(n));
        while (auto payload = dec.next()) {
          if (payload->size() == 1) {
            if ((*payload)[0] == core::vpcd::get_atr) send_frame(fd, core::SecureBytes{0x3B, 0x80, 0x80, 0x01, 0x01});
            continue;
          }
          send_frame(fd, core::encode_response(answer(core::decode_command(*payload))));
        }
      }
      ::close(fd);
    }
  }
  core::ResponseApdu answer(const core::CommandApdu& c) const {
    core::ResponseApdu r;
    if (c.ins == core::applet::ins::status) {
      r.data = m_status;
    } else if (c.ins == core::applet::ins::get_data && c.p1 == 0x9F && c.p2 == 0x7F) {
      const auto body = cplc().encode_tagged();
      r.data.assign(body.begin(), body.end());
    } else if (c.ins != core::applet::ins::select) {
      r.sw = core::sw::ins_not_supported;
    }
    return r;
  }
  static void send_frame(int fd, const core::SecureBytes& payload) {
    const auto frame = core::encode_frame(payload);
    ::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL);
  }

  core::SecureBytes m_status;
  int m_listen = -1;
  std::string m_endpoint;
  std::thread m_thread;
};

}  // namespace

TEST_CASE("a device whose STATUS answer has 11 bytes is refused with a typed error before anything is claimed") {
  // Issue 12: lifecycle PERSONALIZED and the chip ID, no flash byte. The station's old check
  // (size < 1 + 10) passed it and then built the IMEI string from begin() + 12 .. end().
  const auto chip = FakeDevice::cplc().chip_id();
  core::SecureBytes eleven{0x0F};
  eleven.insert(eleven.end(), chip.bytes().begin(), chip.bytes().end());
  REQUIRE(eleven.size() == 11);
  const auto cfg = station_config();
  auto db = fresh_station_db("st_status11");
  auto keys = StationKeys::open(cfg, 2);
  pool_generate_imeis(db, "35780502", 1);
  FakeDevice dev(eleven);
  Personalizer p(cfg, keys, nullptr);
  const auto r = p.personalize(dev.endpoint(), db);
  INFO(r.error);
  CHECK(r.error_code == static_cast<int>(core::ErrorCode::BadApdu));
  CHECK(r.reached == Step::ReadDevice);
  CHECK(r.error.find("STATUS answer") != std::string::npos);
  CHECK(count(db, "SELECT count(*) FROM journal.device") == 0);
  CHECK(pool_status(db).imeis == 1);

  // Control: the same fake device with a well-formed personalized STATUS is refused as personalized.
  core::SecureBytes twelve = eleven;
  twelve.push_back(0x01);
  FakeDevice good(twelve);
  const auto r2 = p.personalize(good.endpoint(), db);
  INFO(r2.error);
  CHECK(r2.error_code == static_cast<int>(errc::AlreadyPersonalized));
}
