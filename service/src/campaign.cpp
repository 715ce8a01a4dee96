// `keyline-service campaign` (docs/service.md "Campaigns"): one job per IMEI, idempotent enqueue, status.
#include <botan/hash.h>

#include <fstream>
#include <ostream>
#include <sstream>

#include "commands.h"
#include "keyline/core/error.h"
#include "keyline/core/imei.h"
#include "keyline/core/pq.h"
#include "keyline/core/secret_input.h"
#include "keyline/core/service_module.h"
#include "keyline/service/errors.h"
#include "keyline/service/service.h"
#include "token.h"

namespace keyline::service {
namespace {

using core::Bytes;

Bytes read_bytes(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw core::ConfigError(core::ErrorCode::Config, std::string("cannot read ") + what + " " + path);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

std::vector<std::string> read_imeis(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw core::ConfigError(core::ErrorCode::Config, "cannot read --imeis " + path);
  std::vector<std::string> out;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    if (!core::Imei::is_valid(line))
      throw core::Error(errc::BadCampaign,
                        "--imeis line " + std::to_string(n) + " is not an IMEI with its Luhn digit");
    out.push_back(line);
  }
  return out;
}

struct Payload {
  std::string kind;
  int dgi = 0;
  Bytes bytes;
  std::string module_name;
  std::int64_t module_version = 0;
};

Payload item_payload(const std::string& spec) {
  const auto eq = spec.find('=');
  if (eq != 4) throw core::Error(errc::BadCampaign, "--item is DGI=FILE with a 4-digit hex DGI 0Fxx");
  const Bytes tag = core::from_hex(spec.substr(0, 4));
  const int dgi = (tag[0] << 8) | tag[1];
  if (!is_config_dgi(static_cast<std::uint16_t>(dgi)))
    throw core::Error(errc::BadCampaign, "--item: the DGI is not 0Fxx");
  Payload p{"item", dgi, read_bytes(spec.substr(5), "--item"), {}, 0};
  if (p.bytes.empty() || p.bytes.size() > 4096) throw core::Error(errc::BadCampaign, "--item: 1..4096 bytes");
  return p;
}

Payload module_payload(const CampaignRequest& request) {
  Payload p{"module", 0, read_bytes(request.module, "--module"), {}, 0};
  core::service::Module m;
  try {
    m = core::service::parse_module(p.bytes);
  } catch (const core::FormatError& e) {
    throw core::Error(errc::BadModule, std::string("--module does not parse: ") + e.what());
  }
  // The device checks it anyway; checking here keeps a campaign from failing on every device.
  bool trusted = false;
  for (const auto& root : load_trust(request.trust)) {
    try {
      core::service::verify_module(m, root);
      trusted = true;
    } catch (const core::Error&) {
    }
  }
  if (!trusted)
    throw core::Error(errc::BadModule, "--module is not signed by a code-signing key under --trust");
  p.module_name = m.name;
  p.module_version = m.version;
  return p;
}

std::string digest(const Payload& p) {
  auto h = Botan::HashFunction::create_or_throw("SHA-256");
  h->update(p.kind + "/" + std::to_string(p.dgi) + "/");
  h->update(p.bytes);
  const auto d = h->final();
  return core::to_hex(d.data(), d.size());
}

core::pq::Connection connect(const Config& config) {
  if (!config.db_password_file.empty())
    core::export_pgpassword(core::read_secret_file(config.db_password_file));
  return core::pq::Connection(config.db);
}

}  // namespace

void campaign_enqueue(const Config& config, const CampaignRequest& request, std::ostream& out) {
  if (!request.item.empty() + !request.module.empty() + (request.put_key != 0) != 1)
    throw core::ConfigError(core::ErrorCode::Usage, "give exactly one of --item, --module and --put-key");
  if (request.put_key != 0 && request.put_key != 2)
    throw core::ConfigError(core::ErrorCode::Usage, "--put-key: devices rotate to derivation version 2");
  const Payload p = request.put_key != 0
                        ? Payload{"put_key", 0, Bytes{static_cast<std::uint8_t>(request.put_key)}, {}, 0}
                    : request.item.empty() ? module_payload(request)
                                           : item_payload(request.item);
  const auto imeis = read_imeis(request.imeis_file);
  auto db = connect(config);
  core::pq::Transaction tx(db);
  tx.exec(
      "INSERT INTO campaign (name, kind, payload_sha256) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
      {request.name, p.kind, digest(p)});
  const auto existing = tx.exec("SELECT payload_sha256 FROM campaign WHERE name = $1", {request.name});
  if (existing.text(0, 0) != digest(p))
    throw core::Error(errc::CampaignConflict, "campaign '" + request.name + "' exists with another payload");
  long added = 0;
  for (const auto& imei : imeis)
    added += tx.exec(
                   "INSERT INTO job (campaign, imei, kind, dgi, payload, module_name, module_version)"
                   " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (campaign, imei) DO NOTHING",
                   {request.name, imei, p.kind,
                    p.kind == "item" ? core::pq::Param(p.dgi) : core::pq::Param::null(), p.bytes,
                    p.kind == "module" ? core::pq::Param(p.module_name) : core::pq::Param::null(),
                    p.kind == "module" ? core::pq::Param(p.module_version) : core::pq::Param::null()})
                 .affected();
  tx.commit();
  out << "campaign " << request.name << ": " << added << " job(s) queued, " << (imeis.size() - added)
      << " already queued\n";
}

int campaign_status(const Config& config, const std::string& name, bool json, std::ostream& out) {
  auto db = connect(config);
  const auto r = db.exec(
      "SELECT imei, state, coalesce(detail, ''), to_char(updated_at AT TIME ZONE 'UTC',"
      " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), refusals FROM job WHERE campaign = $1 ORDER BY imei",
      {name});
  int pending = 0, applied = 0, failed = 0;
  std::ostringstream devices;
  for (int i = 0; i < r.rows(); ++i) {
    const std::string state = r.text(i, 1);
    (state == "pending" ? pending : state == "applied" ? applied : failed)++;
    if (json)
      devices << (i ? "," : "") << "{\"imei\":\"" << r.text(i, 0) << "\",\"state\":\"" << state
              << "\",\"detail\":\"" << r.text(i, 2) << "\",\"updated_at\":\"" << r.text(i, 3)
              << "\",\"refusals\":" << r.int64(i, 4) << "}";
    else
      devices << r.text(i, 0) << " " << state << (r.text(i, 2).empty() ? "" : " " + r.text(i, 2)) << "\n";
  }
  if (json)
    out << "{\"campaign\":\"" << name << "\",\"pending\":" << pending << ",\"applied\":" << applied
        << ",\"failed\":" << failed << ",\"devices\":[" << devices.str() << "]}\n";
  else
    out << "campaign " << name << ": " << applied << " applied, " << failed << " failed, " << pending
        << " pending\n"
        << devices.str();
  return pending == 0 ? 0 : 1;
}

}  // namespace keyline::service
