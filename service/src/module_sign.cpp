// `keyline-service module sign` (docs/service.md "Modules"): the code-signing key stays on the token.
#include <fstream>
#include <ostream>

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

}  // namespace keyline::service
