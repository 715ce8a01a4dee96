// PC/SC readers through pcsc-lite (docs/readers.md): listing and matching readers, watching them for
// cards (SCardGetStatusChange), and a DeviceChannel on one reader's card (SCardConnect T=1 or T=0,
// SCardTransmit). Every SCARD_ failure becomes a typed IoError a person understands:
//   SCARD_E_NO_SERVICE / SCARD_E_SERVICE_STOPPED     PcscNoService     "pcscd is not running (...)"
//   no reader matching the patterns                    PcscNoReader      names the patterns and the readers seen
//   SCARD_W_UNRESPONSIVE_CARD / SCARD_E_NO_SMARTCARD   PcscCardMute
//   SCARD_E_READER_UNAVAILABLE / SCARD_E_UNKNOWN_READER PcscReaderRemoved
//   SCARD_W_REMOVED_CARD / SCARD_W_RESET_CARD          PcscCardRemoved   (a dropped link)
// The client honours PCSCLITE_CSOCK_NAME (a private pcscd's socket, as the tests use).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "keyline/core/device_channel.h"

namespace keyline::core::pcsc {

// A pattern matches a reader name as a shell glob (fnmatch) when it holds * ? or [, else as a
// substring; "all" matches every reader. Returns the readers of `names` matched by any pattern,
// in the order of `names`.
std::vector<std::string> match_readers(const std::vector<std::string>& names, const std::vector<std::string>& patterns);

struct ReaderState {
  std::string reader;
  bool present = false;  // a card is in the reader (SCARD_STATE_PRESENT)
  bool mute = false;     // SCARD_STATE_MUTE: a card is in but gave no ATR
  bool gone = false;     // the reader itself went away (SCARD_STATE_UNKNOWN / UNAVAILABLE)
  Bytes atr;
  std::uint32_t event_count = 0;  // pcsc-lite's per-reader event counter (high 16 bits of dwEventState):
                                  // changes when a card is removed and put in again, even between two waits
  std::uint32_t raw = 0;          // dwEventState as pcsc-lite gave it: wait() hands it back as the
                                  // current state, or an in-use bit it lacks would count as a change
};

// One PC/SC context (SCardEstablishContext with SCARD_SCOPE_SYSTEM). Not shared between threads,
// except cancel(), which any thread may call (SCardCancel).
class Context {
 public:
  Context();  // throws IoError(PcscNoService) when pcscd cannot be reached
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  std::vector<std::string> readers();  // SCardListReaders; empty when none
  // The readers matching `patterns` now; throws IoError(PcscNoReader) naming patterns and readers seen.
  std::vector<std::string> require_readers(const std::vector<std::string>& patterns);

  // The state of each reader now (no waiting).
  std::vector<ReaderState> states(const std::vector<std::string>& readers);
  // Waits until any of `readers` changes from `known` (previous states() / wait() result, same order)
  // or `timeout` passes or cancel() is called; returns the new states (same order). A reader that
  // disappears comes back with gone = true.
  std::vector<ReaderState> wait(const std::vector<std::string>& readers, const std::vector<ReaderState>& known,
                                std::chrono::milliseconds timeout);
  void cancel() noexcept;

  std::uintptr_t native() const noexcept { return m_ctx; }  // SCARDCONTEXT

 private:
  std::uintptr_t m_ctx = 0;
};

// A DeviceChannel on the card in one reader. Holds its own Context (a PcscChannel may live on a
// worker thread while the watcher's Context waits on another). Connects T=1 if the card offers it,
// else T=0; on T=0 case 4 commands go without Le and the answer comes by 61XX / GET RESPONSE
// (ISO 7816-3 section 12.2, handled by core::transceive). Extended length: as the ATR's card
// capabilities say (absent: assumed) and the reader allows; refusal -> ExtendedLengthRefused.
class PcscChannel : public DeviceChannel {
 public:
  PcscChannel(std::string reader, ChannelOptions options = {});
  ~PcscChannel() override;

  void connect() override;
  void close() noexcept override;
  bool connected() const noexcept override;
  ResponseApdu transmit(const CommandApdu& command, std::size_t max_response = kMaxResponseDefault) override;
  bool extended_length() const noexcept override;
  void disable_extended_length() noexcept override;
  const std::string& address() const noexcept override { return m_address; }
  const Bytes& atr() const noexcept override { return m_atr; }

  const std::string& reader() const noexcept { return m_reader; }
  bool t0() const noexcept;  // the protocol connected is T=0

 private:
  using Deadline = std::chrono::steady_clock::time_point;
  struct Impl;
  void read_card_status();
  bool card_takes_extended() const;
  // One SCardTransmit (on T=0 a case 4 command without its Le); sent_extended is set when the APDU
  // was extended-length.
  SecureBytes transmit_raw(const SecureBytes& apdu, Deadline deadline, bool& sent_extended);
  [[noreturn]] void transmit_failed(long rv, bool extended);
  // After a failed transfer: the reader's state once pcscd has had time to see a card pulled out.
  ReaderState card_state_after_failure();

  std::unique_ptr<Impl> m_impl;
  std::string m_reader;
  std::string m_address;  // "pcsc:" + reader
  Bytes m_atr;
  std::string m_exchange;  // the command transmit() is exchanging, for the timeout error
};

}  // namespace keyline::core::pcsc
