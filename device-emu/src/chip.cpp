#include "keyline/device/chip.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>

#include <botan/base64.h>
#include <botan/data_src.h>
#include <botan/curve25519.h>
#include <botan/hash.h>
#include <botan/hex.h>
#include <botan/pkcs8.h>
#include <botan/system_rng.h>

#include "keyline/core/backup_package.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/chip_identity.h"

namespace keyline::device {

namespace {

constexpr char kOtpMagic[4] = {'K', 'L', 'O', 'T'};
constexpr std::size_t kChipKeySize = 32;

core::Error no_device(const fs::path& dir, const std::string& what) {
  return core::Error(error::NoDevice, "not a device directory " + dir.string() + ": " + what);
}

core::Error rejected(const std::string& what) { return core::Error(error::ImageRejected, "image rejected: " + what); }

std::string sha256_hex(const std::vector<std::uint8_t>& data) {
  auto h = Botan::HashFunction::create_or_throw("SHA-256");
  const auto d = h->process(data);
  return core::to_hex(d.data(), d.size());
}

std::atomic<std::uint64_t> g_bytes_written{0};
std::atomic<std::uint64_t> g_syncs{0};

void fsync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ++g_syncs;
    ::fsync(fd);
    ::close(fd);
  }
}

// Closes the descriptor it holds when it goes out of scope, on every path.
struct Fd {
  int fd;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

void sync_data(int fd, const fs::path& path) {
  ++g_syncs;
  if (::fdatasync(fd) != 0)
    throw core::IoError(core::ErrorCode::Io, "fdatasync failed on " + path.string() + ": " + std::strerror(errno));
}

// All of data at offset `at` (pwrite, retried after EINTR and short writes).
void write_all(int fd, const std::uint8_t* data, std::size_t len, off_t at, const fs::path& path) {
  g_bytes_written += len;
  std::size_t off = 0;
  while (off < len) {
    const ssize_t n = ::pwrite(fd, data + off, len - off, at + static_cast<off_t>(off));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw core::IoError(core::ErrorCode::Io, "write failed on " + path.string());
    off += static_cast<std::size_t>(n);
  }
}

// Burns a BLANK fuse file PERSONALIZED in place, the way a fuse is blown: the file keeps its inode.
// Replacing it (temporary file, rename) allocated an inode and freed one per device; on ext4 without
// a journal every later inode allocation scans past the recently freed ones, and the rename cost a
// directory fsync and a discard. Returns false (nothing written) when the file is not a well-formed
// BLANK fuse; the caller then writes a whole new file atomically.
//
// Why a crash at any point leaves either BLANK or PERSONALIZED with this IMEI, never a torn fuse:
//   1. the IMEI goes behind the BLANK state byte (offsets 5..19) and is made durable with the file
//      size (fdatasync persists the size, POSIX "metadata needed to retrieve the data"). Until then
//      the state byte is still BLANK, and a BLANK fuse's bytes after the state are never read.
//   2. only then the one state byte becomes PERSONALIZED, within the existing size: a single byte in
//      a block whose other bytes do not change cannot tear, and no metadata has to follow it.
// A crash before step 2 is durable leaves BLANK next to a durable image (the caller wrote the image
// first), which Chip::load repairs by burning the fuse from the image, as after a crash between the
// image and the fuse write.
bool burn_in_place(const fs::path& otp, const core::Imei& imei) {
  const Fd f(::open(otp.c_str(), O_RDWR | O_CLOEXEC));
  if (f.fd < 0) return false;
  std::uint8_t cur[5 + 15 + 1];
  ssize_t got;
  do {
    got = ::pread(f.fd, cur, sizeof cur, 0);
  } while (got < 0 && errno == EINTR);
  if (got != 5 && got != 5 + 15) return false;
  if (std::memcmp(cur, kOtpMagic, 4) != 0 || cur[4] != static_cast<std::uint8_t>(Lifecycle::Blank)) return false;
  const std::string& digits = imei.str();
  write_all(f.fd, reinterpret_cast<const std::uint8_t*>(digits.data()), digits.size(), 5, otp);
  sync_data(f.fd, otp);
  const std::uint8_t state = static_cast<std::uint8_t>(Lifecycle::Personalized);
  write_all(f.fd, &state, 1, 4, otp);
  sync_data(f.fd, otp);
  return true;
}


// A secret file read straight into SecureBytes (never a std::string). Empty when it does not exist.
core::SecureBytes read_secret(const fs::path& path, std::size_t max) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  const Fd f(fd);
  core::SecureBytes out(max + 1);
  std::size_t got = 0;
  for (;;) {
    const ssize_t n = ::read(f.fd, out.data() + got, out.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
    if (got == out.size()) break;
  }
  if (got > max) throw core::IoError(core::ErrorCode::Io, path.string() + " is larger than allowed");
  out.resize(got);
  return out;
}

// PKCS#8 PEM (RFC 7468 section 10) built in SecureBytes: Botan's PEM_encode returns a std::string.
core::SecureBytes pkcs8_pem(const Botan::Private_Key& key) {
  const core::SecureBytes der = Botan::PKCS8::BER_encode(key);
  const std::string head = "-----BEGIN PRIVATE KEY-----\n", tail = "-----END PRIVATE KEY-----\n";
  core::SecureBytes b64(Botan::base64_encode_max_output(der.size()));
  std::size_t consumed = 0;
  const std::size_t n = Botan::base64_encode(reinterpret_cast<char*>(b64.data()), der.data(), der.size(), consumed, true);
  core::SecureBytes pem(head.begin(), head.end());
  for (std::size_t i = 0; i < n; i += 64) {
    pem.insert(pem.end(), b64.begin() + static_cast<std::ptrdiff_t>(i),
               b64.begin() + static_cast<std::ptrdiff_t>(std::min(n, i + 64)));
    pem.push_back('\n');
  }
  pem.insert(pem.end(), tail.begin(), tail.end());
  return pem;
}

void write_counter(const fs::path& path, std::uint32_t v, bool durable) {
  const std::uint8_t b[4] = {static_cast<std::uint8_t>(v >> 24), static_cast<std::uint8_t>(v >> 16),
                             static_cast<std::uint8_t>(v >> 8), static_cast<std::uint8_t>(v)};
  write_atomic(path, b, sizeof b, std::nullopt, 0600, durable);
}

// The vendor part of chip fab: an SD and an attestation key, each certified by the vendor for this chip.
void make_vendor_identity(const DevicePaths& p, const core::ChipId& id, const ChipVendor& vendor,
                          Botan::RandomNumberGenerator& rng) {
  const Botan::EC_Group p256("secp256r1");
  const Botan::ECDSA_PrivateKey sd(rng, p256), att(rng, p256);
  const auto sd_cert = core::chip::issue_chip_certificate(vendor.ca, *vendor.key, sd, core::chip::ChipKeyRole::Sd, id,
                                                          core::kDefaultHwType, rng);
  const auto att_cert = core::chip::issue_chip_certificate(vendor.ca, *vendor.key, att,
                                                           core::chip::ChipKeyRole::Attestation, id,
                                                           core::kDefaultHwType, rng);
  const auto vendor_der = vendor.ca.BER_encode();
  write_atomic(p.vendor_cert(), vendor_der.data(), vendor_der.size(), std::nullopt, 0444, false);
  write_atomic(p.sd_cert(), sd_cert.data(), sd_cert.size(), std::nullopt, 0444, false);
  write_atomic(p.attestation_cert(), att_cert.data(), att_cert.size(), std::nullopt, 0444, false);
  const core::SecureBytes sd_der = Botan::PKCS8::BER_encode(sd), att_der = Botan::PKCS8::BER_encode(att);
  write_atomic(p.sd_key(), sd_der.data(), sd_der.size(), std::nullopt, 0600, false);
  write_atomic(p.attestation_key(), att_der.data(), att_der.size(), std::nullopt, 0600, false);
  write_counter(p.attestation_counter(), 0, false);
}

constexpr std::size_t kMaxKeyFile = 4096;

}  // namespace

ChipVendor vendor_init(const fs::path& dir, const std::string& name) {
  if (name.empty()) throw core::ConfigError(core::ErrorCode::Usage, "the vendor needs a name");
  if (fs::exists(dir / "vendor.key") || fs::exists(dir / "vendor.crt"))
    throw core::ConfigError(core::ErrorCode::Config, dir.string() + " already holds a chip vendor");
  fs::create_directories(dir);
  Botan::System_RNG rng;
  auto key = std::make_shared<Botan::ECDSA_PrivateKey>(rng, Botan::EC_Group("secp256r1"));
  const auto ca = core::chip::make_vendor_ca(*key, name, rng);
  const core::SecureBytes pem = pkcs8_pem(*key);
  write_atomic(dir / "vendor.key", pem.data(), pem.size(), std::nullopt, 0600);
  const std::string cert = core::to_pem(ca);
  write_atomic(dir / "vendor.crt", reinterpret_cast<const std::uint8_t*>(cert.data()), cert.size(), std::nullopt, 0644);
  return ChipVendor{ca, std::move(key)};
}

ChipVendor ChipVendor::load(const fs::path& dir) {
  const core::SecureBytes pem = read_secret(dir / "vendor.key", kMaxKeyFile);
  if (pem.empty() || !fs::exists(dir / "vendor.crt"))
    throw core::ConfigError(core::ErrorCode::Config, dir.string() + " holds no chip vendor (vendor-init makes one)");
  try {
    const auto certs = core::load_certificates_pem((dir / "vendor.crt").string());
    Botan::DataSource_Memory src(pem);
    std::shared_ptr<const Botan::Private_Key> key(Botan::PKCS8::load_key(src).release());
    if (certs.size() != 1 || key->public_key_bits() != certs[0].subject_public_key_bitstring())
      throw core::ConfigError(core::ErrorCode::Config, "vendor.key and vendor.crt do not belong together");
    return ChipVendor{certs[0], std::move(key)};
  } catch (const core::ConfigError&) {
    throw;
  } catch (const std::exception& e) {
    throw core::ConfigError(core::ErrorCode::Config, "chip vendor in " + dir.string() + ": " + e.what());
  }
}

const char* lifecycle_name(Lifecycle l) noexcept {
  return l == Lifecycle::Personalized ? "PERSONALIZED" : "BLANK";
}

std::optional<core::Bytes> read_bytes(const fs::path& path, std::size_t max) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::nullopt;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw core::IoError(core::ErrorCode::Io, "cannot read " + path.string());
  core::Bytes b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (b.size() > max) throw core::IoError(core::ErrorCode::Io, path.string() + " is larger than allowed");
  return b;
}

core::SecureBytes read_secret_fd(int fd, std::size_t max) {
  core::SecureBytes out(max + 1);
  std::size_t got = 0;
  for (;;) {
    const ssize_t n = ::read(fd, out.data() + got, out.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
    if (got == out.size()) break;
  }
  ::close(fd);
  out.resize(got);
  return out;
}

void write_atomic(const fs::path& path, const std::uint8_t* data, std::size_t len,
                  std::optional<std::size_t> power_cut_at, mode_t mode, bool durable) {
  const fs::path tmp = path.string() + ".tmp";
  {
    const Fd f(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
    if (f.fd < 0)
      throw core::IoError(core::ErrorCode::Io, "cannot write " + tmp.string() + ": " + std::strerror(errno));
    write_all(f.fd, data, power_cut_at ? std::min(*power_cut_at, len) : len, 0, tmp);
    // The power goes before the rename: the temporary file stays partial, the old image stays valid.
    if (power_cut_at) throw core::Error(error::PowerCut, "power cut during the flash write");
    if (durable) {
      ++g_syncs;
      if (::fsync(f.fd) != 0) throw core::IoError(core::ErrorCode::Io, "fsync failed on " + tmp.string());
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    throw core::IoError(core::ErrorCode::Io, "rename failed for " + path.string());
  // POSIX makes the rename durable only once the directory entry is synced.
  if (durable) fsync_dir(path.parent_path());
}

bool write_in_place(const fs::path& path, const std::uint8_t* data, std::size_t len, std::size_t offset,
                    std::size_t limit) {
  if (offset > limit || len > limit - offset) return false;
  // Offset 0 starts a new file (O_TRUNC drops what a previous write left behind); any other offset
  // continues an existing one, and without one it is past the end.
  const int flags = O_RDWR | O_CLOEXEC | (offset == 0 ? O_CREAT | O_TRUNC : 0);
  const Fd f(::open(path.c_str(), flags, 0644));
  if (f.fd < 0 && errno == ENOENT && offset != 0) return false;
  if (f.fd < 0) throw core::IoError(core::ErrorCode::Io, "cannot write " + path.string() + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) throw core::IoError(core::ErrorCode::Io, "cannot stat " + path.string());
  if (offset > static_cast<std::size_t>(st.st_size)) return false;
  write_all(f.fd, data, len, static_cast<off_t>(offset), path);
  return true;
}

StorageCounters storage_counters() noexcept { return {g_bytes_written.load(), g_syncs.load()}; }

core::ChipId make_device(const fs::path& dir, const fs::path& rom_ca_pem, std::set<std::string>& taken,
                         const ChipVendor* vendor) {
  const auto roots = core::load_certificates_pem(rom_ca_pem.string());
  if (roots.empty()) throw core::ConfigError(core::ErrorCode::Config, "no certificate in " + rom_ca_pem.string());
  const DevicePaths p{dir};
  if (fs::exists(p.cplc()) || fs::exists(p.chip_key()))
    throw core::ConfigError(core::ErrorCode::Config, dir.string() + " already holds a device");
  fs::create_directories(dir / "rom");
  fs::create_directories(dir / "secure");
  fs::create_directories(dir / "flash");
  fs::permissions(dir / "secure", fs::perms::owner_all, fs::perm_options::replace);

  Botan::System_RNG rng;
  core::Cplc cplc;
  for (;;) {
    std::uint8_t r[6];
    rng.randomize(r, sizeof r);
    const std::uint32_t serial = (std::uint32_t(r[0]) << 24) | (std::uint32_t(r[1]) << 16) | (std::uint32_t(r[2]) << 8) | r[3];
    const std::uint16_t batch = static_cast<std::uint16_t>((r[4] << 8) | r[5]);
    // Fabricator 4B4C ("KL") and type 0001: keyline's emulated secure element.
    cplc = core::Cplc::make(0x4B4C, 0x0001, serial, batch);
    if (taken.insert(cplc.chip_id().str()).second) break;
  }
  write_atomic(p.cplc(), cplc.raw.data(), cplc.raw.size(), std::nullopt, 0444, false);

  std::string pem;
  for (const auto& c : roots) pem += core::to_pem(c);
  write_atomic(p.root(), reinterpret_cast<const std::uint8_t*>(pem.data()), pem.size(), std::nullopt, 0444, false);

  core::SecureBytes key(kChipKeySize);
  rng.randomize(key.data(), key.size());
  write_atomic(p.chip_key(), key.data(), key.size(), std::nullopt, 0600, false);

  const std::uint8_t otp[5] = {'K', 'L', 'O', 'T', static_cast<std::uint8_t>(Lifecycle::Blank)};
  write_atomic(p.otp(), otp, sizeof otp, std::nullopt, 0600, false);
  if (vendor) make_vendor_identity(p, cplc.chip_id(), *vendor, rng);
  return cplc.chip_id();
}

std::vector<core::ChipId> make_fleet(const fs::path& dir, std::size_t count, const fs::path& rom_ca_pem,
                                     const ChipVendor* vendor) {
  std::set<std::string> taken;
  for (const auto& d : list_fleet(dir)) taken.insert(Chip::load(d).chip_id().str());
  std::vector<core::ChipId> ids;
  std::size_t index = 0;
  while (ids.size() < count) {
    char name[32];
    std::snprintf(name, sizeof name, "dev-%04zu", index++);
    if (fs::exists(dir / name)) continue;
    ids.push_back(make_device(dir / name, rom_ca_pem, taken, vendor));
  }
  ::sync();  // one flush for the whole fab run instead of one per file
  return ids;
}

std::vector<fs::path> list_fleet(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if (e.is_directory() && name.rfind("dev-", 0) == 0 && fs::exists(DevicePaths{e.path()}.cplc()))
      out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

Chip Chip::load(const fs::path& dir) {
  Chip c;
  c.m_paths.dir = dir;
  const auto& p = c.m_paths;
  const auto cplc = read_bytes(p.cplc(), 64);
  if (!cplc) throw no_device(dir, "rom/cplc.bin missing");
  try {
    c.m_cplc = core::Cplc::parse(cplc->data(), cplc->size());
    c.m_chip_id = c.m_cplc.chip_id();
  } catch (const core::Error& e) {
    throw no_device(dir, std::string("rom/cplc.bin: ") + e.what());
  }
  if (!fs::exists(p.root())) throw no_device(dir, "rom/root.pem missing");
  c.m_roots = core::load_certificates_pem(p.root().string());
  if (c.m_roots.empty()) throw no_device(dir, "rom/root.pem holds no certificate");

  // Read straight into SecureBytes: the chip key never passes through a std::string.
  const int fd = ::open(p.chip_key().c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw no_device(dir, "secure/chip.key missing");
  c.m_chip_key = read_secret_fd(fd, kChipKeySize);
  if (c.m_chip_key.size() != kChipKeySize) throw no_device(dir, "secure/chip.key is not 32 bytes");

  const auto otp = read_bytes(p.otp(), 64);
  if (otp && otp->size() >= 5 && std::memcmp(otp->data(), kOtpMagic, 4) == 0) {
    if ((*otp)[4] == static_cast<std::uint8_t>(Lifecycle::Personalized)) {
      c.m_lifecycle = Lifecycle::Personalized;
      if (otp->size() == 5 + 15) c.m_imei = core::Imei::parse(std::string(otp->begin() + 5, otp->end()));
    }
  } else if (otp) {
    throw no_device(dir, "secure/otp.bin is malformed");
  }
  if (fs::exists(p.sd_cert())) c.load_vendor_identity();
  // A crash between the flash rename and the fuse write leaves an image with a blank fuse:
  // the image decides, so the device never accepts a second personalization.
  if (c.m_lifecycle == Lifecycle::Blank && fs::exists(p.image())) {
    try {
      const auto id = c.verify_image(*read_bytes(p.image()));
      c.set_personalized(id.imei);
    } catch (const core::Error&) {
      // A blank device with garbage in flash stays blank; the garbage is replaced by STORE DATA.
    }
  }
  return c;
}

void Chip::load_vendor_identity() {
  const auto& p = m_paths;
  VendorIdentity v;
  const auto vendor = read_bytes(p.vendor_cert(), kMaxKeyFile * 4);
  const auto sd = read_bytes(p.sd_cert(), kMaxKeyFile * 4);
  const auto att = read_bytes(p.attestation_cert(), kMaxKeyFile * 4);
  const auto ctr = read_bytes(p.attestation_counter(), 8);
  if (!vendor || !sd || !att || !ctr || ctr->size() != 4) throw no_device(p.dir, "vendor identity incomplete");
  v.vendor_cert = *vendor;
  v.sd_cert = *sd;
  v.attestation_cert = *att;
  try {
    const core::SecureBytes sd_der = read_secret(p.sd_key(), kMaxKeyFile);
    Botan::DataSource_Memory sd_src(sd_der);
    const auto sd_key = Botan::PKCS8::load_key(sd_src);
    const auto* ec = dynamic_cast<const Botan::EC_PrivateKey*>(sd_key.get());
    if (!ec) throw no_device(p.dir, "secure/sd.key is not an EC key");
    v.sd_scalar = Botan::BigInt::encode_1363(ec->private_value(), 32);
    const core::SecureBytes att_der = read_secret(p.attestation_key(), kMaxKeyFile);
    Botan::DataSource_Memory att_src(att_der);
    auto att_key = Botan::PKCS8::load_key(att_src);
    auto* ecdsa = dynamic_cast<Botan::ECDSA_PrivateKey*>(att_key.get());
    if (!ecdsa) throw no_device(p.dir, "secure/attest.key is not an ECDSA key");
    att_key.release();
    v.attestation_key.reset(ecdsa);
  } catch (const core::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw no_device(p.dir, std::string("vendor keys: ") + e.what());
  }
  m_attestation_counter = (std::uint32_t{(*ctr)[0]} << 24) | (std::uint32_t{(*ctr)[1]} << 16) |
                          (std::uint32_t{(*ctr)[2]} << 8) | (*ctr)[3];
  m_vendor = std::move(v);
}

std::uint32_t Chip::next_attestation_counter() {
  if (!m_vendor) throw core::Error(error::NoDevice, "chip " + m_chip_id.str() + " has no vendor identity");
  if (m_attestation_counter == UINT32_MAX)
    throw core::Error(error::NoDevice, "chip " + m_chip_id.str() + ": attestation counter exhausted");
  const std::uint32_t next = m_attestation_counter + 1;
  write_counter(m_paths.attestation_counter(), next, true);
  m_attestation_counter = next;
  return next;
}

void Chip::set_personalized(const core::Imei& imei) {
  if (!burn_in_place(m_paths.otp(), imei)) {
    core::Bytes otp{'K', 'L', 'O', 'T', static_cast<std::uint8_t>(Lifecycle::Personalized)};
    otp.insert(otp.end(), imei.str().begin(), imei.str().end());
    write_atomic(m_paths.otp(), otp.data(), otp.size(), std::nullopt, 0600);
  }
  m_lifecycle = Lifecycle::Personalized;
  m_imei = imei;
}

void Chip::set_blank() {
  const std::uint8_t otp[5] = {'K', 'L', 'O', 'T', static_cast<std::uint8_t>(Lifecycle::Blank)};
  write_atomic(m_paths.otp(), otp, sizeof otp, std::nullopt, 0600);
  m_lifecycle = Lifecycle::Blank;
  m_imei.reset();
}

core::Bytes Chip::seal(const core::SecureBytes& plaintext) const {
  return core::seal_backup(m_chip_key, m_chip_id, plaintext);
}

core::SecureBytes Chip::open(const core::Bytes& backup) const {
  return core::open_backup(m_chip_key, m_chip_id, backup);
}

void Chip::check_identity(const core::Bytes& identity_der, const std::vector<core::Bytes>& chain_der,
                          const core::Imei& imei) const {
  try {
    Botan::X509_Certificate leaf(identity_der);
    std::vector<Botan::X509_Certificate> chain;
    for (const auto& d : chain_der) chain.emplace_back(d);
    // The Device CA's own signature is checked once per process (core::verify_chain remembers it).
    core::verify_chain(leaf, chain, m_roots);
    const auto facts = core::read_identity(leaf);
    if (facts.chip_id != m_chip_id) throw rejected("identity certificate names chip " + facts.chip_id.str());
    if (facts.imei != imei) throw rejected("identity certificate IMEI differs from the package IMEI");
  } catch (const core::Error& e) {
    if (e.code() == error::ImageRejected) throw;
    throw rejected(e.what());
  } catch (const std::exception& e) {
    throw rejected(std::string("identity certificate: ") + e.what());
  }
}

BootIdentity Chip::verify_image(const core::Bytes& image) const {
  try {
    const auto flash = core::FlashImage::decode(image);
    const auto header = core::parse_backup_header(flash.backup);
    if (header.chip_id != m_chip_id) throw rejected("backup belongs to chip " + header.chip_id.str());
    const core::SecureBytes plain = open(flash.backup);
    const auto pkg = core::DataPackage::decode(plain);
    if (flash.certificates.empty()) throw rejected("image carries no certificate");
    if (flash.certificates[0] != pkg.identity_cert)
      throw rejected("image identity certificate differs from the one in the backup");
    check_identity(flash.certificates[0], {flash.certificates.begin() + 1, flash.certificates.end()}, pkg.imei);
    if (m_lifecycle == Lifecycle::Personalized && m_imei && *m_imei != pkg.imei)
      throw rejected("image IMEI " + pkg.imei.str() + " differs from this device's " + m_imei->str());

    Botan::X509_Certificate identity(pkg.identity_cert);
    Botan::DataSource_Memory src(pkg.identity_key);
    const auto key = Botan::PKCS8::load_key(src);
    if (key->public_key_bits() != identity.subject_public_key_bitstring())
      throw rejected("identity private key does not match the identity certificate");
    BootIdentity id;
    id.imei = pkg.imei;
    id.chip_id = m_chip_id;
    id.identity_fingerprint = sha256_hex(identity.subject_public_key_bitstring());
    if (!pkg.transport_cert.empty()) {
      Botan::X509_Certificate transport(pkg.transport_cert);
      if (pkg.transport_key.size() == 32) {
        Botan::Curve25519_PrivateKey tk(pkg.transport_key);
        if (tk.public_value() != transport.subject_public_key_bitstring())
          throw rejected("transport private key does not match the transport certificate");
      }
      id.transport_fingerprint = sha256_hex(transport.subject_public_key_bitstring());
    }
    id.package_digest = pkg.keys_in_device ? core::station_digest(pkg) : core::package_digest(plain);
    return id;
  } catch (const core::Error& e) {
    if (e.code() == error::ImageRejected) throw;
    throw rejected(e.what());
  } catch (const std::exception& e) {
    throw rejected(e.what());
  }
}

BootIdentity boot_offline(const fs::path& dir) {
  const auto chip = Chip::load(dir);
  const auto image = read_bytes(chip.paths().image());
  if (!image) throw core::Error(error::FlashEmpty, "flash is empty: nothing to boot");
  return chip.verify_image(*image);
}

std::string status_text(const fs::path& dir) {
  const auto chip = Chip::load(dir);
  std::ostringstream o;
  o << "chip_id " << chip.chip_id().str() << "\n";
  o << "lifecycle " << lifecycle_name(chip.lifecycle()) << "\n";
  if (chip.imei()) o << "imei " << chip.imei()->str() << "\n";
  if (chip.vendor()) {
    const auto cns = Botan::X509_Certificate(chip.vendor()->vendor_cert).subject_dn().get_attribute("X520.CommonName");
    o << "vendor " << (cns.empty() ? std::string("?") : cns.front()) << "\n";
    o << "attestation_counter " << chip.attestation_counter() << "\n";
  }
  const auto image = read_bytes(chip.paths().image());
  if (!image) {
    o << "flash empty\n";
  } else {
    try {
      chip.verify_image(*image);
      o << "flash ok (" << image->size() << " bytes)\n";
    } catch (const core::Error& e) {
      o << "flash bad (" << e.what() << ")\n";
    }
  }
  return o.str();
}

void wipe_flash(const fs::path& dir) {
  const auto chip = Chip::load(dir);
  std::error_code ec;
  fs::remove(chip.paths().image(), ec);
  fs::remove(chip.paths().image().string() + ".tmp", ec);
  fs::remove(chip.paths().staging(), ec);
}

void corrupt_flash(const fs::path& dir) {
  const auto chip = Chip::load(dir);
  auto image = read_bytes(chip.paths().image());
  if (!image || image->empty()) throw core::Error(error::FlashEmpty, "flash is empty: nothing to corrupt");
  // Flip one bit inside the sealed backup when the image parses, so that only the AEAD check can notice.
  core::Bytes out;
  try {
    auto flash = core::FlashImage::decode(*image);
    flash.backup[flash.backup.size() / 2] ^= 0x01;
    out = flash.encode();
  } catch (const core::Error&) {
    out = *image;
    out[out.size() / 2] ^= 0x01;
  }
  write_atomic(chip.paths().image(), out.data(), out.size());
}

}  // namespace keyline::device
