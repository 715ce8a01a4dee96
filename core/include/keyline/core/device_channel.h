// The station's and the recovery tool's way to a device (docs/readers.md): one interface over the
// vpcd framing on TCP (core::DeviceLink, `HOST:PORT`) and a PC/SC reader (core::pcsc::PcscChannel,
// `pcsc:READER NAME`). A later secure channel (SCP11a, docs/design.md section 10) wraps either one
// and is itself a DeviceChannel, so the flow above it does not change.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "keyline/core/apdu.h"
#include "keyline/core/bytes.h"

namespace keyline::core {

class DeviceChannel {
 public:
  virtual ~DeviceChannel() = default;

  // Opens the link (TCP connect + vpcd power-on, or SCardConnect T=1/T=0). Throws IoError(Network),
  // LinkTimeout, or IoError(PcscNoService | PcscNoReader | PcscCardMute | PcscReaderRemoved |
  // PcscCardRemoved | Pcsc).
  virtual void connect() = 0;
  virtual void close() noexcept = 0;
  virtual bool connected() const noexcept = 0;

  // One whole exchange (core::transceive: chaining, 61XX / GET RESPONSE, 6CXX, check_answer with
  // max_response). A dropped link (TCP closed, card pulled out) throws IoError(Network) or
  // IoError(PcscCardRemoved); both mean "the device went away", never "the device refused".
  virtual ResponseApdu transmit(const CommandApdu& command, std::size_t max_response = kMaxResponseDefault) = 0;

  // Whether extended-length APDUs (ISO 7816-4 section 5.1) may be sent: for TCP always; for PC/SC what
  // the card's ATR (card capabilities, ISO 7816-4 section 8.1.1.2.7) and the reader say, until
  // disable_extended_length() is called after the card or reader refused one (6700 or a transport
  // error: ExtendedLengthRefused). The flow then uses short APDUs for the rest of the card's session.
  virtual bool extended_length() const noexcept = 0;
  virtual void disable_extended_length() noexcept = 0;

  // "127.0.0.1:7001" or "pcsc:Virtual PCD 00 00": what logs, journals and results name the device by.
  virtual const std::string& address() const noexcept = 0;
  virtual const Bytes& atr() const noexcept = 0;
};

struct ChannelOptions {
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds io_timeout{30000};  // one whole exchange (DeviceLinkOptions::io_timeout)
  std::size_t max_chunk = 255;                  // command chaining chunk for long command data
};

constexpr const char* kPcscScheme = "pcsc:";
// "pcsc:NAME" -> a PcscChannel on the reader named NAME exactly; "HOST:PORT" -> a DeviceLink.
// Throws ConfigError(Config) for an address that is neither. Does not connect.
std::unique_ptr<DeviceChannel> open_device_channel(const std::string& address, const ChannelOptions& options = {});

}  // namespace keyline::core
