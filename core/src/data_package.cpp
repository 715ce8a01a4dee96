#include "keyline/core/data_package.h"

#include <botan/block_cipher.h>
#include <botan/hash.h>

#include <cstdio>
#include <set>
#include <string>

#include "keyline/core/error.h"

namespace keyline::core {

namespace {

constexpr std::size_t kX25519KeySize = 32;
constexpr std::size_t kAes256KeySize = 32;
constexpr std::size_t kKcvSize = 3;
constexpr std::size_t kMaxStationId = 255;

[[noreturn]] void bad(const std::string& what) {
  throw FormatError(ErrorCode::BadDataPackage, "data package: " + what);
}

std::string tag_name(std::uint16_t tag) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04X", tag);
  return std::string("DGI ") + buf;
}

// RFC 3629 section 4 well-formedness (no overlongs, no surrogates, nothing above U+10FFFF).
bool is_utf8(const std::string& s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) { ++i; continue; }
    if (c >= 0xC2 && c <= 0xDF) n = 1;
    else if (c == 0xE0) { n = 2; lo = 0xA0; }
    else if (c == 0xED) { n = 2; hi = 0x9F; }
    else if (c >= 0xE1 && c <= 0xEF) n = 2;
    else if (c == 0xF0) { n = 3; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) n = 3;
    else if (c == 0xF4) { n = 3; hi = 0x8F; }
    else return false;
    if (i + n >= s.size()) return false;
    for (std::size_t k = 1; k <= n; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      const unsigned l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
      if (d < l || d > h) return false;
    }
    i += n + 1;
  }
  return true;
}

bool is_app_tag(std::uint16_t tag) { return tag >= dgi_tag::app_first && tag <= dgi_tag::app_last; }

// The checks encode and decode share, so the station cannot build a package the device refuses.
void check_fields(const DataPackage& p) {
  if (p.station_id.size() > kMaxStationId) bad("station id longer than 255 bytes");
  if (!is_utf8(p.station_id)) bad("station id is not UTF-8");
  if (p.identity_cert.empty()) bad("identity certificate (DGI 0201) is empty");
  if (p.transport_cert.empty()) bad("transport certificate (DGI 0202) is empty");
  if (p.ca_chain.empty()) bad("CA chain (DGI 0203) is empty");
  for (const auto& c : p.ca_chain)
    if (c.empty()) bad("CA chain (DGI 0203) holds an empty certificate");
  const bool keys_absent = p.keys_in_device && p.identity_key.empty() && p.transport_key.empty();
  if (p.keys_in_device && !keys_absent && (p.identity_key.empty() || p.transport_key.empty()))
    bad("version 2 package holds one of DGIs 8101/8102 without the other");
  if (!keys_absent) {
    if (p.identity_key.empty()) bad("identity key (DGI 8101) is empty");
    if (p.transport_key.size() != kX25519KeySize) bad("transport key (DGI 8102) must be 32 bytes");
  }
  if (p.comm_key.size() != kAes256KeySize) bad("communication key (DGI 8103) must be 32 bytes");
  std::set<std::uint16_t> seen;
  for (const auto& [tag, value] : p.app_items) {
    if (!is_app_tag(tag)) bad(tag_name(tag) + " is not an application item (0F01-0FFF)");
    if (!seen.insert(tag).second) bad(tag_name(tag) + " appears twice");
  }
}

std::uint16_t get_u16(const std::uint8_t* p) { return static_cast<std::uint16_t>((p[0] << 8) | p[1]); }
std::uint32_t get_u32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}


SecureBytes encode_header(const DataPackage& p) {
  SecureBytes v;
  v.push_back(p.keys_in_device ? kDataPackageVersionDeviceKeys : kDataPackageVersion);
  const std::string& imei = p.imei.str();
  v.insert(v.end(), imei.begin(), imei.end());
  v.push_back(static_cast<std::uint8_t>(p.station_id.size()));
  v.insert(v.end(), p.station_id.begin(), p.station_id.end());
  for (int shift = 56; shift >= 0; shift -= 8) v.push_back(static_cast<std::uint8_t>(p.issued_at >> shift));
  // docs/protocol.md "Data package header": master version 1 is the absent byte, so every package
  // made before key versions encodes (and digests) exactly as it did.
  if (p.master_version == 0) bad("master version 0");
  if (p.master_version != 1) v.push_back(p.master_version);
  return v;
}

void decode_header(const SecureBytes& v, DataPackage& p) {
  // version (1) || IMEI (15) || station id length (1) || station id || time (8) [|| master version (1)]
  if (v.size() < 1 + 15 + 1 + 8) bad("header (DGI 0101) too short");
  if (v[0] != kDataPackageVersion && v[0] != kDataPackageVersionDeviceKeys)
    bad("unsupported format version " + std::to_string(v[0]));
  p.keys_in_device = v[0] == kDataPackageVersionDeviceKeys;
  const std::string imei(v.begin() + 1, v.begin() + 16);
  try {
    p.imei = Imei::parse(imei);
  } catch (const Error&) {
    bad("header (DGI 0101) holds an invalid IMEI");
  }
  const std::size_t sid_len = v[16];
  const std::size_t base = 1 + 15 + 1 + sid_len + 8;
  if (v.size() != base && v.size() != base + 1) bad("header (DGI 0101) length does not match its station id");
  p.master_version = v.size() == base ? 1 : v[base];
  if (v.size() != base && p.master_version < 2) bad("header (DGI 0101) names master version 1 explicitly or 0");
  p.station_id.assign(v.begin() + 17, v.begin() + 17 + static_cast<std::ptrdiff_t>(sid_len));
  p.issued_at = 0;
  for (std::size_t i = 0; i < 8; ++i) p.issued_at = (p.issued_at << 8) | v[17 + sid_len + i];
}

SecureBytes encode_chain(const std::vector<Bytes>& chain) {
  if (chain.size() > 0xFFFF) bad("CA chain too long");
  Bytes v;
  put_u16(v, static_cast<std::uint16_t>(chain.size()));
  for (const auto& der : chain) {
    put_u32(v, static_cast<std::uint32_t>(der.size()));
    v.insert(v.end(), der.begin(), der.end());
  }
  return SecureBytes(v.begin(), v.end());
}

std::vector<Bytes> decode_chain(const SecureBytes& v) {
  if (v.size() < 2) bad("CA chain (DGI 0203) too short");
  const std::size_t count = get_u16(v.data());
  std::size_t pos = 2;
  std::vector<Bytes> out;
  for (std::size_t i = 0; i < count; ++i) {
    if (v.size() - pos < 4) bad("CA chain (DGI 0203) truncated");
    const std::size_t n = get_u32(v.data() + pos);
    pos += 4;
    if (n > v.size() - pos) bad("CA chain (DGI 0203) certificate runs past its DGI");
    out.emplace_back(v.begin() + static_cast<std::ptrdiff_t>(pos), v.begin() + static_cast<std::ptrdiff_t>(pos + n));
    pos += n;
  }
  if (pos != v.size()) bad("CA chain (DGI 0203) has trailing bytes");
  return out;
}

}  // namespace

Bytes key_check_value(const SecureBytes& aes_key) {
  if (aes_key.size() != kAes256KeySize)
    throw CryptoError(ErrorCode::Crypto, "key check value needs a 32-byte AES-256 key");
  auto aes = Botan::BlockCipher::create_or_throw("AES-256");
  aes->set_key(aes_key);
  std::uint8_t block[16] = {};
  aes->encrypt(block);
  return Bytes(block, block + kKcvSize);
}

Bytes package_digest(const SecureBytes& encoded) {
  auto sha = Botan::HashFunction::create_or_throw("SHA-256");
  sha->update(encoded);
  return sha->final_stdvec();
}

Bytes station_digest(const DataPackage& p) {
  if (!p.keys_in_device) return package_digest(p.encode());
  DataPackage sent = p;
  sent.identity_key.clear();
  sent.transport_key.clear();
  return package_digest(sent.encode());
}

SecureBytes DataPackage::encode() const {
  check_fields(*this);
  SecureBytes out;
  auto add = [&out](std::uint16_t tag, const std::uint8_t* p, std::size_t n) {
    if (n > kDgiMaxValue) bad(tag_name(tag) + " longer than 65535 bytes");
    encode_dgi(out, tag, p, n);
  };
  const SecureBytes header = encode_header(*this);
  add(dgi_tag::header, header.data(), header.size());
  add(dgi_tag::identity_cert, identity_cert.data(), identity_cert.size());
  add(dgi_tag::transport_cert, transport_cert.data(), transport_cert.size());
  const SecureBytes chain = encode_chain(ca_chain);
  add(dgi_tag::ca_chain, chain.data(), chain.size());
  // check_fields let a version 2 package through without its keys only when both are absent.
  if (!identity_key.empty()) {
    add(dgi_tag::identity_key, identity_key.data(), identity_key.size());
    add(dgi_tag::transport_key, transport_key.data(), transport_key.size());
  }
  add(dgi_tag::comm_key, comm_key.data(), comm_key.size());
  Bytes kcv;
  put_u16(kcv, dgi_tag::comm_key);
  const Bytes k = key_check_value(comm_key);
  kcv.insert(kcv.end(), k.begin(), k.end());
  add(dgi_tag::kcv, kcv.data(), kcv.size());
  for (const auto& [tag, value] : app_items) add(tag, value.data(), value.size());
  return out;
}

DataPackage DataPackage::decode(const SecureBytes& bytes) {
  std::vector<Dgi> dgis;
  try {
    dgis = decode_dgis(bytes);
  } catch (const FormatError& e) {
    bad(std::string("DGI framing: ") + e.what());
  }

  std::set<std::uint16_t> seen;
  for (const auto& d : dgis) {
    const bool known = d.tag == dgi_tag::header || d.tag == dgi_tag::identity_cert ||
                       d.tag == dgi_tag::transport_cert || d.tag == dgi_tag::ca_chain ||
                       d.tag == dgi_tag::identity_key || d.tag == dgi_tag::transport_key ||
                       d.tag == dgi_tag::comm_key || d.tag == dgi_tag::kcv || is_app_tag(d.tag);
    if (!known) bad("unknown " + tag_name(d.tag));
    if (!seen.insert(d.tag).second) bad(tag_name(d.tag) + " appears twice");
  }
  for (std::uint16_t tag : {dgi_tag::header, dgi_tag::identity_cert, dgi_tag::transport_cert, dgi_tag::ca_chain,
                            dgi_tag::comm_key, dgi_tag::kcv})
    if (seen.count(tag) == 0) bad("required " + tag_name(tag) + " is missing");

  DataPackage p;
  decode_header(find_dgi(dgis, dgi_tag::header)->value, p);
  const std::size_t keys = seen.count(dgi_tag::identity_key) + seen.count(dgi_tag::transport_key);
  if (keys == 1) bad("DGIs 8101 and 8102 come together: one of them is missing");
  if (keys == 0 && !p.keys_in_device) bad("required DGIs 8101/8102 are missing");
  const auto& ic = find_dgi(dgis, dgi_tag::identity_cert)->value;
  p.identity_cert.assign(ic.begin(), ic.end());
  const auto& tc = find_dgi(dgis, dgi_tag::transport_cert)->value;
  p.transport_cert.assign(tc.begin(), tc.end());
  p.ca_chain = decode_chain(find_dgi(dgis, dgi_tag::ca_chain)->value);
  if (keys == 2) {
    p.identity_key = find_dgi(dgis, dgi_tag::identity_key)->value;
    p.transport_key = find_dgi(dgis, dgi_tag::transport_key)->value;
  }
  p.comm_key = find_dgi(dgis, dgi_tag::comm_key)->value;
  for (const auto& d : dgis)
    if (is_app_tag(d.tag)) p.app_items.emplace_back(d.tag, Bytes(d.value.begin(), d.value.end()));
  check_fields(p);

  // DGI 9103: one (tag, KCV) entry per symmetric key; today the communication key is the only one.
  const auto& kcv = find_dgi(dgis, dgi_tag::kcv)->value;
  if (kcv.size() != 2 + kKcvSize) bad("key check values (DGI 9103) must hold exactly one 5-byte entry");
  if (get_u16(kcv.data()) != dgi_tag::comm_key) bad("key check value (DGI 9103) names " + tag_name(get_u16(kcv.data())) + ", not DGI 8103");
  const Bytes expect = key_check_value(p.comm_key);
  std::uint8_t diff = 0;
  for (std::size_t i = 0; i < kKcvSize; ++i) diff |= static_cast<std::uint8_t>(expect[i] ^ kcv[2 + i]);
  if (diff != 0) bad("key check value of DGI 8103 does not match the key");
  return p;
}

}  // namespace keyline::core
