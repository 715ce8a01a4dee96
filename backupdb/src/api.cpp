#include "api.h"

#include <botan/pem.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <optional>
#include <sstream>
#include <string_view>
#include <vector>

#include "keyline/core/cplc.h"
#include "keyline/core/event_log.h"
#include "keyline/core/http.h"
#include "keyline/core/http_service.h"
#include "keyline/core/imei.h"
#include "keyline/core/record.h"
#include "log_api.h"

namespace keyline::backupdb {
namespace {

namespace http = core::http;
using http::Reply;
using http::Request;

constexpr const char* kImmutable = "public, max-age=31536000, immutable";
constexpr const char* kProblemBase = "https://keyline.example/problems/";

const http::Problems problem{kProblemBase};
using http::path_segments;
using http::reply;

bool etag_matches(const Request& req, const std::string& etag) {
  const std::string inm = req.get("if-none-match");
  if (inm.empty()) return false;
  if (inm == "*") return true;
  // RFC 9110 section 13.1.2: a comma-separated list; weak comparison for If-None-Match.
  std::stringstream ss(inm);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const auto b = item.find_first_not_of(" \t");
    const auto e = item.find_last_not_of(" \t");
    if (b == std::string::npos) continue;
    std::string tag = item.substr(b, e - b + 1);
    if (tag.rfind("W/", 0) == 0) tag = tag.substr(2);
    if (tag == etag) return true;
  }
  return false;
}

Reply cacheable(const Request& req, const std::string& etag, std::string content_type, std::string body) {
  Reply r;
  r.headers = {{"ETag", etag}, {"Cache-Control", kImmutable}};
  if (etag_matches(req, etag)) {
    r.status = 304;
    return r;
  }
  r.content_type = std::move(content_type);
  r.body = std::move(body);
  return r;
}

Reply too_many() {
  Reply r = problem(429, "rate-limited", "too many requests from this client");
  r.headers.push_back({"Retry-After", "1"});
  return r;
}

Reply represent(const Request& req, const StoredRecord& rec, const std::string& sub) {
  // Strong ETags (RFC 9110 section 8.8.3) from the record hash; each representation has its own.
  if (sub.empty()) return cacheable(req, "\"" + rec.record_hash + "\"", "application/json", rec.json);
  if (sub == "backup")
    return cacheable(req, "\"" + rec.record_hash + "-backup\"", "application/octet-stream",
                     std::string(rec.backup.begin(), rec.backup.end()));
  Reply r;
  if (accepts_pem(req.get("accept"))) {
    r = cacheable(req, "\"" + rec.record_hash + "-pem\"", "application/x-pem-file",
                  Botan::PEM_Code::encode(rec.identity_der, "CERTIFICATE"));
  } else {
    // RFC 2585 section 4.1: application/pkix-cert is a DER certificate.
    r = cacheable(req, "\"" + rec.record_hash + "-der\"", "application/pkix-cert",
                  std::string(rec.identity_der.begin(), rec.identity_der.end()));
  }
  r.headers.push_back({"Vary", "Accept"});
  return r;
}

Reply read_record(Shared& s, const Request& req, const std::vector<std::string>& parts) {
  const std::string sub = parts.size() == 4 ? parts[3] : "";
  if (!sub.empty() && sub != "backup" && sub != "certificate") return problem(404, "not-found", "no such resource");
  if (!http::is_read(req)) return problem.method_not_allowed("GET, HEAD");
  if (!s.limiter->allow(req.client_address)) return too_many();
  std::string chip;
  try {
    chip = core::ChipId::parse(parts[2]).str();
  } catch (const core::Error&) {
    return problem(400, "bad-chip-id", "a chip ID is 20 hexadecimal digits");
  }
  auto rec = s.store->by_chip_id(chip);
  if (!rec) return problem(404, "not-found", "no record for this chip ID");
  return represent(req, *rec, sub);
}

Reply read_by_imei(Shared& s, const Request& req, const std::string& imei) {
  if (!http::is_read(req)) return problem.method_not_allowed("GET, HEAD");
  if (!s.limiter->allow(req.client_address)) return too_many();
  if (!core::Imei::is_valid(imei)) return problem(400, "bad-imei", "an IMEI is 15 digits with a Luhn check digit");
  auto rec = s.store->by_imei(imei);
  if (!rec) return problem(404, "not-found", "no record for this IMEI");
  return represent(req, *rec, "");
}

// Who publishes: a current station certificate of a --station-ca issuer, not on the --station-deny list
// (backupdb/src/station_auth.h). Sets station_id and `who` (the log's "station ID serial S sha256 F")
// when allowed; otherwise returns the refusal.
std::optional<Reply> check_station(Shared& s, const Request& req, std::string& station_id, std::string& who) {
  if (!s.stations || !req.secure) return problem(401, "client-certificate-required", "publishing needs mutual TLS");
  if (req.peer_certificate_der.empty())
    return problem(401, "client-certificate-required", "present a station certificate to publish");
  const StationCheck check = s.stations->check(req.peer_certificate_der, std::chrono::system_clock::now());
  if (!check.allowed) {
    Reply r = problem(check.status, check.slug, check.detail);
    r.log_detail = check.log_detail;
    return r;
  }
  station_id = check.station_id;
  who = check.log_detail;
  return std::nullopt;
}

// A problem document gains "leaf_index" as a number (Problems adds its extension members as strings).
void add_leaf_index(Reply& r, std::int64_t leaf_index) {
  if (leaf_index < 0 || r.body.empty() || r.body.back() != '}') return;
  r.body.insert(r.body.size() - 1, ",\"leaf_index\":" + std::to_string(leaf_index));
}

// `who`: the station and its certificate (serial, SHA-256 fingerprint), for each outcome's log line.
Reply published(Shared& s, const core::Record& rec, const std::string& hash, const std::string& who) {
  const auto res = s.store->publish(rec, hash);
  const std::string location = "/v1/records/" + rec.chip_id.str();
  const std::string json = "{\"chip_id\":\"" + rec.chip_id.str() + "\",\"record_hash\":\"" + hash +
                           "\",\"leaf_index\":" + std::to_string(res.leaf_index) + "}";
  switch (res.outcome) {
    case PublishOutcome::Created:
      s.metrics.record_published();
      if (s.integrator) s.integrator->notify();
      return reply(201, "application/json", json, {{"Location", location}, {"ETag", "\"" + hash + "\""}},
                   who);
    case PublishOutcome::Identical:
      return reply(200, "application/json", json, {{"Location", location}, {"ETag", "\"" + hash + "\""}},
                   "identical re-publish by " + who);
    case PublishOutcome::Conflict:
      break;
  }
  Reply r = problem(409, "conflict",
                    "a different record is already published for this " +
                        (res.conflict_on.empty() ? std::string("chip ID or IMEI") : res.conflict_on),
                    {{"published_hash", res.existing_hash},
                     {"submitted_hash", hash},
                     {"conflict_on", res.conflict_on},
                     {"code", std::to_string(static_cast<int>(errc::PublishConflict))}});
  add_leaf_index(r, res.leaf_index);
  r.log_detail = who;
  return r;
}

Reply publish(Shared& s, const Request& req) {
  std::string station, who;
  if (auto deny = check_station(s, req, station, who)) return *deny;
  if (!s.limiter->allow("station " + station)) {
    Reply r = too_many();
    r.log_detail = who;
    return r;
  }
  if (!http::has_media_type(req, "application/json")) {
    Reply r = problem(415, "unsupported-media-type", "send the record as application/json");
    r.log_detail = who;
    return r;
  }
  if (req.body.size() > s.config.body_limit) {  // the server refuses it first; kept for a direct caller
    Reply r = problem.too_large(s.config.body_limit);
    r.log_detail = who;
    return r;
  }
  core::Record rec;
  std::string hash;  // Record::hash, computed once by from_json
  try {
    rec = core::Record::from_json(req.body, &hash);
  } catch (const core::Error& e) {
    Reply r = problem(400, "bad-record", "the body is not a record", {{"code", std::to_string(e.numeric())}});
    r.log_detail = who + ": " + e.what();
    return r;
  }
  try {
    s.validator->validate(rec);
  } catch (const core::Error& e) {
    // Which rule failed is public (docs/api.md), the failure's own text is not: it quotes
    // certificate names and library messages, so it goes to the log only.
    Reply r = problem(422, "record-invalid", record_invalid_detail(e.code()), {{"code", std::to_string(e.numeric())}});
    r.log_detail = who + ": " + e.what();
    return r;
  }
  return published(s, rec, hash, who);
}

// Each database node: the primary by a round trip now, the replicas as the read pool's checker last
// saw them (at most a second ago), so a probe opens no session per replica. 200 while the primary
// answers: it takes every write and is itself a read path, the one the reads fall back to; a replica
// down or lagging only makes it "degraded". 503 when the primary does not answer: publishing fails
// and a lookup a replica has no row for cannot be answered.
Reply healthz(Shared& s) {
  const bool primary = s.store->healthy();
  bool all = primary;
  std::ostringstream nodes;
  nodes << "{\"node\":\"primary\",\"state\":\"" << (primary ? "up" : "down") << "\"}";
  for (const auto& n : s.store->reads().stats()) {
    if (n.name == "primary") continue;
    all = all && n.state == NodeState::Up;
    nodes << ",{\"node\":\"" << n.name << "\",\"state\":\"" << state_name(n.state) << '"';
    if (n.state != NodeState::Down) {  // a down node's last lag says nothing about now
      char lag[32];
      std::snprintf(lag, sizeof lag, "%.3f", n.lag_seconds);
      nodes << ",\"lag_seconds\":" << lag;
    }
    nodes << '}';
  }
  const char* status = !primary ? "unavailable" : all ? "ok" : "degraded";
  return http::json_reply(primary ? 200 : 503,
                          std::string("{\"status\":\"") + status + "\",\"nodes\":[" + nodes.str() + "]}");
}

Reply dispatch(Shared& s, const Request& req) {
  const auto parts = path_segments(req.path);
  if (parts.size() == 1 && parts[0] == "healthz") {
    if (!http::is_read(req)) return problem.method_not_allowed("GET, HEAD");
    return healthz(s);
  }
  if (parts.empty() || parts[0] != "v1") return problem(404, "not-found", "no such resource");
  // A cache keys the request-target as sent, and path_segments reads "/v1/records/X/", "//v1/records/X"
  // and "/v1/records/X?a" as "/v1/records/X": each spelling would be one more cache entry and one more
  // cold read of the origin. Only the canonical one is answered, before any database work.
  const bool takes_query = (parts.size() == 4 && parts[1] == "records" && parts[3] == "proof") ||
                           (parts.size() == 3 && parts[1] == "log" && parts[2] == "consistency");
  if (http::is_read(req) && !canonical_target(req.target, takes_query))
    return problem(400, "non-canonical-path",
                   takes_query ? "the path has an empty segment or a trailing slash"
                               : "the path has an empty segment, a trailing slash or a query string");
  if (parts.size() == 2 && parts[1] == "ca") {
    if (!http::is_read(req)) return problem.method_not_allowed("GET, HEAD");
    if (!s.limiter->allow(req.client_address)) return too_many();
    return reply(200, "application/pem-certificate-chain", s.anchors_pem, {{"Cache-Control", "public, max-age=3600"}});
  }
  if (parts.size() == 2 && parts[1] == "records") {
    if (req.method != "POST") return problem.method_not_allowed("POST");
    return publish(s, req);
  }
  if (parts.size() == 4 && parts[1] == "records" && parts[3] == "proof") return handle_proof(s, req, parts[2]);
  if (parts.size() >= 3 && parts.size() <= 4 && parts[1] == "records") return read_record(s, req, parts);
  if (parts.size() >= 2 && parts[1] == "log") return handle_log(s, req);
  if (parts.size() == 3 && parts[1] == "imei") return read_by_imei(s, req, parts[2]);
  return problem(404, "not-found", "no such resource");
}

std::string_view trimmed(std::string_view v) {
  const auto b = v.find_first_not_of(" \t");
  if (b == std::string_view::npos) return {};
  return v.substr(b, v.find_last_not_of(" \t") - b + 1);
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

// RFC 9110 section 12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ), in thousandths.
std::optional<int> qvalue(std::string_view v) {
  if (v.empty() || (v[0] != '0' && v[0] != '1') || (v.size() > 1 && v[1] != '.') || v.size() > 5)
    return std::nullopt;
  int q = (v[0] - '0') * 1000;
  int scale = 100;
  for (std::size_t i = 2; i < v.size(); ++i, scale /= 10) {
    if (v[i] < '0' || v[i] > '9' || (v[0] == '1' && v[i] != '0')) return std::nullopt;
    q += (v[i] - '0') * scale;
  }
  return q;
}

}  // namespace

bool accepts_pem(std::string_view accept) {
  int pem = -1, der = -1;  // the best q (thousandths) each was named with, -1: not named
  std::size_t pos = 0;
  while (pos <= accept.size()) {
    const auto comma = std::min(accept.find(',', pos), accept.size());
    const auto item = accept.substr(pos, comma - pos);
    pos = comma + 1;
    auto semi = item.find(';');
    const auto type = trimmed(item.substr(0, semi));
    int q = 1000;
    bool valid = true;
    while (semi != std::string_view::npos) {
      const auto next = item.find(';', semi + 1);
      const auto param = trimmed(item.substr(semi + 1, next == std::string_view::npos ? next : next - semi - 1));
      semi = next;
      const auto eq = param.find('=');
      if (eq == std::string_view::npos || !iequals(trimmed(param.substr(0, eq)), "q")) continue;
      const auto v = qvalue(trimmed(param.substr(eq + 1)));
      valid = valid && v.has_value();
      if (v) q = *v;
    }
    if (!valid) continue;
    if (iequals(type, "application/x-pem-file") || iequals(type, "application/pem-certificate-chain"))
      pem = std::max(pem, q);
    else if (iequals(type, "application/pkix-cert"))
      der = std::max(der, q);
  }
  return pem > 0 && pem >= der;
}

bool canonical_target(std::string_view target, bool query_allowed) {
  const auto q = target.find('?');
  if (q != std::string_view::npos && !query_allowed) return false;
  const auto path = target.substr(0, q);
  if (path.empty() || path.front() != '/') return false;
  if (path.size() > 1 && path.back() == '/') return false;
  return path.find("//") == std::string_view::npos;
}

const char* record_invalid_detail(core::ErrorCode code) noexcept {
  switch (code) {
    case core::ErrorCode::ChainInvalid:
      return "the certificate chain does not verify against the device root";
    case core::ErrorCode::BadCertificate:
      return "a certificate of the record is not a well-formed identity certificate";
    case core::ErrorCode::BadRecord:
      return "the chip ID or IMEI in the identity certificate does not match the record";
    case core::ErrorCode::BadBackupPackage:
      return "the backup package does not name the record's chip ID";
    case core::ErrorCode::BadTransportCertificate:
      return "the transport certificate is not this device's keyAgreement certificate from its Device CA";
    case core::ErrorCode::BadChipId:
    case core::ErrorCode::BadImei:
      return "the identity certificate does not carry a well-formed chip ID and IMEI";
    default:
      return "the record does not pass validation";
  }
}

// At the head, on an I/O thread, before anything of the body is read or counted (core/http_server.h,
// AdmitHook): a publish without a station certificate, or with one the StationAuthority refuses,
// gets the refusal publish would give, so anonymous clients cannot reserve the buffer budget with
// large Content-Lengths. The check is a cached digest lookup (station_auth.h); publish checks again.
std::optional<Reply> admit_public(Shared& s, const Request& head) {
  if (head.method != "POST" || route_of(head) != "publish") return std::nullopt;
  std::string station, who;
  return check_station(s, head, station, who);
}

std::string route_of(const Request& req) {
  const auto parts = path_segments(req.path);
  if (parts.size() == 1 && (parts[0] == "healthz" || parts[0] == "metrics")) return parts[0];
  if (parts.empty() || parts[0] != "v1") return "other";
  if (parts.size() == 2 && parts[1] == "ca") return "ca";
  if (parts.size() == 2 && parts[1] == "records") return "publish";
  if (parts.size() == 3 && parts[1] == "records") return "record";
  if (parts.size() == 4 && parts[1] == "records" && parts[3] == "backup") return "record_backup";
  if (parts.size() == 4 && parts[1] == "records" && parts[3] == "certificate") return "record_certificate";
  if (parts.size() == 4 && parts[1] == "records" && parts[3] == "proof") return "record_proof";
  if (parts.size() >= 2 && parts[1] == "log") return log_route_of(parts);
  if (parts.size() == 3 && parts[1] == "imei") return "imei";
  return "other";
}

namespace {

// An error answers for this moment only: a record published after a 404 must be seen at once, and a
// 429 or 503 says nothing about the next try. RFC 9111 section 4.2.2 lets a cache store a 404 it was
// given no freshness for (heuristic freshness; CDNs do), so every error says no-store itself.
void no_store_on_error(Reply& r) {
  if (r.status < 400) return;
  for (const auto& h : r.headers)
    if (h.first == "Cache-Control") return;
  r.headers.push_back({"Cache-Control", "no-store"});
}

}  // namespace

Reply handle_public(Shared& s, const Request& req) {
  Reply r = problem.guarded([&] { return dispatch(s, req); });
  no_store_on_error(r);
  return r;
}

Reply handle_ops(Shared& s, const Request& req) {
  return problem.guarded([&] {
    const auto parts = path_segments(req.path);
    if (parts.size() == 1 && parts[0] == "metrics") {
      if (!http::is_read(req)) return problem.method_not_allowed("GET, HEAD");
      const auto stats = s.public_stats ? s.public_stats() : http::ServerStats{};
      LogStatus log;
      if (s.tlog) {
        log.enabled = true;
        log.integrator = s.integrator && s.integrator->holds_lock();
        if (const auto cp = s.tlog->latest()) {
          log.signed_at = cp->signed_at;
          s.metrics.log_checkpoint(cp->size);
        }
      }
      // The database nodes' read counters and states (read_pool.h) after the server's own series,
      // then the store's partition routing (pg_partition_hash.h).
      return http::metrics_reply(s.metrics.render(s.store->cache_hits(), s.store->cache_misses(), stats, log) +
                                 s.store->reads().render_metrics() + s.store->render_metrics());
    }
    if (parts.size() == 1 && parts[0] == "healthz") return dispatch(s, req);
    return problem(404, "not-found", "no such resource");
  });
}

void log_access(Shared& s, const Request& req, const Reply& reply, std::chrono::microseconds elapsed) {
  const std::string route = route_of(req);
  s.metrics.observe(route, reply.status, static_cast<double>(elapsed.count()) / 1e6);
  s.log->line(http::access_line(req, reply, elapsed, {{"route", route}}));
}

void log_event(Shared& s, const http::Event& event, const char* listener) {
  if (std::string_view(listener) == "public") s.metrics.observe_event(event);
  s.events->write(event, listener);
}

}  // namespace keyline::backupdb
