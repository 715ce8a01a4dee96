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
// errors and their messages are exactly core's.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <map>
#include <vector>

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
  using Anchors = std::shared_ptr<const std::vector<Botan::X509_Certificate>>;
  Anchors lookup(const core::Bytes& ca_der) const;
  void remember(const core::Record& record);

  std::vector<Botan::X509_Certificate> m_anchors;
  mutable std::mutex m_mutex;
  // Device CA DER -> that CA alone as the anchor list of the short path.
  std::map<core::Bytes, Anchors> m_verified_cas;
};

}  // namespace keyline::backupdb
