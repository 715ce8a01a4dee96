// The integration fixture of the KPS: a manufacturer root and Device CA, devices with identity and
// transport certificates, a public DB that serves their records (the directory of transport
// certificates), KPS instances on one database, and a device's side of the API (signed requests, KLKE
// envelopes, answer-signature checks).
#pragma once

#include <botan/auto_rng.h>
#include <botan/curve25519.h>
#include <botan/ecdsa.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "keyline/core/http.h"
#include "keyline/core/http_server.h"
#include "keyline/core/record.h"
#include "keyline/kps/kps.h"
#include "tls_material.h"

namespace keyline::test {

struct Pki {
  Botan::AutoSeeded_RNG rng;
  std::unique_ptr<Botan::ECDSA_PrivateKey> root_key, ca_key;
  Botan::X509_Certificate root, ca;
  Pki();
};

struct Device {
  core::ChipId chip = core::ChipId::parse("00000000000000000000");
  core::Imei imei = core::Imei::parse("490154203237518");
  std::unique_ptr<Botan::ECDSA_PrivateKey> identity_key;
  std::unique_ptr<Botan::Curve25519_PrivateKey> transport_key;
  Botan::X509_Certificate identity, transport;
  std::vector<core::Bytes> chain;  // identity, Device CA (DER)
  core::Record record;
  std::string str() const { return chip.str(); }
};

// A device's answer, with the request headers it was made with (for the ;req check).
struct Answer {
  int status = 0;
  std::string body;
  std::map<std::string, std::string> headers;
  std::map<std::string, std::string> request_headers;
};

// The public DB: GET /v1/records/{chip} for the records put in it, 404 otherwise.
class PublicDb {
 public:
  PublicDb();
  void put(const core::Record& r);
  std::string url() const;

 private:
  std::mutex m_mutex;
  std::map<std::string, std::string> m_records;
  std::unique_ptr<core::http::Server> m_server;
};

class World {
 public:
  World();
  ~World();
  Device& device(int i) { return *m_devices.at(static_cast<std::size_t>(i)); }
  kps::Config config(const std::vector<std::string>& allow) const;
  const std::string& db() const { return m_db; }
  const TlsMaterial& tls() const { return m_tls; }
  const Botan::Public_Key& sign_key() const { return *m_sign_pub; }
  std::string dir() const { return m_tls.dir; }

  // A signed request by device d to the KPS on port; headers: extra request headers.
  Answer call(const Device& d, int port, const std::string& method, const std::string& path, const std::string& body = {},
              const std::string& content_type = {}, std::map<std::string, std::string> headers = {}) const;
  // The same request sent again byte for byte (a replay).
  Answer replay(const Answer& first, int port, const std::string& method, const std::string& path,
                const std::string& body, const std::string& content_type) const;
  // A signed PUT (the core client has GET and POST only).
  int put(const Device& d, int port, const std::string& path, const std::string& body) const;
  // An owner's request (Bearer token).
  Answer owner(int port, const std::string& token, const std::string& path, const std::string& body,
               std::map<std::string, std::string> headers = {}) const;
  // The KLKE envelope source -> target for transfer id and label, sealing key.
  core::Bytes envelope(const Device& source, const Device& target, const std::string& id, const std::string& label,
                       const core::SecureBytes& key) const;
  // Throws unless the answer carries a valid KPS signature bound to its request.
  void verify_answer(const Answer& a) const;
  std::string sql(const std::string& query, const std::vector<std::string>& params = {}) const;

 private:
  TlsMaterial m_tls;
  Pki m_pki;
  std::vector<std::unique_ptr<Device>> m_devices;
  std::string m_root_file, m_db, m_pin_file, m_key_label;
  std::unique_ptr<Botan::Public_Key> m_sign_pub;
  mutable Botan::AutoSeeded_RNG m_rng;
};

}  // namespace keyline::test
