// Custody statements (docs/ceremony.md "Custody statements"): the ceremony log is the root's, signed on
// the offline root token, so a station cannot append to it. Each custody operation instead leaves a
// statement signed by the station's token in <pki_dir>/custody/, and `keyline-ceremony log import`
// verifies it and appends it at the next ceremony.
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>

#include <botan/base64.h>
#include <botan/hex.h>
#include <botan/system_rng.h>

#include "keyline/core/error.h"
#include "keyline/core/log_format.h"
#include "keys_custody_internal.h"
#include "keys_internal.h"
#include "keyline/station/keys.h"

namespace keyline::station::custody {

namespace {

constexpr const char* kMagic = "keyline-custody-statement-v1";
constexpr std::size_t kMaxValue = 1000;

// The signed text's values are printable ASCII (parse_signed_text): anything else becomes '?'.
std::string printable(const std::string& v) {
  std::string out = v.substr(0, kMaxValue);
  for (char& c : out)
    if (c < 0x20 || c > 0x7E) c = '?';
  return out;
}

std::string file_safe(const std::string& v) {
  std::string out = v;
  for (char& c : out)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-') c = '-';
  return out;
}

}  // namespace

std::string utc_now_text() {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string statement_text(core::Pkcs11Token& token, const StationConfig& config, const Statement& st,
                           const std::string& id) {
  std::string text = std::string(kMagic) + "\n";
  const auto put = [&text](const char* name, const std::string& value) { text += std::string(name) + "=" + printable(value) + "\n"; };
  put("id", id);
  put("station_id", config.station_id);
  put("token_label", config.token_label);
  put("token_serial", token.serial());
  put("event", st.event);
  put("detail", st.detail);
  put("begin", st.begin);
  put("audit_begin", std::to_string(st.audit_begin));
  put("result", st.result);
  put("outcome", st.outcome);
  put("end", st.end);
  put("audit_end", std::to_string(st.audit_end));
  text += signature_line(token, config, text);
  std::string chain;
  for (const auto& c : own_station_chain(config)) chain += c.PEM_encode();
  text += "certificate=" + Botan::base64_encode(reinterpret_cast<const std::uint8_t*>(chain.data()), chain.size()) + "\n";
  return text;
}

void write_statement(const StationConfig& config, const Statement& st) {
  try {
    const auto token = open_token(config);
    const auto rnd = Botan::system_rng().random_vec(8);
    const std::string id = Botan::hex_encode(rnd.data(), rnd.size(), false);
    const std::string text = statement_text(*token, config, st, id);
    std::error_code ec;
    std::filesystem::create_directories(config.pki_dir + "/custody", ec);
    std::filesystem::permissions(config.pki_dir + "/custody", std::filesystem::perms::owner_all, ec);
    std::string stamp = st.end;
    stamp.erase(std::remove_if(stamp.begin(), stamp.end(), [](char c) { return c == '-' || c == ':'; }), stamp.end());
    pki_detail::write_public(config, "custody/" + stamp + "-" + file_safe(st.event) + "-" + id + ".stmt", text);
  } catch (const std::exception& e) {
    const std::string l = "keyline-station: the custody statement of " + st.event + " (audit rows " +
                          std::to_string(st.audit_begin) + ".." + std::to_string(st.audit_end) +
                          ") could not be written: " + e.what();
    core::log::say(l);
  }
}

}  // namespace keyline::station::custody
