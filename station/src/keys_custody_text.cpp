// The signed text files of a mirror (docs/custody.md "Files"): parse, sign, verify.
#include <botan/base64.h>
#include <botan/pubkey.h>

#include "keyline/core/cert_profile.h"
#include "keys_custody_internal.h"
#include "keyline/station/errors.h"
#include "keyline/station/keys.h"

namespace keyline::station {

namespace {

constexpr std::size_t kMaxText = 64 * 1024;

[[noreturn]] void bad(const std::string& why) { throw core::FormatError(errc::CustodyBadFile, "custody file: " + why); }

bool good_name(const std::string& n) {
  if (n.empty() || n.size() > 32) return false;
  for (const char c : n)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
  return true;
}

bool good_value(const std::string& v) {
  for (const char c : v)
    if (c < 0x20 || c > 0x7E) return false;
  return true;
}

core::Bytes base64(const std::string& text, const char* what) {
  try {
    const auto b = Botan::base64_decode(text, false);
    return core::Bytes(b.begin(), b.end());
  } catch (const Botan::Exception&) {
    bad(std::string(what) + " is not base64");
  }
}

}  // namespace

const std::string& SignedText::field(const std::string& name) const {
  const auto it = fields.find(name);
  if (it == fields.end()) bad("no " + name + "= line in the signed part");
  return it->second;
}

SignedText parse_signed_text(const std::string& text, const std::string& magic) {
  if (text.size() > kMaxText) bad("larger than 64 KiB");
  if (text.empty() || text.back() != '\n') bad("does not end with a newline");
  if (text.compare(0, magic.size() + 1, magic + "\n") != 0) bad("does not start with '" + magic + "'");
  SignedText out;
  bool signature_seen = false;
  std::size_t at = magic.size() + 1;
  while (at < text.size()) {
    const std::size_t end = text.find('\n', at);
    const std::string line = text.substr(at, end - at);
    const std::size_t eq = line.find('=');
    if (eq == std::string::npos) bad("a line without '='");
    const std::string name = line.substr(0, eq), value = line.substr(eq + 1);
    if (!good_name(name)) bad("a name that is not [a-z0-9_]{1,32}");
    if (!good_value(value)) bad("the value of " + name + " is not printable ASCII");
    if (!signature_seen && name == "signature") {
      out.signed_part = text.substr(0, at);
      out.signature = base64(value, "signature");
      signature_seen = true;
    } else {
      auto& into = signature_seen ? out.trailer : out.fields;
      if (!into.emplace(name, value).second) bad(name + " given twice");
    }
    at = end + 1;
  }
  if (!signature_seen) bad("no signature= line");
  return out;
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

core::Bytes decode_base64(const std::string& text, const char* what) { return base64(text, what); }

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
  const auto key = cert.subject_public_key();
  Botan::PK_Verifier verifier(*key, "EMSA1(SHA-256)", Botan::DER_SEQUENCE);
  const auto* p = reinterpret_cast<const std::uint8_t*>(text.signed_part.data());
  if (!verifier.verify_message(p, text.signed_part.size(), text.signature.data(), text.signature.size()))
    refuse("the signature does not verify under the station certificate (a changed byte, or another signer)");
}

}  // namespace custody

}  // namespace keyline::station
