// One row of `transfers` as the routes and the purge loop read it, and its JSON (docs/kps.md
// "Transfer JSON").
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "context.h"

namespace keyline::kps {

struct TransferRow {
  std::string id, group_id, source, target, label, state, chain_pem, requested_at, expires_at, delivered_at,
      acknowledged_at, transport_served_at;
  std::int64_t owner_account = 0;

  bool party(const Caller& who) const {
    return who.device() ? (who.chip == source || who.chip == target) : (owner_account != 0 && owner_account == who.account);
  }
  // with_transport: the source's view after AC2 held (docs/kps.md "S1/S2").
  std::string json(bool with_transport) const;
};

std::optional<TransferRow> load_transfer(core::pq::Connection& c, const std::string& id, bool for_update = false);
std::vector<TransferRow> load_group(core::pq::Connection& c, const std::string& group_id, std::int64_t account);

}  // namespace keyline::kps
