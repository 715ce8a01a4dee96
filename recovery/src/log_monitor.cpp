// `keyline-recovery log monitor` (docs/recovery.md section 8).
#include "keyline/recovery/log_monitor.h"

#include <map>
#include <sstream>

#include "keyline/core/error.h"
#include "keyline/core/http.h"
#include "keyline/core/record_leaf.h"
#include "keyline/core/tlog_tiles.h"
#include "keyline/recovery/errors.h"

namespace keyline::recovery {

namespace {

namespace tlog = core::tlog;

void say(std::ostream* out, const std::string& line) {
  if (out) *out << "keyline-recovery: " << line << std::endl;
}

// Every entry of the log: who is logged where, so a second leaf for one chip or IMEI is found.
class EntryScan {
 public:
  explicit EntryScan(MonitorReport& report) : m_report(report) {}

  void bundle(const tlog::TileId& id, const core::Bytes& data) {
    std::vector<core::Bytes> entries;
    try {
      entries = tlog::parse_entry_bundle(data, id.width);
    } catch (const core::Error& e) {
      throw core::Error(errc::LogNotVerified, "entry bundle " + tlog::tile_path(id) + " does not parse: " + e.what());
    }
    for (std::size_t i = 0; i < entries.size(); ++i) entry(id.index * tlog::tile_width + i, entries[i]);
  }

 private:
  void entry(std::uint64_t leaf, const core::Bytes& e) {
    core::RecordLeaf r;
    try {
      r = core::parse_record_leaf(e);
    } catch (const core::Error& err) {
      throw core::Error(errc::LogNotVerified, "log entry " + std::to_string(leaf) + " is not a record entry: " + err.what());
    }
    ++m_report.entries_read;
    note(m_chips, r.chip_id.str(), "chip ID ", leaf);
    note(m_imeis, r.imei.str(), "IMEI ", leaf);
  }

  void note(std::map<std::string, std::uint64_t>& seen, const std::string& key, const char* what, std::uint64_t leaf) {
    const auto [it, fresh] = seen.emplace(key, leaf);
    if (!fresh)
      m_report.duplicates.push_back(std::string(what) + key + " is logged twice: leaves " + std::to_string(it->second) +
                                    " and " + std::to_string(leaf));
  }

  MonitorReport& m_report;
  std::map<std::string, std::uint64_t> m_chips, m_imeis;
};

// Recomputes the tree from what the log serves and compares its root with the checkpoint's.
void verify_served_tree(core::http::Client& client, const DbOptions& db, const tlog::Checkpoint& cp, bool entries,
                        EntryScan& scan) {
  const tlog::TileReader read = [&](const tlog::TileId& id) {
    const std::string path = "/v1/log/" + tlog::tile_path(id);
    const auto r = log_get(client, db, path);
    if (r.status != 200)
      throw core::Error(errc::LogNotVerified, "the log does not serve " + path + " (HTTP " + std::to_string(r.status) +
                                                  ") of its tree of size " + std::to_string(cp.size));
    core::Bytes data(r.body.begin(), r.body.end());
    if (id.entries) scan.bundle(id, data);
    return data;
  };
  core::merkle::Hash root;
  try {
    root = tlog::verify_tiles(read, cp.size, entries);
  } catch (const core::FormatError& e) {
    throw core::Error(errc::LogNotVerified, std::string("the log's tiles do not hold its tree: ") + e.what());
  }
  if (root != cp.root)
    throw core::Error(errc::LogNotVerified, "the log's tiles give the root " + core::to_base64(root.data(), root.size()) +
                                                ", its checkpoint of size " + std::to_string(cp.size) + " says " +
                                                core::to_base64(cp.root.data(), cp.root.size()));
}

}  // namespace

MonitorReport monitor_log(const MonitorOptions& options, std::ostream* progress) {
  const auto key = load_log_key(options.log);
  const std::string state_path = options.log.state_file.empty() ? default_state_path() : options.log.state_file;
  LogState state = read_log_state(state_path);
  const auto client = make_db_client(options.db);

  MonitorReport report;
  const tlog::Checkpoint cp = fetch_log_checkpoint(*client, options.db, key).checkpoint;
  report.origin = cp.origin;
  report.head = {cp.size, cp.root};
  say(progress, "checkpoint of " + cp.origin + " at size " + std::to_string(cp.size) + ", signed by the pinned log key");
  if (const auto it = state.find(cp.origin); it != state.end()) {
    report.seen = it->second;
    check_log_extends(*client, options.db, cp.origin, it->second, report.head);
    say(progress, "it extends the checkpoint seen before (size " + std::to_string(it->second.size) + ")");
  }
  EntryScan scan(report);
  verify_served_tree(*client, options.db, cp, options.entries, scan);
  say(progress, "the tiles" + std::string(options.entries ? " and entry bundles" : "") + " give the checkpoint's root");
  state[cp.origin] = report.head;
  write_log_state(state_path, state);
  return report;
}

std::string format_monitor_report(const MonitorReport& r) {
  std::ostringstream o;
  o << "origin " << r.origin << "\n"
    << "tree_size " << r.head.size << "\n"
    << "root " << core::to_base64(r.head.root.data(), r.head.root.size()) << "\n";
  if (r.seen) o << "previous_size " << r.seen->size << "\n";
  o << "entries_read " << r.entries_read << "\n"
    << "duplicates " << r.duplicates.size() << "\n";
  for (const auto& d : r.duplicates) o << "DUPLICATE " << d << "\n";
  return o.str();
}

}  // namespace keyline::recovery
