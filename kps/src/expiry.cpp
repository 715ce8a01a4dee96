// Expiry and purge (docs/kps.md "Replay, expiry, audit"): a transfer lives at most its TTL; what is
// past it is expired within one purge interval (at most 60 s), and removing a device purges its transfers.
#include "background.h"
#include "keyline/core/cplc.h"
#include "keyline/core/secret_input.h"

namespace keyline::kps {
namespace {

constexpr int kBatch = 200;
constexpr std::int64_t kRequestIdKeep = 24 * 3600;

// One batch of at most kBatch expired transfers, in one transaction (short row locks).
int expire_batch(Context& c, std::int64_t now) {
  auto conn = c.pool->acquire();
  int expired = 0;
  core::pq::run_transaction(*conn, core::pq::Isolation::ReadCommitted, [&](core::pq::Transaction& tx) {
    auto r = tx.exec(
        "UPDATE transfers SET state = 'expired', ciphertext = NULL, closed_at = to_timestamp($1) WHERE id IN "
        "(SELECT id FROM transfers WHERE state IN ('requested', 'delivered') AND expires_at <= to_timestamp($1) "
        "ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING id::text, source_chip, target_chip",
        {now, kBatch});
    expired = r.rows();
    for (int i = 0; i < r.rows(); ++i) {
      const std::string id = r.text(i, 0);
      audit(tx, now, id, "expired", "kps", "ttl passed");
      notify(tx, now, r.text(i, 1), "transfer-expired", "/v1/transfers/" + id, id);
      notify(tx, now, r.text(i, 2), "transfer-expired", "/v1/transfers/" + id, id);
    }
    tx.exec("DELETE FROM nonces WHERE expires_at < to_timestamp($1)", {now});
    tx.exec("DELETE FROM request_ids WHERE created_at < to_timestamp($1)", {now - kRequestIdKeep});
    tx.commit();
  });
  return expired;
}

}  // namespace

// Batches until one comes back short, so every transfer past its TTL at the start of the pass is
// expired by its end, however many there are (one batch of 200 a minute fell behind a busy line).
int purge_pass(Context& c) {
  const std::int64_t now = c.now();
  int total = 0;
  for (int n = kBatch; n == kBatch;) {
    n = expire_batch(c, now);
    total += n;
  }
  return total;
}

int device_remove(const Config& config, const std::string& chip_text) {
  const std::string chip = core::ChipId::parse(chip_text).str();
  if (!config.db_password_file.empty()) core::export_pgpassword(core::read_secret_file(config.db_password_file));
  core::pq::Connection conn(config.db);
  const std::int64_t now = static_cast<std::int64_t>(std::time(nullptr)) + config.clock_offset_s;
  int purged = 0;
  core::pq::run_transaction(conn, core::pq::Isolation::ReadCommitted, [&](core::pq::Transaction& tx) {
    auto r = tx.exec(
        "UPDATE transfers SET state = 'purged', ciphertext = NULL, closed_at = to_timestamp($2) "
        "WHERE (source_chip = $1 OR target_chip = $1) AND state IN ('requested', 'delivered') RETURNING id::text",
        {chip, now});
    purged = r.rows();
    for (int i = 0; i < r.rows(); ++i) audit(tx, now, r.text(i, 0), "purged", "admin", "device " + chip + " removed");
    tx.exec("DELETE FROM webhook_deliveries WHERE chip = $1", {chip});
    tx.exec("DELETE FROM notifications WHERE chip = $1", {chip});
    tx.exec("DELETE FROM nonces WHERE chip = $1", {chip});
    tx.exec("DELETE FROM webhooks WHERE chip = $1", {chip});
    tx.exec("DELETE FROM account_devices WHERE chip = $1", {chip});
    tx.exec("DELETE FROM transport_certs WHERE chip = $1", {chip});
    tx.commit();
  });
  return purged;
}

}  // namespace keyline::kps
