#include "keyline/core/device_auth.h"

#include <botan/hash.h>
#include <botan/pubkey.h>

#include <cstdlib>
#include <memory>

#include "keyline/core/error.h"

namespace keyline::core::device_auth {

namespace {

constexpr const char* kContext = "keyline-device-auth-v1";
constexpr std::size_t kMaxChain = 4;
constexpr const char* kEmsa = "EMSA1(SHA-256)";

std::string sha256_hex(const std::string& s) {
  auto h = Botan::HashFunction::create_or_throw("SHA-256");
  h->update(reinterpret_cast<const std::uint8_t*>(s.data()), s.size());
  const auto d = h->final();
  return to_hex(d.data(), d.size());
}

FormatError bad(const std::string& what) { return FormatError(ErrorCode::BadCertificate, "device auth: " + what); }

bool is_nonce(const std::string& n) {
  if (n.size() != 32) return false;
  for (char c : n)
    if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

}  // namespace

std::string string_to_sign(const std::string& method, const std::string& path, const std::string& body,
                           std::int64_t timestamp, const std::string& nonce) {
  return std::string(kContext) + "\n" + method + "\n" + path + "\n" + sha256_hex(body) + "\n" +
         std::to_string(timestamp) + "\n" + nonce;
}

std::map<std::string, std::string> sign_request(const Botan::Private_Key& identity_key,
                                                const std::vector<Bytes>& chain_der, const std::string& method,
                                                const std::string& path, const std::string& body,
                                                std::int64_t now, Botan::RandomNumberGenerator& rng) {
  if (chain_der.empty()) throw bad("no identity certificate to send");
  std::uint8_t n[16];
  rng.randomize(n, sizeof n);
  const std::string nonce = to_hex(n, sizeof n);
  const std::string tbs = string_to_sign(method, path, body, now, nonce);
  Botan::PK_Signer signer(identity_key, rng, kEmsa, Botan::DER_SEQUENCE);
  const auto sig = signer.sign_message(reinterpret_cast<const std::uint8_t*>(tbs.data()), tbs.size(), rng);
  std::string certs;
  for (const auto& d : chain_der) {
    if (!certs.empty()) certs += ",";
    certs += to_base64(d);
  }
  return {{kCertificatesHeader, certs},
          {kTimestampHeader, std::to_string(now)},
          {kNonceHeader, nonce},
          {kSignatureHeader, to_base64(sig.data(), sig.size())}};
}

Verified verify_request(const std::function<std::string(const std::string&)>& header, const std::string& method,
                        const std::string& path, const std::string& body,
                        const std::vector<Botan::X509_Certificate>& anchors, std::int64_t now,
                        std::int64_t max_skew) {
  const std::string certs = header(kCertificatesHeader);
  const std::string ts_text = header(kTimestampHeader);
  const std::string nonce = header(kNonceHeader);
  const std::string sig_b64 = header(kSignatureHeader);
  if (certs.empty() || ts_text.empty() || nonce.empty() || sig_b64.empty())
    throw bad("missing Keyline-Certificates, -Timestamp, -Nonce or -Signature");
  if (!is_nonce(nonce)) throw bad("the nonce is not 32 hex digits");
  if (ts_text.size() > 19 || ts_text.find_first_not_of("0123456789") != std::string::npos)
    throw bad("the timestamp is not a decimal number");
  const std::int64_t ts = std::strtoll(ts_text.c_str(), nullptr, 10);
  if (ts > now + max_skew || ts < now - max_skew)
    throw CryptoError(ErrorCode::Crypto, "device auth: timestamp outside the allowed clock skew");

  Verified v;
  std::size_t i = 0;
  while (i <= certs.size()) {
    if (v.chain.size() == kMaxChain) throw bad("too many certificates");
    auto j = certs.find(',', i);
    if (j == std::string::npos) j = certs.size();
    const Bytes der = from_base64(std::string_view(certs).substr(i, j - i));
    try {
      v.chain.emplace_back(der);
    } catch (const std::exception&) {
      throw bad("a certificate does not parse");
    }
    i = j + 1;
  }
  verify_chain(v.chain[0], {v.chain.begin() + 1, v.chain.end()}, anchors);
  const auto facts = read_identity(v.chain[0]);
  std::unique_ptr<Botan::Public_Key> key(v.chain[0].subject_public_key());
  if (key->algo_name() != "ECDSA") throw bad("the identity key is not ECDSA");
  const Bytes sig = from_base64(sig_b64);
  const std::string tbs = string_to_sign(method, path, body, ts, nonce);
  Botan::PK_Verifier verifier(*key, kEmsa, Botan::DER_SEQUENCE);
  if (!verifier.verify_message(reinterpret_cast<const std::uint8_t*>(tbs.data()), tbs.size(), sig.data(),
                               sig.size()))
    throw CryptoError(ErrorCode::Crypto, "device auth: the signature does not verify");
  v.chip_id = facts.chip_id;
  v.imei = facts.imei.str();
  v.nonce = nonce;
  v.timestamp = ts;
  return v;
}

}  // namespace keyline::core::device_auth
