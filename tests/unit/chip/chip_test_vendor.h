// A throwaway chip vendor for the chip identity tests: its CA and, per chip, the SD and attestation
// keys with their certificates, made with core's own issuing functions (core/chip_identity.h).
#pragma once

#include <botan/auto_rng.h>
#include <botan/ecdsa.h>
#include <botan/x509cert.h>

#include <memory>
#include <string>

#include "keyline/core/cert_profile.h"
#include "keyline/core/chip_identity.h"
#include "keyline/core/cplc.h"

namespace keyline::test {

struct TestChip {
  core::ChipId id;
  std::unique_ptr<Botan::ECDSA_PrivateKey> sd_key, attestation_key;
  core::Bytes sd_cert, attestation_cert;
};

class TestVendor {
 public:
  explicit TestVendor(const std::string& name = "Test Chip Vendor")
      : m_key(m_rng, Botan::EC_Group("secp256r1")), m_ca(core::chip::make_vendor_ca(m_key, name, m_rng)) {}

  const Botan::X509_Certificate& ca() const { return m_ca; }
  const Botan::ECDSA_PrivateKey& key() const { return m_key; }
  Botan::RandomNumberGenerator& rng() { return m_rng; }

  TestChip chip(const core::ChipId& id) {
    TestChip c;
    c.id = id;
    c.sd_key = std::make_unique<Botan::ECDSA_PrivateKey>(m_rng, Botan::EC_Group("secp256r1"));
    c.attestation_key = std::make_unique<Botan::ECDSA_PrivateKey>(m_rng, Botan::EC_Group("secp256r1"));
    c.sd_cert = core::chip::issue_chip_certificate(m_ca, m_key, *c.sd_key, core::chip::ChipKeyRole::Sd, id,
                                                   core::kDefaultHwType, m_rng);
    c.attestation_cert = core::chip::issue_chip_certificate(m_ca, m_key, *c.attestation_key,
                                                            core::chip::ChipKeyRole::Attestation, id,
                                                            core::kDefaultHwType, m_rng);
    return c;
  }

 private:
  Botan::AutoSeeded_RNG m_rng;
  Botan::ECDSA_PrivateKey m_key;
  Botan::X509_Certificate m_ca;
};

inline core::ChipId chip_a() { return core::ChipId::parse("4B4C0001A1B2C3D40102"); }
inline core::ChipId chip_b() { return core::ChipId::parse("4B4C0001A1B2C3D50102"); }

}  // namespace keyline::test
