// The personalization applet: the APDU dialect of docs/design.md section 6 and docs/protocol.md.
// A Device is one chip with its flash, shared by every connection to it (commands run one at a time);
// a Session is the per-connection state (selection, STORE DATA gathering, chaining, GET RESPONSE).
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <random>

#include "keyline/core/apdu.h"
#include "keyline/core/applet_protocol.h"
#include "keyline/core/scp03.h"
#include "keyline/device/chip.h"

namespace keyline::device {

// The personalization channel's INS codes (GlobalPlatform Card Specification v2.3 Amendment F
// sections 7.5 and 7.6; ISO 7816-8 GENERATE ASYMMETRIC KEY PAIR for GENERATE KEY, docs/protocol.md
// section 9).
namespace channel_ins {
constexpr std::uint8_t perform_security_operation = 0x2A;
constexpr std::uint8_t mutual_authenticate = 0x82;
constexpr std::uint8_t generate_key = 0x47;
}  // namespace channel_ins
// GET DATA BF21: the certificate store (Amendment F section 7.4.2).
constexpr std::uint16_t kCertificateStoreTag = 0xBF21;

// The applet's AID and INS codes are core's (core/include/keyline/core/applet_protocol.h), shared
// with the station and the recovery tool.
using core::applet::kAid;
namespace ins = core::applet::ins;
// ATR sent on vpcd "get ATR": T=0 and T=1 offered, no historical bytes (ISO 7816-3 section 8.2).
constexpr std::uint8_t kAtr[] = {0x3B, 0x80, 0x80, 0x01, 0x01};

// ISO 7816-4 section 5.6: "wrong parameters P1-P2: offset outside the EF".
constexpr std::uint16_t kSwOffsetOutside = 0x6B00;
// Data gathered by STORE DATA or UPDATE BINARY before it is refused.
constexpr std::size_t kMaxGathered = core::kFlashMaxSize;
// UPDATE BINARY offsets are 15 bits (P1 bit 8 = 0, ISO 7816-4 section 7.2.2): the staging area ends here.
constexpr std::size_t kMaxStaging = 0x7FFF + 0xFFFF;

struct Faults {
  unsigned delay_id_ms = 0;     // GET DATA CPLC
  unsigned delay_store_ms = 0;  // each STORE DATA block
  unsigned delay_flash_ms = 0;  // each flash write
  std::size_t drop_after_bytes = 0;          // 0 = never; per connection, bytes received
  std::optional<std::size_t> power_cut_at_byte;  // during the next flash write
  double fail_rate = 0.0;       // share of APDUs answered 6F00 before they run
  bool corrupt_backup = false;  // GET DATA DF20 answers the backup with one bit flipped (a faulty chip)
};

// How the device shows itself as a card in a reader (serve --protocol, --no-extended, --mute;
// docs/readers.md). The defaults are the ATR and behaviour the TCP link has always had.
enum class Protocol { t1, t0 };
struct CardOptions {
  // t1: the ATR offers T=0 and T=1 (kAtr). t0: T=0 only; a case 4 command comes without Le (ISO 7816-3
  // section 12.2.4), its answer is announced by 61XX and fetched by GET RESPONSE; a case 2 command
  // with a wrong Le is answered 6CXX (ISO 7816-4 section 5.6); no extended-length APDUs.
  Protocol protocol = Protocol::t1;
  // false: the ATR's card capabilities say "no extended Lc/Le" (ISO 7816-4 section 8.1.1.2.7) and
  // an extended-length APDU is answered 6700.
  bool extended = true;
  // A card that gives no ATR once powered on (the link closes at the power-on's get ATR): pcscd
  // sees a card that does not answer (SCARD_STATE_MUTE).
  bool mute = false;
};

// The ATR the device answers vpcd "get ATR" with: kAtr unless the card options change it.
core::Bytes card_atr(const CardOptions& card);

struct DeviceOptions {
  bool allow_reset = false;  // 80 C8 resets to BLANK only when the device was started with --allow-reset
  Faults faults;
  CardOptions card;
};

class Device {
 public:
  Device(Chip chip, DeviceOptions options) : m_chip(std::move(chip)), m_options(options) {}

  const Chip& chip() const noexcept { return m_chip; }
  const DeviceOptions& options() const noexcept { return m_options; }
  // Set when an injected power cut hit: the server drops every connection, like a power loss.
  bool powered_off() const noexcept { return m_power_cut.load(); }
  void power_restored();

 private:
  friend class Session;
  // A copy of flash/image.bin and what stat() said of the file when the copy was made.
  struct FlashCopy {
    struct stat st;
    core::Bytes image;
  };
  std::mutex m_mutex;  // one command at a time, as on a real chip
  Chip m_chip;
  DeviceOptions m_options;
  std::atomic<bool> m_power_cut{false};
  std::mt19937_64 m_rng{std::random_device{}()};
  // The flash image as this process last wrote or read it. GET DATA DF20 follows every STORE DATA:
  // reading the image back cost an open, a read and a close per device. The file stays the truth:
  // tools and tests change it behind a running server (wipe-flash, corrupt-flash), so every use
  // compares a fresh stat() with the one kept here.
  std::optional<FlashCopy> m_flash;
};

class Session {
 public:
  explicit Session(Device& device) : m_device(device) {}

  // Raw APDU in, raw response out. Never throws: bad bytes get a status word, any internal failure
  // 6F00 with a log line. Throws only core::Error(PowerCut) so the server can drop the link.
  core::SecureBytes process(const std::uint8_t* apdu, std::size_t len);
  core::ResponseApdu process(const core::CommandApdu& command);
  // Power on / off / reset: forget selection and anything half-gathered.
  void reset() noexcept;
  // Bytes this session holds between commands (chained parts, STORE DATA blocks): the server
  // counts them against its memory budget. Capacity, not size: a vector's clear() keeps its
  // allocation, and an allocation is what the budget bounds (docs/protocol.md section 8).
  std::size_t held_bytes() const noexcept {
    std::size_t oce = 0;
    for (const auto& c : m_oce_chain) oce += c.capacity();
    return m_chain.capacity() + m_store.capacity() + (m_t0_pending ? m_t0_pending->data.capacity() : 0) + oce +
           (m_announced ? m_announced->data.capacity() : 0);
  }
  // Whether a secure channel (SCP11a, docs/channel.md) is open on this connection.
  bool channel_open() const noexcept { return m_channel.has_value(); }
  // Whether that channel is the service channel (SCP03, docs/service.md "The device side").
  bool service_channel_open() const noexcept { return m_channel.has_value() && m_service; }

 private:
  core::ResponseApdu dispatch(const core::CommandApdu& c);
  // The channel (channel.cpp): unwraps a secured command, runs it, wraps its answer.
  core::ResponseApdu process_secured(const core::CommandApdu& c);
  // Whether a vendor chip refuses this (plain) command outside the channel (docs/channel.md).
  bool needs_channel(const core::CommandApdu& c) const;
  core::ResponseApdu get_chip_data(std::uint16_t tag, const core::CommandApdu& c);
  core::ResponseApdu perform_security_operation(const core::CommandApdu& c);
  core::ResponseApdu mutual_authenticate(const core::CommandApdu& c);
  core::ResponseApdu generate_key(const core::CommandApdu& c);
  // Puts the keys GENERATE KEY made into a version 2 package as sent (docs/protocol.md section 9).
  // Throws core::Error(BadDataPackage) when there are none or they arrived from the station.
  void insert_generated_keys(core::DataPackage& pkg) const;
  // Ends the secure channel: session keys, the verified OCE key and generated keys are wiped.
  void end_channel() noexcept;
  // The service channel (service.cpp, docs/service.md "The device side"): SCP03's handshake, then
  // STORE DATA of items, LOAD MODULE, PUT KEY and GET STATUS under it.
  core::ResponseApdu initialize_update(const core::CommandApdu& c);
  core::ResponseApdu external_authenticate(const core::CommandApdu& c);
  core::ResponseApdu service_dispatch(const core::CommandApdu& c);
  // STORE DATA and LOAD MODULE come in blocks (P1 b8 = last block, P2 = block number from 00).
  core::ResponseApdu service_gather(const core::CommandApdu& c);
  core::ResponseApdu service_store_items(const core::SecureBytes& dgis);
  core::ResponseApdu service_load_module(const core::Bytes& module);
  core::ResponseApdu service_put_key(const core::CommandApdu& c);
  core::ResponseApdu service_get_status(const core::CommandApdu& c);
  // The T=0 card's rules around process() (CardOptions::protocol t0); in card.cpp.
  core::ResponseApdu process_t0(const core::CommandApdu& c);
  core::ResponseApdu t0_get_response(const core::CommandApdu& c);
  core::ResponseApdu gather_chained(const core::CommandApdu& c);
  core::ResponseApdu select(const core::CommandApdu& c);
  core::ResponseApdu get_data(const core::CommandApdu& c);
  core::ResponseApdu store_data(const core::CommandApdu& c);
  core::ResponseApdu update_binary(const core::CommandApdu& c);
  core::ResponseApdu boot_staged(const core::CommandApdu& c);
  core::ResponseApdu status(const core::CommandApdu& c);
  core::ResponseApdu restore_drill(const core::CommandApdu& c);
  core::ResponseApdu reset_blank(const core::CommandApdu& c);
  core::ResponseApdu finish(core::ResponseApdu r, const core::CommandApdu& c);
  void write_flash(const core::Bytes& image);
  // The flash image bytes (nullptr when the flash is empty), valid until the next flash write or
  // removal; read from the file only when it is not the one this process last wrote or read.
  const core::Bytes* flash_image();
  void remember_flash(const core::Bytes& image);
  // Ends chaining or STORE DATA gathering and gives the buffer's memory back.
  void drop_chain() noexcept;
  void drop_store() noexcept;

  Device& m_device;
  bool m_selected = false;
  core::ResponseChainer m_chainer;
  // ISO 7816-4 5.4.1 command chaining: data of the chained parts so far, and their header.
  core::SecureBytes m_chain;
  std::optional<std::uint8_t> m_chain_ins;
  // STORE DATA gathering (GlobalPlatform Card Specification 11.11).
  core::SecureBytes m_store;
  int m_next_block = 0;
  bool m_storing = false;
  // T=0: the answer of a case 4 command announced by 61XX, until GET RESPONSE fetches it.
  std::optional<core::ResponseApdu> m_t0_pending;
  std::size_t m_t0_pos = 0;  // what GET RESPONSE has taken of it
  // The channel: OCE certificates gathered by PERFORM SECURITY OPERATION, the OCE public point once
  // the chain verified, the secure messaging after MUTUAL AUTHENTICATE, and whether the command being
  // run arrived under it.
  std::vector<core::Bytes> m_oce_chain;
  std::optional<core::Bytes> m_oce_point;
  std::optional<core::scp::SecureMessaging> m_channel;
  bool m_secured = false;
  // A wrapped answer to a command without Le (Ne = 0, ISO 7816-4 section 5.1): announced by 61XX
  // with no data, served from the next GET RESPONSE on.
  std::optional<core::ResponseApdu> m_announced;
  // The service channel: INITIALIZE UPDATE's state until EXTERNAL AUTHENTICATE, the KVN it opened
  // with, and whether m_channel is SCP03's.
  struct Scp03Pending;
  std::shared_ptr<Scp03Pending> m_scp03;
  std::uint8_t m_service_kvn = 0;
  bool m_service = false;
  // GENERATE KEY's private halves for this session, sealed into the next version 2 package.
  core::SecureBytes m_generated_identity;   // PKCS#8 DER
  core::SecureBytes m_generated_transport;  // 32-byte X25519 scalar
};

}  // namespace keyline::device
