// TMM, the transfer management module (docs/kps.md "Transfers"): E1/E2 (AC1) and E3 when a target or an
// owner asks, S1/S2 with AC2 decided before the source is shown the transport certificate, E5/E6 (AC2
// again) and E7 when the source uploads the KLKE envelope, E8/E9 when the target fetches it, and the
// acknowledgement that deletes it. Every step writes an audit row in the transaction that makes it.
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <optional>
#include <set>

#include "context.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/cplc.h"
#include "keyline/core/http.h"
#include "keyline/core/kps_envelope.h"
#include "transfer_row.h"

namespace keyline::kps {
namespace {

using core::pq::Transaction;

constexpr std::size_t kMaxTargets = 32;

std::string parse_chip(const std::string& text) { return core::ChipId::parse(text).str(); }

// ---- E1 (both callers) ----

struct Ask {
  std::string source, label;
  std::vector<std::string> targets;  // owner only
  std::string v1_chain;              // a v1 device's transport_certificates, used only without --backupdb
};

std::optional<Reply> parse_ask(const Request& req, const Caller& who, Ask& ask) {
  if (!http::has_media_type(req, "application/json"))
    return problem(415, "unsupported-media-type", "send the request as application/json");
  try {
    Poco::JSON::Parser parser;
    const auto obj = parser.parse(req.body).extract<Poco::JSON::Object::Ptr>();
    ask.source = obj->getValue<std::string>("source");
    ask.label = obj->getValue<std::string>("label");
    if (obj->has("transport_certificates")) ask.v1_chain = obj->getValue<std::string>("transport_certificates");
    if (!who.device()) {
      const auto arr = obj->getArray("targets");
      if (!arr) throw std::runtime_error("no targets");
      for (std::size_t i = 0; i < arr->size(); ++i) ask.targets.push_back(arr->getElement<std::string>(i));
    }
  } catch (const std::exception&) {
    return problem(400, "bad-request", who.device() ? "expected {\"source\", \"label\"} as strings"
                                                    : "expected {\"source\", \"label\", \"targets\": [chip, ...]}");
  }
  try {
    ask.source = parse_chip(ask.source);
    for (auto& t : ask.targets) t = parse_chip(t);
  } catch (const core::Error&) {
    return problem(400, "bad-chip-id", "source and targets are chip IDs of 20 hexadecimal digits");
  }
  if (!is_label(ask.label)) return problem(400, "bad-label", "a label is 1-64 of A-Z a-z 0-9 . _ -");
  if (who.device()) ask.targets = {who.chip};
  const std::set<std::string> distinct(ask.targets.begin(), ask.targets.end());
  if (ask.targets.empty() || ask.targets.size() > kMaxTargets || distinct.size() != ask.targets.size() ||
      distinct.count(ask.source))
    return problem(400, "bad-targets", "1 to 32 distinct targets, none of them the source");
  return std::nullopt;
}

// v1 devices sent their own transport certificate; a KPS without --backupdb still takes it (checked as
// the source will check it), so a line keeps working while its devices move to v2.
std::string v1_transport_chain(Context& c, const std::string& pem, const std::string& target) {
  const auto certs = core::parse_certificates_pem(pem);
  if (certs.empty() || certs.size() > 4) throw core::FormatError(core::ErrorCode::BadCertificate, "1..4 certificates");
  core::verify_chain(certs[0], {certs.begin() + 1, certs.end()}, c.anchors);
  std::unique_ptr<Botan::Public_Key> key(certs[0].subject_public_key());
  if (key->algo_name() != "Curve25519") throw core::FormatError(core::ErrorCode::BadCertificate, "not X25519");
  if (core::read_identity(certs[0]).chip_id.str() != target)
    throw core::FormatError(core::ErrorCode::BadCertificate, "the transport certificate names another chip");
  std::string canonical;
  for (const auto& x : certs) canonical += core::to_pem(x);
  return canonical;
}

// The transport certificate of each target, fetched before any transaction (it is a network call).
std::optional<Reply> transport_chains(Context& c, const Ask& ask, std::vector<std::string>& chains) {
  std::vector<DirectoryChain> directory;
  if (!c.config.backupdb.empty()) directory = transport_chains_from_directory(c, ask.targets);
  for (std::size_t i = 0; i < ask.targets.size(); ++i) {
    const auto& target = ask.targets[i];
    try {
      if (c.config.backupdb.empty()) {
        chains.push_back(v1_transport_chain(c, ask.v1_chain, target));
      } else {
        if (directory[i].error) std::rethrow_exception(directory[i].error);
        chains.push_back(directory[i].chain);
      }
    } catch (const core::IoError& e) {
      Reply r = problem.unavailable("the directory of transport certificates (public DB) does not answer", "5");
      r.log_detail = e.what();
      return r;
    } catch (const core::Error& e) {
      return refused(422, "no-transport-certificate",
                     "no valid transport certificate for the target in the public DB", target + ": " + e.what());
    }
  }
  return std::nullopt;
}

// One transfer row, its audit rows and the source's notice. Idempotent under a retried transaction: the
// id is chosen before the transaction, so a retry after a commit whose answer was lost finds its row.
TransferRow insert_transfer(Context& c, Transaction& tx, const std::string& id, const std::string& group,
                            const Caller& who, const Ask& ask, const std::string& target, const std::string& chain) {
  const std::int64_t now = c.now();
  auto r = tx.connection().exec_prepared(
      "INSERT INTO transfers (id, source_chip, target_chip, label, state, transport_chain, requested_at, expires_at, "
      "group_id, owner_account) VALUES ($1::uuid, $2, $3, $4, 'requested', $5, to_timestamp($6), to_timestamp($7), "
      "$8::uuid, $9::bigint) ON CONFLICT (id) DO NOTHING",
      {id, ask.source, target, ask.label, chain, now, now + c.config.transfer_ttl,
       group.empty() ? core::pq::Param::null() : core::pq::Param(group),
       who.device() ? core::pq::Param::null() : core::pq::Param(who.account)});
  if (r.affected() == 1) {
    audit(tx, now, id, "ac1", who.name, "allowed " + ask.source + " -> " + target + " label " + ask.label);
    audit(tx, now, id, "requested", who.name, group.empty() ? "" : "group " + group);
    notify(tx, now, ask.source, "transfer-requested", "/v1/transfers/" + id, id);
  }
  return *load_transfer(tx.connection(), id);
}

// Runs `create` and stores its 201 answer under the caller's Request-Id in the same transaction; a
// retried request gets the stored answer (docs/kps.md "Request-Id"). The commit is the last statement
// of the transaction: nothing after it can fail and re-run the work.
Reply idempotent(Context& c, const Request& req, const Caller& who, const std::function<Reply(Transaction&)>& create) {
  const std::string rid = req.get("request-id");
  if (!rid.empty() && !is_uuid(rid)) return problem(400, "bad-request-id", "Request-Id is a UUID in lower-case text");
  const std::string caller = who.device() ? who.chip : "account:" + std::to_string(who.account);
  const std::string body_hash = sha256_hex(req.body);
  auto stored = [&]() -> std::optional<Reply> {
    auto conn = c.pool->acquire();
    auto r = conn->exec("SELECT body_sha256, status, answer FROM request_ids WHERE caller = $1 AND request_id = $2::uuid",
                        {caller, rid});
    if (r.empty()) return std::nullopt;
    if (r.text(0, 0) != body_hash)
      return problem(422, "request-id-reused", "this Request-Id was used for another request");
    Reply again = http::json_reply(static_cast<int>(r.int64(0, 1)), r.text(0, 2));
    again.log_detail = "Request-Id " + rid + " answered again";
    return again;
  };
  if (!rid.empty())
    if (auto again = stored()) return *again;
  auto conn = c.pool->acquire();
  Reply out;
  bool raced = false;
  core::pq::run_transaction(*conn, core::pq::Isolation::ReadCommitted, [&](Transaction& tx) {
    raced = false;
    out = create(tx);
    if (out.status != 201) {  // refusals roll back and are not stored
      tx.rollback();
      return;
    }
    if (!rid.empty()) {
      auto ins = tx.connection().exec_prepared(
          "INSERT INTO request_ids (caller, request_id, body_sha256, status, answer, created_at) "
          "VALUES ($1, $2::uuid, $3, $4, $5, to_timestamp($6)) ON CONFLICT DO NOTHING",
          {caller, rid, body_hash, out.status, out.body, c.now()});
      if (ins.affected() == 0) {
        raced = true;  // the same Request-Id committed first elsewhere: roll back, answer as it did
        tx.rollback();  // returning would commit the second transfer (pq.h run_transaction)
        return;
      }
    }
    tx.commit();
  });
  if (raced) {
    if (auto again = stored()) return *again;
    return problem.unavailable("a request with this Request-Id is being answered; retry", "1");
  }
  return out;
}

Reply request_by_device(Context& c, const Request& req, const Caller& who) {
  Ask ask;
  if (auto bad = parse_ask(req, who, ask)) return *bad;
  const std::string& target = who.chip;
  if (!c.policy.may_request(ask.source, target, ask.label))
    return refused(403, "access-denied", "the access policy does not let this device request that key from that source",
                   "AC1 refused " + ask.source + " -> " + target + " label " + ask.label);
  std::vector<std::string> chains;
  if (auto bad = transport_chains(c, ask, chains)) return *bad;
  const std::string id = new_uuid();
  Reply r = idempotent(c, req, who, [&](Transaction& tx) {
    const auto t = insert_transfer(c, tx, id, "", who, ask, target, chains[0]);
    Reply created = http::json_reply(201, t.json(false));
    return created;
  });
  if (r.status == 201) {
    const auto id_at = r.body.find("\"id\":\"");
    if (id_at != std::string::npos) r.headers.push_back({"Location", "/v1/transfers/" + r.body.substr(id_at + 6, 36)});
    r.log_detail = "requested " + ask.source + " -> " + target + " label " + ask.label;
  }
  return r;
}

Reply request_by_owner(Context& c, const Request& req, const Caller& who) {
  Ask ask;
  if (auto bad = parse_ask(req, who, ask)) return *bad;
  std::vector<std::string> chips = ask.targets;
  chips.push_back(ask.source);
  {
    auto conn = c.pool->acquire();
    const auto foreign = not_owned(*conn, who.account, chips);
    if (!foreign.empty())
      return refused(403, "not-owner", "the account does not own the source and every target",
                     "not owned by " + who.name + ": " + foreign[0]);
  }
  for (const auto& target : ask.targets)
    if (!c.policy.may_request(ask.source, target, ask.label))
      return refused(403, "access-denied", "the access policy does not let every target request that key",
                     "AC1 refused " + ask.source + " -> " + target + " label " + ask.label);
  std::vector<std::string> chains;
  if (auto bad = transport_chains(c, ask, chains)) return *bad;
  const std::string group = new_uuid();
  std::vector<std::string> ids;
  for (std::size_t i = 0; i < ask.targets.size(); ++i) ids.push_back(new_uuid());
  Reply r = idempotent(c, req, who, [&](Transaction& tx) {
    std::string j = "{\"group_id\":" + q(group) + ",\"transfers\":[";
    for (std::size_t i = 0; i < ask.targets.size(); ++i)
      j += (i ? "," : "") + insert_transfer(c, tx, ids[i], group, who, ask, ask.targets[i], chains[i]).json(false);
    return http::json_reply(201, j + "]}");
  });
  if (r.status == 201) {
    r.log_detail = "group " + group + " " + ask.source + " -> " + std::to_string(ask.targets.size()) + " targets";
  }
  return r;
}

// ---- S1/S2: AC2 before the source is shown the transport certificate ----

// Marks the transfer refused (audit row, notice to the target) inside tx.
void refuse_transfer(Context& c, Transaction& tx, const TransferRow& t, const std::string& step, const std::string& actor) {
  const std::int64_t now = c.now();
  tx.connection().exec_prepared("UPDATE transfers SET state = 'refused', ciphertext = NULL, closed_at = to_timestamp($2) WHERE id = $1::uuid",
          {t.id, now});
  audit(tx, now, t.id, step, actor, "refused " + t.source + " -> " + t.target + " label " + t.label);
  audit(tx, now, t.id, "refused", actor, step);
  notify(tx, now, t.target, "transfer-refused", "/v1/transfers/" + t.id, t.id);
}

// The purge loop expires a transfer up to one interval after its TTL; until then the routes refuse it
// themselves (docs/kps.md "Replay, expiry, audit": 410 once the TTL passed).
bool past_ttl(core::pq::Connection& conn, const std::string& id, std::int64_t now) {
  auto r = conn.exec_prepared("SELECT expires_at <= to_timestamp($2) FROM transfers WHERE id = $1::uuid", {id, now});
  return !r.empty() && r.text(0, 0) == "t";
}

Reply gone_by_ttl() { return problem(410, "gone", "the transfer expired (its TTL passed)"); }

Reply show_to_source(Context& c, const Caller& who, const std::string& id) {
  auto conn = c.pool->acquire();
  std::optional<Reply> out;
  core::pq::run_transaction(*conn, core::pq::Isolation::ReadCommitted, [&](Transaction& tx) {
    out.reset();
    auto t = load_transfer(tx.connection(), id, true);
    if (t->state != "requested") {
      out = http::json_reply(200, t->json(false));
      return;
    }
    if (past_ttl(tx.connection(), id, c.now())) {
      out = gone_by_ttl();
      return;
    }
    if (!c.policy.may_deliver(t->source, t->target, t->label)) {
      refuse_transfer(c, tx, *t, "ac2-early", who.name);
      tx.commit();
      out = refused(403, "access-denied", "the access policy does not let this device deliver that key to that target",
                    "AC2 (before the transport certificate) refused " + t->source + " -> " + t->target + " label " +
                        t->label);
      return;
    }
    if (t->transport_served_at.empty()) {
      tx.connection().exec_prepared("UPDATE transfers SET transport_served_at = to_timestamp($2) WHERE id = $1::uuid", {id, c.now()});
      audit(tx, c.now(), id, "ac2-early", who.name, "allowed");
    }
    tx.commit();
    out = http::json_reply(200, t->json(true));
  });
  return *out;
}

Reply get_transfer(Context& c, const Caller& who, const std::string& id) {
  std::optional<TransferRow> t;
  {
    auto conn = c.pool->acquire();
    t = load_transfer(*conn, id);
  }
  if (!t || !t->party(who)) return problem(404, "not-found", "no such transfer");
  if (who.device() && who.chip == t->source) return show_to_source(c, who, id);
  return http::json_reply(200, t->json(false));
}

// ---- E5/E6/E7: the source uploads the envelope ----

std::optional<Reply> check_envelope(Context& c, const std::string& body, const TransferRow& t) {
  core::kps_envelope::Envelope env;
  try {
    env = core::kps_envelope::parse(reinterpret_cast<const std::uint8_t*>(body.data()), body.size());
  } catch (const core::Error& e) {
    return refused(400, "bad-envelope", "the body is not a KLKE envelope (docs/kps.md)", e.what());
  }
  const core::kps_envelope::Header want{t.id, t.label, core::ChipId::parse(t.source), core::ChipId::parse(t.target)};
  if (!(env.header == want))
    return refused(422, "envelope-mismatch", "the envelope names another transfer, label, source or target",
                   "envelope header differs from transfer " + t.id);
  try {
    core::kps_envelope::verify_source(env, c.anchors);
  } catch (const core::Error& e) {
    return refused(422, "envelope-mismatch", "the envelope is not signed by the source's identity key",
                   std::string("source check: ") + e.what());
  }
  return std::nullopt;
}

Reply deliver(Context& c, const Request& req, const Caller& who, const std::string& id) {
  if (!http::has_media_type(req, "application/octet-stream"))
    return problem(415, "unsupported-media-type", "send the envelope as application/octet-stream");
  if (req.body.size() > core::kps_envelope::kMaxSize) return problem.too_large(core::kps_envelope::kMaxSize);
  std::optional<TransferRow> first;
  {
    auto conn = c.pool->acquire();
    first = load_transfer(*conn, id);
  }
  if (!first || !first->party(who)) return problem(404, "not-found", "no such transfer");
  if (who.chip != first->source) return problem(403, "not-the-source", "only the source device delivers the key");
  if (auto bad = check_envelope(c, req.body, *first)) return *bad;
  auto conn = c.pool->acquire();
  std::optional<Reply> out;
  core::pq::run_transaction(*conn, core::pq::Isolation::ReadCommitted, [&](Transaction& tx) {
    out.reset();
    auto t = load_transfer(tx.connection(), id, true);
    if (t->state != "requested" || t->transport_served_at.empty()) {
      out = problem(409, "wrong-state", t->state != "requested" ? "the transfer is " + t->state
                                                                 : "fetch the transfer (and its transport certificate) first");
      return;
    }
    const std::int64_t now = c.now();
    if (past_ttl(tx.connection(), id, now)) {
      out = gone_by_ttl();
      return;
    }
    if (!c.policy.may_deliver(t->source, t->target, t->label)) {
      refuse_transfer(c, tx, *t, "ac2", who.name);
      tx.commit();
      out = refused(403, "access-denied", "the access policy does not let this device deliver that key to that target",
                    "AC2 refused " + t->source + " -> " + t->target + " label " + t->label);
      return;
    }
    tx.connection().exec_prepared("UPDATE transfers SET state = 'delivered', ciphertext = $2, delivered_at = to_timestamp($3) "
            "WHERE id = $1::uuid", {id, core::Bytes(req.body.begin(), req.body.end()), now});
    audit(tx, now, id, "ac2", who.name, "allowed");
    audit(tx, now, id, "delivered", who.name, std::to_string(req.body.size()) + " bytes");
    notify(tx, now, t->target, "key-delivered", "/v1/transfers/" + id + "/key", id);
    tx.commit();
    out = http::json_reply(200, "{\"id\":" + q(id) + ",\"state\":\"delivered\"}");
    out->log_detail = "delivered to " + t->target + " (" + std::to_string(req.body.size()) + " bytes)";
  });
  return *out;
}

// ---- E8/E9 and the acknowledgement ----

Reply fetch_key(Context& c, const Caller& who, const std::string& id) {
  auto conn = c.pool->acquire();
  auto r = conn->exec("SELECT target_chip, source_chip, state, ciphertext, expires_at <= to_timestamp($2) "
                      "FROM transfers WHERE id = $1::uuid", {id, c.now()});
  if (r.empty() || !who.device() || (r.text(0, 0) != who.chip && r.text(0, 1) != who.chip))
    return problem(404, "not-found", "no such transfer");
  if (r.text(0, 0) != who.chip) return problem(403, "not-the-target", "only the target device fetches the key");
  const std::string state = r.text(0, 2);
  if (state == "acknowledged" || state == "expired" || state == "purged")
    return problem(410, "gone", "the key is deleted (state " + state + ")");
  if (state != "delivered") return problem(409, "wrong-state", "the transfer is " + state + ": no key to fetch");
  if (r.text(0, 4) == "t") return gone_by_ttl();
  const auto ct = r.bytea(0, 3);
  return http::reply(200, "application/octet-stream", std::string(ct.begin(), ct.end()), {{"Cache-Control", "no-store"}});
}

Reply acknowledge(Context& c, const Caller& who, const std::string& id) {
  auto conn = c.pool->acquire();
  std::optional<Reply> out;
  core::pq::run_transaction(*conn, core::pq::Isolation::ReadCommitted, [&](Transaction& tx) {
    out.reset();
    auto t = load_transfer(tx.connection(), id, true);
    if (!t || !who.device() || (t->source != who.chip && t->target != who.chip)) {
      out = problem(404, "not-found", "no such transfer");
      return;
    }
    if (t->target != who.chip) {
      out = problem(403, "not-the-target", "only the target device acknowledges");
      return;
    }
    if (t->state != "acknowledged") {  // a repeated acknowledgement changes nothing
      if (t->state != "delivered") {
        out = problem(409, "wrong-state", "the transfer is " + t->state + ": nothing to acknowledge");
        return;
      }
      const std::int64_t now = c.now();
      tx.connection().exec_prepared("UPDATE transfers SET state = 'acknowledged', ciphertext = NULL, acknowledged_at = to_timestamp($2) "
              "WHERE id = $1::uuid", {id, now});
      audit(tx, now, id, "acknowledged", who.name, "");
      notify(tx, now, t->source, "key-acknowledged", "/v1/transfers/" + id, id);
      tx.commit();
    }
    out = http::json_reply(200, "{\"id\":" + q(id) + ",\"state\":\"acknowledged\"}");
  });
  return *out;
}

}  // namespace

Reply transfers_route(Context& c, const Request& req, const Caller& who, const std::vector<std::string>& parts) {
  const std::string& method = req.method;
  if (parts.size() == 2) {
    if (method != "POST") return problem.method_not_allowed("POST");
    return who.device() ? request_by_device(c, req, who) : request_by_owner(c, req, who);
  }
  if (!is_uuid(parts[2])) return problem(404, "not-found", "no such transfer");
  const std::string& id = parts[2];
  if (parts.size() == 3) {
    if (method != "GET") return problem.method_not_allowed("GET");
    return get_transfer(c, who, id);
  }
  if (parts.size() == 4 && parts[3] == "key") {
    if (!who.device()) return problem(404, "not-found", "no such transfer");
    if (method == "POST") return deliver(c, req, who, id);
    if (method == "GET") return fetch_key(c, who, id);
    return problem.method_not_allowed("GET, POST");
  }
  if (parts.size() == 4 && parts[3] == "ack") {
    if (method != "POST") return problem.method_not_allowed("POST");
    return acknowledge(c, who, id);
  }
  return problem(404, "not-found", "no such resource");
}

Reply groups_route(Context& c, const Request& req, const Caller& who, const std::vector<std::string>& parts) {
  if (parts.size() != 3 || !is_uuid(parts[2]) || who.device()) return problem(404, "not-found", "no such group");
  if (req.method != "GET") return problem.method_not_allowed("GET");
  auto conn = c.pool->acquire();
  const auto rows = load_group(*conn, parts[2], who.account);
  if (rows.empty()) return problem(404, "not-found", "no such group");
  std::string j = "{\"group_id\":" + q(parts[2]) + ",\"transfers\":[";
  for (std::size_t i = 0; i < rows.size(); ++i) j += (i ? "," : "") + rows[i].json(false);
  return http::json_reply(200, j + "]}");
}

}  // namespace keyline::kps
