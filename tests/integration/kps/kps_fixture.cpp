#include "kps_fixture.h"

#include <botan/ec_group.h>
#include <botan/x509_key.h>

#include <cstdio>
#include <ctime>
#include <fstream>

#include "keyline/core/backup_package.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/device_auth.h"
#include "keyline/core/http_service.h"
#include "keyline/core/http_signature.h"
#include "keyline/core/kps_envelope.h"
#include "keyline/core/pkcs11.h"
#include "keyline/core/pq.h"
#include "client.h"
#include "testenv.h"

namespace keyline::test {
namespace {

constexpr int kDevices = 8;

std::unique_ptr<Botan::ECDSA_PrivateKey> p256(Botan::RandomNumberGenerator& rng) {
  return std::make_unique<Botan::ECDSA_PrivateKey>(rng, Botan::EC_Group("secp256r1"));
}

std::unique_ptr<Device> make_device(Pki& pki, int i) {
  auto d = std::make_unique<Device>();
  char hex[21];
  std::snprintf(hex, sizeof hex, "4B4C00%014X", 0xC0FFEE00 + i);
  d->chip = core::ChipId::parse(hex);
  d->imei = core::Imei::from_tac_serial("35693803", static_cast<std::uint32_t>(1000 + i));
  d->identity_key = p256(pki.rng);
  d->transport_key = std::make_unique<Botan::Curve25519_PrivateKey>(pki.rng);
  d->identity = core::issue_identity_certificate(pki.ca, *pki.ca_key, *d->identity_key, d->imei, d->chip,
                                                 core::kDefaultHwType, pki.rng);
  d->transport = core::issue_transport_certificate(pki.ca, *pki.ca_key, *d->transport_key, d->imei, d->chip,
                                                   core::kDefaultHwType, pki.rng);
  d->chain = {d->identity.BER_encode(), pki.ca.BER_encode()};
  d->record.chip_id = d->chip;
  d->record.imei = d->imei;
  d->record.backup = core::seal_backup(core::SecureBytes(32, 0x5A), d->chip, core::SecureBytes{1, 2, 3});
  d->record.certificates = {d->chain[0], d->chain[1], d->transport.BER_encode()};
  return d;
}

Answer to_answer(const core::http::Response& r, std::map<std::string, std::string> request_headers) {
  return {r.status, r.body, r.headers, std::move(request_headers)};
}

core::http_signature::Headers as_headers(const std::map<std::string, std::string>& m) {
  return {m.begin(), m.end()};
}

}  // namespace

Pki::Pki() : root_key(p256(rng)), ca_key(p256(rng)) {
  root = core::make_root_certificate(*root_key, "KPS Test Root", "keyline test", rng);
  ca = core::make_ca_certificate(root, *root_key, *ca_key, "KPS Test Device CA", "keyline test", 0, rng);
}

PublicDb::PublicDb() {
  core::http::ServerOptions o;
  o.name = "kps-test-pdb";
  o.listen = "127.0.0.1:0";
  m_server = std::make_unique<core::http::Server>(o, [this](const core::http::Request& req) {
    const std::string prefix = "/v1/records/";
    std::lock_guard<std::mutex> lock(m_mutex);
    const auto it = req.path.rfind(prefix, 0) == 0 ? m_records.find(req.path.substr(prefix.size())) : m_records.end();
    if (it == m_records.end())
      return core::http::Problems("https://keyline.example/problems/backupdb/")(404, "not-found", "no record");
    return core::http::json_reply(200, it->second);
  });
  m_server->start();
}

void PublicDb::put(const core::Record& r) {
  std::lock_guard<std::mutex> lock(m_mutex);
  m_records[r.chip_id.str()] = r.to_json();
}

std::string PublicDb::url() const { return "http://127.0.0.1:" + std::to_string(m_server->port()); }

World::World() {
  for (int i = 0; i < kDevices; ++i) m_devices.push_back(make_device(m_pki, i));
  m_root_file = m_tls.dir + "/root.pem";
  std::ofstream(m_root_file) << m_pki.root.PEM_encode();
  m_db = pg_env().create_database("kps");
  const auto hsm = hsm_env();
  m_pin_file = m_tls.dir + "/sign.pin";
  std::ofstream(m_pin_file) << hsm.user_pin;
  m_key_label = "kps-sign-" + std::to_string(::getpid());
  kps::SignKeySettings s{hsm.module, hsm.label, m_key_label, m_pin_file};
  const std::string pub = m_tls.dir + "/kps-sign.pub.pem";
  kps::sign_key_init(s, pub);
  m_sign_pub.reset(Botan::X509::load_key(pub));
  kps::Config c;
  c.db = m_db;
  kps::migrate(c);
}

World::~World() = default;

kps::Config World::config(const std::vector<std::string>& allow) const {
  kps::Config c;
  c.db = m_db;
  c.listen = "127.0.0.1:0";
  c.ops_listen = "127.0.0.1:0";
  c.tls_cert = m_tls.cert_file;
  c.tls_key = m_tls.key_file;
  c.trust = {m_root_file};
  c.allow = allow;
  c.log = m_tls.dir + "/kps.log";
  c.threads = 8;
  c.purge_interval_s = 1;
  c.webhook_ca = m_tls.ca_file;
  c.sign = {hsm_env().module, hsm_env().label, m_key_label, m_pin_file};
  return c;
}

Answer World::call(const Device& d, int port, const std::string& method, const std::string& path,
                   const std::string& body, const std::string& content_type,
                   std::map<std::string, std::string> headers) const {
  for (auto& [k, v] : core::device_auth::sign_request(*d.identity_key, d.chain, method, path, body,
                                                      static_cast<std::int64_t>(std::time(nullptr)), m_rng))
    headers[k] = v;
  core::http::ClientOptions o;
  o.base_url = "https://127.0.0.1:" + std::to_string(port);
  o.ca_file = m_tls.ca_file;
  o.io_timeout = std::chrono::seconds(40);
  o.connect_attempts = 1;
  core::http::Client client(o);
  const auto r = method == "GET" ? client.get(path, headers) : client.post(path, body, content_type, headers);
  return to_answer(r, headers);
}

Answer World::replay(const Answer& first, int port, const std::string& method, const std::string& path,
                     const std::string& body, const std::string& content_type) const {
  core::http::ClientOptions o;
  o.base_url = "https://127.0.0.1:" + std::to_string(port);
  o.ca_file = m_tls.ca_file;
  o.connect_attempts = 1;
  core::http::Client client(o);
  const auto r = method == "GET" ? client.get(path, first.request_headers)
                                 : client.post(path, body, content_type, first.request_headers);
  return to_answer(r, first.request_headers);
}

int World::put(const Device& d, int port, const std::string& path, const std::string& body) const {
  std::string req = "PUT " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: " +
                    std::to_string(body.size()) + "\r\n";
  for (auto& [k, v] : core::device_auth::sign_request(*d.identity_key, d.chain, "PUT", path, body,
                                                      static_cast<std::int64_t>(std::time(nullptr)), m_rng))
    req += k + ": " + v + "\r\n";
  TlsClient client(port);
  return client.exchange(req + "\r\n" + body).status;
}

Answer World::owner(int port, const std::string& token, const std::string& path, const std::string& body,
                    std::map<std::string, std::string> headers) const {
  headers["Authorization"] = "Bearer " + token;
  core::http::ClientOptions o;
  o.base_url = "https://127.0.0.1:" + std::to_string(port);
  o.ca_file = m_tls.ca_file;
  o.connect_attempts = 1;
  core::http::Client client(o);
  const auto r = body.empty() ? client.get(path, headers) : client.post(path, body, "application/json", headers);
  return to_answer(r, headers);
}

core::Bytes World::envelope(const Device& source, const Device& target, const std::string& id,
                            const std::string& label, const core::SecureBytes& key) const {
  const core::kps_envelope::Header h{id, label, source.chip, target.chip};
  const auto pub = target.transport_key->public_value();
  return core::kps_envelope::build(h, core::Bytes(pub.begin(), pub.end()), key, source.chain,
                                   core::kps_envelope::botan_identity_signer(*source.identity_key, m_rng));
}

void World::verify_answer(const Answer& a) const {
  core::http_signature::verify_kps_response(a.status, as_headers(a.headers), a.body, as_headers(a.request_headers),
                                            *m_sign_pub, core::http_signature::Algorithm::EcdsaP256Sha256,
                                            static_cast<std::int64_t>(std::time(nullptr)));
}

std::string World::sql(const std::string& query, const std::vector<std::string>& params) const {
  core::pq::Connection c(m_db);
  core::pq::Params p(params.begin(), params.end());
  auto r = c.exec(query, p);
  std::string out;
  for (int i = 0; i < r.rows(); ++i) {
    if (i) out += "\n";
    for (int j = 0; j < r.columns(); ++j) out += (j ? "|" : "") + r.text(i, j);
  }
  return out;
}

}  // namespace keyline::test
