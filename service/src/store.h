// The service DB (migrations/0001_service.sql): devices, jobs, session results. SQL only through parameters.
#pragma once

#include <botan/x509cert.h>

#include <optional>
#include <string>
#include <vector>

#include "keyline/core/cplc.h"
#include "keyline/core/imei.h"
#include "keyline/core/pq.h"
#include "session.h"

namespace keyline::service {

struct Device {
  core::ChipId chip;
  core::Imei imei = core::Imei::parse("490154203237518");  // always overwritten
  int key_version = 0;                                     // 0: none recorded yet
};

void save_device(core::pq::Connection& db, const Device& device, const std::string& record_hash);
// The device and its pending jobs (oldest first, at most `limit`, at most 24 KiB of payload) in one
// round trip; nullopt when the service DB has no such device.
std::optional<std::pair<Device, std::vector<Job>>> find_device_with_jobs(core::pq::Connection& db,
                                                                         const core::ChipId& chip, int limit);
// One transaction: the jobs' outcomes, the session's line, the device's version (never lowered).
void record_session(core::pq::Connection& db, const Device& device, const std::string& started_at,
                    const SessionResult& result, const std::string& result_json);

// The public DB's record of `chip` (GET /v1/records/{chip}), verified to `trust` (core::validate_record).
// nullopt for 404; throws Error(errc::RecordInvalid) for a record that does not verify,
// Error(errc::PublicDb) for another answer.
struct PublicDb {
  std::string url, ca_file;
  std::vector<Botan::X509_Certificate> trust;
};
std::optional<std::pair<Device, std::string>> fetch_device(const PublicDb& public_db,
                                                           const core::ChipId& chip);

}  // namespace keyline::service
