// Webhooks (docs/kps.md "Notifications"): each new notice is POSTed, signed, to the URI its device
// registered; a failure is retried after 1, 2, 4, 8, 16 s and dead-lettered after --webhook-tries
// (audit row). A delivery never acknowledges the notice: the device still fetches and acks it.
#include <regex>
#include <thread>

#include "background.h"
#include "keyline/core/http.h"
#include "signing.h"

namespace keyline::kps {
namespace {

// One attempt is bounded by its connect (2 s) and answer (5 s) deadlines (post below). Each delivery
// runs on its own thread, at most kWorkers at a time and one per chip (WebhookFlights): a device's slow
// or silent receiver holds one slot for one attempt and never the loop, so other devices' notices go
// out on the next pass (250 ms). kLease (60 s) is far longer than an attempt.
constexpr int kWorkers = 8;
constexpr std::int64_t kLease = 60;  // a claimed delivery is retried by anyone after this if its claimer died

struct Due {
  std::string id, notification, chip, uri;
  int attempts = 0;
};

// At most `room` due notices, one per chip and none of a chip whose delivery is under way (`busy`, a
// PostgreSQL text[] literal of hex chip IDs). FOR UPDATE does not go with a window function: lock the
// candidates first, then rank them per chip.
std::vector<Due> claim(Context& c, std::int64_t now, int room, const std::string& busy) {
  auto conn = c.pool->acquire();
  auto r = conn->exec(
      "WITH cand AS (SELECT id, chip, next_at FROM webhook_deliveries WHERE state = 'pending' AND "
      "next_at <= to_timestamp($1) AND chip <> ALL($5::text[]) ORDER BY next_at LIMIT $4 FOR UPDATE SKIP LOCKED), "
      "ranked AS (SELECT id, next_at, row_number() OVER (PARTITION BY chip ORDER BY next_at) AS k FROM cand) "
      "UPDATE webhook_deliveries w SET next_at = to_timestamp($1 + $2) "
      "FROM (SELECT id FROM ranked WHERE k = 1 ORDER BY next_at LIMIT $3) s WHERE w.id = s.id "
      "RETURNING w.id, w.notification_id, w.chip, w.uri, w.attempts",
      {now, kLease, room, room * 8, busy});
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
      // An unreachable or silent receiver (status 0) is the device's, not the notice's: its other
      // notices wait as long, so they do not take the next pass's workers for a timeout each.
      if (status == 0)
        tx.exec("UPDATE webhook_deliveries SET next_at = GREATEST(next_at, to_timestamp($2)) "
                "WHERE chip = $1 AND state = 'pending' AND next_at <= to_timestamp($2)",
                {d.chip, now + backoff});
    }
    tx.commit();
  });
}

void deliver_one(Context& c, const Due& d) {
  try {
    const std::string body = notice_json(c, d.notification);
    settle(c, d, body.empty() ? 200 : post(c, d.uri, body));  // an acked-and-purged notice needs no push
  } catch (const std::exception& e) {  // a delivery thread must not throw; the lease retries it
    c.log->line("{\"event\":\"webhook-failed\",\"detail\":" + q(e.what()) + "}");
  }
  auto& f = c.webhooks;
  std::lock_guard<std::mutex> lock(f.mutex);
  --f.running;
  f.chips.erase(d.chip);
  f.done.notify_all();
}

}  // namespace

int webhook_pass(Context& c) {
  if (c.config.webhook_ca.empty() || c.stopping) return 0;
  auto& f = c.webhooks;
  int room = 0;
  std::string busy = "{";
  {
    std::lock_guard<std::mutex> lock(f.mutex);
    room = kWorkers - f.running;
    for (const auto& chip : f.chips) busy += (busy.size() > 1 ? "," : "") + chip;  // hex digits: no quoting
  }
  if (room <= 0) return 0;
  const auto due = claim(c, c.now(), room, busy + "}");
  for (const auto& d : due) {
    {
      std::lock_guard<std::mutex> lock(f.mutex);
      ++f.running;
      f.chips.insert(d.chip);
    }
    std::thread([&c, d] { deliver_one(c, d); }).detach();  // webhook_drain waits for it
  }
  return static_cast<int>(due.size());
}

void webhook_drain(Context& c) {
  std::unique_lock<std::mutex> lock(c.webhooks.mutex);
  c.webhooks.done.wait(lock, [&] { return c.webhooks.running == 0; });
}

}  // namespace keyline::kps
