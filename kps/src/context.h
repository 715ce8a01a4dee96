// What the KPS's route handlers share (docs/kps.md): settings, policy, trust anchors, the database pool,
// the log, the clock, the directory of transport certificates, the long-poll wait room and the answer
// signer. One Context per server instance; two instances on one database share nothing but the database.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <botan/x509cert.h>

#include "keyline/core/device_auth.h"
#include "keyline/core/event_log.h"
#include "keyline/core/http_server.h"
#include "keyline/core/http_service.h"
#include "keyline/core/log_sink.h"
#include "keyline/core/pq.h"
#include "keyline/core/rate_limiter.h"
#include "keyline/kps/kps.h"
#include "keyline/kps/policy.h"
#include "metrics.h"

namespace keyline::kps {

namespace http = core::http;
using http::Reply;
using http::Request;

extern const http::Problems problem;

// Wakes the long polls of a chip when a notice for it is committed (in this process directly, from
// other processes through PostgreSQL NOTIFY, notifications.cpp).
// A woken poll re-reads its own chip's notices, so one generation counter for all chips is enough.
class WaitRoom {
 public:
  void wake();
  std::uint64_t generation();
  // Returns when the generation differs from `seen` or at `until`.
  void wait(std::uint64_t seen, std::chrono::steady_clock::time_point until);

 private:
  std::mutex m_mutex;
  std::condition_variable m_cv;
  std::uint64_t m_generation = 0;
};

// One waiting long poll per chip (notifications.cpp): a chip's newest poll takes its seat and the older
// one is answered at once, so one device cannot hold every --max-waiters slot.
struct PollSeats {
  std::mutex mutex;
  std::map<std::string, std::uint64_t> newest;  // chip -> ticket of its waiting poll
  std::uint64_t next = 0;
};

// The webhook deliveries under way (webhooks.cpp): each runs on its own thread, at most one per chip,
// so a device's silent receiver holds one slot, not the loop; halt waits for them (webhook_drain).
struct WebhookFlights {
  std::mutex mutex;
  std::condition_variable done;
  int running = 0;
  std::set<std::string> chips;
};

// The answer signer (signing.cpp): the KPS key on a PKCS#11 token.
class AnswerSigner;

struct Context {
  Config config;
  Policy policy;
  std::vector<Botan::X509_Certificate> anchors;
  std::unique_ptr<core::pq::Pool> pool;
  std::unique_ptr<core::LogSink> log;
  std::unique_ptr<http::EventLog> events;
  Metrics metrics;
  std::function<http::ServerStats()> public_stats;
  WaitRoom waiters;
  std::atomic<int> waiting{0};
  PollSeats polls;
  WebhookFlights webhooks;
  std::atomic<bool> stopping{false};  // long polls answer at once
  std::shared_ptr<AnswerSigner> signer;  // null: answers go unsigned (docs/kps.md)
  std::unique_ptr<core::RateLimiter> limiter;  // --rate per client address; rate 0: allows all
  // Device chains verified once (docs/kps.md "Device authentication"): a device sends the same chain
  // with every request, and the chain checks cost as much as the request signature.
  std::shared_ptr<core::device_auth::ChainCache> chains = std::make_shared<core::device_auth::ChainCache>(8192);

  // The KPS's "now" in Unix seconds: the system clock shifted by --clock-offset-s (test-only).
  std::int64_t now() const;
};

// The caller of a /v1 request: a device (chip from its signed request) or an owner account.
struct Caller {
  std::string chip;        // set for a device
  std::int64_t account = 0;  // set for an owner
  std::string name;        // chip or account name, for the log and the audit rows
  bool device() const { return !chip.empty(); }
};

// ---- small helpers (util.cpp) ----
std::string q(const std::string& s);       // a JSON string literal
std::string ts_col(const std::string& col);  // SQL: col as RFC 3339 UTC text
bool is_uuid(const std::string& s);
bool is_label(const std::string& s);
std::string new_uuid();
std::string sha256_hex(const std::string& data);
// A problem reply whose log line carries `detail` (never sent).
Reply refused(int status, const std::string& type, const std::string& text, const std::string& detail);

// ---- audit rows (audit.cpp): one per step, never a key, an envelope or a token ----
void audit(core::pq::Transaction& tx, std::int64_t now, const std::string& transfer_id, const std::string& step,
           const std::string& actor, const std::string& detail);

// ---- notices (notifications.cpp): inside the transaction that makes the change ----
void notify(core::pq::Transaction& tx, std::int64_t now, const std::string& chip, const std::string& reason,
            const std::string& uri, const std::string& transfer_id);

// ---- nonces of signed requests (nonces.cpp) ----
// True the first time (chip, nonce) is seen in PostgreSQL; kept until expires_at (Unix s).
bool first_use_of_nonce(Context& c, const std::string& chip, const std::string& nonce, std::int64_t expires_at);

// ---- route groups ----
Reply transfers_route(Context& c, const Request& req, const Caller& who, const std::vector<std::string>& parts);
Reply groups_route(Context& c, const Request& req, const Caller& who, const std::vector<std::string>& parts);
Reply notifications_route(Context& c, const Request& req, const Caller& who, const std::vector<std::string>& parts);
Reply devices_route(Context& c, const Request& req, const Caller& who, const std::vector<std::string>& parts);

// ---- accounts (accounts.cpp) ----
// The account of a Bearer token, or nullopt (unknown, malformed or revoked).
std::optional<std::pair<std::int64_t, std::string>> account_of_token(Context& c, const std::string& token);
// The chips in `chips` that account does not own.
std::vector<std::string> not_owned(core::pq::Connection& conn, std::int64_t account, const std::vector<std::string>& chips);

// ---- directory (directory.cpp): the target's transport certificate from the public DB ----
// PEM: the transport certificate, then the Device CA. Throws core::Error with a reply-worthy code:
// FormatError(BadTransportCertificate) when the record has none or it does not check, IoError when the
// public DB does not answer.
std::string transport_chain_from_directory(Context& c, const std::string& chip);
// The same for several chips at once, in their order; each failure kept as that chip's error.
struct DirectoryChain {
  std::string chain;
  std::exception_ptr error;
};
std::vector<DirectoryChain> transport_chains_from_directory(Context& c, const std::vector<std::string>& chips);

}  // namespace keyline::kps
