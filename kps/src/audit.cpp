// The audit trail (docs/kps.md "Replay, expiry, audit"): one row per step of a transfer, written in
// the transaction of the step, never a key, an envelope or a token. And the signed requests' nonces,
// kept in PostgreSQL so that a replay is refused across restarts and across KPS processes.
#include "context.h"

namespace keyline::kps {

void audit(core::pq::Transaction& tx, std::int64_t now, const std::string& transfer_id, const std::string& step,
           const std::string& actor, const std::string& detail) {
  tx.connection().exec_prepared("INSERT INTO audit (at, transfer_id, step, actor, detail) VALUES (to_timestamp($1), $2::uuid, $3, $4, $5)",
          {now, transfer_id.empty() ? core::pq::Param::null() : core::pq::Param(transfer_id), step, actor, detail});
}

bool first_use_of_nonce(Context& c, const std::string& chip, const std::string& nonce, std::int64_t expires_at) {
  auto conn = c.pool->acquire();
  auto r = conn->exec_prepared(
      "INSERT INTO nonces (chip, nonce, expires_at) VALUES ($1, $2, to_timestamp($3)) ON CONFLICT DO NOTHING",
      {chip, nonce, expires_at});
  return r.affected() == 1;
}

}  // namespace keyline::kps
