// The per-client rate limit the KPS shares with the public DB (core/rate_limiter.h): --burst, the wait
// behind Retry-After, and the bound on buckets (docs/kps.md "Server").
#include <doctest/doctest.h>

#include <chrono>

#include "keyline/core/rate_limiter.h"

using keyline::core::RateLimiter;
using Clock = std::chrono::steady_clock;

TEST_CASE("rate limiter: --burst requests at once, then --rate per second, the wait until the next token") {
  RateLimiter r(0.5, 100, 3);
  const auto t = Clock::time_point(std::chrono::seconds(1000));
  for (int i = 0; i < 3; ++i) CHECK(r.take("10.0.0.1", t).allowed);
  const auto over = r.take("10.0.0.1", t);
  CHECK_FALSE(over.allowed);
  CHECK(over.wait_s == doctest::Approx(2.0));  // one token at 0.5/s
  CHECK(r.take("10.0.0.2", t).allowed);        // another client has its own bucket
  CHECK_FALSE(r.take("10.0.0.1", t + std::chrono::milliseconds(1900)).allowed);
  CHECK(r.take("10.0.0.1", t + std::chrono::milliseconds(2100)).allowed);
}

TEST_CASE("rate limiter: burst 0 is max(rate, 1), as the public DB's, and rate 0 allows all, keeping nothing") {
  RateLimiter slow(0.2, 100);
  const auto t = Clock::time_point(std::chrono::seconds(1000));
  CHECK(slow.take("a", t).allowed);
  CHECK_FALSE(slow.take("a", t).allowed);
  RateLimiter fast(5, 100);
  for (int i = 0; i < 5; ++i) CHECK(fast.take("a", t).allowed);
  CHECK_FALSE(fast.take("a", t).allowed);
  RateLimiter off(0, 100, 3);
  for (int i = 0; i < 100; ++i) CHECK(off.take("a", t).allowed);
  CHECK(off.size() == 0);
  CHECK_FALSE(off.enabled());
}

TEST_CASE("rate limiter: fresh addresses evict the least recently seen bucket, never reset a limited one") {
  RateLimiter r(0.1, 2, 1);
  const auto t = Clock::time_point(std::chrono::seconds(1000));
  CHECK(r.take("limited", t).allowed);
  CHECK_FALSE(r.take("limited", t).allowed);
  CHECK(r.take("fresh-1", t).allowed);
  CHECK_FALSE(r.take("limited", t).allowed);  // touched: now the most recent
  CHECK(r.take("fresh-2", t).allowed);        // evicts fresh-1
  CHECK(r.size() == 2);
  CHECK_FALSE(r.take("limited", t).allowed);
}
