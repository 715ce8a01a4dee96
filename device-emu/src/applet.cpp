#include "keyline/device/applet.h"

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include <botan/curve25519.h>
#include <botan/data_src.h>
#include <botan/pkcs8.h>
#include <botan/x509cert.h>

#include "keyline/core/applet_protocol.h"
#include "keyline/core/backup_package.h"
#include "keyline/core/chip_identity.h"
#include "keyline/core/data_package.h"
#include "keyline/core/flash_image.h"
#include "keyline/core/scp03_session.h"
#include "keyline/device/log.h"

namespace keyline::device {

namespace {

core::ResponseApdu sw_only(std::uint16_t sw) {
  core::ResponseApdu r;
  r.sw = sw;
  return r;
}

core::ResponseApdu with_data(const std::uint8_t* data, std::size_t len) {
  core::ResponseApdu r;
  r.data.assign(data, data + len);
  return r;
}

core::ResponseApdu with_data(core::SecureBytes data) {
  core::ResponseApdu r;
  r.data = std::move(data);
  return r;
}

static_assert(static_cast<std::uint8_t>(Lifecycle::Blank) == static_cast<std::uint8_t>(core::applet::Lifecycle::Blank) &&
                  static_cast<std::uint8_t>(Lifecycle::Personalized) ==
                      static_cast<std::uint8_t>(core::applet::Lifecycle::Personalized),
              "the fuse's lifecycle bytes are the ones STATUS reports");

// STORE DATA takes only keys that are their certificates' (docs/protocol.md section 3, step 3):
// otherwise the device would seal and write the package, answer 9000, be published as done, and then
// fail boot check 9 forever. Throws core::Error(BadDataPackage) naming the key.
void check_keys_match_certificates(const core::DataPackage& pkg) {
  bool identity_ok = false, transport_ok = false;
  try {
    const Botan::X509_Certificate identity(pkg.identity_cert);
    Botan::DataSource_Memory src(pkg.identity_key);
    const auto key = Botan::PKCS8::load_key(src);
    identity_ok = key->algo_name() == "ECDSA" && key->public_key_bits() == identity.subject_public_key_bitstring();
    const Botan::X509_Certificate transport(pkg.transport_cert);
    const Botan::Curve25519_PrivateKey tk(pkg.transport_key);
    transport_ok = tk.public_value() == transport.subject_public_key_bitstring();
  } catch (const std::exception& e) {
    throw core::Error(core::ErrorCode::BadDataPackage, std::string("device keys do not load: ") + e.what());
  }
  if (!identity_ok)
    throw core::Error(core::ErrorCode::BadDataPackage, "identity private key does not match the identity certificate");
  if (!transport_ok)
    throw core::Error(core::ErrorCode::BadDataPackage,
                      "transport private key does not match the transport certificate");
}

void sleep_ms(unsigned ms) {
  if (ms) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

bool is_cla(std::uint8_t cla, std::uint8_t want) { return (cla & ~0x10) == want; }

bool is_applet_ins(std::uint8_t i) {
  return i == ins::select || i == ins::get_data || i == ins::get_response || i == ins::store_data ||
         i == ins::update_binary || i == ins::boot_staged || i == ins::status || i == ins::restore_drill ||
         i == ins::reset_blank || i == channel_ins::perform_security_operation ||
         i == channel_ins::generate_key;
}

bool same_time(const timespec& a, const timespec& b) { return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec; }

// Any replacement (write_atomic renames a new inode over the file), removal or in-place write
// changes at least one of these: the inode, the size, mtime or ctime (which no caller can set).
bool same_file(const struct stat& a, const struct stat& b) {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino && a.st_size == b.st_size && same_time(a.st_mtim, b.st_mtim) &&
         same_time(a.st_ctim, b.st_ctim);
}

// The BOOT STAGED answer. Every package that decodes carries a transport certificate, so a verified
// image has both key digests; one without is refused (Error(ImageRejected)) before anything is written.
core::SecureBytes boot_answer(const BootIdentity& id) {
  core::applet::BootAnswer a;
  a.imei = id.imei;
  const auto idf = core::from_hex(id.identity_fingerprint);
  const auto tf = core::from_hex(id.transport_fingerprint);
  if (idf.size() != a.identity_key_sha256.size() || tf.size() != a.transport_key_sha256.size())
    throw core::Error(error::ImageRejected, "boot identity lacks a key digest");
  std::copy(idf.begin(), idf.end(), a.identity_key_sha256.begin());
  std::copy(tf.begin(), tf.end(), a.transport_key_sha256.begin());
  return core::applet::encode_boot_answer(a);
}

}  // namespace

void Device::power_restored() {
  std::lock_guard<std::mutex> lock(m_mutex);
  m_power_cut = false;
  // Whatever the cut left behind in the temporary file is garbage; the old image still stands.
  std::error_code ec;
  fs::remove(m_chip.paths().image().string() + ".tmp", ec);
}

void Session::reset() noexcept {
  end_channel();
  m_selected = false;
  m_t0_pending.reset();
  m_t0_pos = 0;
  m_chainer.reset();
  m_announced.reset();
  drop_chain();
  drop_store();
}

// Swapping with an empty vector frees the allocation; clear() would keep it while held_bytes()
// (and so the memory budget) no longer saw it.
void Session::drop_chain() noexcept {
  core::SecureBytes().swap(m_chain);
  m_chain_ins.reset();
}

void Session::drop_store() noexcept {
  core::SecureBytes().swap(m_store);
  m_next_block = 0;
  m_storing = false;
}

core::SecureBytes Session::process(const std::uint8_t* apdu, std::size_t len) {
  core::ResponseApdu r;
  core::CommandApdu c;
  bool decoded = false;
  try {
    c = core::decode_command(apdu, len);
    decoded = true;
  } catch (const core::Error&) {
    // ISO 7816-4 section 5.1: an APDU whose length fields disagree with its bytes is a wrong length.
    r = sw_only(core::sw::wrong_length);
  } catch (const std::exception&) {
    r = sw_only(core::sw::wrong_length);
  }
  if (decoded) {
    const CardOptions& card = m_device.m_options.card;
    // ISO 7816-4 section 5.1: an extended Lc/Le field is introduced by 00 in byte 5. A card whose
    // ATR says it takes none (and every T=0 card here) answers such an APDU 6700.
    const bool extended = len >= 7 && apdu[4] == 0x00;
    if (extended && (!card.extended || card.protocol == Protocol::t0))
      r = sw_only(core::sw::wrong_length);
    else
      r = card.protocol == Protocol::t0 ? process_t0(c) : process(c);
  }
  return core::encode_response(r);
}

core::ResponseApdu Session::process(const core::CommandApdu& command) {
  std::lock_guard<std::mutex> lock(m_device.m_mutex);
  const double rate = m_device.m_options.faults.fail_rate;
  if (rate > 0 && std::uniform_real_distribution<double>(0, 1)(m_device.m_rng) < rate)
    return sw_only(core::sw::unknown_error);
  m_secured = false;
  try {
    // Amendment D section 6.2.4 / ISO 7816-4 section 5.4.2: CLA bit 3 (04) marks secure messaging.
    if (command.cla & 0x04) return process_secured(command);
    return dispatch(command);
  } catch (const core::Error& e) {
    if (e.code() == error::PowerCut) throw;
    log_line(m_device.m_chip.chip_id().str(), "command failed, error " + std::to_string(e.numeric()) + ": " + e.what());
  } catch (const std::exception& e) {
    log_line(m_device.m_chip.chip_id().str(), std::string("command failed: ") + e.what());
  }
  reset();
  return sw_only(core::sw::unknown_error);
}

core::ResponseApdu Session::dispatch(const core::CommandApdu& c) {
  if (c.ins == ins::get_response && is_cla(c.cla, 0x00)) {
    if (m_announced) {
      core::ResponseApdu full = std::move(*m_announced);
      m_announced.reset();
      return m_chainer.start(std::move(full), c.le.value_or(256));
    }
    if (!m_chainer.pending()) return sw_only(core::sw::conditions_not_satisfied);
    return m_chainer.next(c.le.value_or(256));
  }
  m_chainer.reset();
  m_announced.reset();
  const std::uint8_t base = c.cla & static_cast<std::uint8_t>(~0x10);
  if (base != 0x00 && base != 0x80) return sw_only(core::sw::cla_not_supported);
  // A vendor chip runs personalization only under the channel (docs/channel.md): refused before any
  // chained part is gathered.
  if (m_device.m_chip.vendor() && !m_secured && needs_channel(c)) {
    drop_chain();
    return sw_only(core::sw::security_not_satisfied);
  }

  if (c.chained()) return gather_chained(c);
  core::CommandApdu whole;
  const core::CommandApdu* cmd = &c;
  if (m_chain_ins) {
    const bool same = *m_chain_ins == c.ins;
    if (same) {
      whole = c;
      whole.data = std::move(m_chain);
      whole.data.insert(whole.data.end(), c.data.begin(), c.data.end());
      cmd = &whole;
    }
    drop_chain();
    if (!same) return sw_only(core::sw::conditions_not_satisfied);
  }

  switch (cmd->ins) {
    case ins::select:
      return base == 0x00 ? finish(select(*cmd), *cmd) : sw_only(core::sw::cla_not_supported);
    case ins::get_data:
      return finish(get_data(*cmd), *cmd);
    case channel_ins::perform_security_operation:
      return base == 0x80 ? perform_security_operation(*cmd) : sw_only(core::sw::cla_not_supported);
    case channel_ins::mutual_authenticate:
      return base == 0x80 ? mutual_authenticate(*cmd) : sw_only(core::sw::cla_not_supported);
    case channel_ins::generate_key:
      return base == 0x80 ? finish(generate_key(*cmd), *cmd) : sw_only(core::sw::cla_not_supported);
    case core::scp::kInsInitializeUpdate:  // the service channel (service.cpp)
      return base == 0x80 ? finish(initialize_update(*cmd), *cmd) : sw_only(core::sw::cla_not_supported);
    case ins::store_data:
      return base == 0x80 ? store_data(*cmd) : sw_only(core::sw::cla_not_supported);
    case ins::update_binary:
      return base == 0x00 ? update_binary(*cmd) : sw_only(core::sw::cla_not_supported);
    case ins::boot_staged:
    case ins::status:
    case ins::restore_drill:
    case ins::reset_blank: {
      if (base != 0x80) return sw_only(core::sw::cla_not_supported);
      if (cmd->p1 != 0 || cmd->p2 != 0) return sw_only(core::sw::incorrect_p1p2);
      if (cmd->ins == ins::status) return finish(status(*cmd), *cmd);
      if (cmd->ins == ins::reset_blank) return reset_blank(*cmd);
      if (!m_selected) return sw_only(core::sw::conditions_not_satisfied);
      return finish(cmd->ins == ins::boot_staged ? boot_staged(*cmd) : restore_drill(*cmd), *cmd);
    }
    default:
      return sw_only(core::sw::ins_not_supported);
  }
}

// ISO 7816-4 section 5.4.1: each chained part is gathered until the last one runs the command.
// Only for an applet INS, and only once the applet is selected (docs/protocol.md section 2: commands
// outside it answer 6D00 / 6985): before SELECT, anyone could park 1 MiB per connection.
core::ResponseApdu Session::gather_chained(const core::CommandApdu& c) {
  if (!is_applet_ins(c.ins)) {
    drop_chain();
    return sw_only(core::sw::ins_not_supported);
  }
  if (!m_selected) {
    drop_chain();
    return sw_only(core::sw::conditions_not_satisfied);
  }
  if (m_chain_ins && *m_chain_ins != c.ins) drop_chain();
  if (m_chain.size() + c.data.size() > kMaxGathered) {
    drop_chain();
    return sw_only(core::sw::wrong_length);
  }
  m_chain.insert(m_chain.end(), c.data.begin(), c.data.end());
  m_chain_ins = c.ins;
  return sw_only(core::sw::ok);
}

core::ResponseApdu Session::finish(core::ResponseApdu r, const core::CommandApdu& c) {
  // Under the channel the whole answer is wrapped first and then served in pieces (process_secured).
  if (m_secured) return r;
  const std::size_t limit = c.le ? *c.le : 256;
  if (r.data.size() <= limit) return r;
  return m_chainer.start(std::move(r), std::min<std::size_t>(limit == 0 ? 256 : limit, 256));
}

core::ResponseApdu Session::select(const core::CommandApdu& c) {
  // SELECT ends the secure channel (docs/channel.md): the next personalization needs a new handshake.
  end_channel();
  drop_store();
  if (c.p1 != core::applet::kSelectByName) {
    m_selected = false;
    return sw_only(core::sw::file_not_found);
  }
  if ((c.p2 & ~0x0C) != 0) return sw_only(core::sw::incorrect_p1p2);
  if (c.data.size() != sizeof kAid || std::memcmp(c.data.data(), kAid, sizeof kAid) != 0) {
    m_selected = false;
    return sw_only(core::sw::file_not_found);
  }
  m_selected = true;
  return sw_only(core::sw::ok);
}

core::ResponseApdu Session::get_data(const core::CommandApdu& c) {
  const std::uint16_t tag = static_cast<std::uint16_t>((c.p1 << 8) | c.p2);
  if (tag == core::applet::tag::cplc) {
    sleep_ms(m_device.m_options.faults.delay_id_ms);
    const auto body = m_device.m_chip.cplc().encode_tagged();
    return with_data(body.data(), body.size());
  }
  if (tag == kCertificateStoreTag || tag == core::chip::kAttestationCertTag) return get_chip_data(tag, c);
  if (tag == core::applet::tag::backup) {
    if (!m_selected) return sw_only(core::sw::conditions_not_satisfied);
    const core::Bytes* image = flash_image();
    if (!image) return sw_only(core::sw::referenced_data_not_found);
    try {
      auto flash = core::FlashImage::decode(*image);
      // Fault injection: a chip whose read-out is damaged; the station must notice before publishing.
      if (m_device.m_options.faults.corrupt_backup) flash.backup.back() ^= 0x01;
      return with_data(flash.backup.data(), flash.backup.size());
    } catch (const core::FormatError& e) {
      log_line(m_device.m_chip.chip_id().str(), std::string("flash image unreadable: ") + e.what());
      return sw_only(core::sw::referenced_data_not_found);
    }
  }
  return sw_only(core::sw::referenced_data_not_found);
}

core::ResponseApdu Session::store_data(const core::CommandApdu& c) {
  if (!m_selected) return sw_only(core::sw::conditions_not_satisfied);
  Chip& chip = m_device.m_chip;
  if (chip.lifecycle() == Lifecycle::Personalized) return sw_only(core::sw::conditions_not_satisfied);
  // GlobalPlatform Card Specification 11.11.2.1: P1 b8 = last block, b4 = DGI format; b7-b6 would
  // announce encrypted data and b5 BER-TLV, neither of which this applet takes.
  if ((c.p1 & ~core::applet::kStoreLastBlock) != core::applet::kStoreDgiFormat) {
    drop_store();
    return sw_only(core::sw::incorrect_p1p2);
  }
  if (c.p2 != m_next_block) {
    drop_store();
    return sw_only(core::sw::incorrect_p1p2);
  }
  if (c.data.empty() || m_store.size() + c.data.size() > kMaxGathered) {
    drop_store();
    return sw_only(core::sw::wrong_length);
  }
  sleep_ms(m_device.m_options.faults.delay_store_ms);
  m_store.insert(m_store.end(), c.data.begin(), c.data.end());
  m_storing = true;
  m_next_block = (m_next_block + 1) & 0xFF;
  if ((c.p1 & core::applet::kStoreLastBlock) == 0) return sw_only(core::sw::ok);

  core::SecureBytes gathered = std::move(m_store);
  drop_store();
  std::optional<core::DataPackage> pkg;
  try {
    pkg = core::DataPackage::decode(gathered);
    if (pkg->keys_in_device) insert_generated_keys(*pkg);
    chip.check_identity(pkg->identity_cert, pkg->ca_chain, pkg->imei);
    check_keys_match_certificates(*pkg);
  } catch (const core::Error& e) {
    log_line(chip.chip_id().str(), std::string("STORE DATA refused: ") + e.what());
    return sw_only(core::sw::wrong_data);
  }
  core::FlashImage image;
  // Version 2: the package as sent plus the keys generated here, at their usual place (encode order).
  image.backup = chip.seal(pkg->keys_in_device ? pkg->encode() : gathered);
  core::SecureBytes().swap(m_generated_identity);
  core::SecureBytes().swap(m_generated_transport);
  image.certificates.push_back(pkg->identity_cert);
  for (const auto& ca : pkg->ca_chain) image.certificates.push_back(ca);
  write_flash(image.encode());
  chip.set_personalized(pkg->imei);
  log_line(chip.chip_id().str(), "personalized, IMEI " + pkg->imei.str());
  return sw_only(core::sw::ok);
}

void Session::write_flash(const core::Bytes& image) {
  auto& faults = m_device.m_options.faults;
  sleep_ms(faults.delay_flash_ms);
  const auto cut = faults.power_cut_at_byte;
  if (cut) {
    // One power cut per injection: after it the device comes back with the fault cleared.
    faults.power_cut_at_byte.reset();
    m_device.m_power_cut = true;
    log_line(m_device.m_chip.chip_id().str(), "injected power cut at flash byte " + std::to_string(*cut));
  }
  write_atomic(m_device.m_chip.paths().image(), image.data(), image.size(), cut);
  remember_flash(image);
}

void Session::remember_flash(const core::Bytes& image) {
  auto& cache = m_device.m_flash;
  cache.reset();
  struct stat st {};
  if (::stat(m_device.m_chip.paths().image().c_str(), &st) != 0) return;  // the next use reads the file
  cache = Device::FlashCopy{st, image};
}

const core::Bytes* Session::flash_image() {
  auto& cache = m_device.m_flash;
  const auto& path = m_device.m_chip.paths().image();
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    cache.reset();
    if (errno == ENOENT || errno == ENOTDIR) return nullptr;
    throw core::IoError(core::ErrorCode::Io, "cannot read " + path.string() + ": " + std::strerror(errno));
  }
  if (cache && same_file(cache->st, st)) return &cache->image;
  cache.reset();
  auto bytes = read_bytes(path);
  if (!bytes) return nullptr;
  // Stamped with the stat() taken before the read: if the file changed in between, the next stat()
  // differs from this one and the file is read again, so a stale copy is never served.
  cache = Device::FlashCopy{st, std::move(*bytes)};
  return &cache->image;
}

core::ResponseApdu Session::update_binary(const core::CommandApdu& c) {
  if (!m_selected) return sw_only(core::sw::conditions_not_satisfied);
  // P1 b8 = 1 would name a short EF identifier (ISO 7816-4 7.2.2); there is only the staging area.
  if (c.p1 & 0x80) return sw_only(core::sw::incorrect_p1p2);
  if (c.data.empty()) return sw_only(core::sw::wrong_length);
  const std::size_t offset = (static_cast<std::size_t>(c.p1) << 8) | c.p2;
  // Offset 0 starts a new image; any other offset continues the one being written. Only this
  // command's bytes are written, at their offset, and not synced: rewriting and syncing the whole
  // staging file per command made the writes O(commands x image). The one sync is BOOT STAGED's
  // atomic flash write, after the staged bytes passed every boot check, so a crash that tears the
  // staging file leaves an image that fails them (docs/protocol.md section 4).
  if (!write_in_place(m_device.m_chip.paths().staging(), c.data.data(), c.data.size(), offset, kMaxStaging))
    return sw_only(kSwOffsetOutside);
  return sw_only(core::sw::ok);
}

core::ResponseApdu Session::boot_staged(const core::CommandApdu&) {
  Chip& chip = m_device.m_chip;
  if (chip.lifecycle() != Lifecycle::Personalized) return sw_only(core::sw::conditions_not_satisfied);
  const auto staging = read_bytes(chip.paths().staging(), kMaxStaging);
  if (!staging) return sw_only(core::sw::referenced_data_not_found);
  BootIdentity id;
  core::SecureBytes answer;
  try {
    id = chip.verify_image(*staging);
    answer = boot_answer(id);
  } catch (const core::Error& e) {
    if (e.code() != error::ImageRejected) throw;
    log_line(chip.chip_id().str(), e.what());
    return sw_only(core::sw::wrong_data);
  }
  write_flash(*staging);
  std::error_code ec;
  fs::remove(chip.paths().staging(), ec);
  log_line(chip.chip_id().str(), "restored from staged image, IMEI " + id.imei.str());
  return with_data(std::move(answer));
}

core::ResponseApdu Session::status(const core::CommandApdu&) {
  const Chip& chip = m_device.m_chip;
  core::applet::Status st;
  st.lifecycle = static_cast<core::applet::Lifecycle>(chip.lifecycle());
  st.chip_id = chip.chip_id();
  if (const core::Bytes* image = flash_image()) {
    st.flash = core::applet::FlashState::DoesNotBoot;
    try {
      chip.verify_image(*image);
      st.flash = core::applet::FlashState::Boots;
    } catch (const core::Error&) {
    }
  }
  if (chip.lifecycle() == Lifecycle::Personalized) st.imei = chip.imei();
  return with_data(core::applet::encode_status(st));
}

core::ResponseApdu Session::restore_drill(const core::CommandApdu& c) {
  const Chip& chip = m_device.m_chip;
  core::Bytes backup;
  if (!c.data.empty()) {
    backup.assign(c.data.begin(), c.data.end());
  } else {
    const core::Bytes* image = flash_image();
    if (!image) return sw_only(core::sw::referenced_data_not_found);
    try {
      backup = core::FlashImage::decode(*image).backup;
    } catch (const core::FormatError&) {
      return sw_only(core::sw::wrong_data);
    }
  }
  try {
    const core::SecureBytes plain = chip.open(backup);
    const auto pkg = core::DataPackage::decode(plain);
    // Version 2: the station never knew the keys generated here, so it can only compare this digest.
    const core::Bytes digest = pkg.keys_in_device ? core::station_digest(pkg) : core::package_digest(plain);
    return with_data(core::applet::encode_drill_answer(digest));
  } catch (const core::Error& e) {
    log_line(chip.chip_id().str(), std::string("restore drill failed: ") + e.what());
    return sw_only(core::sw::wrong_data);
  }
}

core::ResponseApdu Session::reset_blank(const core::CommandApdu&) {
  if (!m_device.m_options.allow_reset) return sw_only(core::sw::security_not_satisfied);
  Chip& chip = m_device.m_chip;
  std::error_code ec;
  fs::remove(chip.paths().image(), ec);
  m_device.m_flash.reset();
  fs::remove(chip.paths().staging(), ec);
  chip.set_blank();
  reset();
  log_line(chip.chip_id().str(), "reset to BLANK on request");
  return sw_only(core::sw::ok);
}

}  // namespace keyline::device
