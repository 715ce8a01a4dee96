// Owner accounts (docs/kps.md "Callers"): a user or an application that starts transfers between the
// devices it owns. The token is 32 random bytes shown once; the database keeps its SHA-256 only, so a
// database dump does not let anyone act as the owner.
#include <botan/base64.h>
#include <botan/hash.h>
#include <botan/hex.h>
#include <botan/system_rng.h>

#include <regex>

#include "context.h"
#include "keyline/core/cplc.h"
#include "keyline/core/secret_input.h"

namespace keyline::kps {
namespace {

constexpr const char* kPrefix = "klk_";

std::string token_hash(const std::uint8_t* data, std::size_t len) {
  auto h = Botan::HashFunction::create_or_throw("SHA-256");
  h->update(data, len);
  return Botan::hex_encode(h->final(), false);
}

core::pq::Connection connect(const Config& config) {
  if (!config.db_password_file.empty()) core::export_pgpassword(core::read_secret_file(config.db_password_file));
  return core::pq::Connection(config.db);
}

std::int64_t account_id(core::pq::Connection& conn, const std::string& name) {
  auto r = conn.exec("SELECT id FROM accounts WHERE name = $1 AND revoked_at IS NULL", {name});
  if (r.empty()) throw core::Error(errc::NoAccount, "no account named " + name);
  return r.int64(0, 0);
}

void add_devices(core::pq::Connection& conn, std::int64_t id, const std::vector<std::string>& chips) {
  for (const auto& c : chips)
    conn.exec("INSERT INTO account_devices (account_id, chip) VALUES ($1::bigint, $2) ON CONFLICT DO NOTHING",
              {id, core::ChipId::parse(c).str()});
}

}  // namespace

std::optional<std::pair<std::int64_t, std::string>> account_of_token(Context& c, const std::string& token) {
  static const std::regex re("^klk_[A-Za-z0-9_-]{43}$");
  if (!std::regex_match(token, re)) return std::nullopt;
  auto conn = c.pool->acquire();
  auto r = conn->exec_prepared("SELECT id, name FROM accounts WHERE token_sha256 = $1 AND revoked_at IS NULL",
                               {token_hash(reinterpret_cast<const std::uint8_t*>(token.data()), token.size())});
  if (r.empty()) return std::nullopt;
  return std::make_pair(r.int64(0, 0), r.text(0, 1));
}

std::vector<std::string> not_owned(core::pq::Connection& conn, std::int64_t account, const std::vector<std::string>& chips) {
  std::vector<std::string> out;
  for (const auto& chip : chips) {
    auto r = conn.exec_prepared("SELECT 1 FROM account_devices WHERE account_id = $1::bigint AND chip = $2", {account, chip});
    if (r.empty()) out.push_back(chip);
  }
  return out;
}

core::SecureBytes account_add(const Config& config, const std::string& name, const std::vector<std::string>& chips) {
  static const std::regex re("^[A-Za-z0-9._@-]{1,64}$");
  if (!std::regex_match(name, re)) throw core::FormatError(core::ErrorCode::Config, "an account name is 1-64 of A-Z a-z 0-9 . _ @ -");
  std::uint8_t raw[32];
  Botan::system_rng().randomize(raw, sizeof raw);
  std::string b64 = Botan::base64_encode(raw, sizeof raw);  // 44 characters, one '=' of padding
  Botan::secure_scrub_memory(raw, sizeof raw);
  core::SecureBytes token(kPrefix, kPrefix + 4);
  for (char ch : b64) {
    if (ch == '=') continue;
    token.push_back(static_cast<std::uint8_t>(ch == '+' ? '-' : ch == '/' ? '_' : ch));  // base64url (RFC 4648 §5)
  }
  Botan::secure_scrub_memory(b64.data(), b64.size());
  auto conn = connect(config);
  core::pq::Transaction tx(conn);
  auto r = tx.exec("INSERT INTO accounts (name, token_sha256) VALUES ($1, $2) RETURNING id",
                   {name, token_hash(token.data(), token.size())});
  add_devices(conn, r.int64(0, 0), chips);
  tx.commit();
  return token;
}

void account_devices(const Config& config, const std::string& name, const std::vector<std::string>& add,
                     const std::vector<std::string>& remove) {
  auto conn = connect(config);
  const auto id = account_id(conn, name);
  add_devices(conn, id, add);
  for (const auto& c : remove)
    conn.exec("DELETE FROM account_devices WHERE account_id = $1::bigint AND chip = $2", {id, core::ChipId::parse(c).str()});
}

void account_remove(const Config& config, const std::string& name) {
  auto conn = connect(config);
  const auto id = account_id(conn, name);
  conn.exec("UPDATE accounts SET revoked_at = now() WHERE id = $1::bigint", {id});
  conn.exec("DELETE FROM account_devices WHERE account_id = $1::bigint", {id});
}

}  // namespace keyline::kps
