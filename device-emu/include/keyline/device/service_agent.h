// keyline-device service-agent (docs/service.md "The device side"): the device calls out to
// keyline-service over HTTPS, runs each batch of C-APDUs against its own applet in process (the same
// Session `serve` answers with) and posts the answers back, the shape of GlobalPlatform Amendment B
// (RAM over HTTP). `service-agent open` opens a message a third party sealed to the device's
// transport key (HPKE, core/hpke.h).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "keyline/core/bytes.h"
#include "keyline/core/hpke.h"
#include "keyline/device/applet.h"

namespace keyline::device {

struct ServiceAgentConfig {
  std::string dir;      // device directory
  std::string url;      // https://HOST:PORT of keyline-service
  std::string ca;       // PEM of the CA that issued the server's TLS certificate
  int max_rounds = 16;  // batches per session before the agent gives up
};

// Runs each hex C-APDU in order and returns the hex answers (data || SW, upper case). Stops after the
// first answer whose SW is not 9000; a 61XX is fetched whole with GET RESPONSE first. Only SELECT of
// the applet, INITIALIZE UPDATE and commands with CLA bit 04 reach the applet; any other plain
// command is answered 6982 by the agent and ends the batch. Throws
// FormatError(BadHex / BadApdu) for a command that is not hex or not an APDU.
std::vector<std::string> run_batch(Session& session, const std::vector<std::string>& commands);

// One whole session against the service. Returns the "result" object of the last answer (JSON
// text). Throws Error(Http) for a refusal (problem document's detail), IoError(Network) when the
// service cannot be reached.
std::string run_service_session(const ServiceAgentConfig& config);

// The message's HPKE parameters (docs/service.md "Messages from a third party").
constexpr const char* kMessageInfo = core::hpke::kServiceMessageInfo;
// Opens `sealed` (enc || ciphertext) with the device's transport key; the AAD is the device's IMEI
// (15 ASCII digits). Throws CryptoError(Crypto) for a message sealed to another device or changed.
core::SecureBytes open_message(const std::string& dir, const core::Bytes& sealed);

int cmd_service_agent(const ServiceAgentConfig& config);
int cmd_service_open(const std::string& dir, const std::string& in, const std::string& out);

}  // namespace keyline::device
