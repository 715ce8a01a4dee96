#include "keyline/backupdb/validator.h"

#include <botan/asn1_obj.h>
#include <botan/parsing.h>
#include <botan/pkix_types.h>

#include <optional>

#include "keyline/core/cert_profile.h"

namespace keyline::backupdb {

// Why the short path answers as core::validate_record(record, anchors) does.
//
// core::verify_chain(leaf, intermediates, anchors) walks depth by depth; at each depth it first
// tries every anchor (an anchor whose subject DN equals the current certificate's issuer DN and
// whose key verifies it ends the walk), then the unused intermediates. For a record
// [leaf, CA] the full walk is therefore:
//   depth 0: anchors against the leaf; then CA against the leaf (CA flag, keyCertSign, path length);
//   depth 1: anchors against CA (CA flag and keyCertSign of the anchor, its path length >= 1).
// The depth-1 step depends only on CA's DER and on the anchors, both fixed. validate_record on the
// record cut down to [leaf] with CA as the only anchor succeeds exactly when CA's subject DN is the
// leaf's issuer DN, CA's key verifies the leaf, CA is a CA with keyCertSign, and the checks after
// the chain (identity, IMEI, backup header: the same code on the same leaf and fields) pass. A CA
// is remembered only when (a) a full validation of a [leaf, CA] record succeeded, (b) CA's subject
// DN equals no anchor's subject DN, and (c) that cut-down validate_record succeeds for that record. By (b) and (c) the leaf's issuer DN is CA's subject DN, which no anchor
// has, so in (a) the depth-0 anchor loop skipped every anchor and the success went through CA and
// then the depth-1 step: that step succeeds for this CA. For a later record [leaf', CA] (same DER)
// whose short path succeeds, the full walk again skips the anchors at depth 0 (leaf' names CA as
// issuer, by (b) no anchor), accepts CA at depth 0 (path length >= 0 always holds), the remembered
// depth-1 step succeeds, and CA's DER parses (it did before): short-path success implies full
// success. The short path (leaf_passes_under) performs that cut-down validate_record's steps itself
// so that it can keep CA's parsed key and verifier objects: the leaf parses as DER X.509, its issuer
// DN is CA's subject DN, CA's key verifies its signature (signed_by in core::verify_chain, see
// leaf_signed_by), then core::check_record_facts (identity facts, chip ID and IMEI, backup header),
// the very code validate_record runs after its chain, so a failure there throws core's error. CA's
// own checks there (CA flag, keyCertSign, path length >= 0) depend only on CA and passed in (c).
// When the leaf is not CA's, the full validation runs and its answer (or its error, with core's
// message) is what the caller gets. The leaf's signature is verified for every record;
// what is saved is CA's own verification and parsing its DER again.
//
// A record [leaf, CA, T] (T the transport certificate, docs/decisions.md "The transport certificate
// in the public record") takes the same path: verify_chain tries the intermediates in order, so CA
// is taken at depth 0 before T whatever T is, and T plays no part in the chain. After the record's
// facts validate_record checks T when it is not a CA certificate (core::transport_certificate), with
// the identity's issuer, which is CA (no anchor has CA's DN, and among certificates of that DN the
// first that verifies the leaf, CA, comes first); the short path makes that check on the same
// certificates. T is parsed with the leaf, before any check, so that a T that is not DER leaves the
// error (validate_record's first) to the full validation.

Validator::Validator(std::vector<Botan::X509_Certificate> anchors) : m_anchors(std::move(anchors)) {}

std::size_t Validator::cached_cas() const {
  std::lock_guard<std::mutex> g(m_mutex);
  return m_verified_cas.size();
}

Validator::KnownCaPtr Validator::lookup(const core::Bytes& ca_der) const {
  std::lock_guard<std::mutex> g(m_mutex);
  const auto it = m_verified_cas.find(ca_der);
  return it == m_verified_cas.end() ? nullptr : it->second;
}

namespace {

// core::validate_record on [leaf] alone with `ca` as the only anchor; true when it passes.
bool core_passes_under(const core::Record& record, const std::vector<Botan::X509_Certificate>& ca) {
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

// The signature algorithm whose verifiers are kept: ecdsa-with-SHA256 (1.2.840.10045.4.3.2), what
// the certificate profile issues. Botan's X509_Object::verify_signature splits the OID's name
// "ECDSA/EMSA1(SHA-256)" into key algorithm and padding; the same split is done here once.
struct KeptAlgorithm {
  Botan::OID oid{1, 2, 840, 10045, 4, 3, 2};
  std::vector<std::string> sig_info = Botan::split_on(oid.to_formatted_string(), '/');
};

const KeptAlgorithm& kept_algorithm() {
  static const KeptAlgorithm k;
  return k;
}

}  // namespace

// signed_by(leaf, CA) of core::verify_chain once the DNs matched: CA's key, then
// leaf.verify_signature(key) == VERIFIED. For ecdsa-with-SHA256 with absent parameters and an
// ECDSA key, Botan 2.19's verify_signature is exactly PK_Verifier(key, "EMSA1(SHA-256)",
// key.default_x509_signature_format()).verify_message(tbs_data(), signature()), any exception
// counting as not verified; that is what runs here, on a kept verifier. Anything else (another
// algorithm, NULL or other parameters) goes through Botan's verify_signature itself.
bool Validator::leaf_signed_by(const Botan::X509_Certificate& leaf, KnownCa& ca) {
  const KeptAlgorithm& kept = kept_algorithm();
  const Botan::AlgorithmIdentifier& algo = leaf.signature_algorithm();
  if (!(algo.get_oid() == kept.oid) || !algo.parameters_are_empty() || kept.sig_info.size() != 2 ||
      kept.sig_info[0] != ca.key->algo_name())
    return leaf.verify_signature(*ca.key) == Botan::Certificate_Status_Code::VERIFIED;

  std::unique_ptr<Botan::PK_Verifier> verifier;
  {
    std::lock_guard<std::mutex> g(ca.idle_mutex);
    if (!ca.idle.empty()) {
      verifier = std::move(ca.idle.back());
      ca.idle.pop_back();
    }
  }
  bool valid = false;
  try {
    if (!verifier)
      verifier = std::make_unique<Botan::PK_Verifier>(*ca.key, kept.sig_info[1], ca.key->default_x509_signature_format());
    valid = verifier->verify_message(leaf.tbs_data(), leaf.signature());
  } catch (...) {
    valid = false;
  }
  // Only a verifier whose last check succeeded is known to have consumed and reset its hash state;
  // after a refusal (a signature that does not decode can throw before the hash is finalized) it is
  // dropped rather than reused.
  if (valid) {
    std::lock_guard<std::mutex> g(ca.idle_mutex);
    ca.idle.push_back(std::move(verifier));
  }
  return valid;
}

// validate_record(record cut down to [leaf], {CA}), in its order (see the top): false when the leaf
// is not CA's (the full validation then decides); once CA's key verified the leaf, the full
// validation's chain would pass too, so the record's own checks run here and throw what it would.
bool Validator::leaf_passes_under(const core::Record& record, KnownCa& ca) {
  std::optional<Botan::X509_Certificate> leaf, third;
  try {
    leaf.emplace(record.certificates.front());
    if (record.certificates.size() == 3) third.emplace(record.certificates[2]);
    // A CA third is no shape core::validate_record accepts: the full validation refuses it.
    if (third && third->is_CA_cert()) return false;
    if (!(leaf->issuer_dn() == ca.as_anchors.front().subject_dn())) return false;
    if (!leaf_signed_by(*leaf, ca)) return false;
  } catch (const std::exception&) {
    return false;
  }
  core::check_record_facts(record, *leaf);
  // The transport certificate's signature on CA's kept verifier too (leaf_signed_by is signed_by of
  // core::verify_chain for any certificate CA signed).
  if (third)
    core::check_transport_certificate(record, *leaf, *third, ca.as_anchors.front(),
                                      [&ca](const Botan::X509_Certificate& c) { return leaf_signed_by(c, ca); });
  return true;
}

void Validator::validate(const core::Record& record) {
  // [identity, Device CA] as published before, or [identity, Device CA, transport].
  const bool short_shape = record.certificates.size() == 2 || record.certificates.size() == 3;
  if (short_shape) {
    // A failure here is not necessarily a verdict (another chain shape may still verify): the full
    // check below decides and names the failure.
    if (const KnownCaPtr ca = lookup(record.certificates[1]); ca && leaf_passes_under(record, *ca)) return;
  }
  core::validate_record(record, m_anchors);
  if (short_shape) remember(record);
}

void Validator::remember(const core::Record& record) {
  // Runs after a successful full validation, so the certificates parse.
  const core::Bytes& der = record.certificates[1];
  {
    std::lock_guard<std::mutex> g(m_mutex);
    if (m_verified_cas.size() >= kMaxCachedCas || m_verified_cas.count(der)) return;  // full, or known
  }
  auto ca = std::make_shared<KnownCa>();
  ca->as_anchors.emplace_back(der);
  for (const auto& anchor : m_anchors)
    if (ca->as_anchors.front().subject_dn() == anchor.subject_dn()) return;  // (b) fails
  if (!core_passes_under(record, ca->as_anchors)) return;  // (c) fails: nothing learnt about this CA
  try {
    ca->key.reset(ca->as_anchors.front().subject_public_key());
  } catch (const std::exception&) {
    return;  // cannot happen after (c), which used this key; never remembered without it
  }
  if (!ca->key) return;
  std::lock_guard<std::mutex> g(m_mutex);
  if (m_verified_cas.size() < kMaxCachedCas) m_verified_cas.emplace(der, std::move(ca));
}

}  // namespace keyline::backupdb
