// The KPS's background work (docs/kps.md "Replay, expiry, audit", "Notifications"): one pass each, run
// by Instance's loops. Every pass is safe to run from several KPS processes on one database at once
// (rows are claimed with FOR UPDATE SKIP LOCKED).
#pragma once

#include <atomic>

#include "context.h"

namespace keyline::kps {

// Expires open transfers past expires_at (envelope deleted, audit row, notice to both), deletes nonces
// past their window and Request-Ids older than a day. Returns the number of transfers expired.
int purge_pass(Context& c);

// Delivers the due webhook notices (at most a small batch); returns how many were attempted.
int webhook_pass(Context& c);
// Waits for the deliveries webhook_pass started (each ends within its connect and answer deadlines).
void webhook_drain(Context& c);

// Waits for NOTIFY kps_notice on its own connection and wakes the long polls, until stop.
void listen_for_notices(Context& c, const std::atomic<bool>& stop);

}  // namespace keyline::kps
