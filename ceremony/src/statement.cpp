// Custody statements: parse and check (statement.h). The ceremony links no station code, so the
// station's signed-text format is read here again, as strictly as the station reads it.
#include "keyline/ceremony/statement.h"

#include <botan/base64.h>
#include <botan/pubkey.h>

#include "keyline/ceremony/errors.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/error.h"

namespace keyline::ceremony {

namespace {

constexpr const char* kMagic = "keyline-custody-statement-v1";
constexpr std::size_t kMaxText = 64 * 1024;

[[noreturn]] void bad(const std::string& why) {
  throw core::FormatError(errc::StatementBadFile, "custody statement: " + why);
}
[[noreturn]] void refuse(const std::string& why) {
  throw core::Error(errc::StatementRefused, "custody statement refused: " + why);
}

bool good_name(const std::string& n) {
  if (n.empty() || n.size() > 32) return false;
  for (const char c : n)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
  return true;
}

bool good_value(const std::string& v) {
  for (const char c : v)
    if (c < 0x20 || c > 0x7E) return false;
  return true;
}

core::Bytes base64(const std::string& text, const char* what) {
  try {
    const auto b = Botan::base64_decode(text, false);
    return core::Bytes(b.begin(), b.end());
  } catch (const Botan::Exception&) {
    bad(std::string(what) + " is not base64");
  }
}

std::vector<Botan::X509_Certificate> trailer_chain(const CustodyStatement& st) {
  const auto it = st.trailer.find("certificate");
  if (it == st.trailer.end()) refuse("no certificate= line after the signature");
  const core::Bytes pem = base64(it->second, "certificate");
  try {
    return core::parse_certificates_pem(std::string(pem.begin(), pem.end()));
  } catch (const core::Error&) {
    refuse("its certificate does not parse");
  }
}

}  // namespace

const std::string& CustodyStatement::field(const std::string& name) const {
  const auto it = fields.find(name);
  if (it == fields.end()) bad("no " + name + "= line in the signed part");
  return it->second;
}

CustodyStatement parse_statement(const std::string& text) {
  const std::string magic = kMagic;
  if (text.size() > kMaxText) bad("larger than 64 KiB");
  if (text.empty() || text.back() != '\n') bad("does not end with a newline");
  if (text.compare(0, magic.size() + 1, magic + "\n") != 0) bad("does not start with '" + magic + "'");
  CustodyStatement out;
  bool signature_seen = false;
  for (std::size_t at = magic.size() + 1; at < text.size();) {
    const std::size_t end = text.find('\n', at);
    const std::string line = text.substr(at, end - at);
    const std::size_t eq = line.find('=');
    if (eq == std::string::npos) bad("a line without '='");
    const std::string name = line.substr(0, eq), value = line.substr(eq + 1);
    if (!good_name(name)) bad("a name that is not [a-z0-9_]{1,32}");
    if (!good_value(value)) bad("the value of " + name + " is not printable ASCII");
    if (!signature_seen && name == "signature") {
      out.signed_part = text.substr(0, at);
      out.signature = base64(value, "signature");
      signature_seen = true;
    } else {
      auto& into = signature_seen ? out.trailer : out.fields;
      if (!into.emplace(name, value).second) bad(name + " given twice");
    }
    at = end + 1;
  }
  if (!signature_seen) bad("no signature= line");
  for (const auto& m : statement_members()) out.field(m);
  return out;
}

Botan::X509_Certificate check_statement(const CustodyStatement& st, const Botan::X509_Certificate& root) {
  const auto chain = trailer_chain(st);
  if (chain.empty()) refuse("its certificate= holds no certificate");
  const auto& leaf = chain.front();
  try {
    core::verify_chain(leaf, std::vector<Botan::X509_Certificate>(chain.begin() + 1, chain.end()), {root});
  } catch (const core::Error&) {
    refuse("its station certificate (" + leaf.subject_dn().to_string() + ") does not chain to this ceremony's root");
  }
  std::string id;
  try {
    core::lint_station_certificate(leaf);
    id = core::read_station_id(leaf);
  } catch (const core::Error& e) {
    refuse(std::string("its certificate is not of the station profile: ") + e.what());
  }
  if (id != st.field("station_id"))
    refuse("signed by station '" + id + "', the statement says '" + st.field("station_id") + "'");
  const auto key = leaf.subject_public_key();
  Botan::PK_Verifier verifier(*key, "EMSA1(SHA-256)", Botan::DER_SEQUENCE);
  const auto* p = reinterpret_cast<const std::uint8_t*>(st.signed_part.data());
  if (!verifier.verify_message(p, st.signed_part.size(), st.signature.data(), st.signature.size()))
    refuse("the signature does not verify under station '" + id + "' (a changed byte, or another signer)");
  return leaf;
}

const std::vector<std::string>& statement_members() {
  static const std::vector<std::string> m = {"id",     "station_id", "token_label", "token_serial", "event",
                                             "detail", "begin",      "audit_begin", "result",       "outcome",
                                             "end",    "audit_end"};
  return m;
}

}  // namespace keyline::ceremony
