#include "log_api.h"

#include "log_query.h"

#include <cstdint>
#include <optional>
#include <string_view>

#include "keyline/core/cplc.h"
#include "keyline/core/error.h"
#include "keyline/core/http_service.h"
#include "keyline/core/imei.h"
#include "keyline/core/merkle.h"
#include "keyline/core/record_leaf.h"
#include "keyline/core/tlog_tiles.h"

namespace keyline::backupdb {
namespace {

namespace http = core::http;
namespace merkle = core::merkle;
namespace tlog = core::tlog;
using http::Reply;
using http::Request;

const http::Problems problem{"https://keyline.example/problems/"};
constexpr const char* kImmutable = "public, max-age=31536000, immutable";
constexpr std::string_view kLogPrefix = "/v1/log/";

// A JSON string (RFC 8259 section 7) of text the server made (a signed note: UTF-8, newlines).
std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string hash_list(const std::vector<merkle::Hash>& hashes) {
  std::string out = "[";
  for (std::size_t i = 0; i < hashes.size(); ++i)
    out += (i ? ",\"" : "\"") + core::to_base64(hashes[i].data(), hashes[i].size()) + "\"";
  return out + "]";
}

Reply log_disabled() { return problem(404, "log-disabled", "this public DB serves no transparency log"); }

Reply no_checkpoint_yet() { return problem.unavailable("the log has no checkpoint yet", "1"); }

Reply checkpoint_reply(Shared& s) {
  const auto cp = s.tlog->latest();
  if (!cp) return no_checkpoint_yet();
  // C2SP tlog-tiles: the checkpoint is the one mutable resource, every client must revalidate.
  return http::reply(200, "text/plain; charset=utf-8", cp->note, {{"Cache-Control", "no-cache"}});
}

Reply tile_reply(Shared& s, const Request& req) {
  tlog::TileId id;
  try {
    // The raw path, not its segments: "tile//0/000" or a trailing slash is not a canonical tile path.
    if (req.path.compare(0, kLogPrefix.size(), kLogPrefix) != 0) throw core::FormatError(core::ErrorCode::BadTile, "prefix");
    id = tlog::parse_tile_path(std::string_view(req.path).substr(kLogPrefix.size()));
  } catch (const core::FormatError&) {
    return problem(400, "bad-tile-path", "not a C2SP tlog-tiles path (tile/<L>/<N>[.p/<W>], tile/entries/<N>[.p/<W>])");
  }
  const auto t = s.tlog->tile(tlog::tile_path(id));
  if (!t) return problem(404, "not-found", "no such tile: beyond the tree or of a size never checkpointed");
  // A tile path names its width, so its bytes never change: immutable like a record (C2SP tlog-tiles).
  Reply r;
  r.headers = {{"ETag", t->etag}, {"Cache-Control", kImmutable}};
  if (const auto* inm = req.header("if-none-match"); inm && *inm == t->etag) {
    r.status = 304;
    return r;
  }
  r.content_type = "application/octet-stream";
  r.body.assign(t->data.begin(), t->data.end());
  return r;
}

// The checkpoint of `param` (a size some checkpoint was published for), else the latest. Sets
// `refusal` when there is none to answer with.
std::optional<LogCheckpoint> checkpoint_for(Shared& s, const std::optional<std::string>& param, const char* name,
                                            std::optional<Reply>& refusal) {
  const auto latest = s.tlog->latest();
  if (!latest) {
    refusal = no_checkpoint_yet();
    return std::nullopt;
  }
  if (!param) return latest;
  const auto size = log_query::tree_size(*param);
  if (!size) {
    refusal = problem(400, "bad-tree-size", std::string(name) + " is a tree size in decimal");
    return std::nullopt;
  }
  if (*size > latest->size) {
    refusal = problem(400, "bad-tree-size", std::string(name) + " is larger than the latest checkpoint's tree size");
    return std::nullopt;
  }
  auto cp = s.tlog->checkpoint(*size);
  if (!cp) refusal = problem(404, "no-checkpoint", "no checkpoint was published for this tree size");
  return cp;
}

Reply consistency_reply(Shared& s, const Request& req) {
  const auto from_param = log_query::param(req.target, "from");
  const auto from = from_param ? log_query::tree_size(*from_param) : std::nullopt;
  if (!from) return problem(400, "bad-tree-size", "from is a tree size in decimal");
  std::optional<Reply> refusal;
  const auto to_param = log_query::param(req.target, "to");
  const auto cp = checkpoint_for(s, to_param, "to", refusal);
  if (!cp) return *refusal;
  if (*from > cp->size) return problem(400, "bad-tree-size", "from is larger than to");
  std::vector<merkle::Hash> proof;
  if (*from != 0 && *from != cp->size) {
    const tlog::TileHashSource source(s.tlog->tile_reader(), cp->size);
    proof = merkle::consistency_proof(source, *from, cp->size);
  }
  const std::string body = "{\"size1\":" + std::to_string(*from) + ",\"size2\":" + std::to_string(cp->size) +
                           ",\"proof\":" + hash_list(proof) + "}";
  return http::json_reply(200, body, {{"Cache-Control", to_param ? kImmutable : "no-cache"}});
}

}  // namespace

std::string log_route_of(const std::vector<std::string>& parts) {
  if (parts.size() == 3 && parts[2] == "checkpoint") return "log_checkpoint";
  if (parts.size() == 3 && parts[2] == "consistency") return "log_consistency";
  if (parts.size() >= 4 && parts[2] == "tile") return parts[3] == "entries" ? "log_entries" : "log_tile";
  return "other";
}

Reply handle_log(Shared& s, const Request& req) {
  if (!s.tlog) return log_disabled();
  const auto parts = http::path_segments(req.path);
  const std::string route = log_route_of(parts);
  if (route == "other") return problem(404, "not-found", "no such resource");
  if (!http::is_read(req)) return problem.method_not_allowed("GET, HEAD");
  if (!s.limiter->allow(req.client_address)) {
    Reply r = problem(429, "rate-limited", "too many requests from this client");
    r.headers.push_back({"Retry-After", "1"});
    return r;
  }
  if (route == "log_checkpoint") return checkpoint_reply(s);
  if (route == "log_consistency") return consistency_reply(s, req);
  return tile_reply(s, req);
}

Reply handle_proof(Shared& s, const Request& req, const std::string& chip_segment) {
  if (!s.tlog) return log_disabled();
  if (!http::is_read(req)) return problem.method_not_allowed("GET, HEAD");
  if (!s.limiter->allow(req.client_address)) {
    Reply r = problem(429, "rate-limited", "too many requests from this client");
    r.headers.push_back({"Retry-After", "1"});
    return r;
  }
  std::string chip;
  try {
    chip = core::ChipId::parse(chip_segment).str();
  } catch (const core::Error&) {
    return problem(400, "bad-chip-id", "a chip ID is 20 hexadecimal digits");
  }
  std::optional<Reply> refusal;
  const auto size_param = log_query::param(req.target, "tree_size");
  const auto cp = checkpoint_for(s, size_param, "tree_size", refusal);
  if (!cp) return *refusal;
  // The record cache answers the lookup (records and their indexes never change); the entry is
  // rebuilt from the record's own columns, so a proof is for the record the API serves.
  const auto rec = s.store->by_chip_id(chip);
  if (!rec) return problem(404, "not-found", "no record for this chip ID");
  if (rec->leaf_index < 0 || static_cast<std::uint64_t>(rec->leaf_index) >= cp->size) {
    Reply r = problem(404, "not-integrated", "the record is published but not yet in a checkpoint");
    r.headers.push_back({"Retry-After", "1"});
    return r;
  }
  const tlog::TileHashSource source(s.tlog->tile_reader(), cp->size);
  const auto index = static_cast<std::uint64_t>(rec->leaf_index);
  const auto proof = merkle::inclusion_proof(source, index, cp->size);
  const auto leaf = merkle::leaf_hash(
      core::encode_record_leaf(core::ChipId::parse(rec->chip_id), core::Imei::parse(rec->imei), rec->record_hash));
  const std::string body = "{\"leaf_index\":" + std::to_string(index) +
                           ",\"tree_size\":" + std::to_string(cp->size) + ",\"leaf_hash\":\"" +
                           core::to_base64(leaf.data(), leaf.size()) + "\",\"proof\":" + hash_list(proof) +
                           ",\"checkpoint\":" + json_string(cp->note) + "}";
  return http::json_reply(200, body, {{"Cache-Control", size_param ? kImmutable : "no-cache"}});
}

}  // namespace keyline::backupdb
