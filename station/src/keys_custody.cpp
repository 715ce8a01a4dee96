// Key custody: master versions, roll, derivation by version, status, check (docs/custody.md).
#include <algorithm>
#include <chrono>
#include <filesystem>

#include <botan/hash.h>
#include <botan/hex.h>

#include "keyline/core/cert_profile.h"
#include "keyline/core/data_package.h"
#include "keyline/core/http.h"
#include "keyline/core/imei.h"
#include "keyline/core/scp03_session.h"
#include "keys_custody_internal.h"
#include "keyline/station/errors.h"
#include "keyline/station/keys.h"
#include "keyline/station/pool.h"

namespace keyline::station {

namespace custody {

core::pq::Connection open_db(const StationConfig& config, const char* what) {
  if (config.db.empty())
    throw core::ConfigError(core::ErrorCode::Config, std::string(what) +
                                                         " is audited in the station database and none is configured "
                                                         "(set --db or KEYLINE_STATION_DB): nothing done");
  core::pq::Connection conn(config.db);
  migrate_station_db(conn);
  return conn;
}

std::shared_ptr<core::Pkcs11Token> open_token(const StationConfig& config) {
  return core::Pkcs11Token::open(config.hsm_module, config.token_label, read_pin(config), 2);
}

std::int64_t audit(core::pq::Connection& db, const StationConfig& config, const std::string& event,
                   const std::string& detail) {
  return db
      .exec("INSERT INTO journal.audit (station_id, event, cert_kind, detail) VALUES ($1, $2, 'custody', $3)"
            " RETURNING id",
            {config.station_id, event, detail.substr(0, 1000)})
      .int64(0, 0);
}

// Also a signed custody statement for the ceremony log (keys_custody_statement.cpp), once the
// operation ended either way.
void audited(core::pq::Connection& db, const StationConfig& config, const std::string& event,
             const std::string& detail, const std::function<std::string()>& step) {
  Statement st{event, detail, {}, {}, utc_now_text(), {}, audit(db, config, event + ".begin", detail), 0};
  try {
    st.outcome = step();
  } catch (const std::exception& e) {
    st.result = "failed";
    st.outcome = e.what();
    st.end = utc_now_text();
    st.audit_end = audit(db, config, event + ".failed", detail + "; " + e.what());
    write_statement(config, st);
    throw;
  }
  st.result = "done";
  st.end = utc_now_text();
  st.audit_end = audit(db, config, event + ".done", st.outcome);
  write_statement(config, st);
}

void refuse(const std::string& why) { throw core::Error(errc::CustodyRefused, why + "; nothing imported or changed"); }

int version_of_label(const std::string& label) {
  if (label == key_label::master) return 1;
  const std::string prefix = std::string(key_label::master) + "-v";
  if (label.compare(0, prefix.size(), prefix) != 0 || label.size() == prefix.size() || label.size() > prefix.size() + 6)
    return 0;
  int v = 0;
  for (std::size_t i = prefix.size(); i < label.size(); ++i) {
    if (label[i] < '0' || label[i] > '9') return 0;
    v = v * 10 + (label[i] - '0');
  }
  return label[prefix.size()] == '0' || v < 2 ? 0 : v;
}

core::Bytes version_id(int version) {
  const auto v = static_cast<std::uint32_t>(version);
  return {static_cast<std::uint8_t>(v >> 24), static_cast<std::uint8_t>(v >> 16), static_cast<std::uint8_t>(v >> 8),
          static_cast<std::uint8_t>(v)};
}

}  // namespace custody

std::string master_label(int version) {
  return version == 1 ? std::string(key_label::master) : std::string(key_label::master) + "-v" + std::to_string(version);
}

int newest_master_version(core::Pkcs11Token& token) {
  int newest = 0;
  for (const auto& k : token.list_keys())
    if (k.object_class == "secret") newest = std::max(newest, custody::version_of_label(k.label));
  return newest;
}

namespace {

// CKM_AES_ECB_ENCRYPT_DATA from an AES derive-only master into a readable session key, read, destroyed.
core::SecureBytes derive_aes_value(core::Pkcs11Token& token, int version, const core::Bytes& data) {
  const auto key = token.derive_aes_ecb(token.find_secret_key(master_label(version)), data,
                                        core::Pkcs11Token::DerivedAesKey{32, false, false, true});
  core::SecureBytes value;
  try {
    value = token.secret_value(key);
  } catch (...) {
    token.destroy_object(key);
    throw;
  }
  token.destroy_object(key);
  return value;
}

core::Bytes sha256_of(const std::string& text) {
  auto h = Botan::HashFunction::create_or_throw("SHA-256");
  h->update(text);
  const auto d = h->final();
  return core::Bytes(d.begin(), d.end());
}

}  // namespace

core::SecureBytes derive_comm_key(core::Pkcs11Token& token, const std::string& imei, const core::ChipId& chip,
                                  int version) {
  if (version >= 2) return derive_aes_value(token, version, core::scp::comm_derivation_data_v2(chip));
  // Version 1 (HMAC over the IMEI) is what every device made before the roll holds: it never changes.
  const std::string input = "keyline/comm/v1" + imei;
  return token.derive_hmac_sha256(master_label(version), core::Bytes(input.begin(), input.end()));
}

std::string master_check_value(core::Pkcs11Token& token, int version) {
  if (version >= 2) {
    // Its own input, so the value is no device's comm key (those hash "keyline/comm/v2" first).
    const auto v = derive_aes_value(token, version, sha256_of("keyline/master-check/v2"));
    return core::to_hex(v.data(), 8);
  }
  static const std::string input = "keyline/master-check/v1";
  const auto mac = token.derive_hmac_sha256(master_label(version), core::Bytes(input.begin(), input.end()));
  return core::to_hex(mac.data(), 8);
}

namespace {

// Version 1 enters the table the first time custody runs on a token that has it.
void record_local_version(core::pq::Connection& db, core::Pkcs11Token& token) {
  if (!token.has_secret_key(key_label::master)) return;
  db.exec("INSERT INTO secret.master_key (version, label, check_value, origin) VALUES (1, $1, $2, 'local')"
          " ON CONFLICT (version) DO NOTHING",
          {std::string(key_label::master), master_check_value(token, 1)});
}

int next_version(core::pq::Connection& db, core::Pkcs11Token& token) {
  const auto r = db.exec("SELECT coalesce(max(version), 0) FROM secret.master_key");
  return std::max<int>(newest_master_version(token), static_cast<int>(r.int64(0, 0))) + 1;
}

}  // namespace

void keys_roll_master(const StationConfig& config, std::ostream& out) {
  auto db = custody::open_db(config, "keys roll master");
  auto token = custody::open_token(config);
  record_local_version(db, *token);
  const int version = std::max(2, next_version(db, *token));
  // The data package header (DGI 0101) and the SCP03 key version number carry it in one byte.
  if (version > 255) custody::refuse("master version " + std::to_string(version) + " does not fit the one-byte KVN");
  const std::string label = master_label(version);
  custody::audited(db, config, "custody.roll", "master version " + std::to_string(version) + " (" + label + ")", [&] {
    token->generate_mirrorable_aes_derive_key(label, custody::version_id(version));
    const std::string check = master_check_value(*token, version);
    db.exec("INSERT INTO secret.master_key (version, label, check_value, origin) VALUES ($1, $2, $3, 'rolled')",
            {version, label, check});
    out << "keys: generated " << label << " (master version " << version
        << ": AES-256, derive only, sensitive, extractable only wrapped under a trusted key) check " << check << "\n"
        << "keys: new devices derive their communication key with version " << version
        << "; devices made before keep theirs\n";
    return label + " check " + check;
  });
}

void keys_check(const StationConfig& config, const CustodyRequest& request, std::ostream& out) {
  if (!core::Imei::is_valid(request.imei))
    throw core::ConfigError(core::ErrorCode::Usage, "--imei is not a 15-digit IMEI with its Luhn digit");
  auto token = custody::open_token(config);
  const int version = request.version > 0 ? request.version : newest_master_version(*token);
  if (version == 0 || !token->has_secret_key(master_label(version)))
    throw core::Error(errc::KeysMissing, "token '" + config.token_label + "' holds no " + master_label(std::max(1, version)));
  if (version >= 2 && request.chip.empty())
    throw core::ConfigError(core::ErrorCode::Usage, "master version " + std::to_string(version) +
                                                        " derives from the chip ID: give --chip");
  const auto chip = version >= 2 ? core::ChipId::parse(request.chip) : core::ChipId{};
  const auto kcv = core::key_check_value(derive_comm_key(*token, request.imei, chip, version));
  out << "version " << version << " check " << master_check_value(*token, version) << " kcv " << core::to_hex(kcv)
      << "\n";
}

}  // namespace keyline::station
