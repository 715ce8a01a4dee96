#include "keyline/backupdb/validator.h"

#include <botan/pkix_types.h>

namespace keyline::backupdb {

// Why the short path answers as core::validate_record(record, anchors) does.
//
// core::verify_chain(leaf, intermediates, anchors) walks depth by depth; at each depth it first
// tries every anchor (an anchor whose subject DN equals the current certificate's issuer DN and
// whose key verifies it ends the walk), then the unused intermediates. For a record
// [leaf, CA] the full walk is therefore:
//   depth 0: anchors against the leaf; then CA against the leaf (CA flag, keyCertSign, path length);
//   depth 1: anchors against CA (CA flag and keyCertSign of the anchor, its path length >= 1).
// The depth-1 step depends only on CA's DER and on the anchors, both fixed. The short path is
// validate_record on the record cut down to [leaf] with CA as the only anchor: it succeeds exactly
// when CA's subject DN is the leaf's issuer DN, CA's key verifies the leaf, CA is a CA with
// keyCertSign, and the checks after the chain (identity, IMEI, backup header: the same code on the
// same leaf and fields) pass. A CA is remembered only when (a) a full validation of a [leaf, CA]
// record succeeded, (b) CA's subject DN equals no anchor's subject DN, and (c) the short path
// succeeds for that record. By (b) and (c) the leaf's issuer DN is CA's subject DN, which no anchor
// has, so in (a) the depth-0 anchor loop skipped every anchor and the success went through CA and
// then the depth-1 step: that step succeeds for this CA. For a later record [leaf', CA] (same DER)
// whose short path succeeds, the full walk again skips the anchors at depth 0 (leaf' names CA as
// issuer, by (b) no anchor), accepts CA at depth 0 (path length >= 0 always holds), the remembered
// depth-1 step succeeds, and CA's DER parses (it did before): short-path success implies full
// success. When the short path fails, the full validation runs and its answer (or its error,
// with core's message) is what the caller gets. The leaf's signature is verified for every record;
// what is saved is CA's own verification and parsing its DER again.

Validator::Validator(std::vector<Botan::X509_Certificate> anchors) : m_anchors(std::move(anchors)) {}

std::size_t Validator::cached_cas() const {
  std::lock_guard<std::mutex> g(m_mutex);
  return m_verified_cas.size();
}

Validator::Anchors Validator::lookup(const core::Bytes& ca_der) const {
  std::lock_guard<std::mutex> g(m_mutex);
  const auto it = m_verified_cas.find(ca_der);
  return it == m_verified_cas.end() ? nullptr : it->second;
}

namespace {

// validate_record on [leaf] alone with `ca` as the only anchor; true when it passes.
bool leaf_passes_under(const core::Record& record, const std::vector<Botan::X509_Certificate>& ca) {
  core::Record leaf_only;
  leaf_only.chip_id = record.chip_id;
  leaf_only.imei = record.imei;
  leaf_only.backup = record.backup;
  leaf_only.certificates = {record.certificates.front()};
  try {
    core::validate_record(leaf_only, ca);
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

void Validator::validate(const core::Record& record) {
  if (record.certificates.size() == 2) {
    // A failure here is not necessarily a verdict (another chain shape may still verify): the full
    // check below decides and names the failure.
    if (const Anchors ca = lookup(record.certificates[1]); ca && leaf_passes_under(record, *ca)) return;
  }
  core::validate_record(record, m_anchors);
  if (record.certificates.size() == 2) remember(record);
}

void Validator::remember(const core::Record& record) {
  // Runs after a successful full validation, so the certificates parse.
  const core::Bytes& der = record.certificates[1];
  if (lookup(der)) return;
  auto ca = std::make_shared<std::vector<Botan::X509_Certificate>>();
  ca->emplace_back(der);
  for (const auto& anchor : m_anchors)
    if (ca->front().subject_dn() == anchor.subject_dn()) return;  // (b) fails
  if (!leaf_passes_under(record, *ca)) return;  // (c) fails: nothing learnt about this CA
  std::lock_guard<std::mutex> g(m_mutex);
  if (m_verified_cas.size() < kMaxCachedCas) m_verified_cas.emplace(der, std::move(ca));
}

}  // namespace keyline::backupdb
