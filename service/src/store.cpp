#include "store.h"

#include "keyline/core/http.h"
#include "keyline/core/record.h"
#include "keyline/service/errors.h"

namespace keyline::service {

void save_device(core::pq::Connection& db, const Device& device, const std::string& record_hash) {
  db.exec(
      "INSERT INTO device (chip_id, imei, record_hash) VALUES ($1, $2, $3) ON CONFLICT (chip_id) DO NOTHING",
      {device.chip.str(), device.imei.str(), record_hash});
}

namespace {

constexpr const char* kJobColumns =
    "j.id, j.kind, coalesce(j.dgi, 0), j.payload, coalesce(j.module_name, ''),"
    " coalesce(j.module_version, 0)";

// Rows of kJobColumns from column `first` on, oldest first; a batch carries at most 64 KiB, so a
// session takes a few jobs and leaves the rest for the next one (docs/service.md "A session"). Hex
// doubles the bytes and each 223-byte piece gains 33 bytes of padding and MAC: 24 KiB of payload
// stays under the 64 KiB answer.
std::vector<Job> jobs_of(const core::pq::Result& r, int first) {
  std::vector<Job> jobs;
  std::size_t bytes = 0;
  for (int i = 0; i < r.rows(); ++i) {
    if (r.is_null(i, first)) continue;
    Job j{r.int64(i, first),     r.text(i, first + 1), static_cast<std::uint16_t>(r.int64(i, first + 2)),
          r.bytea(i, first + 3), r.text(i, first + 4), static_cast<std::uint32_t>(r.int64(i, first + 5))};
    bytes += j.payload.size();
    if (!jobs.empty() && bytes > 24 * 1024) break;
    jobs.push_back(std::move(j));
  }
  return jobs;
}

}  // namespace

std::optional<std::pair<Device, std::vector<Job>>> find_device_with_jobs(core::pq::Connection& db,
                                                                         const core::ChipId& chip,
                                                                         int limit) {
  const auto r = db.exec(
      std::string("SELECT d.imei, coalesce(d.key_version, 0), ") + kJobColumns +
          " FROM device d LEFT JOIN LATERAL (SELECT * FROM job WHERE imei = d.imei AND state = 'pending'"
          " ORDER BY id LIMIT $2) j ON true WHERE d.chip_id = $1 ORDER BY j.id",
      {chip.str(), limit});
  if (r.empty()) return std::nullopt;
  Device d{chip, core::Imei::parse(r.text(0, 0)), static_cast<int>(r.int64(0, 1))};
  return std::make_pair(d, jobs_of(r, 2));
}

namespace {

// A refusal without an R-MAC may be the device's or a relay's (session.cpp carries_rmac). Five
// sessions each answered so, over the TLS link the agent opens, is no longer one relay's lie worth
// retrying for: the job fails with that count (docs/decisions.md).
constexpr int kMaxUnauthenticatedRefusals = 5;

// A PostgreSQL array literal of text elements, each double-quoted (section 8.15.2 of the manual).
std::string text_array(const std::vector<std::string>& v) {
  std::string out = "{";
  for (std::size_t i = 0; i < v.size(); ++i) {
    out += i ? ",\"" : "\"";
    for (char c : v[i]) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  return out + "}";
}

}  // namespace

void record_session(core::pq::Connection& db, const Device& device, const std::string& started_at,
                    const SessionResult& result, const std::string& result_json) {
  std::vector<std::string> ids, states, details;
  for (const auto& o : result.jobs) {
    ids.push_back(std::to_string(o.id));
    states.push_back(o.applied ? "applied" : o.authenticated ? "failed" : "refused");
    details.push_back(o.detail);
  }
  // After a PUT KEY the device opens only with the new version (the old key no longer works), so the
  // version is set even when a later command of the session failed.
  const int version = result.new_kvn != 0 ? result.new_kvn : result.ok ? result.kvn : 0;
  // One statement (one round trip): the jobs' outcomes, the device's version (never lowered) and the
  // session's line commit together.
  db.exec(
      "WITH x AS (SELECT unnest($1::bigint[]) AS id, unnest($2::text[]) AS state, unnest($3::text[]) AS "
      "detail),"
      // A refusal without an R-MAC ('refused') keeps the job pending and counts; the bound-th fails it.
      " j AS (UPDATE job SET refusals = job.refusals + (x.state = 'refused')::int,"
      "       state = CASE WHEN x.state <> 'refused' THEN x.state"
      "                    WHEN job.refusals + 1 >= $10::int THEN 'failed' ELSE 'pending' END,"
      "       detail = CASE WHEN x.state <> 'refused' THEN x.detail"
      "                     WHEN job.refusals + 1 >= $10::int THEN 'refused ' || (job.refusals + 1) ||"
      "                          ' times (unauthenticated status word), last ' || x.detail"
      "                     ELSE x.detail || ' unauthenticated, refusal ' || (job.refusals + 1) || ' of ' || $10::int"
      "                END,"
      "       updated_at = now() FROM x"
      "       WHERE job.id = x.id AND job.state = 'pending'),"
      " d AS (UPDATE device SET key_version = GREATEST(coalesce(key_version, 0), $7::int), last_session = "
      "now()"
      "       WHERE chip_id = $4 AND $7::int > 0)"
      " INSERT INTO session_log (chip_id, started_at, ok, kvn, result)"
      " VALUES ($4, $5::timestamptz, $6::boolean, nullif($8::int, 0), $9::jsonb)",
      {text_array(ids), text_array(states), text_array(details), device.chip.str(), started_at,
       std::string(result.ok ? "true" : "false"), version, result.kvn, result_json, kMaxUnauthenticatedRefusals});
}

std::optional<std::pair<Device, std::string>> fetch_device(const PublicDb& public_db,
                                                           const core::ChipId& chip) {
  core::http::ClientOptions o;
  o.base_url = public_db.url;
  o.ca_file = public_db.ca_file;
  o.connect_attempts = 2;
  o.max_body = 4 * 1024 * 1024;
  core::http::Client client(o);
  const auto r = client.get("/v1/records/" + chip.str(), {{"Accept", "application/json"}});
  if (r.status == 404) return std::nullopt;
  if (r.status != 200)
    throw core::Error(errc::PublicDb, "the public DB answered " + std::to_string(r.status));
  std::string hash;
  const auto record = core::Record::from_json(r.body, &hash);
  if (record.chip_id != chip)
    throw core::Error(errc::RecordInvalid, "the public DB answered another chip's record");
  try {
    core::validate_record(record, public_db.trust);
  } catch (const core::Error& e) {
    throw core::Error(errc::RecordInvalid, std::string("the device's record does not verify: ") + e.what());
  }
  return std::make_pair(Device{chip, record.imei, 0}, hash);
}

}  // namespace keyline::service
