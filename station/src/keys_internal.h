// What keys_roll.cpp borrows from keys.cpp: the PKI directory's lock, its atomic writes and the OCE
// certificate. Private to the station library.
#pragma once

#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include <botan/x509cert.h>

#include "keyline/core/pkcs11.h"
#include "keyline/station/config.h"

namespace keyline::station::pki_detail {

// Runs `step` holding the PKI directory's lock (the directory made 0700 and checked first), as keys init does.
void locked(const StationConfig& config, std::ostream& out, const std::function<void()>& step);
// `file` of the PKI directory written atomically, mode 0644 (certificates, CSRs: nothing secret).
void write_public(const StationConfig& config, const std::string& file, const std::string& text);
// The certificates of `file` of the PKI directory; none when it is missing or does not parse.
std::vector<Botan::X509_Certificate> read_certs(const StationConfig& config, const std::string& file);
// oce.pem issued again when it is not this Device CA's (a Device CA roll).
void renew_oce_cert(const StationConfig& config, const std::shared_ptr<core::Pkcs11Token>& token,
                    const Botan::X509_Certificate& device_ca, const core::Pkcs11EcdsaPrivateKey& ca_key,
                    std::ostream& out);
// The replaced station TLS certificate `old` (its key `old_label`, replaced by `replaced_by`) stays valid and its
// key stays on the token, so its --station-deny entry goes to retired-station-certs.txt: by `keys roll` on a
// token with its own root, by `keys install-cert` under the offline root (docs/custody.md, "Roll").
void retire_station_cert(const StationConfig& config, const Botan::X509_Certificate& old, const std::string& old_label,
                         const std::string& replaced_by, std::ostream& out);
// The public DB's name for a station certificate in --station-deny: its DER's SHA-256 (docs/api.md).
std::string deny_entry(const Botan::X509_Certificate& cert);

}  // namespace keyline::station::pki_detail
