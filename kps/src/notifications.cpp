// NM, the notification module (docs/kps.md "Notifications"): notices written in the transaction of
// the change they report, listed oldest first, long-polled, acknowledged one by one by their own
// device, and pushed to a registered webhook (webhooks.cpp). A notice goes away only when acked.
#include <libpq-fe.h>
#include <poll.h>

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <chrono>
#include <cstdlib>
#include <regex>

#include <thread>

#include "background.h"
#include "context.h"
#include "keyline/core/http.h"

namespace keyline::kps {
namespace {

constexpr int kMaxWait = 30;
// A long poll re-reads at least this often, so a NOTIFY lost with a dropped listener connection
// delays a notice by at most this much.
constexpr auto kRecheck = std::chrono::seconds(1);

std::string list_json(core::pq::Connection& conn, const std::string& chip, int* count) {
  auto r = conn.exec_prepared(
      "SELECT id, reason, uri, COALESCE(transfer_id::text, ''), " + ts_col("created_at") +
          " FROM notifications WHERE chip = $1 AND acked_at IS NULL ORDER BY id LIMIT 100",
      {chip});
  std::string j = "{\"notifications\":[";
  for (int i = 0; i < r.rows(); ++i) {
    if (i) j += ",";
    j += "{\"id\":" + r.text(i, 0) + ",\"reason\":" + q(r.text(i, 1)) + ",\"uri\":" + q(r.text(i, 2)) +
         ",\"transfer_id\":" + q(r.text(i, 3)) + ",\"created_at\":" + q(r.text(i, 4)) + "}";
  }
  *count = r.rows();
  return j + "]}";
}

// wait=N: "" is 0; else 0..30 digits only.
std::optional<int> wait_seconds(const Request& req) {
  const auto qpos = req.target.find('?');
  if (qpos == std::string::npos) return 0;
  static const std::regex re("^wait=([0-9]{1,2})$");
  std::smatch m;
  const std::string query = req.target.substr(qpos + 1);
  if (!std::regex_match(query, m, re)) return std::nullopt;
  const int n = std::atoi(m[1].str().c_str());
  if (n > kMaxWait) return std::nullopt;
  return n;
}

// A chip's seat: the newest poll takes it and wakes the room, so the older poll of the same chip (a
// lost connection, or a device holding slots) sees it has lost the seat and answers at once.
struct Seat {
  PollSeats& seats;
  std::string chip;
  std::uint64_t ticket = 0;
  Seat(Context& c, const std::string& chip_) : seats(c.polls), chip(chip_) {
    bool taken = false;
    {
      std::lock_guard<std::mutex> lock(seats.mutex);
      ticket = ++seats.next;
      auto& seat = seats.newest[chip];
      taken = seat != 0;
      seat = ticket;
    }
    if (taken) c.waiters.wake();  // only an older poll of this chip has anything to notice
  }
  bool lost() {
    std::lock_guard<std::mutex> lock(seats.mutex);
    const auto it = seats.newest.find(chip);
    return it == seats.newest.end() || it->second != ticket;
  }
  ~Seat() {
    std::lock_guard<std::mutex> lock(seats.mutex);
    const auto it = seats.newest.find(chip);
    if (it != seats.newest.end() && it->second == ticket) seats.newest.erase(it);
  }
};

// Holds a worker thread while it waits: one waiting poll per chip (Seat), and the number of waiters is
// capped (--max-waiters) so waiting devices cannot take every worker; beyond the cap a poll is answered
// at once.
Reply list(Context& c, const Request& req, const Caller& who) {
  const auto wait = wait_seconds(req);
  if (!wait) return problem(400, "bad-wait", "wait is a number of seconds, 0 to 30");
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(*wait);
  std::optional<Seat> seat;
  if (*wait > 0) seat.emplace(c, who.chip);
  bool counted = false;
  if (*wait > 0 && c.waiting.fetch_add(1) < c.config.max_waiters) {
    counted = true;
  } else if (*wait > 0) {
    c.waiting.fetch_sub(1);
  }
  struct Leave {
    Context& c;
    bool counted;
    ~Leave() {
      if (counted) c.waiting.fetch_sub(1);
    }
  } leave{c, counted};
  for (;;) {
    const auto seen = c.waiters.generation();
    int n = 0;
    std::string body;
    {
      auto conn = c.pool->acquire();
      body = list_json(*conn, who.chip, &n);
    }
    const auto now = std::chrono::steady_clock::now();
    if (n > 0 || !counted || now >= until || c.stopping || seat->lost()) return http::json_reply(200, body);
    c.waiters.wait(seen, std::min(until, now + kRecheck));
  }
}

Reply ack(Context& c, const Caller& who, const std::string& id) {
  if (id.empty() || id.size() > 18 || id.find_first_not_of("0123456789") != std::string::npos)
    return problem(404, "not-found", "no such notification");
  auto conn = c.pool->acquire();
  auto r = conn->exec_prepared(
      "UPDATE notifications SET acked_at = COALESCE(acked_at, to_timestamp($3)) WHERE id = $1::bigint AND chip = $2",
      {id, who.chip, c.now()});
  if (r.affected() == 0) return problem(404, "not-found", "no such notification");
  return http::json_reply(200, "{\"id\":" + id + ",\"acked\":true}");
}

Reply put_webhook(Context& c, const Request& req, const Caller& who) {
  if (!http::has_media_type(req, "application/json"))
    return problem(415, "unsupported-media-type", "send the request as application/json");
  std::string uri;
  try {
    Poco::JSON::Parser parser;
    uri = parser.parse(req.body).extract<Poco::JSON::Object::Ptr>()->getValue<std::string>("uri");
  } catch (const std::exception&) {
    return problem(400, "bad-request", "expected {\"uri\": \"https://...\"}");
  }
  static const std::regex re("^https://[A-Za-z0-9.:\\[\\]-]+(/[A-Za-z0-9._~/%-]*)?$");
  if (uri.size() > 512 || !std::regex_match(uri, re))
    return problem(400, "bad-uri", "the webhook is an https:// URI (host, port, path; 512 characters at most)");
  auto conn = c.pool->acquire();
  conn->exec("INSERT INTO webhooks (chip, uri) VALUES ($1, $2) ON CONFLICT (chip) DO UPDATE SET uri = $2, created_at = now()",
             {who.chip, uri});
  return http::json_reply(200, "{\"uri\":" + q(uri) + "}");
}

}  // namespace

void notify(core::pq::Transaction& tx, std::int64_t now, const std::string& chip, const std::string& reason,
            const std::string& uri, const std::string& transfer_id) {
  auto r = tx.connection().exec_prepared("INSERT INTO notifications (chip, reason, uri, transfer_id, created_at) "
                   "VALUES ($1, $2, $3, $4::uuid, to_timestamp($5)) RETURNING id",
                   {chip, reason, uri, transfer_id, now});
  tx.connection().exec_prepared("INSERT INTO webhook_deliveries (notification_id, chip, uri, next_at) "
          "SELECT $1::bigint, chip, uri, to_timestamp($3) FROM webhooks WHERE chip = $2",
          {r.text(0, 0), chip, now});
  // Delivered to the listeners of every KPS process when the transaction commits (PostgreSQL 15
  // manual, NOTIFY), so a long poll held by another process on the database wakes too.
  tx.connection().exec_prepared("SELECT pg_notify('kps_notice', $1)", {chip});
}

Reply notifications_route(Context& c, const Request& req, const Caller& who, const std::vector<std::string>& parts) {
  if (!who.device()) return problem(404, "not-found", "no such resource");
  if (parts.size() == 2) {
    if (req.method != "GET") return problem.method_not_allowed("GET");
    return list(c, req, who);
  }
  if (parts.size() == 4 && (parts[3] == "ack" || parts[3] == "read")) {
    if (req.method != "POST") return problem.method_not_allowed("POST");
    return ack(c, who, parts[2]);
  }
  return problem(404, "not-found", "no such resource");
}

Reply devices_route(Context& c, const Request& req, const Caller& who, const std::vector<std::string>& parts) {
  if (!who.device() || parts.size() != 4 || parts[2] != "self" || parts[3] != "webhook")
    return problem(404, "not-found", "no such resource");
  if (req.method == "PUT") return put_webhook(c, req, who);
  if (req.method == "DELETE") {
    c.pool->acquire()->exec("DELETE FROM webhooks WHERE chip = $1", {who.chip});
    return http::json_reply(200, "{\"uri\":null}");
  }
  return problem.method_not_allowed("PUT, DELETE");
}

void listen_for_notices(Context& c, const std::atomic<bool>& stop) {
  while (!stop) {
    try {
      core::pq::Connection conn(c.config.db);
      conn.exec("LISTEN kps_notice");
      c.waiters.wake();  // anything committed while this connection was down
      while (!stop) {
        pollfd p{PQsocket(conn.raw()), POLLIN, 0};
        if (::poll(&p, 1, 250) < 0) break;
        if (PQconsumeInput(conn.raw()) == 0) break;
        bool any = false;
        while (PGnotify* n = PQnotifies(conn.raw())) {
          any = true;
          PQfreemem(n);
        }
        if (any) c.waiters.wake();
      }
    } catch (const core::Error& e) {
      c.log->line("{\"event\":\"notice-listener\",\"detail\":" + q(e.what()) + "}");
    }
    for (int i = 0; i < 10 && !stop; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace keyline::kps
