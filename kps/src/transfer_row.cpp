#include "transfer_row.h"

namespace keyline::kps {
namespace {

std::string select_columns() {
  return "SELECT id::text, COALESCE(group_id::text, ''), source_chip, target_chip, label, state, transport_chain, " +
         ts_col("requested_at") + ", " + ts_col("expires_at") + ", " + ts_col("delivered_at") + ", " +
         ts_col("acknowledged_at") + ", " + ts_col("transport_served_at") + ", COALESCE(owner_account, 0) FROM transfers ";
}

TransferRow row_of(const core::pq::Result& r, int i) {
  TransferRow t;
  t.id = r.text(i, 0);
  t.group_id = r.text(i, 1);
  t.source = r.text(i, 2);
  t.target = r.text(i, 3);
  t.label = r.text(i, 4);
  t.state = r.text(i, 5);
  t.chain_pem = r.text(i, 6);
  t.requested_at = r.text(i, 7);
  t.expires_at = r.text(i, 8);
  t.delivered_at = r.text(i, 9);
  t.acknowledged_at = r.text(i, 10);
  t.transport_served_at = r.text(i, 11);
  t.owner_account = r.int64(i, 12);
  return t;
}

}  // namespace

std::string TransferRow::json(bool with_transport) const {
  std::string j = "{\"id\":" + q(id);
  if (!group_id.empty()) j += ",\"group_id\":" + q(group_id);
  j += ",\"source\":" + q(source) + ",\"target\":" + q(target) + ",\"label\":" + q(label) + ",\"state\":" + q(state) +
       ",\"requested_at\":" + q(requested_at) + ",\"expires_at\":" + q(expires_at);
  if (!delivered_at.empty()) j += ",\"delivered_at\":" + q(delivered_at);
  if (!acknowledged_at.empty()) j += ",\"acknowledged_at\":" + q(acknowledged_at);
  j += ",\"key_uri\":" + q("/v1/transfers/" + id + "/key");
  if (with_transport) j += ",\"transport_certificates\":" + q(chain_pem);
  return j + "}";
}

std::optional<TransferRow> load_transfer(core::pq::Connection& c, const std::string& id, bool for_update) {
  auto r = c.exec_prepared(select_columns() + "WHERE id = $1::uuid" + (for_update ? " FOR UPDATE" : ""), {id});
  if (r.empty()) return std::nullopt;
  return row_of(r, 0);
}

std::vector<TransferRow> load_group(core::pq::Connection& c, const std::string& group_id, std::int64_t account) {
  auto r = c.exec_prepared(select_columns() + "WHERE group_id = $1::uuid AND owner_account = $2::bigint ORDER BY target_chip",
                  {group_id, account});
  std::vector<TransferRow> out;
  for (int i = 0; i < r.rows(); ++i) out.push_back(row_of(r, i));
  return out;
}

}  // namespace keyline::kps
