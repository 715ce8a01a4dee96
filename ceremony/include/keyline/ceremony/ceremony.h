// keyline-ceremony's commands (docs/ceremony.md). The root token is opened here and nowhere else.
#pragma once

#include <functional>
#include <ostream>
#include <string>
#include <vector>

namespace keyline::ceremony {

// Where the ceremony's state lives and how the root token is reached. The PIN comes from pin_file, else
// KEYLINE_ROOT_PIN_FILE (main) / KEYLINE_ROOT_PIN, never from argv.
struct CeremonyOptions {
  std::string dir;                    // ceremony directory: root.pem, ceremony.log, issued/
  std::string hsm_module;             // PKCS#11 module of the root token
  std::string token_label = "keyline-root";
  std::string pin_file;
};

struct RootRequest {
  std::string common_name;
  std::string organization;
  long days = 0;
};

struct SignRequest {
  std::string csr_file;
  std::string profile;
  long days = 0;  // 0: the profile's default
  std::string out_file;
};

// The file names inside the ceremony directory.
std::string root_cert_path(const std::string& dir);
std::string log_path(const std::string& dir);

// init-root: the root key pair on the token (P-256, sensitive, never extractable, sign only) and the
// self-signed root certificate in dir/root.pem. Refuses (errc::RootExists) when any part of a root exists.
int init_root(const CeremonyOptions& opt, const RootRequest& req, std::ostream& out);
// sign: one certificate from one CSR under one profile, written to out_file and dir/issued/<serial>.pem.
int sign(const CeremonyOptions& opt, const SignRequest& req, std::ostream& out);
// log verify: every line against the root certificate; `head` (optional) is the SHA-256 of the last line
// as written down at the end of the previous ceremony, which also catches lines cut off at the end.
int log_verify(const std::string& log_file, const std::string& root_cert, const std::string& head, std::ostream& out);
int log_show(const std::string& log_file, std::ostream& out);
// log import: each station custody statement (statement.h) appended as an "import" intent line (its
// SHA-256) and an outcome line (imported: the statement's members; refused: why). A statement whose id
// the log already holds as imported is refused (a replay). Stops at the first one refused.
int import_statements(const CeremonyOptions& opt, const std::vector<std::string>& files, std::ostream& out);

// The one catch at the boundary: prints "keyline-ceremony: error <code>: <reason>", returns the exit code.
int run_guarded(const std::function<int()>& body) noexcept;

}  // namespace keyline::ceremony
