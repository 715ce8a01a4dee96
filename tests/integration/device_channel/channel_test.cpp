// The chip's side of the personalization channel over a real `keyline-device serve` TCP link
// (docs/channel.md): core's host side (open_host_session, SecureChannel) against the emulator made
// with `keyline-device vendor-init` / `make --vendor`, then the attacks: an OCE chain from another
// root or with the wrong key usage, a changed byte, a replay, plain personalization commands, and
// the attestation counter across a restart.
#include <botan/auto_rng.h>
#include <botan/curve25519.h>
#include <botan/data_src.h>
#include <botan/ecdsa.h>
#include <botan/hash.h>
#include <botan/pkcs8.h>
#include <botan/pubkey.h>
#include <botan/x509_ca.h>
#include <botan/x509_ext.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "keyline/core/applet_protocol.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/chip_identity.h"
#include "keyline/core/data_package.h"
#include "keyline/core/device_link.h"
#include "keyline/core/flash_image.h"
#include "keyline/core/scp11.h"
#include "keyline/device/chip.h"
#include "scratch_dir.h"
#include "testenv.h"

using namespace keyline;
namespace fs = std::filesystem;
namespace scp11 = core::scp11;
namespace chip = core::chip;

namespace {

std::string program() { return test::binary_dir() + "/bin/keyline-device"; }

int run(const std::vector<std::string>& args, std::string* out = nullptr) {
  std::string line = program();
  for (const auto& a : args) line += " '" + a + "'";
  FILE* p = ::popen(line.c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  std::size_t n;
  std::string text;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) text.append(buf, n);
  const int status = ::pclose(p);
  if (out) *out = text;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A background `keyline-device serve --dir`, stopped with SIGTERM.
class Served {
 public:
  explicit Served(const fs::path& dir) {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    m_pid = ::fork();
    REQUIRE(m_pid >= 0);
    if (m_pid == 0) {
      ::dup2(fds[1], 1);
      ::close(fds[0]);
      ::close(fds[1]);
      std::vector<std::string> all{program(),  "serve",       "--dir",  dir.string(),
                                   "--listen", "127.0.0.1:0", "--quiet"};
      std::vector<char*> argv;
      for (auto& a : all) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    m_out = ::fdopen(fds[0], "r");
    char line[1024];
    while (m_port == 0 && std::fgets(line, sizeof line, m_out)) {
      std::istringstream in(line);
      std::string word, endpoint;
      in >> word >> endpoint;
      if (word == "listening") m_port = std::stoi(endpoint.substr(endpoint.rfind(':') + 1));
    }
    REQUIRE(m_port != 0);
  }
  ~Served() {
    stop();
    if (m_out) std::fclose(m_out);
  }
  void stop() {
    if (m_pid <= 0) return;
    ::kill(m_pid, SIGTERM);
    int status = 0;
    ::waitpid(m_pid, &status, 0);
    m_pid = -1;
  }
  int port() const { return m_port; }

 private:
  pid_t m_pid = -1;
  FILE* m_out = nullptr;
  int m_port = 0;
};

Botan::X509_Time hours_from_now(int h) {
  return Botan::X509_Time(std::chrono::system_clock::now() + std::chrono::hours(h));
}

// The manufacturer's side for these tests: the ROM root, a Device CA for identity certificates, a
// Station CA and the station's OCE certificate (keyAgreement, kOcePolicyOid) with its static key.
class Manufacturer {
 public:
  Manufacturer()
      : m_root_key(m_rng, p256()),
        m_device_ca_key(m_rng, p256()),
        m_station_ca_key(m_rng, p256()),
        m_oce_key(m_rng, p256()),
        m_root(core::make_root_certificate(m_root_key, "test root", "Test Manufacturer", m_rng)),
        m_device_ca(core::make_ca_certificate(m_root, m_root_key, m_device_ca_key, "test device CA",
                                              "Test Manufacturer", 0, m_rng)),
        m_station_ca(core::make_ca_certificate(m_root, m_root_key, m_station_ca_key, "test station CA",
                                               "Test Manufacturer", 0, m_rng)) {}

  static Botan::EC_Group p256() { return Botan::EC_Group("secp256r1"); }
  const Botan::X509_Certificate& root() const { return m_root; }
  Botan::RandomNumberGenerator& rng() { return m_rng; }

  // The OCE certificate from the Station CA; usage and policy as given (an attacker's variants).
  core::Bytes oce_cert(Botan::Key_Constraints usage = Botan::KEY_AGREEMENT,
                       const char* policy = chip::kOcePolicyOid) {
    Botan::Extensions ext;
    ext.add(new Botan::Cert_Extension::Basic_Constraints(false), true);
    ext.add(new Botan::Cert_Extension::Key_Usage(usage), true);
    ext.add(new Botan::Cert_Extension::Certificate_Policies(std::vector<Botan::OID>{Botan::OID(policy)}),
            false);
    ext.add(new Botan::Cert_Extension::Authority_Key_ID(m_station_ca.subject_key_id()), false);
    Botan::X509_DN dn;
    dn.add_attribute("X520.CommonName", "station-1 OCE");
    Botan::AlgorithmIdentifier algo;
    std::unique_ptr<Botan::PK_Signer> signer(
        Botan::choose_sig_format(m_station_ca_key, m_rng, "SHA-256", algo));
    return Botan::X509_CA::make_cert(signer.get(), m_rng, Botan::BigInt(m_serial++), algo,
                                     m_oce_key.subject_public_key(), hours_from_now(-1),
                                     hours_from_now(24 * 365), m_station_ca.subject_dn(), dn, ext)
        .BER_encode();
  }

  scp11::HostParams host_params(std::vector<core::Bytes> chain = {}) {
    scp11::HostParams p;
    p.oce_chain =
        chain.empty() ? std::vector<core::Bytes>{m_station_ca.BER_encode(), oce_cert()} : std::move(chain);
    const core::SecureBytes scalar = Botan::BigInt::encode_1363(m_oce_key.private_value(), 32);
    p.static_ecdh = [scalar](const core::Bytes& peer) { return scp11::ecdh_p256(scalar, peer); };
    return p;
  }

  // A version 2 package as the station sends it: certificates for the keys the chip generated.
  core::DataPackage package_for(const core::ChipId& id, const core::Bytes& identity_point,
                                const core::Bytes& transport_key) {
    const core::Imei imei = core::Imei::parse("490154203237518");
    const Botan::ECDSA_PublicKey identity(p256(), p256().OS2ECP(identity_point));
    const Botan::Curve25519_PublicKey transport(transport_key);
    core::DataPackage p;
    p.keys_in_device = true;
    p.imei = imei;
    p.station_id = "station-1";
    p.issued_at = 1700000000;
    p.identity_cert = core::issue_identity_certificate_der(m_device_ca, m_device_ca_key, identity, imei, id,
                                                           core::kDefaultHwType, m_rng);
    p.transport_cert = core::issue_transport_certificate_der(m_device_ca, m_device_ca_key, transport, imei,
                                                             id, core::kDefaultHwType, m_rng);
    p.ca_chain = {m_device_ca.BER_encode()};
    p.comm_key.resize(32);
    m_rng.randomize(p.comm_key.data(), p.comm_key.size());
    return p;
  }

 private:
  Botan::AutoSeeded_RNG m_rng;
  Botan::ECDSA_PrivateKey m_root_key, m_device_ca_key, m_station_ca_key, m_oce_key;
  Botan::X509_Certificate m_root, m_device_ca, m_station_ca;
  int m_serial = 1000;
};

// One vendor, one manufacturer, one chip made by the program itself.
struct Fab {
  test::ScratchDir tmp{"channel"};
  Manufacturer maker;
  fs::path vendor = tmp.path() / "vendor";
  fs::path dev = tmp.path() / "dev";
  Fab(bool with_vendor = true) {
    std::ofstream(tmp.path() / "root.pem") << core::to_pem(maker.root());
    REQUIRE(run({"vendor-init", vendor.string(), "--name", "Test Chip Vendor"}) == 0);
    std::vector<std::string> make{"make", "--dir", dev.string(), "--rom-ca",
                                  (tmp.path() / "root.pem").string()};
    if (with_vendor) make.insert(make.end(), {"--vendor", vendor.string()});
    REQUIRE(run(make) == 0);
  }
};

core::CommandApdu apdu(std::uint8_t cla, std::uint8_t ins, std::uint8_t p1, std::uint8_t p2,
                       const core::Bytes& data = {}, std::optional<std::uint32_t> le = 256) {
  core::CommandApdu c;
  c.cla = cla;
  c.ins = ins;
  c.p1 = p1;
  c.p2 = p2;
  c.data.assign(data.begin(), data.end());
  c.le = le;
  return c;
}

struct ChipSeen {
  core::ChipId id;
  chip::VerifiedChip verified;
};

// What the station does before the handshake: SELECT, CPLC, BF21, DF21, verify_chip.
ChipSeen look_at_chip(core::DeviceLink& link, const fs::path& vendor_dir) {
  REQUIRE(link.transmit(core::applet::select_command()).sw == core::sw::ok);
  const auto cplc = link.transmit(core::applet::get_cplc_command());
  REQUIRE(cplc.sw == core::sw::ok);
  ChipSeen seen;
  seen.id = core::Cplc::parse(cplc.data.data(), cplc.data.size()).chip_id();
  const auto store = link.transmit(scp11::get_certificate_store_command({}));
  REQUIRE(store.sw == core::sw::ok);
  const auto att = link.transmit(apdu(0x80, 0xCA, 0xDF, 0x21));
  REQUIRE(att.sw == core::sw::ok);
  seen.verified = chip::verify_chip(scp11::parse_certificate_store(store.data),
                                    core::Bytes(att.data.begin(), att.data.end()),
                                    chip::load_vendor_list((vendor_dir / "vendor.crt").string()), seen.id);
  return seen;
}

core::Bytes random_bytes(Botan::RandomNumberGenerator& rng, std::size_t n) {
  core::Bytes b(n);
  rng.randomize(b.data(), n);
  return b;
}

chip::Statement generate(core::DeviceChannel& ch, const ChipSeen& seen, chip::KeyKind kind,
                         const core::Bytes& challenge, const core::Bytes& context, std::uint32_t last) {
  const auto r = ch.transmit(chip::generate_key_command(kind, challenge, context));
  REQUIRE(r.sw == core::sw::ok);
  const auto st = chip::parse_signed_statement(r.data.data(), r.data.size());
  return chip::verify_statement(st, seen.verified, seen.id, kind, challenge, context, last);
}

std::uint16_t store_package(core::DeviceChannel& ch, const core::SecureBytes& pkg) {
  constexpr std::size_t block = 200;
  std::uint8_t n = 0;
  for (std::size_t off = 0; off < pkg.size(); off += block, ++n) {
    const std::size_t len = std::min(block, pkg.size() - off);
    const bool last = off + len == pkg.size();
    const auto r = ch.transmit(core::applet::store_data_command(
        n, last,
        core::SecureBytes(pkg.begin() + static_cast<std::ptrdiff_t>(off),
                          pkg.begin() + static_cast<std::ptrdiff_t>(off + len))));
    if (r.sw != core::sw::ok || last) return r.sw;
  }
  return 0;
}

std::uint32_t counter_on_disk(const fs::path& dev) {
  std::ifstream in(dev / "secure" / "attest.ctr", std::ios::binary);
  unsigned char b[4] = {};
  in.read(reinterpret_cast<char*>(b), 4);
  return (std::uint32_t{b[0]} << 24) | (std::uint32_t{b[1]} << 16) | (std::uint32_t{b[2]} << 8) | b[3];
}

std::string sha256_hex(const core::Bytes& b) {
  auto h = Botan::HashFunction::create_or_throw("SHA-256");
  h->update(b);
  return core::to_hex(h->final_stdvec());
}

unsigned mode_of(const fs::path& p) {
  struct stat st {};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return st.st_mode & 0777;
}

}  // namespace

TEST_CASE(
    "vendor chip: vendor-init and make --vendor write the keys 0600 and the certificates naming the chip") {
  Fab fab;
  CHECK(mode_of(fab.vendor / "vendor.key") == 0600);
  CHECK(mode_of(fab.dev / "secure" / "sd.key") == 0600);
  CHECK(mode_of(fab.dev / "secure" / "attest.key") == 0600);
  CHECK(mode_of(fab.dev / "secure" / "attest.ctr") == 0600);
  CHECK(counter_on_disk(fab.dev) == 0);
  CHECK(run({"vendor-init", fab.vendor.string()}) != 0);  // never overwrites a vendor
  Served served(fab.dev);
  core::DeviceLink link("127.0.0.1", served.port());
  link.connect();
  const auto seen = look_at_chip(link, fab.vendor);
  CHECK(seen.verified.vendor == "Test Chip Vendor");
  // Another SD key reference than KID 11 KVN 01 is not there.
  CHECK(link.transmit(scp11::get_certificate_store_command({0x13, 0x01})).sw ==
        core::sw::referenced_data_not_found);
}

TEST_CASE(
    "vendor chip: SCP11a round trip, GENERATE KEY, a v2 package sealed with the chip's own keys, drill, "
    "boot, recovery") {
  Fab fab;
  core::ChipId id;
  core::Bytes identity_point, backup_bytes, wire;
  core::DataPackage sent;
  {
    Served served(fab.dev);
    core::DeviceLink link("127.0.0.1", served.port());
    link.set_capture(
        [&wire](bool, const std::uint8_t* d, std::size_t n) { wire.insert(wire.end(), d, d + n); });
    link.connect();
    const auto seen = look_at_chip(link, fab.vendor);
    id = seen.id;
    auto session = scp11::open_host_session(link, fab.maker.host_params(), seen.verified.sd_public_point);
    scp11::SecureChannel ch(link, std::move(session));
    auto& rng = fab.maker.rng();
    const auto context = chip::context_hash(seen.id, "490154203237518", "station-1", 1);
    const auto identity = generate(ch, seen, chip::KeyKind::Identity, random_bytes(rng, 32), context, 0);
    const auto transport =
        generate(ch, seen, chip::KeyKind::Transport, random_bytes(rng, 32), context, identity.counter);
    CHECK(transport.counter == identity.counter + 1);
    identity_point = identity.public_key;

    sent = fab.maker.package_for(seen.id, identity.public_key, transport.public_key);
    CHECK(store_package(ch, sent.encode()) == core::sw::ok);
    const auto backup = ch.transmit(core::applet::get_backup_command(false));
    REQUIRE(backup.sw == core::sw::ok);
    // The drill over the flash; with the backup as data it is chained, see the next test case.
    const auto drill = ch.transmit(core::applet::restore_drill_command({}, false));
    REQUIRE(drill.sw == core::sw::ok);
    CHECK(core::applet::parse_drill_answer(drill.data) == core::station_digest(sent));
    backup_bytes.assign(backup.data.begin(), backup.data.end());
    // A second personalization is refused, also under the channel.
    CHECK(
        ch.transmit(chip::generate_key_command(chip::KeyKind::Identity, random_bytes(rng, 32), context)).sw ==
        core::sw::conditions_not_satisfied);
  }
  {
    // RESTORE DRILL with the backup as data, as the station sends it: chained secured pieces, each
    // wrapped on its own; the digest the station knows.
    Served served(fab.dev);
    core::DeviceLink link("127.0.0.1", served.port());
    link.connect();
    const auto seen = look_at_chip(link, fab.vendor);
    scp11::SecureChannel ch(
        link, scp11::open_host_session(link, fab.maker.host_params(), seen.verified.sd_public_point));
    REQUIRE(backup_bytes.size() > 2 * scp11::kMaxPlainPiece);
    const auto r = ch.transmit(core::applet::restore_drill_command(backup_bytes, false));
    REQUIRE(r.sw == core::sw::ok);
    CHECK(core::applet::parse_drill_answer(r.data) == core::station_digest(sent));
  }
  // The capture of the personalization holds none of the secrets the chip sealed, nor the package's
  // plaintext: the keys were made in the chip, the communication key and the package went encrypted.
  {
    const auto chip_now = device::Chip::load(fab.dev);
    std::ifstream in(fab.dev / "flash" / "image.bin", std::ios::binary);
    const core::Bytes image((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const core::SecureBytes plain = chip_now.open(core::FlashImage::decode(image).backup);
    const auto sealed = core::DataPackage::decode(plain);
    REQUIRE(sealed.keys_in_device);
    Botan::DataSource_Memory src(sealed.identity_key);
    const auto key = Botan::PKCS8::load_key(src);
    const auto* ec = dynamic_cast<const Botan::EC_PrivateKey*>(key.get());
    REQUIRE(ec != nullptr);
    auto on_wire = [&wire](const core::SecureBytes& secret) {
      return std::search(wire.begin(), wire.end(), secret.begin(), secret.end()) != wire.end();
    };
    CHECK(wire.size() > 2000);
    CHECK_FALSE(on_wire(Botan::BigInt::encode_1363(ec->private_value(), 32)));
    CHECK_FALSE(on_wire(sealed.identity_key));
    CHECK_FALSE(on_wire(sealed.transport_key));
    CHECK_FALSE(on_wire(sealed.comm_key));
    // The header DGI (IMEI, station id) and the KCV DGI, as they stand in the plaintext.
    const core::SecureBytes head(plain.begin(), plain.begin() + 24);
    CHECK_FALSE(on_wire(head));
    // The capture does see what goes plain: the SD certificate of GET DATA BF21 (its first 100
    // bytes lie in the first 61XX piece).
    const auto& sd_cert = chip_now.vendor()->sd_cert;
    CHECK(on_wire(core::SecureBytes(sd_cert.begin(), sd_cert.begin() + 100)));
  }
  // The device boots from what it sealed: the identity key is the one it generated and attested.
  std::string out;
  REQUIRE(run({"boot", "--dir", fab.dev.string()}, &out) == 0);
  CHECK(out.find("identity_key_sha256 " + sha256_hex(identity_point)) != std::string::npos);
  CHECK(out.find("package_sha256 " + core::to_hex(core::station_digest(sent))) != std::string::npos);

  // Recovery after a flash loss, plain as recovery runs it (it holds no station certificate): the
  // drill on the record's backup, UPDATE BINARY of the image, BOOT STAGED (docs/channel.md).
  std::ifstream in(fab.dev / "flash" / "image.bin", std::ios::binary);
  const core::Bytes image((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  REQUIRE(run({"wipe-flash", "--dir", fab.dev.string()}) == 0);
  Served served(fab.dev);
  core::DeviceLink link("127.0.0.1", served.port());
  link.connect();
  REQUIRE(link.transmit(core::applet::select_command()).sw == core::sw::ok);
  const auto drill = link.transmit(core::applet::restore_drill_command(backup_bytes, false));
  REQUIRE(drill.sw == core::sw::ok);
  CHECK(core::applet::parse_drill_answer(drill.data) == core::station_digest(sent));
  for (std::size_t off = 0; off < image.size(); off += 255) {
    const std::size_t n = std::min<std::size_t>(255, image.size() - off);
    REQUIRE(link.transmit(core::applet::update_binary_command(
                              off, core::SecureBytes(image.begin() + static_cast<std::ptrdiff_t>(off),
                                                     image.begin() + static_cast<std::ptrdiff_t>(off + n))))
                .sw == core::sw::ok);
  }
  const auto booted = link.transmit(core::applet::boot_staged_command());
  REQUIRE(booted.sw == core::sw::ok);
  const auto answer = core::applet::parse_boot_answer(booted.data);
  CHECK(core::to_hex(answer.identity_key_sha256.data(), 32) == sha256_hex(identity_point));
}

TEST_CASE("vendor chip: a v2 package whose certificates are not for the generated keys is refused 6A80") {
  Fab fab;
  Served served(fab.dev);
  core::DeviceLink link("127.0.0.1", served.port());
  link.connect();
  const auto seen = look_at_chip(link, fab.vendor);
  scp11::SecureChannel ch(
      link, scp11::open_host_session(link, fab.maker.host_params(), seen.verified.sd_public_point));
  auto& rng = fab.maker.rng();
  const auto context = random_bytes(rng, 32);
  generate(ch, seen, chip::KeyKind::Identity, random_bytes(rng, 32), context, 0);
  const auto transport = generate(ch, seen, chip::KeyKind::Transport, random_bytes(rng, 32), context, 1);
  // The station's own identity key in place of the attested one.
  const Botan::ECDSA_PrivateKey other(rng, Manufacturer::p256());
  const auto pkg = fab.maker.package_for(seen.id, other.public_point().encode(Botan::PointGFp::UNCOMPRESSED),
                                         transport.public_key);
  CHECK(store_package(ch, pkg.encode()) == core::sw::wrong_data);
  CHECK_FALSE(fs::exists(fab.dev / "flash" / "image.bin"));
}

TEST_CASE("vendor chip: an OCE chain from another root, or with the wrong usage or policy, is refused 6982") {
  Fab fab;
  Served served(fab.dev);
  core::DeviceLink link("127.0.0.1", served.port());
  link.connect();
  look_at_chip(link, fab.vendor);
  auto last_sw = [&](const std::vector<core::Bytes>& chain) {
    std::uint16_t sw = 0;
    for (const auto& c :
         scp11::perform_security_operation_commands(chain, {scp11::kOceKid, scp11::kKeyVersion}))
      sw = link.transmit(c, 0).sw;
    return sw;
  };
  Manufacturer stranger;  // same profile, another root
  CHECK(last_sw(stranger.host_params().oce_chain) == core::sw::security_not_satisfied);
  const auto station_ca = fab.maker.host_params().oce_chain.front();
  CHECK(last_sw({station_ca, fab.maker.oce_cert(Botan::DIGITAL_SIGNATURE)}) ==
        core::sw::security_not_satisfied);
  CHECK(last_sw({station_ca, fab.maker.oce_cert(Botan::KEY_AGREEMENT, core::kStationPolicy)}) ==
        core::sw::security_not_satisfied);
  // The leaf alone, without the Station CA between it and the root.
  CHECK(last_sw({fab.maker.oce_cert()}) == core::sw::security_not_satisfied);
  // None of them lets MUTUAL AUTHENTICATE run.
  const Botan::ECDSA_PrivateKey eph(fab.maker.rng(), Manufacturer::p256());
  CHECK(link.transmit(scp11::mutual_authenticate_command(
                          {}, eph.public_point().encode(Botan::PointGFp::UNCOMPRESSED)))
            .sw == core::sw::conditions_not_satisfied);
  // The host side sees the refusal too.
  CHECK_THROWS(scp11::open_host_session(link, stranger.host_params(),
                                        look_at_chip(link, fab.vendor).verified.sd_public_point));
  // The genuine chain still opens the channel afterwards.
  CHECK_NOTHROW(scp11::open_host_session(link, fab.maker.host_params(),
                                         look_at_chip(link, fab.vendor).verified.sd_public_point));
}

TEST_CASE("vendor chip: personalization commands outside the channel are refused 6982") {
  Fab fab;
  Served served(fab.dev);
  core::DeviceLink link("127.0.0.1", served.port());
  link.connect();
  const auto seen = look_at_chip(link, fab.vendor);
  auto& rng = fab.maker.rng();
  const auto pkg = fab.maker.package_for(
      seen.id,
      Botan::ECDSA_PrivateKey(rng, Manufacturer::p256()).public_point().encode(Botan::PointGFp::UNCOMPRESSED),
      random_bytes(rng, 32));
  CHECK(store_package(link, pkg.encode()) == core::sw::security_not_satisfied);
  CHECK(link.transmit(chip::generate_key_command(chip::KeyKind::Identity, random_bytes(rng, 32),
                                                 random_bytes(rng, 32)))
            .sw == core::sw::security_not_satisfied);
  CHECK(link.transmit(core::applet::get_backup_command(false)).sw == core::sw::security_not_satisfied);
  CHECK(link.transmit(core::applet::restore_drill_command({}, false)).sw == core::sw::security_not_satisfied);
  // A secured command without a session.
  auto secured = core::applet::status_command();
  secured.cla |= 0x04;
  secured.data.assign(8, 0);
  CHECK(link.transmit(secured).sw == core::sw::security_not_satisfied);
  // The plain commands still answer.
  CHECK(link.transmit(core::applet::status_command()).sw == core::sw::ok);
  CHECK_FALSE(counter_on_disk(fab.dev));
}

TEST_CASE("vendor chip: a changed byte in a secured command gets 6982 and ends the session") {
  Fab fab;
  Served served(fab.dev);
  core::DeviceLink link("127.0.0.1", served.port());
  link.connect();
  const auto seen = look_at_chip(link, fab.vendor);
  auto session = scp11::open_host_session(link, fab.maker.host_params(), seen.verified.sd_public_point);
  const core::Bytes ch(32, 0x11), ctx(32, 0x22);
  const auto command = chip::generate_key_command(chip::KeyKind::Identity, ch, ctx);
  // `spare` is the host's state before the tampered command: what the card would accept next if the
  // session had survived.
  auto spare = session;
  for (std::size_t at : {std::size_t{0}, std::size_t{40}}) {
    auto s = at == 0 ? session : spare;
    auto wrapped = s.wrap_command(command);
    wrapped.data[at] ^= 0x01;
    CHECK(link.transmit(wrapped).sw == core::sw::security_not_satisfied);
  }
  // The untouched command, exactly as the session would have sent it: refused, the keys are gone.
  CHECK(link.transmit(spare.wrap_command(command)).sw == core::sw::security_not_satisfied);
  CHECK(counter_on_disk(fab.dev) == 0);
  // A new handshake opens a new session.
  scp11::SecureChannel fresh(
      link, scp11::open_host_session(link, fab.maker.host_params(), seen.verified.sd_public_point));
  CHECK(fresh.transmit(core::applet::status_command()).sw == core::sw::ok);
}

TEST_CASE("vendor chip: a replayed secured command is refused, and SELECT ends the session") {
  Fab fab;
  Served served(fab.dev);
  core::DeviceLink link("127.0.0.1", served.port());
  link.connect();
  const auto seen = look_at_chip(link, fab.vendor);
  auto session = scp11::open_host_session(link, fab.maker.host_params(), seen.verified.sd_public_point);
  const auto wrapped = session.wrap_command(core::applet::status_command());
  const auto first = link.transmit(wrapped);
  REQUIRE(first.sw == core::sw::ok);
  CHECK(session.unwrap_response(first).data.size() == core::applet::kStatusSize);
  CHECK(link.transmit(wrapped).sw == core::sw::security_not_satisfied);  // the same bytes again

  auto again = scp11::open_host_session(link, fab.maker.host_params(), seen.verified.sd_public_point);
  REQUIRE(link.transmit(core::applet::select_command()).sw == core::sw::ok);
  CHECK(link.transmit(again.wrap_command(core::applet::status_command())).sw ==
        core::sw::security_not_satisfied);
}

TEST_CASE("vendor chip: the attestation counter grows across a restart of the emulator") {
  Fab fab;
  std::uint32_t first = 0;
  const core::Bytes ctx(32, 0x33);
  for (int round = 0; round < 2; ++round) {
    Served served(fab.dev);
    core::DeviceLink link("127.0.0.1", served.port());
    link.connect();
    const auto seen = look_at_chip(link, fab.vendor);
    scp11::SecureChannel ch(
        link, scp11::open_host_session(link, fab.maker.host_params(), seen.verified.sd_public_point));
    const auto st =
        generate(ch, seen, chip::KeyKind::Transport, random_bytes(fab.maker.rng(), 32), ctx, first);
    if (round == 0) first = st.counter;
    if (round == 1) CHECK(st.counter == first + 1);
    CHECK(counter_on_disk(fab.dev) == st.counter);
  }
  CHECK(first == 1);
  std::string status;
  REQUIRE(run({"status", "--dir", fab.dev.string()}, &status) == 0);
  CHECK(status.find("vendor Test Chip Vendor\n") != std::string::npos);
  CHECK(status.find("attestation_counter 2\n") != std::string::npos);
}

TEST_CASE("chip without a vendor identity: no certificate store, plain as before") {
  Fab fab(false);
  CHECK_FALSE(fs::exists(fab.dev / "rom" / "sd.crt"));
  Served served(fab.dev);
  core::DeviceLink link("127.0.0.1", served.port());
  link.connect();
  REQUIRE(link.transmit(core::applet::select_command()).sw == core::sw::ok);
  CHECK(link.transmit(scp11::get_certificate_store_command({})).sw == core::sw::referenced_data_not_found);
  CHECK(link.transmit(core::applet::get_backup_command(false)).sw ==
        core::sw::referenced_data_not_found);  // plain, empty flash
  // GENERATE KEY needs the channel, which this chip cannot open.
  CHECK(link.transmit(
                chip::generate_key_command(chip::KeyKind::Identity, core::Bytes(32, 1), core::Bytes(32, 2)))
            .sw == core::sw::security_not_satisfied);
}
