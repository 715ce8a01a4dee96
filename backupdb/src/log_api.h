// The transparency log's read API on the public listener (docs/api.md, "Transparency log";
// docs/transparency.md, "The public DB's log"): the checkpoint, tiles and entry bundles (C2SP
// tlog-tiles), a record's inclusion proof and consistency proofs between tree sizes.
#pragma once

#include <string>
#include <vector>

#include "api.h"

namespace keyline::backupdb {

// /v1/log/... (parts[1] == "log").
core::http::Reply handle_log(Shared& s, const core::http::Request& req);
// /v1/records/{chip_id}/proof.
core::http::Reply handle_proof(Shared& s, const core::http::Request& req, const std::string& chip_segment);
// The route label of a /v1/log/ path.
std::string log_route_of(const std::vector<std::string>& parts);

}  // namespace keyline::backupdb
