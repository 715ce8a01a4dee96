// `keyline-service module sign` and `module keygen` (docs/service.md "Modules"): the code-signing key
// is made on the token and stays there.
#include <fstream>
#include <ostream>

#include "keyline/core/bytes.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/error.h"
#include "keyline/core/service_module.h"
#include "keyline/service/errors.h"
#include "keyline/service/service.h"
#include "token.h"

namespace keyline::service {

using core::Bytes;

void module_sign(const TokenConfig& token_config, const ModuleSignRequest& request, std::ostream& out) {
  std::ifstream in(request.in, std::ios::binary);
  if (!in) throw core::ConfigError(core::ErrorCode::Config, "cannot read --in " + request.in);
  core::service::Module m;
  m.name = request.name;
  m.version = request.version;
  m.body.assign(std::istreambuf_iterator<char>(in), {});
  const auto certs = core::load_certificates_pem(request.certificate);
  if (certs.empty()) throw core::ConfigError(core::ErrorCode::Config, "--cert holds no certificate");
  m.certificate = certs.front().BER_encode();
  const Bytes digest = core::service::module_digest(m.name, m.version, m.body);  // checks name and size
  auto token = open_token(token_config);
  m.signature =
      token->sign_digest_raw(token->find_private_key(request.key_label), digest.data(), digest.size());
  const Bytes encoded = core::service::encode_module(m);
  std::ofstream o(request.out, std::ios::binary | std::ios::trunc);
  o.write(reinterpret_cast<const char*>(encoded.data()), static_cast<std::streamsize>(encoded.size()));
  if (!o) throw core::IoError(core::ErrorCode::Io, "cannot write --out " + request.out);
  out << "module " << m.name << " version " << m.version << ": " << encoded.size() << " bytes signed with "
      << request.key_label << "\n";
}

void module_keygen(const TokenConfig& token_config, const ModuleKeygenRequest& request, std::ostream& out) {
  if (request.key_label.empty()) throw core::ConfigError(core::ErrorCode::Usage, "--key-label is empty");
  Bytes id;
  try {
    id = core::from_hex(request.key_id);
  } catch (const core::Error&) {
    throw core::ConfigError(core::ErrorCode::Usage, "--key-id is not hex: " + request.key_id);
  }
  if (id.empty()) throw core::ConfigError(core::ErrorCode::Usage, "--key-id is empty");
  auto token = open_token(token_config);
  token->generate_ec_p256(request.key_label, id);
  out << "code-signing key " << request.key_label << " (id " << request.key_id << ") made on token "
      << token_config.label << ": private half sign only, public half verify only\n";
}

}  // namespace keyline::service
