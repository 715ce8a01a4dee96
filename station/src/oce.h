// The station's SCP11a OCE key and certificate (docs/station.md, "The channel"): an ECDH-only P-256
// key on the token (key_label::oce) and an end-entity certificate for it from the station's own
// Device CA, so that the chain the station sends in PERFORM SECURITY OPERATION is
// Device CA certificate, OCE certificate, and the device checks it up to the root in its ROM.
// Private to the station library.
#pragma once

#include <string>

#include <botan/x509cert.h>

#include "keyline/core/bytes.h"

namespace Botan {
class Private_Key;
class Public_Key;
class RandomNumberGenerator;
}  // namespace Botan

namespace keyline::station {

// The OCE certificate's validity: a station certificate's (docs/ceremony.md, "Profiles": 730 days),
// never past the Device CA's own.
constexpr int kOceValidityDays = 730;

// Subject CN <station id>, OU "keyline station OCE"; basicConstraints CA false and keyUsage
// keyAgreement only (both critical), certificatePolicies core::chip::kOcePolicyOid, SKI and AKI.
Botan::X509_Certificate issue_oce_certificate(const Botan::X509_Certificate& device_ca, const Botan::Private_Key& ca_key,
                                              const Botan::Public_Key& oce_key, const std::string& station_id,
                                              Botan::RandomNumberGenerator& rng);

// Whether `cert` is an OCE certificate of this profile for `oce_key` that the Device CA `device_ca`
// signed and that has not expired: what a running station sends. The station id in its CN is not
// checked here (stations of several ids may share one token and PKI directory; the device checks the
// chain and the profile, docs/channel.md).
bool is_oce_certificate_for(const Botan::X509_Certificate& cert, const Botan::X509_Certificate& device_ca,
                            const Botan::Public_Key& oce_key);
// The same, naming `station_id` and lasting 30 more days: the test keys init keeps a present one by.
bool is_current_oce_certificate(const Botan::X509_Certificate& cert, const Botan::X509_Certificate& device_ca,
                                const Botan::Public_Key& oce_key, const std::string& station_id);

}  // namespace keyline::station
