// The signed text files of a mirror (docs/custody.md "Files"): parse, sign, verify.
#include <botan/base64.h>

#include "keyline/core/cert_profile.h"
#include "keys_custody_internal.h"
#include "keyline/station/errors.h"
#include "keyline/station/keys.h"

namespace keyline::station {

namespace {

const core::SignedTextError kBadFile{errc::CustodyBadFile, "custody file"};

}  // namespace

SignedText parse_signed_text(const std::string& text, const std::string& magic) {
  return core::parse_signed_text(text, magic, kBadFile);
}

namespace custody {

// Signed by the station TLS key version station-tls.pem certifies (a rolled key: docs/custody.md "Roll"),
// so the receiver's check against that certificate holds.
std::string signature_line(core::Pkcs11Token& token, const StationConfig& config, const std::string& signed_part) {
  const auto chain = own_station_chain(config);
  const std::string label =
      chain.empty() ? std::string(key_label::station_tls) : key_label_for(token, key_label::station_tls, chain.front());
  const auto key = token.find_private_key(label);
  const core::Bytes der = token.sign_ecdsa_sha256_der(key, reinterpret_cast<const std::uint8_t*>(signed_part.data()),
                                               signed_part.size());
  return "signature=" + Botan::base64_encode(der) + "\n";
}

core::Bytes decode_base64(const std::string& text, const char* what) {
  return core::decode_signed_text_base64(text, what, kBadFile);
}

std::vector<Botan::X509_Certificate> own_station_chain(const StationConfig& config) {
  return core::load_certificates_pem(pki_path(config, pki_file::station_tls));
}

Botan::X509_Certificate check_peer_station(const std::vector<Botan::X509_Certificate>& chain,
                                           const StationConfig& config, const std::string& claimed_station) {
  if (chain.empty()) refuse("no station certificate given");
  const auto roots = core::load_certificates_pem(pki_path(config, pki_file::root));
  const auto& leaf = chain.front();
  try {
    core::verify_chain(leaf, std::vector<Botan::X509_Certificate>(chain.begin() + 1, chain.end()), roots);
  } catch (const core::Error&) {
    refuse("the station certificate (" + leaf.subject_dn().to_string() + ") does not chain to this station's root " +
           pki_path(config, pki_file::root));
  }
  std::string id;
  try {
    core::lint_station_certificate(leaf);
    id = core::read_station_id(leaf);
  } catch (const core::Error& e) {
    refuse(std::string("the certificate is not of the station profile: ") + e.what());
  }
  if (id != claimed_station) refuse("the certificate is station '" + id + "', the file says '" + claimed_station + "'");
  return leaf;
}

void check_signature(const SignedText& text, const Botan::X509_Certificate& cert) {
  if (!core::signed_text_verifies(text, cert))
    refuse("the signature does not verify under the station certificate (a changed byte, or another signer)");
}

}  // namespace custody

}  // namespace keyline::station
