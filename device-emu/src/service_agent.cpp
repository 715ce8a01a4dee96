#include "keyline/device/service_agent.h"

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/JSON/Stringifier.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include "keyline/core/applet_protocol.h"
#include "keyline/core/data_package.h"
#include "keyline/core/flash_image.h"
#include "keyline/core/hpke.h"
#include "keyline/core/http.h"
#include "keyline/core/scp03_session.h"

namespace keyline::device {

namespace {

constexpr std::size_t kMaxCommands = 1024;  // per batch; a 64 KiB body holds fewer
constexpr std::size_t kMaxBody = 64 * 1024;
constexpr const char* kJson = "application/json";

// Runs one command; a 61XX answer is fetched whole with GET RESPONSE (ISO 7816-4 section 5.6).
core::ResponseApdu run_one(Session& session, const core::SecureBytes& command) {
  core::ResponseApdu r = core::decode_response(session.process(command.data(), command.size()));
  core::SecureBytes data = r.data;
  for (int guard = 0; r.sw1() == 0x61 && guard < 512; ++guard) {
    const std::uint8_t get_response[] = {0x00, 0xC0, 0x00, 0x00, r.sw2()};
    r = core::decode_response(session.process(get_response, sizeof get_response));
    data.insert(data.end(), r.data.begin(), r.data.end());
  }
  r.data = std::move(data);
  return r;
}

Poco::JSON::Object::Ptr parse_object(const std::string& body) {
  try {
    Poco::JSON::Parser p;
    return p.parse(body).extract<Poco::JSON::Object::Ptr>();
  } catch (const std::exception&) {
    throw core::Error(core::ErrorCode::Http, "the service answered a body that is not a JSON object");
  }
}

// A status other than `want` becomes Error(Http) with the problem document's detail.
Poco::JSON::Object::Ptr expect(const core::http::Response& r, int want, const std::string& what) {
  if (r.status != want) {
    std::string detail;
    try {
      detail = parse_object(r.body)->optValue<std::string>("detail", "");
    } catch (const core::Error&) {
    }
    throw core::Error(core::ErrorCode::Http,
                      what + ": HTTP " + std::to_string(r.status) + (detail.empty() ? "" : ": " + detail));
  }
  return parse_object(r.body);
}

std::vector<std::string> commands_of(const Poco::JSON::Object::Ptr& o) {
  const auto arr = o->getArray("commands");
  if (!arr || arr->size() > kMaxCommands)
    throw core::Error(core::ErrorCode::Http, "the service sent no command list");
  std::vector<std::string> out;
  for (std::size_t i = 0; i < arr->size(); ++i) {
    const auto v = arr->get(static_cast<unsigned>(i));
    if (!v.isString()) throw core::Error(core::ErrorCode::Http, "a command is not a hex string");
    out.push_back(v.extract<std::string>());
  }
  return out;
}

std::string responses_body(const std::vector<std::string>& answers) {
  std::string body = "{\"responses\":[";
  for (std::size_t i = 0; i < answers.size(); ++i) body += (i ? ",\"" : "\"") + answers[i] + "\"";
  return body + "]}";
}

std::string stringify(const Poco::Dynamic::Var& v) {
  std::ostringstream o;
  Poco::JSON::Stringifier::stringify(v, o);
  return o.str();
}

// What the agent lets the network reach (docs/service.md "The device side"): SELECT of the applet,
// INITIALIZE UPDATE, and commands under secure messaging (CLA bit 04: EXTERNAL AUTHENTICATE and the
// wrapped ones). Plain personalization, recovery or reset commands from the network never reach the
// applet: the service channel is the only thing this link is for.
bool allowed(const core::Bytes& raw) {
  core::CommandApdu c;
  try {
    c = core::decode_command(raw);
  } catch (const core::FormatError&) {
    return true;  // the applet answers a malformed APDU with its own status word
  }
  if (c.cla & 0x04) return true;
  if (c.cla == 0x80 && c.ins == core::scp::kInsInitializeUpdate) return true;
  const core::CommandApdu select = core::applet::select_command();
  return c.cla == select.cla && c.ins == select.ins && c.p1 == select.p1 && c.p2 == select.p2 &&
         c.data == select.data;
}

}  // namespace

std::vector<std::string> run_batch(Session& session, const std::vector<std::string>& commands) {
  std::vector<std::string> out;
  for (const auto& hex : commands) {
    const core::Bytes raw = core::from_hex(hex);
    if (!allowed(raw)) {
      out.push_back("6982");
      break;
    }
    const auto r = run_one(session, core::SecureBytes(raw.begin(), raw.end()));
    const core::SecureBytes wire = core::encode_response(r);
    out.push_back(core::to_hex(wire.data(), wire.size()));
    if (r.sw != core::sw::ok) break;
  }
  return out;
}

std::string run_service_session(const ServiceAgentConfig& config) {
  Device device(Chip::load(config.dir), DeviceOptions{});
  Session session(device);
  core::http::ClientOptions o;
  o.base_url = config.url;
  o.ca_file = config.ca;
  o.max_body = kMaxBody;
  core::http::Client client(o);
  const std::string chip = device.chip().chip_id().str();
  auto answer = expect(client.post("/v1/device/sessions", "{\"chip_id\":\"" + chip + "\"}", kJson), 201,
                       "open session");
  const std::string id = answer->optValue<std::string>("session", "");
  if (id.empty() || id.size() > 128 || id.find_first_of("/?#% ") != std::string::npos)
    throw core::Error(core::ErrorCode::Http, "the service named no usable session id");
  for (int round = 0; round < config.max_rounds; ++round) {
    const auto answers = run_batch(session, commands_of(answer));
    answer =
        expect(client.post("/v1/device/sessions/" + id, responses_body(answers), kJson), 200, "session step");
    if (answer->optValue<bool>("done", false)) {
      if (!answer->has("result"))
        throw core::Error(core::ErrorCode::Http, "a finished session without its result");
      return stringify(answer->get("result"));
    }
  }
  throw core::Error(core::ErrorCode::Http,
                    "the session did not finish within " + std::to_string(config.max_rounds) + " rounds");
}

core::SecureBytes open_message(const std::string& dir, const core::Bytes& sealed) {
  const auto chip = Chip::load(dir);
  const auto image = read_bytes(chip.paths().image());
  if (!image) throw core::Error(error::FlashEmpty, "flash is empty: the device is not personalized");
  chip.verify_image(*image);
  const auto flash = core::FlashImage::decode(*image);
  const auto pkg = core::DataPackage::decode(chip.open(flash.backup));
  const std::string info = kMessageInfo, imei = pkg.imei.str();
  return core::hpke::open(pkg.transport_key, core::Bytes(info.begin(), info.end()),
                          core::Bytes(imei.begin(), imei.end()), sealed);
}

int cmd_service_agent(const ServiceAgentConfig& config) {
  const std::string result = run_service_session(config);
  std::cout << result << "\n";
  return parse_object(result)->optValue<bool>("ok", false) ? core::exit_code::ok : core::exit_code::refused;
}

int cmd_service_open(const std::string& dir, const std::string& in, const std::string& out) {
  const auto sealed = read_bytes(in, 1 << 20);
  if (!sealed) throw core::IoError(core::ErrorCode::Io, "cannot read " + in);
  const core::SecureBytes plain = open_message(dir, *sealed);
  write_atomic(out, plain.data(), plain.size(), std::nullopt, 0600, true);
  std::cout << "opened " << plain.size() << " bytes into " << out << "\n";
  return core::exit_code::ok;
}

}  // namespace keyline::device
