// Webhooks (docs/kps.md "Notifications"): each new notice is POSTed, signed, to the URI its device
// registered; a failure is retried after 1, 2, 4, 8, 16 s and dead-lettered after --webhook-tries
// (audit row). A delivery never acknowledges the notice: the device still fetches and acks it.
#include <regex>

#include "background.h"
#include "keyline/core/http.h"
#include "signing.h"

namespace keyline::kps {
namespace {

constexpr int kBatch = 16;
constexpr std::int64_t kLease = 60;  // a claimed delivery is retried by anyone after this if its claimer died

struct Due {
  std::string id, notification, chip, uri;
  int attempts = 0;
};

std::vector<Due> claim(Context& c, std::int64_t now) {
  auto conn = c.pool->acquire();
  auto r = conn->exec(
      "UPDATE webhook_deliveries SET next_at = to_timestamp($1 + $2) WHERE id IN (SELECT id FROM webhook_deliveries "
      "WHERE state = 'pending' AND next_at <= to_timestamp($1) ORDER BY next_at LIMIT $3 FOR UPDATE SKIP LOCKED) "
      "RETURNING id, notification_id, chip, uri, attempts",
      {now, kLease, kBatch});
  std::vector<Due> out;
  for (int i = 0; i < r.rows(); ++i)
    out.push_back({r.text(i, 0), r.text(i, 1), r.text(i, 2), r.text(i, 3), static_cast<int>(r.int64(i, 4))});
  return out;
}

std::string notice_json(Context& c, const std::string& id) {
  auto conn = c.pool->acquire();
  auto r = conn->exec("SELECT id, reason, uri, COALESCE(transfer_id::text, ''), " + ts_col("created_at") +
                          " FROM notifications WHERE id = $1::bigint",
                      {id});
  if (r.empty()) return {};
  return "{\"id\":" + r.text(0, 0) + ",\"reason\":" + q(r.text(0, 1)) + ",\"uri\":" + q(r.text(0, 2)) +
         ",\"transfer_id\":" + q(r.text(0, 3)) + ",\"created_at\":" + q(r.text(0, 4)) + "}";
}

// The HTTP status of the receiver, 0 when it could not be reached.
int post(Context& c, const std::string& uri, const std::string& body) {
  static const std::regex re("^(https://[^/]+)(/.*)?$");
  std::smatch m;
  if (!std::regex_match(uri, m, re)) return 0;
  core::http::ClientOptions o;
  o.base_url = m[1].str();
  o.ca_file = c.config.webhook_ca;
  o.connect_attempts = 1;
  o.connect_timeout = std::chrono::seconds(2);
  o.io_timeout = std::chrono::seconds(5);
  const std::string path = m[2].matched ? m[2].str() : "/";
  std::map<std::string, std::string> headers;
  if (c.signer)
    for (auto& [k, v] : c.signer->sign_webhook(o.base_url.substr(8), path, body, c.now())) headers[k] = v;
  try {
    core::http::Client client(o);
    return client.post(path, body, "application/json", headers).status;
  } catch (const core::Error& e) {
    c.log->line("{\"event\":\"webhook-failed\",\"detail\":" + q(e.what()) + "}");
    return 0;
  }
}

void settle(Context& c, const Due& d, int status) {
  const std::int64_t now = c.now();
  auto conn = c.pool->acquire();
  if (status >= 200 && status < 300) {
    ++c.metrics.webhook_done;
    conn->exec("UPDATE webhook_deliveries SET state = 'done', attempts = attempts + 1, last_status = $2 WHERE id = $1::bigint",
               {d.id, status});
    return;
  }
  const int tries = d.attempts + 1;
  core::pq::run_transaction(*conn, core::pq::Isolation::ReadCommitted, [&](core::pq::Transaction& tx) {
    if (tries >= c.config.webhook_tries) {
      ++c.metrics.webhook_dead;
      tx.exec("UPDATE webhook_deliveries SET state = 'dead', attempts = $2, last_status = $3 WHERE id = $1::bigint",
              {d.id, tries, status});
      audit(tx, now, "", "webhook-dead", "kps",
            "notice " + d.notification + " to " + d.chip + " after " + std::to_string(tries) + " tries");
    } else {
      ++c.metrics.webhook_retried;
      const std::int64_t backoff = std::int64_t{1} << (tries - 1);  // 1, 2, 4, 8, 16 s
      tx.exec("UPDATE webhook_deliveries SET attempts = $2, last_status = $3, next_at = to_timestamp($4) WHERE id = $1::bigint",
              {d.id, tries, status, now + backoff});
    }
    tx.commit();
  });
}

}  // namespace

int webhook_pass(Context& c) {
  if (c.config.webhook_ca.empty()) return 0;
  const auto due = claim(c, c.now());
  for (const auto& d : due) {
    const std::string body = notice_json(c, d.notification);
    settle(c, d, body.empty() ? 200 : post(c, d.uri, body));  // an acked-and-purged notice needs no push
  }
  return static_cast<int>(due.size());
}

}  // namespace keyline::kps
