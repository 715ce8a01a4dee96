// The data package the station stores into a device (docs/design.md section 5): a sequence of DGIs.
//   0101 header: format version (1 or 2) || IMEI (15 ASCII digits) || station id (u8 len || UTF-8) || time (u64 Unix s, BE)
//        [|| master version (u8, 2..255): absent for version 1] - the derivation version of DGI 8103, the
//        device's SCP03 KVN (docs/protocol.md "Data package header", docs/design.md section 10)
//   0201 identity certificate (DER)   0202 transport certificate (DER)   0203 CA chain (u16 count || {u32 len || DER}*)
//   8101 identity private key (PKCS#8 DER, P-256)   8102 transport private key (32-byte X25519 scalar)
//   8103 manufacturer communication key (32 bytes AES-256)
//   9103 key check values: for each symmetric key, DGI tag (2) || KCV (3) = first 3 bytes of AES-ECB(key, 16 x 00)
//        (the usual GlobalPlatform/EMV KCV)
//   0F01-0FFF application items from the line profile
// DGIs 8xxx carry secrets: they live only in SecureBytes.
// Version 2 (keys generated in the device, GENERATE KEY, docs/protocol.md section 9): the station sends
// the package without DGIs 8101/8102; the device inserts the private keys it generated for this session
// at their usual place before it seals, so the sealed (backup) package holds them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "keyline/core/bytes.h"
#include "keyline/core/dgi.h"
#include "keyline/core/imei.h"

namespace keyline::core {

namespace dgi_tag {
constexpr std::uint16_t header = 0x0101;
constexpr std::uint16_t identity_cert = 0x0201;
constexpr std::uint16_t transport_cert = 0x0202;
constexpr std::uint16_t ca_chain = 0x0203;
constexpr std::uint16_t identity_key = 0x8101;
constexpr std::uint16_t transport_key = 0x8102;
constexpr std::uint16_t comm_key = 0x8103;
constexpr std::uint16_t kcv = 0x9103;
constexpr std::uint16_t app_first = 0x0F01;
constexpr std::uint16_t app_last = 0x0FFF;
}  // namespace dgi_tag

constexpr std::uint8_t kDataPackageVersion = 1;
constexpr std::uint8_t kDataPackageVersionDeviceKeys = 2;  // keys generated in the device

struct DataPackage {
  Imei imei = Imei::parse("490154203237518");
  std::string station_id;
  std::uint64_t issued_at = 0;  // Unix seconds
  Bytes identity_cert;          // DER
  Bytes transport_cert;         // DER
  std::vector<Bytes> ca_chain;  // DER, Device CA first (root not included: it is in the device ROM)
  SecureBytes identity_key;     // PKCS#8 DER
  SecureBytes transport_key;    // 32 bytes
  SecureBytes comm_key;         // 32 bytes
  std::vector<std::pair<std::uint16_t, Bytes>> app_items;  // tags 0F01..0FFF
  // Header version 2: the identity and transport keys were generated in the device. identity_key and
  // transport_key are then both empty (as the station sends it) or both set (as the device seals it).
  bool keys_in_device = false;
  // The master (derivation) version comm_key was derived with; the device's SCP03 KVN (docs/service.md).
  std::uint8_t master_version = 1;

  // Encodes the DGIs in the order above, computing DGI 9103 from comm_key; a version 2 package without
  // its keys has no DGIs 8101/8102.
  SecureBytes encode() const;
  // Strict: DGIs 0101, 0201, 0202, 0203, 8101, 8102, 8103 and 9103 each present exactly once
  // (application items optional, each tag at most once), no other tags, header well-formed (version 1,
  // Luhn-valid IMEI, UTF-8 station id, exact length), certificates and the identity key non-empty,
  // transport and communication keys 32 bytes, CA chain non-empty and exactly filling its DGI, and
  // 9103 = 8103 || KCV(comm_key). Version 2: 8101 and 8102 both absent or both present, never one.
  // encode() applies the same checks, so the station cannot build a
  // package the device refuses. Throws FormatError(BadDataPackage) naming the problem (never a key byte).
  static DataPackage decode(const SecureBytes& bytes);
};

// First 3 bytes of AES-256-ECB(key, 00..00): the key check value.
Bytes key_check_value(const SecureBytes& aes_key);
// SHA-256 over the encoded package.
Bytes package_digest(const SecureBytes& encoded);
// What the restore drill returns and the station compares: package_digest(encode()) for version 1;
// for version 2 package_digest of the encoding without DGIs 8101/8102 (the station never knows the
// keys the device generated, so it can only know this digest).
Bytes station_digest(const DataPackage& p);

}  // namespace keyline::core
