// Custody statements: parse and check (statement.h). The station's signed-text format is read by core
// (core/signed_text.h), the same reader the station uses.
#include "keyline/ceremony/statement.h"

#include "keyline/ceremony/errors.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/error.h"

namespace keyline::ceremony {

namespace {

constexpr const char* kMagic = "keyline-custody-statement-v1";
const core::SignedTextError kBadFile{errc::StatementBadFile, "custody statement"};

[[noreturn]] void refuse(const std::string& why) {
  throw core::Error(errc::StatementRefused, "custody statement refused: " + why);
}

std::vector<Botan::X509_Certificate> trailer_chain(const CustodyStatement& st) {
  const auto it = st.trailer.find("certificate");
  if (it == st.trailer.end()) refuse("no certificate= line after the signature");
  const core::Bytes pem = core::decode_signed_text_base64(it->second, "certificate", kBadFile);
  try {
    return core::parse_certificates_pem(std::string(pem.begin(), pem.end()));
  } catch (const core::Error&) {
    refuse("its certificate does not parse");
  }
}

}  // namespace

CustodyStatement parse_statement(const std::string& text) {
  auto out = core::parse_signed_text(text, kMagic, kBadFile);
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
  if (!core::signed_text_verifies(st, leaf))
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
