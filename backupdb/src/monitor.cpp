// `keyline-backupdb monitor` (docs/transparency.md, "Monitor").
#include "keyline/backupdb/monitor.h"

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

#include "keyline/core/cert_profile.h"
#include "keyline/core/checkpoint.h"
#include "keyline/core/error.h"
#include "keyline/core/http.h"
#include "keyline/core/record.h"
#include "keyline/core/record_leaf.h"
#include "keyline/core/tlog_tiles.h"

namespace keyline::backupdb {

namespace {

namespace merkle = core::merkle;
namespace tlog = core::tlog;
namespace http = core::http;

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  const auto e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

std::string b64(const merkle::Hash& h) { return core::to_base64(h.data(), h.size()); }

merkle::Hash hash_of(const std::string& text, const std::string& what) {
  std::optional<merkle::Hash> h;
  try {
    h = merkle::to_hash(core::from_base64(text));
  } catch (const core::Error&) {
  }
  if (!h) throw core::ConfigError(core::ErrorCode::Config, "the monitor state: " + what + " is not a 32-byte base64 hash");
  return *h;
}

// The subtrees of a compact range, so CompactRange::load rebuilds it from the kept edge.
class EdgeSource : public merkle::HashSource {
 public:
  EdgeSource(std::uint64_t size, const std::vector<merkle::Hash>& edge) {
    std::uint64_t begin = 0;
    std::size_t i = 0;
    for (int l = 63; l >= 0; --l) {
      if (((size >> l) & 1) == 0) continue;
      if (i == edge.size()) throw core::ConfigError(core::ErrorCode::Config, "the monitor state's right edge is short");
      m_nodes[{static_cast<unsigned>(l), begin >> l}] = edge[i++];
      begin += std::uint64_t{1} << l;
    }
    if (i != edge.size()) throw core::ConfigError(core::ErrorCode::Config, "the monitor state's right edge is long");
  }
  merkle::Hash subtree(unsigned level, std::uint64_t index) const override {
    const auto it = m_nodes.find({level, index});
    if (it == m_nodes.end()) throw core::FormatError(core::ErrorCode::BadProof, "not on the right edge");
    return it->second;
  }

 private:
  std::map<std::pair<unsigned, std::uint64_t>, merkle::Hash> m_nodes;
};

// What the monitor keeps between runs: the verified tree (size, root, right edge) in `head`, and
// every entry's chip ID and IMEI in `entries` (appended, so a chip or IMEI logged again later is found).
struct State {
  std::uint64_t size = 0;
  merkle::Hash root = merkle::empty_root();
  merkle::CompactRange edge;
  std::map<std::string, std::uint64_t> chips, imeis;
  std::vector<std::pair<std::string, std::string>> logged;  // per leaf below size: chip ID, record hash (hex)
};

State read_state(const std::string& dir) {
  State s;
  std::ifstream head(dir + "/head");
  if (!head) return s;
  std::string size, root, line;
  if (!(head >> size >> root)) throw core::ConfigError(core::ErrorCode::Config, "the monitor state " + dir + "/head does not parse");
  s.size = std::stoull(size);
  s.root = hash_of(root, "the root");
  std::vector<merkle::Hash> edge;
  while (head >> line) edge.push_back(hash_of(line, "an edge hash"));
  s.edge = merkle::CompactRange::load(EdgeSource(s.size, edge), s.size);
  if (s.edge.root() != s.root) throw core::ConfigError(core::ErrorCode::Config, "the monitor state's edge does not give its root");
  std::ifstream entries(dir + "/entries");
  std::uint64_t leaf;
  std::string chip, imei, hash;
  s.logged.resize(s.size);
  // Lines past the head's size were written by a run that stopped before its head: read again.
  while (entries >> leaf >> chip >> imei >> hash) {
    if (leaf >= s.size) continue;
    s.chips.emplace(chip, leaf);
    s.imeis.emplace(imei, leaf);
    s.logged[leaf] = {chip, hash};
  }
  return s;
}

void write_head(const std::string& dir, const State& s) {
  std::string text = std::to_string(s.size) + " " + b64(s.root) + "\n";
  for (const auto& h : s.edge.edge()) text += b64(h) + "\n";
  const std::string tmp = dir + "/head.tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  const bool ok = f && std::fwrite(text.data(), 1, text.size(), f) == text.size() && std::fflush(f) == 0 && ::fsync(fileno(f)) == 0;
  if (f) std::fclose(f);
  if (!ok || std::rename(tmp.c_str(), (dir + "/head").c_str()) != 0)
    throw core::IoError(core::ErrorCode::Io, "cannot write the monitor state in " + dir);
}

struct Ctx {
  const MonitorConfig& cfg;
  std::ostream& out;
  http::Client& client;
  std::vector<Botan::X509_Certificate> trust;
  MonitorRun run;
  std::ofstream entries;

  void finding(const std::string& kind, std::uint64_t leaf, const std::string& chip, const std::string& detail) {
    const std::string line = "{\"finding\":\"" + kind + "\",\"leaf\":" + std::to_string(leaf) + ",\"chip_id\":\"" +
                             http::json_escape(chip) + "\",\"detail\":\"" + http::json_escape(detail) + "\"}";
    run.findings.push_back(line);
    out << line << std::endl;
  }
  http::Response get(const std::string& path) {
    auto r = client.get(path);
    if (r.status >= 500 || r.status == 429)
      throw core::IoError(core::ErrorCode::Network, cfg.url + path + " answered HTTP " + std::to_string(r.status));
    return r;
  }
};

tlog::Checkpoint fetch_checkpoint(Ctx& c, const core::note::Ed25519Verifier& key) {
  const auto r = c.get("/v1/log/checkpoint");
  if (r.status != 200) throw core::Error(core::ErrorCode::Http, "no checkpoint (HTTP " + std::to_string(r.status) + ")");
  return tlog::open_checkpoint(r.body, key, key.name()).checkpoint;
}

// The checkpoint extends the tree verified before; false (and a finding) when it does not.
bool consistent(Ctx& c, const State& s, const tlog::Checkpoint& cp) {
  const std::string both = "seen size " + std::to_string(s.size) + " root " + b64(s.root) + ", now size " +
                           std::to_string(cp.size) + " root " + b64(cp.root);
  if (cp.size < s.size || (cp.size == s.size && cp.root != s.root)) {
    c.finding("log-fork", cp.size, "", "the checkpoint does not extend the one seen before: " + both);
    return false;
  }
  if (s.size == 0 || cp.size == s.size) return true;
  const auto r = c.get("/v1/log/consistency?from=" + std::to_string(s.size) + "&to=" + std::to_string(cp.size));
  std::vector<core::Bytes> proof;
  try {
    Poco::JSON::Parser p;
    const auto arr = p.parse(r.body).extract<Poco::JSON::Object::Ptr>()->getArray("proof");
    for (unsigned i = 0; arr && i < arr->size() && i < 128; ++i) proof.push_back(core::from_base64(arr->getElement<std::string>(i)));
    merkle::verify_consistency(s.size, cp.size, proof, merkle::to_bytes(s.root), merkle::to_bytes(cp.root));
    return true;
  } catch (const std::exception& e) {
    c.finding("log-fork", cp.size, "", "no valid consistency proof (HTTP " + std::to_string(r.status) + "): " + both + ": " + e.what());
    return false;
  }
}

// The record the API serves for the entry's chip: its hash must be the entry's, and it must pass
// core's record validation under the manufacturer root.
void check_record(Ctx& c, std::uint64_t leaf, const std::string& chip, const std::string& logged_hash) {
  const auto r = c.get("/v1/records/" + chip);
  if (r.status != 200) return c.finding("record-missing", leaf, chip, "the log holds it, the API answers HTTP " + std::to_string(r.status));
  core::Record rec;
  std::string hash;
  try {
    rec = core::Record::from_json(r.body, &hash);
  } catch (const core::Error& err) {
    return c.finding("record-bad", leaf, chip, std::string("the served record does not parse: ") + err.what());
  }
  if (hash != logged_hash)
    return c.finding("record-mismatch", leaf, chip, "the served record's hash " + hash + " is not the logged " + logged_hash);
  try {
    core::validate_record(rec, c.trust);
  } catch (const core::Error& err) {
    c.finding("record-invalid", leaf, chip, std::string("does not validate under the manufacturer root: ") + err.what());
  }
}

void check_entry(Ctx& c, State& s, std::uint64_t leaf, const core::Bytes& bytes) {
  s.edge.append(merkle::leaf_hash(bytes));
  ++c.run.entries_checked;
  core::RecordLeaf e;
  try {
    e = core::parse_record_leaf(bytes.data(), bytes.size());
  } catch (const core::Error& err) {
    return c.finding("entry-bad", leaf, "", std::string("not a record entry: ") + err.what());
  }
  const std::string chip = e.chip_id.str(), imei = e.imei.str();
  c.entries << leaf << " " << chip << " " << imei << " " << e.record_hash_hex() << "\n";
  if (const auto [it, fresh] = s.chips.emplace(chip, leaf); !fresh)
    c.finding("duplicate-chip", leaf, chip, "chip ID also logged at leaf " + std::to_string(it->second));
  if (const auto [it, fresh] = s.imeis.emplace(imei, leaf); !fresh)
    c.finding("duplicate-imei", leaf, chip, "IMEI " + imei + " also logged at leaf " + std::to_string(it->second));
  check_record(c, leaf, chip, e.record_hash_hex());
}

// The level-0 hash tile the log serves for bundle `id` must hold exactly the bundle's leaf hashes:
// it is what clients' proofs are built from (C2SP tlog-tiles).
bool check_level0_tile(Ctx& c, const tlog::TileId& bundle, const std::vector<core::Bytes>& entries) {
  tlog::TileId id = bundle;
  id.entries = false;
  std::string want;
  for (const auto& e : entries) {
    const auto h = merkle::leaf_hash(e);
    want.append(reinterpret_cast<const char*>(h.data()), h.size());
  }
  const auto r = c.get("/v1/log/" + tlog::tile_path(id));
  if (r.status == 200 && r.body == want) return true;
  c.finding("tree-mismatch", bundle.index * tlog::tile_width, "",
            "the hash tile " + tlog::tile_path(id) + " is not its entries' leaf hashes (HTTP " + std::to_string(r.status) + ")");
  return false;
}

// The entries from s.size to cp.size, bundle by bundle; then the recomputed root must be cp's.
bool check_new_entries(Ctx& c, State& s, const tlog::Checkpoint& cp) {
  for (std::uint64_t b = s.size / tlog::tile_width; b * tlog::tile_width < cp.size; ++b) {
    const std::uint64_t end = std::min<std::uint64_t>(cp.size, (b + 1) * tlog::tile_width);
    const tlog::TileId id{0, b, static_cast<unsigned>(end - b * tlog::tile_width), true};
    const auto r = c.get("/v1/log/" + tlog::tile_path(id));
    std::vector<core::Bytes> entries;
    try {
      if (r.status != 200) throw core::Error(core::ErrorCode::Http, "HTTP " + std::to_string(r.status));
      entries = tlog::parse_entry_bundle(core::Bytes(r.body.begin(), r.body.end()), id.width);
    } catch (const core::Error& e) {
      c.finding("tree-mismatch", b * tlog::tile_width, "", "entry bundle " + tlog::tile_path(id) + ": " + e.what());
      return false;
    }
    if (!check_level0_tile(c, id, entries)) return false;
    for (std::uint64_t i = std::max(s.size, b * tlog::tile_width); i < end; ++i) check_entry(c, s, i, entries[i - b * tlog::tile_width]);
  }
  if (s.edge.root() != cp.root) {
    c.finding("tree-mismatch", cp.size, "", "the entries give the root " + b64(s.edge.root()) + ", the checkpoint says " + b64(cp.root));
    return false;
  }
  return true;
}

core::note::Ed25519Verifier load_key(const MonitorConfig& cfg) {
  if (cfg.log_key.empty() == cfg.log_key_file.empty())
    throw core::ConfigError(core::ErrorCode::Usage, "give exactly one of --log-key VKEY or --log-key-file F");
  std::string text = cfg.log_key;
  if (!cfg.log_key_file.empty()) {
    std::ifstream f(cfg.log_key_file);
    std::ostringstream ss;
    if (!f || !(ss << f.rdbuf())) throw core::ConfigError(core::ErrorCode::Config, "cannot read " + cfg.log_key_file);
    text = ss.str();
  }
  return core::note::Ed25519Verifier::parse(trim(text));
}

std::atomic<bool> g_stop{false};
extern "C" void on_stop(int) { g_stop = true; }

}  // namespace

int MonitorRun::exit_code() const {
  if (fork) return monitor_exit::log_fork;
  return findings.empty() ? monitor_exit::ok : monitor_exit::record_findings;
}

MonitorRun monitor_once(const MonitorConfig& cfg, std::ostream& out) {
  if (cfg.state_dir.empty()) throw core::ConfigError(core::ErrorCode::Usage, "give --state DIR");
  if (cfg.trust.empty()) throw core::ConfigError(core::ErrorCode::Usage, "give the manufacturer root: --trust root.pem");
  const auto key = load_key(cfg);
  if (::mkdir(cfg.state_dir.c_str(), 0700) != 0 && errno != EEXIST)
    throw core::IoError(core::ErrorCode::Io, "cannot create " + cfg.state_dir);
  http::ClientOptions o;
  o.base_url = cfg.url;
  o.ca_file = cfg.ca;
  http::Client client(o);
  Ctx c{cfg, out, client, {}, {}, std::ofstream(cfg.state_dir + "/entries", std::ios::app)};
  for (const auto& t : cfg.trust)
    for (auto& cert : core::load_certificates_pem(t)) c.trust.push_back(std::move(cert));

  State s = read_state(cfg.state_dir);
  const tlog::Checkpoint cp = fetch_checkpoint(c, key);
  c.run.previous_size = s.size;
  c.run.size = cp.size;
  // --recheck: the records of the entries checked before, fetched again (one changed since is found).
  for (std::uint64_t leaf = 0; cfg.recheck && leaf < s.logged.size(); ++leaf)
    if (!s.logged[leaf].first.empty()) check_record(c, leaf, s.logged[leaf].first, s.logged[leaf].second);
  if (!consistent(c, s, cp) || !check_new_entries(c, s, cp)) {
    c.run.fork = true;
    return c.run;  // the state stays at the last verified tree
  }
  c.entries.flush();
  if (!c.entries) throw core::IoError(core::ErrorCode::Io, "cannot write " + cfg.state_dir + "/entries");
  s.size = cp.size;
  s.root = cp.root;
  write_head(cfg.state_dir, s);
  return c.run;
}

int monitor(const MonitorConfig& cfg) {
  std::signal(SIGINT, on_stop);
  std::signal(SIGTERM, on_stop);
  int worst = 0;
  do {
    const MonitorRun r = monitor_once(cfg, std::cout);
    std::fprintf(stderr, "keyline-backupdb: monitor: tree %llu -> %llu, %llu new entries checked, %zu finding(s)\n",
                 static_cast<unsigned long long>(r.previous_size), static_cast<unsigned long long>(r.size),
                 static_cast<unsigned long long>(r.entries_checked), r.findings.size());
    worst = std::max(worst, r.exit_code());
    for (unsigned i = 0; !cfg.once && i < cfg.interval_s && !g_stop; ++i) std::this_thread::sleep_for(std::chrono::seconds(1));
  } while (!cfg.once && !g_stop);
  return worst;
}

}  // namespace keyline::backupdb
