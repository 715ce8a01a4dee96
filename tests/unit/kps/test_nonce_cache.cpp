// The KPS's replay guard: a nonce is used once within its window, expired ones leave, and a flood of
// signed requests meets a bound instead of growing the set (and each request's cost) without end.
#include <doctest/doctest.h>

#include <string>

#include "../../../kps/src/nonce_cache.h"

using keyline::kps::NonceCache;

TEST_CASE("nonce cache: once per window, expired nonces leave, a full cache refuses instead of growing") {
  NonceCache c(3);
  CHECK(c.first_use("a", 100, 10) == NonceCache::Use::First);
  CHECK(c.first_use("a", 100, 11) == NonceCache::Use::Replayed);
  CHECK(c.first_use("b", 50, 12) == NonceCache::Use::First);
  CHECK(c.first_use("c", 200, 13) == NonceCache::Use::First);
  CHECK(c.first_use("d", 200, 14) == NonceCache::Use::Full);
  CHECK(c.size() == 3);
  // b expires at 50: at 51 it is purged, which makes room; a is still inside its window.
  CHECK(c.first_use("d", 200, 51) == NonceCache::Use::First);
  CHECK(c.first_use("a", 100, 52) == NonceCache::Use::Replayed);
  CHECK(c.size() == 3);
  // Everything expires: the set empties by itself.
  CHECK(c.first_use("e", 400, 300) == NonceCache::Use::First);
  CHECK(c.size() == 1);
}
