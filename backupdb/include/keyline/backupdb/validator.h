// Publish validation for keyline-backupdb: core::validate_record, with the Device CA's own
// verification done once per CA certificate instead of once per record.
//
// Nearly every published record carries the same chain tail (identity certificate, then the one
// Device CA), so verifying the Device CA's signature against the root for each record repeats the
// same ECDSA verification thousands of times. The Validator remembers Device CA certificates (by
// their exact DER bytes) that a full validation proved sit one step below a trust anchor, and for a
// later record with that same CA it verifies only the identity certificate against it. The answer
// is the same as core::validate_record(record, anchors) would give, for every input (see
// validator.cpp for why); any failure of the short path is re-checked by the full validation, so
// errors and their messages are exactly core's. The short path also keeps the CA's parsed public key
// and Botan verifier objects (ECDSA precomputation over the CA's point), which core builds anew for
// every signature check.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <map>
#include <vector>

#include <botan/pk_keys.h>
#include <botan/pubkey.h>
#include <botan/x509cert.h>

#include "keyline/core/record.h"

namespace keyline::backupdb {

class Validator {
 public:
  // At most this many Device CAs are remembered (a manufacturer has a handful; the bound keeps
  // memory fixed whatever stations send).
  static constexpr std::size_t kMaxCachedCas = 64;

  explicit Validator(std::vector<Botan::X509_Certificate> anchors);

  // Throws exactly what core::validate_record(record, anchors()) throws; returns when it would.
  // Thread-safe.
  void validate(const core::Record& record);

  const std::vector<Botan::X509_Certificate>& anchors() const { return m_anchors; }
  std::size_t cached_cas() const;

 private:
  // A remembered Device CA: its certificate, its public key parsed once, and idle verifiers for
  // it. A Botan PK_Verifier is not thread-safe, so each check takes one out of `idle` (or makes
  // one) and puts it back after a successful verification.
  struct KnownCa {
    std::vector<Botan::X509_Certificate> as_anchors;  // the CA alone, for core::validate_record
    std::unique_ptr<Botan::Public_Key> key;
    std::mutex idle_mutex;
    std::vector<std::unique_ptr<Botan::PK_Verifier>> idle;
  };
  using KnownCaPtr = std::shared_ptr<KnownCa>;
  KnownCaPtr lookup(const core::Bytes& ca_der) const;
  void remember(const core::Record& record);
  static bool leaf_passes_under(const core::Record& record, KnownCa& ca);
  static bool leaf_signed_by(const Botan::X509_Certificate& leaf, KnownCa& ca);

  std::vector<Botan::X509_Certificate> m_anchors;
  mutable std::mutex m_mutex;
  // Device CA DER -> that CA, the only anchor of the short path.
  std::map<core::Bytes, KnownCaPtr> m_verified_cas;
};

}  // namespace keyline::backupdb
