// Which device a restore talks to: `--device HOST:PORT` or `--reader NAME` (docs/recovery.md,
// "Through a PC/SC reader"). The reader is resolved once, before the public DB is asked, so that a
// wrong name or a stopped pcscd is said before anything else happens.
#include <ostream>
#include <string>
#include <vector>

#include "keyline/core/device_channel.h"
#include "keyline/core/error.h"
#include "keyline/core/pcsc.h"
#include "keyline/recovery/recovery.h"

namespace keyline::recovery {

namespace {

std::string joined(const std::vector<std::string>& names) {
  if (names.empty()) return "none";
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "\"" : ", \"") + n + "\"";
  return out;
}

// The one reader `pattern` matches now. Several matches are the owner's flag being too loose (a
// restore writes one device), so they are a usage error naming each, never a guess.
std::string resolve_reader(core::pcsc::Context& ctx, const std::string& pattern) {
  const auto all = ctx.readers();
  const auto matched = core::pcsc::match_readers(all, {pattern});
  if (matched.empty())
    throw core::IoError(core::ErrorCode::PcscNoReader,
                        "no PC/SC reader matches \"" + pattern + "\" (readers: " + joined(all) + ")");
  if (matched.size() > 1)
    throw core::ConfigError(core::ErrorCode::Usage, "--reader \"" + pattern + "\" matches " +
                                                        std::to_string(matched.size()) + " readers (" + joined(matched) +
                                                        "): give a name that matches exactly one");
  return matched.front();
}

// Returns once a card that answered with an ATR is in `reader`; a reader without one is waited for,
// bounded by `limit`, and the owner is told so.
void wait_for_card(core::pcsc::Context& ctx, const std::string& reader, std::chrono::milliseconds limit,
                   std::ostream* progress) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + limit;
  auto states = ctx.states({reader});
  bool said = false;
  for (;;) {
    const auto& s = states.front();
    if (s.gone) throw core::IoError(core::ErrorCode::PcscReaderRemoved, "the PC/SC reader \"" + reader + "\" went away");
    if (s.present && s.mute)
      throw core::IoError(core::ErrorCode::PcscCardMute,
                          "the card in reader \"" + reader + "\" does not answer (no ATR): take it out and put it in again");
    if (s.present) return;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0)
      throw core::IoError(core::ErrorCode::PcscCardMute, "no card in reader \"" + reader + "\" after " +
                                                             std::to_string(limit.count() / 1000) + " s: put the device in");
    if (!said && progress)
      *progress << "keyline-recovery: no card in reader \"" << reader << "\": waiting up to " << limit.count() / 1000
                << " s for one" << std::endl;
    said = true;
    states = ctx.wait({reader}, states, left);
  }
}

}  // namespace

void check_device_choice(const RestoreOptions& options) {
  if (options.device.empty() == options.reader.empty())
    throw core::ConfigError(core::ErrorCode::Usage,
                            "give exactly one of --device HOST:PORT or --reader NAME (the device to restore)");
  if (options.device.rfind(core::kPcscScheme, 0) == 0)
    throw core::ConfigError(core::ErrorCode::Usage, "--device takes HOST:PORT; a PC/SC reader goes in --reader NAME");
}

std::string device_address(const RestoreOptions& options, std::ostream* progress) {
  check_device_choice(options);
  if (!options.device.empty()) return options.device;
  core::pcsc::Context ctx;
  const std::string reader = resolve_reader(ctx, options.reader);
  wait_for_card(ctx, reader, options.card_wait, progress);
  return core::kPcscScheme + reader;
}

}  // namespace keyline::recovery
