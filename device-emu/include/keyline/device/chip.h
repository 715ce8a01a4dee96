// The emulated chip and its storage (seed "device keys": integrated chip 110, read-only storage 120,
// secret storage 125, flash 130). One directory per device:
//   rom/cplc.bin       42-byte CPLC (chip ID inside)                       read-only storage
//   rom/root.pem       manufacturer root certificate, the trust anchor     read-only storage
//   secure/chip.key    32 random bytes, mode 0600, read only into SecureBytes   secret storage
//   secure/otp.bin     lifecycle fuse: "KLOT" || state || IMEI (15 digits or empty)
//   flash/image.bin    KLFL flash image (absent when the flash is empty)   flash
//   flash/staging.bin  recovery staging area written by UPDATE BINARY
// A chip made with a vendor identity (make --vendor, docs/channel.md "The chip: vendor identity,
// certificate store, attestation") also holds:
//   rom/vendor.crt     the vendor CA certificate (DER)                      read-only storage
//   rom/sd.crt         SCP11 SD key certificate (DER, keyAgreement)         read-only storage
//   rom/attest.crt     attestation key certificate (DER, digitalSignature)  read-only storage
//   secure/sd.key      SD private key (PKCS#8 DER, P-256), mode 0600         secret storage
//   secure/attest.key  attestation private key (PKCS#8 DER, P-256), 0600     secret storage
//   secure/attest.ctr  attestation counter (u32 big-endian), 0600, written atomically and durably
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <botan/ecdsa.h>
#include <botan/x509cert.h>

#include <memory>

#include "keyline/core/bytes.h"
#include "keyline/core/cplc.h"
#include "keyline/core/data_package.h"
#include "keyline/core/error.h"
#include "keyline/core/flash_image.h"
#include "keyline/core/imei.h"

namespace keyline::device {

namespace fs = std::filesystem;

// Device error codes, 2000-2999 (error.h reserves the range for the device).
namespace error {
constexpr core::ErrorCode NoDevice = static_cast<core::ErrorCode>(2001);      // directory missing or incomplete
constexpr core::ErrorCode FlashEmpty = static_cast<core::ErrorCode>(2002);    // nothing to boot from
constexpr core::ErrorCode PowerCut = static_cast<core::ErrorCode>(2003);      // injected power cut during a flash write
constexpr core::ErrorCode ImageRejected = static_cast<core::ErrorCode>(2004); // image fails a boot check
}  // namespace error

enum class Lifecycle : std::uint8_t { Blank = 0x01, Personalized = 0x0F };
const char* lifecycle_name(Lifecycle l) noexcept;

struct DevicePaths {
  fs::path dir;
  fs::path cplc() const { return dir / "rom" / "cplc.bin"; }
  fs::path root() const { return dir / "rom" / "root.pem"; }
  fs::path chip_key() const { return dir / "secure" / "chip.key"; }
  fs::path otp() const { return dir / "secure" / "otp.bin"; }
  fs::path image() const { return dir / "flash" / "image.bin"; }
  fs::path staging() const { return dir / "flash" / "staging.bin"; }
  fs::path vendor_cert() const { return dir / "rom" / "vendor.crt"; }
  fs::path sd_cert() const { return dir / "rom" / "sd.crt"; }
  fs::path attestation_cert() const { return dir / "rom" / "attest.crt"; }
  fs::path sd_key() const { return dir / "secure" / "sd.key"; }
  fs::path attestation_key() const { return dir / "secure" / "attest.key"; }
  fs::path attestation_counter() const { return dir / "secure" / "attest.ctr"; }
};

// The emulated chip vendor (keyline-device vendor-init): DIR/vendor.key (PKCS#8 PEM, mode 0600) and
// DIR/vendor.crt (PEM, core::chip::make_vendor_ca).
struct ChipVendor {
  Botan::X509_Certificate ca;
  std::shared_ptr<const Botan::Private_Key> key;
  // Throws ConfigError(Config) for a directory that holds no vendor.
  static ChipVendor load(const fs::path& dir);
};
// Makes a vendor in `dir` (created). Throws ConfigError(Config) when it already holds one.
ChipVendor vendor_init(const fs::path& dir, const std::string& name);

// "Chip fab": writes one device. Chip IDs in `taken` are avoided and the new one is added. With a
// vendor, the chip also gets its SD and attestation keys and their certificates naming its chip ID.
core::ChipId make_device(const fs::path& dir, const fs::path& rom_ca_pem, std::set<std::string>& taken,
                         const ChipVendor* vendor = nullptr);
// Writes `count` devices as dir/dev-0000, dir/dev-0001, ... with chip IDs unique within the fleet.
std::vector<core::ChipId> make_fleet(const fs::path& dir, std::size_t count, const fs::path& rom_ca_pem,
                                     const ChipVendor* vendor = nullptr);
// Device directories of a fleet (dev-* subdirectories holding rom/cplc.bin), sorted by name.
std::vector<fs::path> list_fleet(const fs::path& dir);

// Writes bytes atomically: temporary file, fsync, rename, fsync of the directory. When power_cut_at
// is set, only that many bytes reach the temporary file and PowerCut is thrown before the rename,
// as a power loss would leave it: the old file is untouched. durable = false skips the fsyncs (chip
// fab writes thousands of small files and syncs once at the end).
void write_atomic(const fs::path& path, const std::uint8_t* data, std::size_t len,
                  std::optional<std::size_t> power_cut_at = std::nullopt, mode_t mode = 0644, bool durable = true);

// Writes len bytes at `offset` of the file in place (pwrite, no temporary file, no sync), creating
// it; offset 0 empties the file first. Returns false and writes nothing when offset is past the end
// of the file (no gaps) or offset + len exceeds `limit`. UPDATE BINARY writes the staging area this
// way: nothing trusts those bytes before BOOT STAGED has verified them, so they need not be durable.
bool write_in_place(const fs::path& path, const std::uint8_t* data, std::size_t len, std::size_t offset,
                    std::size_t limit);

// What this process's storage layer wrote (bytes handed to pwrite) and how often it synced, so that
// tests can check the write amplification of the flash paths.
struct StorageCounters {
  std::uint64_t bytes_written = 0;
  std::uint64_t syncs = 0;
};
StorageCounters storage_counters() noexcept;

// What a successful boot knows. Fingerprints are SHA-256 of the raw public key bits (the EC point
// of the identity key, the 32-byte X25519 key of the transport key), upper-case hex.
struct BootIdentity {
  core::Imei imei = core::Imei::parse("490154203237518");
  core::ChipId chip_id;
  std::string identity_fingerprint;
  std::string transport_fingerprint;
  core::Bytes package_digest;  // core::station_digest of the data package inside the backup
};

// What a chip made with a vendor identity holds (docs/channel.md). Keys only in SecureBytes / Botan keys.
struct VendorIdentity {
  core::Bytes vendor_cert, sd_cert, attestation_cert;  // DER
  core::SecureBytes sd_scalar;                         // 32-byte P-256 private scalar (SCP11 SK.SD.ECKA)
  std::shared_ptr<const Botan::ECDSA_PrivateKey> attestation_key;
};

class Chip {
 public:
  // Loads a device directory. Throws Error(NoDevice) when a ROM or secure file is missing or malformed.
  static Chip load(const fs::path& dir);

  const DevicePaths& paths() const noexcept { return m_paths; }
  const core::Cplc& cplc() const noexcept { return m_cplc; }
  const core::ChipId& chip_id() const noexcept { return m_chip_id; }
  const std::vector<Botan::X509_Certificate>& roots() const noexcept { return m_roots; }
  // Empty for a chip made without --vendor: it works plain, as before the channel existed.
  const std::optional<VendorIdentity>& vendor() const noexcept { return m_vendor; }
  // Steps the attestation counter by one and makes it durable (write_atomic) before returning the
  // new value, so no statement is ever answered with a counter a restart could hand out again.
  // Throws Error(NoDevice) for a chip without a vendor identity or a counter at its maximum.
  std::uint32_t next_attestation_counter();
  std::uint32_t attestation_counter() const noexcept { return m_attestation_counter; }

  Lifecycle lifecycle() const noexcept { return m_lifecycle; }
  const std::optional<core::Imei>& imei() const noexcept { return m_imei; }
  // Burns the lifecycle fuse (persisted in secure/otp.bin).
  void set_personalized(const core::Imei& imei);
  void set_blank();

  // Backup package under the chip key (core::seal_backup / open_backup); the key stays in here.
  core::Bytes seal(const core::SecureBytes& plaintext) const;
  core::SecureBytes open(const core::Bytes& backup) const;

  // Checks an identity certificate chain against the ROM root and this chip. Throws Error(ImageRejected).
  void check_identity(const core::Bytes& identity_der, const std::vector<core::Bytes>& chain_der,
                      const core::Imei& imei) const;

  // Every boot check of a flash image (docs/protocol.md "Boot checks"): returns what it proves.
  // Throws Error(ImageRejected) naming the failed check.
  BootIdentity verify_image(const core::Bytes& image) const;

 private:
  DevicePaths m_paths;
  core::Cplc m_cplc;
  core::ChipId m_chip_id;
  std::vector<Botan::X509_Certificate> m_roots;
  core::SecureBytes m_chip_key;
  Lifecycle m_lifecycle = Lifecycle::Blank;
  std::optional<core::Imei> m_imei;
  std::optional<VendorIdentity> m_vendor;
  std::uint32_t m_attestation_counter = 0;
  void load_vendor_identity();
};

// Reads a whole file as bytes; std::nullopt when it does not exist. Throws IoError(Io) otherwise.
std::optional<core::Bytes> read_bytes(const fs::path& path, std::size_t max = core::kFlashMaxSize * 2);
// Reads an open file and closes it, straight into SecureBytes: a secret never passes through a std::string.
// At most max + 1 bytes, so a caller sees a file larger than it takes without reading all of it.
core::SecureBytes read_secret_fd(int fd, std::size_t max);

// Offline commands behind `keyline-device boot|status|wipe-flash|corrupt-flash`.
BootIdentity boot_offline(const fs::path& dir);
std::string status_text(const fs::path& dir);
void wipe_flash(const fs::path& dir);
void corrupt_flash(const fs::path& dir);

}  // namespace keyline::device
