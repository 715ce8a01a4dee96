// keyline-ceremony: options only; the work is in keyline_ceremony (ceremony/src).
#include <iostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "keyline/ceremony/ceremony.h"
#include "keyline/ceremony/sandbox.h"
#include "keyline/core/config_file.h"
#include "keyline/core/log_format.h"
#include "keyline/core/error.h"

namespace {

const char* const kHelp =
    "keyline-ceremony: the offline root of keyline's PKI. It runs on a host without network (it installs a\n"
    "filter at start that makes every network socket fail) with the ROOT token, a PKCS#11 token no station\n"
    "ever opens. See docs/ceremony.md.\n\n"
    "A ceremony, step by step (two security officers present, one holding the root token's PIN):\n"
    "  1. keyline-ceremony --dir D init-root --subject-cn 'Manufacturer Root' --organization ACME --days 7300\n"
    "     once: the root key on the token (P-256, never extractable, sign only) and D/root.pem.\n"
    "  2. keyline-ceremony --dir D log verify --log D/ceremony.log --root D/root.pem [--head HASH]\n"
    "     at the start of every later ceremony, with the head written down at the end of the last one.\n"
    "  3. keyline-ceremony --dir D sign --csr station-a-device-ca.csr --profile device-ca --out device-ca.pem\n"
    "     for each CSR a station's `keys init` wrote (profiles: device-ca, service-ca, station, code-signing).\n"
    "  4. Write down the log head printed last; carry the certificates (never the token) to the stations.\n\n"
    "Every operation appends a signed line to D/ceremony.log before (intent) and after (outcome).\n"
    "Settings: --dir or KEYLINE_CEREMONY_DIR, --hsm-module or KEYLINE_ROOT_HSM_MODULE, --token or\n"
    "KEYLINE_ROOT_TOKEN (default keyline-root), the PIN from --pin-file, KEYLINE_ROOT_PIN_FILE or\n"
    "KEYLINE_ROOT_PIN, never from a flag. The names differ from the station's KEYLINE_HSM_* on purpose: a\n"
    "station's environment never points the ceremony at a station token, nor the station at the root.\n\n"
    "Exit codes: 0 ok, 1 failure, 2 usage, 3 bad input (a CSR that does not verify, a log that does not\n"
    "verify), 5 refused (a root exists already, a CSR the profile refuses), 6 HSM problem.";

}  // namespace

int main(int argc, char** argv) {
  using namespace keyline::ceremony;
  CLI::App app{kHelp, "keyline-ceremony"};
  app.require_subcommand(1);
  keyline::core::config::set_strict_config(app);
  CeremonyOptions opt;
  std::string log_format = "text";
  app.add_option("--log-format", log_format, "stderr log lines: text, or json (one JSON object per line; "
                                              "docs/operations.md, \"Logs\")")
      ->envname("KEYLINE_LOG_FORMAT")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  app.add_option("--dir", opt.dir, "ceremony directory (root.pem, ceremony.log, issued/)")->envname("KEYLINE_CEREMONY_DIR");
  app.add_option("--hsm-module", opt.hsm_module, "PKCS#11 module of the root token")->envname("KEYLINE_ROOT_HSM_MODULE");
  app.add_option("--token", opt.token_label, "root token label")->envname("KEYLINE_ROOT_TOKEN")->capture_default_str();
  app.add_option("--pin-file", opt.pin_file, "file holding the root token's user PIN")->envname("KEYLINE_ROOT_PIN_FILE");

  RootRequest root;
  auto* init = app.add_subcommand("init-root", "make the root key on the token and the self-signed root certificate");
  init->add_option("--subject-cn", root.common_name, "root subject CN")->required();
  init->add_option("--organization", root.organization, "root subject O");
  init->add_option("--days", root.days, "validity in days")->required();

  SignRequest req;
  auto* sign_cmd = app.add_subcommand("sign", "sign one CSR under one profile");
  sign_cmd->add_option("--csr", req.csr_file, "the CSR (PEM or DER)")->required();
  sign_cmd->add_option("--profile", req.profile, "device-ca | service-ca | station | code-signing")->required();
  sign_cmd->add_option("--days", req.days, "validity in days (default: device-ca/service-ca 3650, station 730, code-signing 365)");
  sign_cmd->add_option("--out", req.out_file, "where the certificate (PEM) goes; must not exist")->required();

  std::string log_file, root_cert, head;
  auto* log_cmd = app.add_subcommand("log", "the ceremony log");
  log_cmd->require_subcommand(1);
  auto* verify = log_cmd->add_subcommand("verify", "check every line's signature, sequence and chain");
  verify->add_option("--log", log_file, "the log (default: DIR/ceremony.log)");
  verify->add_option("--root", root_cert, "the root certificate (default: DIR/root.pem)");
  verify->add_option("--head", head, "SHA-256 of the last line as written down after the last ceremony");
  auto* show = log_cmd->add_subcommand("show", "print the log readably");
  show->add_option("--log", log_file, "the log (default: DIR/ceremony.log)");
  std::vector<std::string> statements;
  auto* import = log_cmd->add_subcommand("import", "append stations' custody statements (keys roll, mirror, export, "
                                                   "import, a line's failover: <pki-dir>/custody/*.stmt), each checked "
                                                   "against the root: chain, station profile, signature, no replay");
  import->add_option("--statement", statements, "a custody statement file (repeat for several, oldest first)")->required();

  try {
    keyline::core::config::refuse_secret_flags(argc, argv);
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : keyline::core::exit_code::usage;
  }
  keyline::core::log::use_format(keyline::core::log::parse_format(log_format), "keyline-ceremony");
  return run_guarded([&]() -> int {
    forbid_network();  // before the token, the files or anything else is touched
    if (opt.dir.empty() && (*init || *sign_cmd || *import || log_file.empty() || (*verify && root_cert.empty())))
      throw keyline::core::ConfigError(keyline::core::ErrorCode::Usage, "--dir (or KEYLINE_CEREMONY_DIR) is required");
    if (log_file.empty()) log_file = log_path(opt.dir);
    if (root_cert.empty()) root_cert = root_cert_path(opt.dir);
    if (*init) return init_root(opt, root, std::cout);
    if (*sign_cmd) return sign(opt, req, std::cout);
    if (*verify) return log_verify(log_file, root_cert, head, std::cout);
    if (*import) return import_statements(opt, statements, std::cout);
    return log_show(log_file, std::cout);
  });
}
