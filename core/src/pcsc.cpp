#include "keyline/core/pcsc.h"

#include <PCSC/reader.h>
#include <PCSC/winscard.h>
#include <fnmatch.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include <botan/mem_ops.h>

#include "keyline/core/atr.h"
#include "keyline/core/device_link.h"
#include "keyline/core/error.h"

namespace keyline::core::pcsc {

namespace {

// pcsc-lite 1.9.9 (Debian 12) clients use this socket unless PCSCLITE_CSOCK_NAME names another.
constexpr const char* kDefaultSocket = "/run/pcscd/pcscd.comm";
// Largest response SCardTransmit can hand back: 65536 data bytes and SW1 SW2 (ISO 7816-4 section 5.1).
constexpr std::size_t kMaxReceive = 65536 + 2;
// SCardGetStatusChange takes a DWORD of milliseconds; INFINITE (0xFFFFFFFF) is never passed.
constexpr long kMaxWaitMs = 24L * 3600 * 1000;

SCARDCONTEXT as_ctx(std::uintptr_t c) { return static_cast<SCARDCONTEXT>(c); }

std::string socket_path() {
  const char* env = std::getenv("PCSCLITE_CSOCK_NAME");
  return env && *env ? env : kDefaultSocket;
}

std::string scard_text(LONG rv) {
  char code[16];
  std::snprintf(code, sizeof code, "0x%08lX", static_cast<unsigned long>(rv));
  return std::string(pcsc_stringify_error(rv)) + " (" + code + ")";
}

std::string quoted_list(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& i : items) out += (out.empty() ? "'" : ", '") + i + "'";
  return out;
}

std::string plain_list(const std::vector<std::string>& items) {
  if (items.empty()) return "none";
  std::string out;
  for (const auto& i : items) out += (out.empty() ? "" : ", ") + i;
  return out;
}

// The one place a SCARD_ code becomes a typed error (docs/readers.md, "Errors"). `doing` names the
// call for the codes that have no operator's wording of their own.
[[noreturn]] void fail(LONG rv, const std::string& doing, const std::string& reader) {
  switch (rv) {
    case SCARD_E_NO_SERVICE:
    case SCARD_E_SERVICE_STOPPED:
      throw IoError(ErrorCode::PcscNoService,
                    "pcscd is not running (no PC/SC service at " + socket_path() + "): start pcscd");
    case SCARD_F_COMM_ERROR:
      // pcsc-lite's "RPC transport error": the client's socket to pcscd broke (pcscd stopped under
      // a context). Only SCardTransmit also uses it for a failed transfer to the card.
      if (doing != "SCardTransmit")
        throw IoError(ErrorCode::PcscNoService, "pcscd went away (the PC/SC service at " + socket_path() +
                                                    " stopped answering): start pcscd");
      throw IoError(ErrorCode::Pcsc, "PC/SC SCardTransmit on reader " + reader + " failed: " + scard_text(rv));
    case SCARD_W_UNRESPONSIVE_CARD:
    case SCARD_W_UNPOWERED_CARD:
      throw IoError(ErrorCode::PcscCardMute, "card in reader " + reader + " does not answer (mute)");
    case SCARD_E_READER_UNAVAILABLE:
    case SCARD_E_UNKNOWN_READER:
      throw IoError(ErrorCode::PcscReaderRemoved, "reader " + reader + " was removed");
    case SCARD_E_NO_SMARTCARD:
      if (doing == "SCardConnect") throw IoError(ErrorCode::PcscCardMute, "no card in reader " + reader);
      throw IoError(ErrorCode::PcscCardRemoved, "card pulled out of reader " + reader);
    case SCARD_W_REMOVED_CARD:
    case SCARD_W_RESET_CARD:
      throw IoError(ErrorCode::PcscCardRemoved, "card pulled out of reader " + reader);
    default:
      throw IoError(ErrorCode::Pcsc, "PC/SC " + doing + (reader.empty() ? "" : " on reader " + reader) +
                                         " failed: " + scard_text(rv));
  }
}

ReaderState to_state(const SCARD_READERSTATE& s) {
  ReaderState r;
  r.reader = s.szReader;
  r.raw = static_cast<std::uint32_t>(s.dwEventState);
  r.present = (s.dwEventState & SCARD_STATE_PRESENT) != 0;
  r.mute = (s.dwEventState & SCARD_STATE_MUTE) != 0;
  r.gone = (s.dwEventState & (SCARD_STATE_UNKNOWN | SCARD_STATE_UNAVAILABLE)) != 0;
  r.event_count = static_cast<std::uint32_t>((s.dwEventState >> 16) & 0xFFFF);
  const std::size_t n = std::min<std::size_t>(s.cbAtr, sizeof s.rgbAtr);
  if (r.present) r.atr.assign(s.rgbAtr, s.rgbAtr + n);
  return r;
}

ReaderState gone_state(const std::string& reader) {
  ReaderState r;
  r.reader = reader;
  r.gone = true;
  r.raw = SCARD_STATE_UNKNOWN;
  return r;
}

// Short APDU encodings (ISO 7816-4 section 5.2): an extended one has Lc or Le introduced by 00 in
// byte 5 and is at least 7 bytes long.
bool is_extended(const SecureBytes& apdu) { return apdu.size() >= 7 && apdu[4] == 0x00; }

// ISO 7816-3 section 12.2.4: over T=0 a case 4 command goes as its case 3 TPDU (no Le); the card
// announces the answer with 61XX and GET RESPONSE fetches it.
bool is_short_case4(const SecureBytes& apdu) {
  return apdu.size() > 6 && apdu[4] != 0 && apdu.size() == 5u + apdu[4] + 1u;
}

}  // namespace

std::vector<std::string> match_readers(const std::vector<std::string>& names, const std::vector<std::string>& patterns) {
  std::vector<std::string> out;
  for (const auto& name : names) {
    const bool hit = std::any_of(patterns.begin(), patterns.end(), [&](const std::string& p) {
      if (p == "all") return true;
      if (p.find_first_of("*?[") != std::string::npos) return ::fnmatch(p.c_str(), name.c_str(), 0) == 0;
      return !p.empty() && name.find(p) != std::string::npos;
    });
    if (hit) out.push_back(name);
  }
  return out;
}

Context::Context() {
  SCARDCONTEXT ctx = 0;
  const LONG rv = SCardEstablishContext(SCARD_SCOPE_SYSTEM, nullptr, nullptr, &ctx);
  if (rv != SCARD_S_SUCCESS) fail(rv, "SCardEstablishContext", "");
  m_ctx = static_cast<std::uintptr_t>(ctx);
}

Context::~Context() { SCardReleaseContext(as_ctx(m_ctx)); }

std::vector<std::string> Context::readers() {
  std::string buf;
  DWORD len = 0;
  LONG rv = SCARD_E_INSUFFICIENT_BUFFER;
  // A reader plugged in between sizing and listing makes the buffer short: size it again, a few times.
  for (int tries = 0; tries < 4 && rv == SCARD_E_INSUFFICIENT_BUFFER; ++tries) {
    len = 0;
    rv = SCardListReaders(as_ctx(m_ctx), nullptr, nullptr, &len);
    if (rv != SCARD_S_SUCCESS) break;
    buf.assign(len, '\0');
    rv = SCardListReaders(as_ctx(m_ctx), nullptr, buf.data(), &len);
  }
  if (rv == SCARD_E_NO_READERS_AVAILABLE) return {};
  if (rv != SCARD_S_SUCCESS) fail(rv, "SCardListReaders", "");
  // A multi-string: names separated by NUL, ended by an empty one.
  std::vector<std::string> out;
  for (std::size_t i = 0; i < std::min<std::size_t>(len, buf.size()) && buf[i];) {
    const std::size_t end = buf.find('\0', i);
    out.push_back(buf.substr(i, end - i));
    i = end == std::string::npos ? buf.size() : end + 1;
  }
  return out;
}

std::vector<std::string> Context::require_readers(const std::vector<std::string>& patterns) {
  const std::vector<std::string> names = readers();
  std::vector<std::string> hit = match_readers(names, patterns);
  if (hit.empty())
    throw IoError(ErrorCode::PcscNoReader,
                  "no reader matches " + quoted_list(patterns) + " (readers: " + plain_list(names) + ")");
  return hit;
}

std::vector<ReaderState> Context::states(const std::vector<std::string>& readers) {
  return wait(readers, {}, std::chrono::milliseconds(0));
}

std::vector<ReaderState> Context::wait(const std::vector<std::string>& readers, const std::vector<ReaderState>& known,
                                       std::chrono::milliseconds timeout) {
  if (readers.empty()) return {};
  const bool have_known = known.size() == readers.size();
  std::vector<SCARD_READERSTATE> rs(readers.size());
  for (std::size_t i = 0; i < readers.size(); ++i) {
    rs[i].szReader = readers[i].c_str();
    // Unaware = "tell me the state now"; else the state last seen, counter included, so a card
    // pulled and put back between two waits still shows (the counter moved).
    rs[i].dwCurrentState = have_known ? (known[i].raw & ~static_cast<DWORD>(SCARD_STATE_CHANGED)) : SCARD_STATE_UNAWARE;
  }
  const long ms = std::clamp<long>(static_cast<long>(timeout.count()), 0, kMaxWaitMs);
  const LONG rv = SCardGetStatusChange(as_ctx(m_ctx), static_cast<DWORD>(ms), rs.data(), static_cast<DWORD>(rs.size()));
  if ((rv == SCARD_E_TIMEOUT || rv == SCARD_E_CANCELLED) && have_known) return known;
  if (rv == SCARD_E_UNKNOWN_READER || rv == SCARD_E_READER_UNAVAILABLE) {
    // One of them is gone (pcscd refuses the whole call): the rest are asked again without it.
    const std::vector<std::string> now = this->readers();
    std::vector<std::string> still;
    for (const auto& r : readers)
      if (std::find(now.begin(), now.end(), r) != now.end()) still.push_back(r);
    if (still.size() == readers.size()) fail(rv, "SCardGetStatusChange", plain_list(readers));
    std::vector<ReaderState> some = states(still), out;
    for (const auto& r : readers) {
      auto it = std::find_if(some.begin(), some.end(), [&](const ReaderState& s) { return s.reader == r; });
      out.push_back(it == some.end() ? gone_state(r) : *it);
    }
    return out;
  }
  if (rv != SCARD_S_SUCCESS && rv != SCARD_E_TIMEOUT) fail(rv, "SCardGetStatusChange", plain_list(readers));
  std::vector<ReaderState> out;
  for (const auto& s : rs) out.push_back(to_state(s));
  return out;
}

void Context::cancel() noexcept { SCardCancel(as_ctx(m_ctx)); }

namespace {

// One connection to a card, shared with the thread that runs its exchanges. SCardTransmit blocks
// inside pcscd until the reader driver returns, and the vpcd driver never gives up on a card that
// does not answer: the exchange thread lets io_timeout bound what the caller waits. A timed-out
// exchange leaves the Link with that thread, which disconnects and releases the context once the
// call returns (the card is pulled out, pcscd stops).
struct Link {
  std::unique_ptr<Context> ctx;
  SCARDHANDLE card = 0;
  bool connected = false;
  DWORD protocol = 0;
  SecureBytes send;  // the APDU being exchanged; a response may carry key material, both are wiped
  SecureBytes rbuf;
  DWORD rlen = 0;
  LONG rv = SCARD_S_SUCCESS;
  std::mutex mutex;
  std::condition_variable wake;
  bool job = false, done = false, abandoned = false, quit = false;

  ~Link() {
    if (connected) SCardDisconnect(card, SCARD_RESET_CARD);
  }
  const SCARD_IO_REQUEST* pci() const { return protocol == SCARD_PROTOCOL_T0 ? SCARD_PCI_T0 : SCARD_PCI_T1; }
};

void exchange_loop(std::shared_ptr<Link> link) {
  std::unique_lock<std::mutex> lock(link->mutex);
  for (;;) {
    link->wake.wait(lock, [&] { return link->job || link->quit; });
    if (link->quit) return;
    lock.unlock();
    DWORD rlen = static_cast<DWORD>(link->rbuf.size());
    const LONG rv = SCardTransmit(link->card, link->pci(), link->send.data(), static_cast<DWORD>(link->send.size()),
                                  nullptr, link->rbuf.data(), &rlen);
    lock.lock();
    link->rv = rv;
    link->rlen = std::min<DWORD>(rlen, static_cast<DWORD>(link->rbuf.size()));
    link->job = false;
    link->done = true;
    if (link->abandoned) return;  // the last owner: ~Link disconnects, ~Context releases
    link->wake.notify_all();
  }
}

}  // namespace

struct PcscChannel::Impl {
  ChannelOptions options;
  std::shared_ptr<Link> link = std::make_shared<Link>();
  std::thread exchanger;
  bool extended = false;

  // Stops the exchange thread (idle: it only waits for the next job) and drops the link.
  void drop() noexcept {
    if (exchanger.joinable()) {
      {
        std::lock_guard<std::mutex> lock(link->mutex);
        link->quit = true;
      }
      link->wake.notify_all();
      exchanger.join();
    }
    link = std::make_shared<Link>();
  }
  // After a timed-out exchange: the thread keeps the link until SCardTransmit returns.
  void abandon() noexcept {
    {
      std::lock_guard<std::mutex> lock(link->mutex);
      link->abandoned = true;
    }
    exchanger.detach();
    link = std::make_shared<Link>();
  }
};

PcscChannel::PcscChannel(std::string reader, ChannelOptions options)
    : m_impl(std::make_unique<Impl>()), m_reader(std::move(reader)), m_address(kPcscScheme + m_reader) {
  m_impl->options = options;
}

PcscChannel::~PcscChannel() { close(); }

bool PcscChannel::connected() const noexcept { return m_impl->link->connected; }
bool PcscChannel::extended_length() const noexcept { return m_impl->link->connected && m_impl->extended; }
void PcscChannel::disable_extended_length() noexcept { m_impl->extended = false; }
bool PcscChannel::t0() const noexcept {
  return m_impl->link->connected && m_impl->link->protocol == SCARD_PROTOCOL_T0;
}

void PcscChannel::close() noexcept { m_impl->drop(); }

namespace {

// Waits up to `limit` for a card in `reader`; returns its state (present or not, or gone).
ReaderState card_state(Context& ctx, const std::string& reader, std::chrono::milliseconds limit) {
  const std::vector<std::string> one{reader};
  const std::vector<std::string> all = ctx.readers();
  if (std::find(all.begin(), all.end(), reader) == all.end())
    throw IoError(ErrorCode::PcscNoReader, "no reader named '" + reader + "' (readers: " + plain_list(all) + ")");
  const auto deadline = std::chrono::steady_clock::now() + limit;
  std::vector<ReaderState> s = ctx.states(one);
  while (!s[0].present && !s[0].gone) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    s = ctx.wait(one, s, left);
  }
  return s[0];
}

}  // namespace

void PcscChannel::connect() {
  close();
  Impl& m = *m_impl;
  Link& l = *m.link;
  l.ctx = std::make_unique<Context>();
  const ReaderState s = card_state(*l.ctx, m_reader, m.options.connect_timeout);
  if (s.gone) throw IoError(ErrorCode::PcscReaderRemoved, "reader " + m_reader + " was removed");
  // SCARD_E_NO_SMARTCARD at connect: PcscCardMute, as pcsc.h maps it (a card that never came is no
  // dropped link; one pulled out under an exchange is, and is PcscCardRemoved).
  if (!s.present)
    throw IoError(ErrorCode::PcscCardMute, "no card in reader " + m_reader + " (waited " +
                                               std::to_string(m.options.connect_timeout.count()) + " ms)");
  if (s.mute) throw IoError(ErrorCode::PcscCardMute, "card in reader " + m_reader + " does not answer (mute)");
  // T=1 alone when the ATR offers it, not the choice of pcscd and the driver between both; T=0 else.
  const std::optional<AtrInfo> info = parse_atr(s.atr);
  const DWORD wanted = info && info->t1 ? SCARD_PROTOCOL_T1 : SCARD_PROTOCOL_T0 | SCARD_PROTOCOL_T1;
  const auto deadline = std::chrono::steady_clock::now() + m.options.connect_timeout;
  LONG rv;
  for (;;) {
    rv = SCardConnect(as_ctx(l.ctx->native()), m_reader.c_str(), SCARD_SHARE_EXCLUSIVE, wanted, &l.card, &l.protocol);
    // Another program holds the card (or our own last session is still being closed): wait a little.
    if (rv != SCARD_E_SHARING_VIOLATION || std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (rv == SCARD_E_SHARING_VIOLATION)
    throw IoError(ErrorCode::Pcsc, "reader " + m_reader + " is in use by another program");
  if (rv != SCARD_S_SUCCESS) fail(rv, "SCardConnect", m_reader);
  l.connected = true;
  read_card_status();
  m.extended = l.protocol == SCARD_PROTOCOL_T1 && card_takes_extended();
  l.rbuf.assign(kMaxReceive, 0);
  m.exchanger = std::thread(exchange_loop, m.link);
}

void PcscChannel::read_card_status() {
  BYTE atr[MAX_ATR_SIZE];
  DWORD atr_len = sizeof atr, state = 0, proto = 0, name_len = 0;
  const LONG rv = SCardStatus(m_impl->link->card, nullptr, &name_len, &state, &proto, atr, &atr_len);
  if (rv != SCARD_S_SUCCESS) {
    close();
    fail(rv, "SCardStatus", m_reader);
  }
  m_atr.assign(atr, atr + std::min<DWORD>(atr_len, sizeof atr));
}

bool PcscChannel::card_takes_extended() const {
  // ISO 7816-4 section 8.1.1.2.7: a card that states its capabilities says whether it takes
  // extended Lc/Le; one that does not state them is tried, and a refusal turns it off.
  const std::optional<AtrInfo> info = parse_atr(m_atr);
  if (info && info->extended_length && !*info->extended_length) return false;
  // The reader's own limit where its driver names one (CCID does, vpcd does not).
  DWORD max_in = 0, len = sizeof max_in;
  if (SCardGetAttrib(m_impl->link->card, SCARD_ATTR_MAXINPUT, reinterpret_cast<BYTE*>(&max_in), &len) == SCARD_S_SUCCESS &&
      len == sizeof max_in && max_in > 0 && max_in < 5 + 3 + 256)
    return false;
  return true;
}

SecureBytes PcscChannel::transmit_raw(const SecureBytes& apdu, Deadline deadline, bool& sent_extended) {
  Impl& m = *m_impl;
  Link& l = *m.link;
  if (!l.connected) throw IoError(ErrorCode::PcscCardRemoved, "card in reader " + m_reader + " is not connected");
  const bool strip_le = l.protocol == SCARD_PROTOCOL_T0 && is_short_case4(apdu);
  sent_extended = sent_extended || is_extended(apdu);
  std::unique_lock<std::mutex> lock(l.mutex);
  l.send.assign(apdu.begin(), apdu.end() - (strip_le ? 1 : 0));
  l.job = true;
  l.done = false;
  l.wake.notify_all();
  // One deadline for the whole transmit(): chained parts and GET RESPONSE rounds share it.
  if (!l.wake.wait_until(lock, deadline, [&] { return l.done; })) {
    lock.unlock();
    m.abandon();
    throw LinkTimeout("card in reader " + m_reader + " did not complete " + m_exchange + " within " +
                          std::to_string(m.options.io_timeout.count()) + " ms",
                      m_exchange);
  }
  const LONG rv = l.rv;
  SecureBytes out(l.rbuf.begin(), l.rbuf.begin() + l.rlen);
  Botan::secure_scrub_memory(l.rbuf.data(), l.rlen);
  Botan::secure_scrub_memory(l.send.data(), l.send.size());
  lock.unlock();
  if (rv != SCARD_S_SUCCESS) transmit_failed(rv, is_extended(apdu));
  if (out.size() < 2) {
    // The vpcd driver hands back an empty answer when the card's link broke mid-exchange, and the
    // card may be back (powered up afresh, its session state gone) before pcscd's next poll could
    // see it leave; no genuine card answers without a status word (ISO 7816-4 section 5.1). Either
    // way this session's card is gone: a dropped link, which the journal resumes and recovery
    // retries; never a device's refusal.
    const ReaderState s = card_state_after_failure();
    close();
    if (s.gone) throw IoError(ErrorCode::PcscReaderRemoved, "reader " + m_reader + " was removed");
    if (!s.present) throw IoError(ErrorCode::PcscCardRemoved, "card pulled out of reader " + m_reader);
    throw IoError(ErrorCode::PcscCardRemoved,
                  "card in reader " + m_reader + " answered without a status word: its link broke (pulled out?)");
  }
  return out;
}

void PcscChannel::transmit_failed(long rv, bool extended) {
  // The vpcd and CCID drivers report a card pulled out mid-exchange as a failed transfer; pcscd
  // sees the card gone at its next poll (vpcd: 400 ms). Ask it, briefly, before naming the cause.
  const bool transfer = rv == SCARD_E_NOT_TRANSACTED || rv == SCARD_F_COMM_ERROR || rv == SCARD_E_INSUFFICIENT_BUFFER;
  if (transfer) {
    const ReaderState s = card_state_after_failure();
    close();
    if (s.gone) throw IoError(ErrorCode::PcscReaderRemoved, "reader " + m_reader + " was removed");
    if (!s.present) throw IoError(ErrorCode::PcscCardRemoved, "card pulled out of reader " + m_reader);
    if (extended)
      throw IoError(ErrorCode::ExtendedLengthRefused,
                    "card or reader " + m_reader + " does not take extended-length APDUs (" + scard_text(rv) + ")");
  }
  close();
  fail(rv, "SCardTransmit", m_reader);
}

ReaderState PcscChannel::card_state_after_failure() {
  const std::vector<std::string> one{m_reader};
  if (!m_impl->link->ctx) return gone_state(m_reader);
  try {
    Context& ctx = *m_impl->link->ctx;
    std::vector<ReaderState> s = ctx.states(one);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
    // Wait for the event counter or the presence to move; a card still there after that stays.
    while (s[0].present && !s[0].gone && std::chrono::steady_clock::now() < deadline) {
      const auto before = s[0];
      s = ctx.wait(one, s, std::chrono::milliseconds(250));
      if (s[0].event_count != before.event_count) {
        ReaderState r = s[0];
        r.present = false;  // pulled (and maybe put back): this session's card is gone either way
        return r;
      }
    }
    return s[0];
  } catch (const Error&) {
    return gone_state(m_reader);
  }
}

ResponseApdu PcscChannel::transmit(const CommandApdu& command, std::size_t max_response) {
  Impl& m = *m_impl;
  // Short APDUs once extended length is off: Ne up to 256 a round (the rest comes by 61XX), data in
  // chained parts. A command with `extended` set is sent as it is: its caller forces the extended
  // form (the station's probe, docs/readers.md) and learns the answer.
  const CommandApdu* c = &command;
  CommandApdu shortened;
  std::size_t chunk = m.options.max_chunk;
  if (!m.extended && !command.extended) {
    shortened = command;
    if (shortened.le && *shortened.le > 256) shortened.le = 256;
    chunk = std::min<std::size_t>(chunk, 255);
    c = &shortened;
  }
  struct Scope {
    std::string& exchange;
    ~Scope() { exchange.clear(); }
  } scope{m_exchange};
  m_exchange = "APDU " + command_header(command);
  const Deadline deadline = std::chrono::steady_clock::now() + m.options.io_timeout;
  bool sent_extended = false;
  ResponseApdu r;
  try {
    r = transceive([&](const SecureBytes& apdu) { return transmit_raw(apdu, deadline, sent_extended); }, *c, chunk,
                   max_response);
  } catch (const FormatError&) {
    close();  // the same rule as DeviceLink: a card that broke the dialect is not asked again
    throw;
  }
  // ISO 7816-4 section 5.6: 6700 to an extended APDU is a card that does not take extended length.
  if (sent_extended && r.sw == sw::wrong_length)
    throw IoError(ErrorCode::ExtendedLengthRefused,
                  "card in reader " + m_reader + " refused an extended-length APDU (6700): use short APDUs");
  return r;
}

}  // namespace keyline::core::pcsc
