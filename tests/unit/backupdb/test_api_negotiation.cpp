// The public API's request-target and Accept rules (backupdb/src/api.h): the canonical spelling of a
// path a cache keys, and RFC 9110 section 12.5.1 content negotiation for a record's certificate.
#include <doctest/doctest.h>

#include "api.h"

using keyline::backupdb::accepts_pem;
using keyline::backupdb::canonical_target;

TEST_CASE("a certificate is PEM only when a PEM type is acceptable (q > 0) and not below DER") {
  CHECK_FALSE(accepts_pem(""));
  CHECK_FALSE(accepts_pem("*/*"));
  CHECK_FALSE(accepts_pem("application/pkix-cert"));
  CHECK(accepts_pem("application/x-pem-file"));
  CHECK(accepts_pem("application/pem-certificate-chain"));
  CHECK(accepts_pem("Application/X-PEM-File"));
  CHECK(accepts_pem("text/html, application/x-pem-file;q=0.5"));
  CHECK(accepts_pem("application/x-pem-file, */*"));
  CHECK(accepts_pem("application/x-pem-file, application/pkix-cert"));  // equal: PEM, as named first
  // q=0: "not acceptable" (the attack run's case), however it is spelled.
  CHECK_FALSE(accepts_pem("application/x-pem-file;q=0, application/pkix-cert"));
  CHECK_FALSE(accepts_pem("application/x-pem-file; q=0"));
  CHECK_FALSE(accepts_pem("application/x-pem-file ; Q=0.000"));
  CHECK_FALSE(accepts_pem("application/pem-certificate-chain;q=0"));
  // DER preferred by q.
  CHECK_FALSE(accepts_pem("application/x-pem-file;q=0.2, application/pkix-cert;q=0.9"));
  CHECK(accepts_pem("application/x-pem-file;q=0.9, application/pkix-cert;q=0.2"));
  CHECK(accepts_pem("application/x-pem-file;q=0.001"));
  // Other parameters are not a q; a malformed q makes the range ignored.
  CHECK(accepts_pem("application/x-pem-file;charset=us-ascii"));
  CHECK_FALSE(accepts_pem("application/x-pem-file;q=2"));
  CHECK_FALSE(accepts_pem("application/x-pem-file;q=1.5"));
  CHECK_FALSE(accepts_pem("application/x-pem-file;q=0.0001"));
  CHECK_FALSE(accepts_pem("application/x-pem-file;q="));
  CHECK_FALSE(accepts_pem("application/x-pem-filex"));
}

TEST_CASE("one spelling of a path: no empty segment, no trailing slash, a query only where one is taken") {
  CHECK(canonical_target("/v1/records/0123456789ABCDEF0123", false));
  CHECK(canonical_target("/v1/records/0123456789ABCDEF0123/backup", false));
  CHECK(canonical_target("/v1/log/tile/0/000.p/20", false));
  CHECK_FALSE(canonical_target("/v1/records/0123456789ABCDEF0123/", false));
  CHECK_FALSE(canonical_target("//v1/records/0123456789ABCDEF0123", false));
  CHECK_FALSE(canonical_target("/v1//records/0123456789ABCDEF0123", false));
  CHECK_FALSE(canonical_target("/v1/records/0123456789ABCDEF0123?x=1", false));
  CHECK_FALSE(canonical_target("/v1/records/0123456789ABCDEF0123?", false));
  CHECK_FALSE(canonical_target("", false));
  CHECK(canonical_target("/v1/records/0123456789ABCDEF0123/proof?tree_size=5", true));
  CHECK(canonical_target("/v1/log/consistency?from=1&to=5", true));
  CHECK_FALSE(canonical_target("/v1/log/consistency/?from=1", true));
  CHECK_FALSE(canonical_target("/v1//log/consistency?from=1", true));
}
