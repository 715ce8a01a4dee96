#include <botan/hash.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <memory>
#include <system_error>

#include <unistd.h>

#include "keyline/core/applet_protocol.h"
#include "keyline/core/backup_package.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/device_channel.h"
#include "keyline/core/flash_image.h"
#include "keyline/core/http.h"
#include "keyline/recovery/errors.h"
#include "keyline/recovery/recovery.h"

namespace keyline::recovery {

namespace {

namespace applet = core::applet;

// docs/protocol.md section 4: offsets go up to 32767 (15 bits), the staging area ends 65535 later.
constexpr std::size_t kChunk = 255;

void say(std::ostream* out, const std::string& line) {
  if (out) *out << "keyline-recovery: " << line << std::endl;
}

std::string sw_hex(std::uint16_t sw) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04X", sw);
  return buf;
}

std::vector<Botan::X509_Certificate> load_anchors(const std::string& path) {
  if (path.empty()) throw core::ConfigError(core::ErrorCode::Usage, "--trust (manufacturer root, PEM) is required");
  try {
    return core::load_certificates_pem(path);
  } catch (const core::Error& e) {
    throw core::ConfigError(core::ErrorCode::Config, "cannot use trust anchor file " + path + ": " + e.what());
  }
}

// PC/SC failures keep their own codes (1420-1426, docs/operations.md): "pcscd is not running" or
// "the card was pulled out" tells the owner more than "device unreachable". Both exit 4.
bool pcsc_code(core::ErrorCode c) {
  const int n = static_cast<int>(c);
  return n >= static_cast<int>(core::ErrorCode::Pcsc) && n <= static_cast<int>(core::ErrorCode::ExtendedLengthRefused);
}

// The device side of one restore: every exchange goes through here so that a lost link reads as
// "device unreachable" (or the PC/SC reason) and not as a protocol error.
class Device {
 public:
  Device(const std::string& address, std::chrono::milliseconds timeout)
      : m_address(address) {
    core::ChannelOptions o;
    o.io_timeout = timeout;
    m_channel = core::open_device_channel(address, o);
    try {
      m_channel->connect();
    } catch (const core::Error& e) {
      const std::string text = "the device at " + address + " cannot be reached: " + e.what();
      throw core::IoError(pcsc_code(e.code()) ? e.code() : errc::DeviceUnreachable, text);
    }
  }

  // max_answer: the longest answer the command has (docs/protocol.md section 2a); more is refused.
  core::ResponseApdu send(const core::CommandApdu& c, const char* what, std::size_t max_answer) {
    if (c.ins == applet::ins::update_binary) m_wrote = true;
    try {
      return m_channel->transmit(c, max_answer);
    } catch (const core::FormatError& e) {
      // A malformed or over-long answer is the device's own, over TCP and PC/SC alike: a card pulled
      // out under the exchange comes back from core::pcsc as IoError(PcscCardRemoved), never as a
      // FormatError (docs/readers.md), so "run the restore again" is never said to a hostile card.
      throw core::Error(errc::DeviceRefused, std::string("the device answered ") + what + " with a malformed response: " + e.what());
    } catch (const core::Error& e) {
      lost(what, e);
    }
  }

 private:
  [[noreturn]] void lost(const char* what, const core::Error& e) const {
    // BOOT STAGED replaces the image atomically (docs/protocol.md section 5), so a link lost at
    // any point (a card pulled out too) leaves either the previous image or the restored one, and
    // restore can run again.
    const std::string writing = m_wrote ? "; the device keeps its previous image unless the boot completed: run "
                                          "the same restore again" : "; nothing was written";
    throw core::IoError(pcsc_code(e.code()) ? e.code() : errc::DeviceUnreachable,
                        std::string("lost the device at ") + m_address + " during " + what + ": " + e.what() + writing);
  }

  std::string m_address;
  std::unique_ptr<core::DeviceChannel> m_channel;
  bool m_wrote = false;
};

// STATUS in its one layout (core::applet::parse_status); an answer of any other shape is the device
// refusing, never bytes read past the end.
applet::Status read_status(Device& dev) {
  const auto r = dev.send(applet::status_command(), "STATUS", applet::kStatusSizeWithImei);
  if (r.sw != core::sw::ok) throw core::Error(errc::DeviceRefused, "the device refused STATUS (" + core::sw_text(r.sw) + ")");
  try {
    return applet::parse_status(r.data);
  } catch (const core::FormatError& e) {
    throw core::Error(errc::DeviceRefused, std::string("the device's STATUS answer does not parse: ") + e.what());
  }
}

core::ChipId read_chip_id(Device& dev) {
  const auto r = dev.send(applet::get_cplc_command(), "GET DATA CPLC", 3 + core::kCplcSize);  // 9F 7F 2A || CPLC
  if (r.sw != core::sw::ok) throw core::Error(errc::DeviceRefused, "the device refused GET DATA CPLC (" + core::sw_text(r.sw) + ")");
  try {
    return core::Cplc::parse(r.data.data(), r.data.size()).chip_id();
  } catch (const core::Error& e) {
    throw core::Error(errc::DeviceRefused, std::string("the device's CPLC does not parse: ") + e.what());
  }
}

void select_applet(Device& dev) {
  const auto r = dev.send(applet::select_command(), "SELECT", 0);
  if (r.sw != core::sw::ok)
    throw core::Error(errc::DeviceRefused, "the device refused SELECT of the keyline applet (" + core::sw_text(r.sw) + ")");
}

// Record::from_json refuses texts over 4 MiB; reading stops there so that a wrong file (a disk
// image, a log) is refused without being loaded whole.
constexpr std::size_t kMaxBundle = 4u << 20;

std::string read_text_file(const std::string& path, const char* what, core::ErrorCode code) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw core::Error(code, std::string("cannot read ") + what + " " + path);
  std::string text(kMaxBundle + 1, '\0');
  f.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(f.gcount()));
  if (text.size() > kMaxBundle)
    throw core::Error(code, std::string(what) + " " + path + " is larger than 4 MiB: not a keyline record");
  return text;
}

void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw core::IoError(core::ErrorCode::Io, "cannot write " + tmp);
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size() && std::fflush(f) == 0 &&
                  ::fsync(fileno(f)) == 0;
  std::fclose(f);
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw core::IoError(core::ErrorCode::Io, "cannot write " + path);
  }
}

}  // namespace

// Builds the client, which checks the URL and reads the TLS trust file: bad settings are reported
// before the device is touched.
std::unique_ptr<core::http::Client> make_db_client(const DbOptions& db) {
  if (db.url.empty()) throw core::ConfigError(core::ErrorCode::Usage, "--db (public DB URL) is required");
  core::http::ClientOptions o;
  o.base_url = db.url;
  o.ca_file = db.ca_file;
  o.connect_attempts = db.attempts;
  o.backoff = db.backoff;
  o.connect_timeout = db.timeout;
  o.io_timeout = db.timeout;
  return std::make_unique<core::http::Client>(o);
}

std::string fetch_record_json(const DbOptions& db, const core::ChipId& chip_id) {
  const auto client = make_db_client(db);
  core::http::Response r;
  try {
    r = client->get("/v1/records/" + chip_id.str(), {{"Accept", "application/json"}});
  } catch (const core::ConfigError&) {
    throw;
  } catch (const core::Error& e) {
    // An answer past the client's cap was received, not missed: it is no record (exit 3, nothing written).
    if (e.code() == core::ErrorCode::Http)
      throw core::Error(errc::VerificationFailed, "the public DB at " + db.url + " sent no usable record: " + e.what());
    throw core::IoError(errc::DbUnavailable, "the public DB at " + db.url + " cannot be reached (" +
                                                 std::to_string(db.attempts) + " attempts): " + e.what());
  }
  if (r.status == 200) return r.body;
  if (r.status == 404)
    throw core::Error(errc::NoRecord, "the public DB has no record for chip " + chip_id.str() +
                                          ": this device was never published, or this is the wrong DB");
  if (r.status >= 500 || r.status == 429)
    throw core::IoError(errc::DbUnavailable, "the public DB at " + db.url + " answered HTTP " + std::to_string(r.status) +
                                                 "; try again later");
  throw core::Error(errc::DbRefused, "the public DB refused the lookup of chip " + chip_id.str() + " with HTTP " +
                                         std::to_string(r.status));
}

core::Record parse_bundle(const std::string& text, const std::string& name) {
  try {
    return core::Record::from_json(text);
  } catch (const core::Error& e) {
    throw core::FormatError(errc::BadBundle, "offline bundle " + name + " is corrupt: " + e.what());
  }
}

void verify_record(const core::Record& record, const core::ChipId& device_chip,
                   const std::vector<Botan::X509_Certificate>& anchors) {
  if (record.chip_id != device_chip)
    throw core::Error(errc::VerificationFailed, "the record is for chip " + record.chip_id.str() +
                                                    ", but the device is chip " + device_chip.str());
  try {
    core::validate_record(record, anchors);
  } catch (const core::Error& e) {
    throw core::Error(errc::VerificationFailed, e.what());
  }
}

std::vector<core::CommandApdu> update_binary_commands(const core::Bytes& image) {
  if (image.empty()) throw core::Error(errc::VerificationFailed, "the flash image is empty");
  const std::size_t last = (image.size() - 1) / kChunk * kChunk;
  if (last > applet::kMaxUpdateOffset)
    throw core::Error(errc::VerificationFailed, "the flash image (" + std::to_string(image.size()) +
                                                    " bytes) does not fit the device's staging area");
  std::vector<core::CommandApdu> out;
  for (std::size_t off = 0; off < image.size(); off += kChunk) {
    const std::size_t n = std::min(kChunk, image.size() - off);
    out.push_back(applet::update_binary_command(
        off, core::SecureBytes(image.begin() + static_cast<std::ptrdiff_t>(off),
                               image.begin() + static_cast<std::ptrdiff_t>(off + n))));
  }
  return out;
}

BootAnswer parse_boot_answer(const core::SecureBytes& data) {
  const applet::BootAnswer parsed = applet::parse_boot_answer(data);
  BootAnswer a;
  a.imei = parsed.imei;
  a.identity_key_sha256 = core::to_hex(parsed.identity_key_sha256.data(), parsed.identity_key_sha256.size());
  a.transport_key_sha256 = core::to_hex(parsed.transport_key_sha256.data(), parsed.transport_key_sha256.size());
  return a;
}

std::string key_fingerprint(const Botan::X509_Certificate& cert) {
  const auto bits = cert.subject_public_key_bitstring();
  const auto h = Botan::HashFunction::create_or_throw("SHA-256")->process(bits.data(), bits.size());
  return core::to_hex(h.data(), h.size());
}

RestoreResult restore(const RestoreOptions& options, std::ostream* progress) {
  check_device_choice(options);
  const bool offline = !options.bundle.empty();
  const auto anchors = load_anchors(options.trust_file);

  // The bundle is read before the device is touched: a corrupt one needs no device to be refused.
  std::optional<core::Record> record;
  std::string raw;
  if (offline) {
    raw = read_text_file(options.bundle, "offline bundle", errc::BadBundle);
    record = parse_bundle(raw, options.bundle);
  }

  if (!offline) make_db_client(options.db);
  if (!options.log.skip) load_log_key(options.log);  // a missing or bad --log-key is said before the device is touched
  const std::string address = device_address(options, progress);
  Device dev(address, options.device_timeout);
  const core::ChipId chip = read_chip_id(dev);
  say(progress, "device " + address + " is chip " + chip.str());

  if (!offline) {
    raw = fetch_record_json(options.db, chip);
    try {
      record = core::Record::from_json(raw);
    } catch (const core::Error& e) {
      throw core::Error(errc::VerificationFailed, std::string("the public DB served a record that does not parse: ") + e.what());
    }
    say(progress, "fetched the record of chip " + chip.str() + " from " + options.db.url);
  }

  // Invariant 6 (docs/design.md section 9): every check comes before the first UPDATE BINARY.
  verify_record(*record, chip, anchors);
  const Botan::X509_Certificate identity(record->certificates.front());
  const std::string identity_fp = key_fingerprint(identity);
  say(progress, "verified: chain to the trust anchor, chip ID and IMEI " + record->imei.str() + " in the certificate, backup header");

  select_applet(dev);
  const applet::Status st = read_status(dev);
  if (st.chip_id != chip)
    throw core::Error(errc::DeviceRefused, "the device's STATUS names chip " + st.chip_id.str() + ", its CPLC chip " +
                                               chip.str());
  // docs/protocol.md section 2: BOOT STAGED needs a personalized device.
  if (!st.personalized())
    throw core::Error(errc::VerificationFailed, "the device is blank (never personalized), so it cannot take chip " +
                                                    chip.str() + "'s backup");
  if (st.imei && *st.imei != record->imei)
    throw core::Error(errc::VerificationFailed, "the device's fuse holds IMEI " + st.imei->str() + ", the record IMEI " +
                                                    record->imei.str());

  // The device proves it can open the backup before anything is written (RESTORE DRILL with the
  // backup as data, docs/protocol.md section 3): a package altered by one bit or sealed by another
  // chip fails the AES-GCM check there, and no byte reaches the staging area.
  const auto d = dev.send(applet::restore_drill_command(record->backup, false), "RESTORE DRILL", applet::kDrillAnswerSize);
  if (d.sw == core::sw::wrong_data)
    throw core::Error(errc::VerificationFailed, "the backup package does not open on this chip (altered, or sealed by another chip)");
  if (d.sw != core::sw::ok)
    throw core::Error(errc::DeviceRefused, "the device refused the restore drill (" + core::sw_text(d.sw) + ")");
  try {
    applet::parse_drill_answer(d.data);  // the digest itself is the device's business: no package here to compare
  } catch (const core::FormatError& e) {
    throw core::Error(errc::DeviceRefused, std::string("the device's restore drill answer does not parse: ") + e.what());
  }
  say(progress, "the device opens the backup package");

  const core::Bytes image = core::FlashImage{record->backup, record->certificates}.encode();
  const auto commands = update_binary_commands(image);

  RestoreResult result;
  result.chip_id = chip;
  result.imei = record->imei;
  result.record_hash = record->hash();
  result.identity_key_sha256 = identity_fp;
  result.image_size = image.size();
  result.source = offline ? options.bundle : options.db.url;
  if (st.flash == applet::FlashState::Boots) say(progress, "note: the device's current flash image boots; it will be replaced by the record's");

  // Last of the checks, so that a record the device or the trust anchor refuses is named for that;
  // still before the first write (docs/recovery.md section 7).
  if (offline)
    check_bundle_in_log(options.log, raw, *record, progress);
  else
    check_record_in_log(options.db, options.log, *record, progress);

  if (options.dry_run) {
    say(progress, "dry run: verified, nothing written (" + std::to_string(image.size()) + "-byte image)");
    return result;
  }

  for (const auto& c : commands) {
    const auto r = dev.send(c, "UPDATE BINARY", 0);
    if (r.sw != core::sw::ok) {
      const std::size_t off = (static_cast<std::size_t>(c.p1) << 8) | c.p2;
      throw core::Error(errc::DeviceRefused, "the device refused UPDATE BINARY at offset " + std::to_string(off) + " (" +
                                                 core::sw_text(r.sw) + "); its flash image is unchanged");
    }
  }
  say(progress, "wrote " + std::to_string(image.size()) + " bytes into the staging area in " +
                    std::to_string(commands.size()) + " UPDATE BINARY commands");

  const auto b = dev.send(applet::boot_staged_command(), "BOOT STAGED", applet::kBootAnswerSize);
  if (b.sw != core::sw::ok)
    throw core::Error(errc::DeviceRefused, "the device refused the image (" + core::sw_text(b.sw) + ", SW " + sw_hex(b.sw) +
                                               "); it keeps its previous state");
  BootAnswer a;
  try {
    a = parse_boot_answer(b.data);
  } catch (const core::Error& e) {
    throw core::Error(errc::DeviceRefused, std::string("the device booted but its answer does not parse: ") + e.what());
  }
  result.written = true;
  if (a.imei != record->imei)
    throw core::Error(errc::IdentityMismatch, "the device booted IMEI " + a.imei.str() + ", the record says " + record->imei.str());
  if (a.identity_key_sha256 != identity_fp)
    throw core::Error(errc::IdentityMismatch, "the device booted an identity key other than the certificate's");
  result.identity_key_sha256 = a.identity_key_sha256;
  result.transport_key_sha256 = a.transport_key_sha256;
  say(progress, "the device booted the restored image");
  return result;
}

core::Record fetch(const FetchOptions& options, std::ostream* progress) {
  if (options.out.empty()) throw core::ConfigError(core::ErrorCode::Usage, "--out FILE is required");
  core::ChipId chip;
  try {
    chip = core::ChipId::parse(options.chip_id);
  } catch (const core::Error& e) {
    throw core::ConfigError(core::ErrorCode::Usage, std::string("--chip-id: ") + e.what());
  }
  const std::string raw = fetch_record_json(options.db, chip);
  core::Record record;
  try {
    record = core::Record::from_json(raw);
  } catch (const core::Error& e) {
    throw core::Error(errc::VerificationFailed, std::string("the public DB served a record that does not parse: ") + e.what());
  }
  if (record.chip_id != chip)
    throw core::Error(errc::VerificationFailed, "the public DB served the record of chip " + record.chip_id.str() +
                                                    " for chip " + chip.str());
  if (!options.trust_file.empty()) {
    verify_record(record, chip, load_anchors(options.trust_file));
    say(progress, "verified against " + options.trust_file);
  }
  const auto evidence = check_record_in_log(options.db, options.log, record, progress);
  // The bundle is the record exactly as served (self-describing, its record_hash still checks), with
  // the log's evidence added as a member the record's parser ignores (docs/recovery.md section 3).
  write_file_atomic(options.out, evidence ? bundle_with_log(raw, *evidence) : raw);
  say(progress, "wrote the offline bundle of chip " + chip.str() + " (IMEI " + record.imei.str() + ") to " + options.out);
  return record;
}

std::string format_result(const RestoreResult& r, bool json) {
  std::ostringstream o;
  if (json) {
    using core::http::json_escape;
    o << "{\"chip_id\":\"" << r.chip_id.str() << "\",\"imei\":\"" << r.imei.str() << "\",\"identity_key_sha256\":\""
      << r.identity_key_sha256 << "\",\"transport_key_sha256\":\"" << r.transport_key_sha256 << "\",\"record_hash\":\""
      << r.record_hash << "\",\"image_bytes\":" << r.image_size << ",\"written\":" << (r.written ? "true" : "false")
      << ",\"source\":\"" << json_escape(r.source) << "\"}\n";
    return o.str();
  }
  o << "chip_id " << r.chip_id.str() << "\n"
    << "imei " << r.imei.str() << "\n"
    << "identity_key_sha256 " << r.identity_key_sha256 << "\n";
  if (!r.transport_key_sha256.empty()) o << "transport_key_sha256 " << r.transport_key_sha256 << "\n";
  o << "record_hash " << r.record_hash << "\n"
    << "written " << (r.written ? "yes" : "no (dry run)") << "\n";
  return o.str();
}

}  // namespace keyline::recovery
