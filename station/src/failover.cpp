// The line's failover (docs/custody.md "Failover"): a secondary token beside the primary, a probe of
// the primary when a device fails with a token error, and the switch. The secondary is a station of
// its own under the same root: its Device CA signs, its station key publishes, and it derives with
// the master mirrored to it, so a device keeps the communication key the service derives.
#include <chrono>
#include <ctime>
#include <fstream>
#include <sstream>

#include "keyline/core/cert_profile.h"
#include "keyline/core/error.h"
#include "keyline/station/custody.h"
#include "keyline/station/fault_hook.h"
#include "keyline/station/tls_token_key.h"
#include "keys_custody_internal.h"
#include "line_engine.h"

namespace keyline::station::line_detail {

namespace {

std::string utc_now() {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

Botan::X509_Certificate station_certificate(const StationConfig& c) {
  const std::string path = pki_path(c, pki_file::station_tls);
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  if (!in)
    throw core::ConfigError(core::ErrorCode::Config,
                            "the secondary's PKI directory has no " + path + ": it needs a station certificate of its own");
  return core::parse_certificates_pem(ss.str()).at(0);
}

// Opens the primary's token again and looks for the keys a device needs: its Device CA key, the
// wrapping key and the master version of the run (SoftHSM 2.6.1 with its token directory gone: a
// lookup by label finds nothing; a hardware token pulled out: the open fails). A token that answers
// may still fail a moment later (measured: a probe during `rm -rf` of the directory found the Device CA
// key after the wrapping key was gone), so the held devices are tried again, not failed (wait_for_token).
bool primary_answers(const LineStation& primary) {
  try {
    auto token = core::Pkcs11Token::open(primary.config.hsm_module, primary.config.token_label,
                                         read_pin(primary.config), 1);
    return token->has_private_key(primary.ca_label) && token->has_secret_key(key_label::wrap) &&
           token->has_secret_key(master_label(primary.keys->master_version));
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

bool token_trouble(const DeviceResult& r) {
  const auto c = static_cast<core::ErrorCode>(r.error_code);
  const bool token = c == core::ErrorCode::Pkcs11 || c == core::ErrorCode::Pkcs11NoToken ||
                     c == core::ErrorCode::Pkcs11KeyNotFound;
  return token && (r.reached == Step::Claim || r.reached == Step::Attest || r.reached == Step::Issue ||
                   r.reached == Step::Record);
}

std::shared_ptr<LineStation> Line::open_station(int index, const StationConfig& config, std::size_t sessions) {
  auto st = std::make_shared<LineStation>();
  st->index = index;
  st->config = config;
  st->keys = std::make_unique<StationKeys>(StationKeys::open(st->config, sessions));
  st->ca_label = key_label_for(*st->keys->token, key_label::device_ca, st->keys->device_ca_cert);
  if (m_publishing_on)
    st->tls = make_token_client_context(pki_path(st->config, pki_file::tls_trust),
                                        pki_path(st->config, pki_file::station_tls),
                                        TokenKeyRef{st->config.hsm_module, st->config.token_label,
                                                    st->keys->station_tls_label, read_pin(st->config)});
  st->personalizer = std::make_unique<Personalizer>(st->config, *st->keys, nullptr);
  st->personalizer->set_app_items(m_profile.app_items);
  st->personalizer->set_step_hook([this](Step s, const std::string& chip) {
    fault_point(step_name(s));
    m_metrics.step_done(s, chip);
  });
  return st;
}

// Everything a switch needs is checked before the first device: a secondary that could not take over
// is found at the start, not when the primary is gone.
void Line::open_secondary(std::size_t sessions) {
  StationConfig c = m_config;
  c.token_label = m_options.secondary_token;
  if (!m_options.secondary_module.empty()) c.hsm_module = m_options.secondary_module;
  if (!m_options.secondary_pin_file.empty()) c.pin_file = m_options.secondary_pin_file;
  if (m_options.secondary_pki_dir.empty())
    throw core::ConfigError(core::ErrorCode::Usage,
                            "--secondary-token needs --secondary-pki DIR: the secondary's own certificates");
  c.pki_dir = m_options.secondary_pki_dir;
  if (c.token_label == m_config.token_label && c.hsm_module == m_config.hsm_module)
    throw core::ConfigError(core::ErrorCode::Usage, "the secondary token is the primary token");
  // The pool's key sets are wrapped by the primary's keyline-wrap, which never leaves it.
  if (c.key_source == "pool") c.key_source = "generate";
  c.station_id = core::read_station_id(station_certificate(c));
  if (c.station_id == m_config.station_id)
    throw core::ConfigError(core::ErrorCode::Config, "the secondary's station certificate names this station ('" +
                                                         c.station_id + "'): it must be a station of its own");
  auto st = open_station(1, c, sessions);
  const StationKeys& p = *m_station->keys;
  if (!(st->keys->root_cert == p.root_cert))
    throw core::ConfigError(core::ErrorCode::Config, "the secondary's root.pem is not the primary's: both must be "
                                                     "under the same root");
  // Version 1 is per token: a device personalized on the secondary would get another key.
  const int v = p.master_version;
  if (v < 2)
    throw core::ConfigError(core::ErrorCode::Config,
                            "failover needs the master mirrored to the secondary, but the primary token's newest master "
                            "is version 1, which is per token: `keys roll master`, then `keys mirror` (docs/custody.md)");
  std::string secondary_check;
  try {
    secondary_check = master_check_value(*st->keys->token, v);
  } catch (const core::Error&) {
    // No such version on the secondary: said below.
  }
  if (secondary_check != master_check_value(*p.token, v))
    throw core::ConfigError(core::ErrorCode::Config, "the secondary token does not hold the primary's master version " +
                                                         std::to_string(v) + " (mirror it: `keys mirror`)");
  st->keys->master_version = v;
  // A device one station stored and the other finishes (a resume) keeps the certificate it holds.
  st->personalizer->add_other_issuer(p.device_ca_cert);
  m_station->personalizer->add_other_issuer(st->keys->device_ca_cert);
  m_secondary = std::move(st);
}

// Called with m_mutex held for every result. True when a token error took the device: it waits for the
// probe (the primary's), or goes back to the queue at once (a device of the token the line left).
bool Line::failover_holds(const WorkItem& item, const DeviceResult& r, const LineStation& station) {
  if (r.done || r.in_outbox) ++m_by_token[station.index];
  if (m_options.secondary_token.empty() || !token_trouble(r)) return false;
  if (station.index != m_station->index) {
    m_queue.push_front(item);  // not an attempt: its claim is voided and made again on the secondary
    m_cv.notify_all();
    return true;
  }
  if (station.index != 0) return false;  // the secondary failing: nothing left to switch to
  m_token_held.emplace_back(item, r);
  if (!m_probing) m_probe_wanted = true;
  m_cv.notify_all();
  return true;
}

// Called with m_mutex held before a worker starts a device. Returns true when no probe is wanted or
// running; otherwise runs the probe (one worker) or waits for it, and returns false.
bool Line::wait_for_token(std::unique_lock<std::mutex>& l) {
  if (m_probing) {
    m_cv.wait_for(l, std::chrono::milliseconds(100));
    return false;
  }
  if (!m_probe_wanted) return true;
  m_probe_wanted = false;
  m_probing = true;
  ++m_probes;
  const auto primary = m_station;
  const std::string why = m_token_held.empty() ? std::string() : m_token_held.front().second.error.substr(0, 300);
  l.unlock();
  custody::Statement st{"custody.failover", "probe of primary token '" + primary->config.token_label + "' after: " + why,
                        "", "", custody::utc_now_text(), "", 0, 0};
  st.audit_begin = failover_audit("custody.failover.begin", st.detail);
  const bool alive = primary_answers(*primary);
  if (alive) {
    st.result = "failed";
    st.outcome = "primary token '" + primary->config.token_label + "' answers (its keys are there): no switch";
    st.end = custody::utc_now_text();
    st.audit_end = failover_audit("custody.failover.failed", st.outcome);
    custody::write_statement(primary->config, st);
  }
  l.lock();
  m_probing = false;
  auto held = std::move(m_token_held);
  m_token_held.clear();
  if (alive) {
    // An attempt each: a token error that persists while the token answers fails the device as any
    // other error would, after --device-attempts.
    for (auto& [item, r] : held) {
      if (item.attempt < m_options.device_attempts) {
        ++item.attempt;
        m_queue.push_back(item);
      } else {
        settle_locked(item, std::move(r));
      }
    }
  } else {
    switch_to_secondary();
    for (auto it = held.rbegin(); it != held.rend(); ++it) m_queue.push_front(it->first);
  }
  m_cv.notify_all();
  if (!alive) {
    const std::string detail = "switched from token '" + primary->config.token_label + "' (" +
                               primary->config.station_id + ") to '" + m_secondary->config.token_label + "' (" +
                               m_secondary->config.station_id + ") after " + std::to_string(m_failover_after) +
                               " devices published";
    m_reader_notes.push_back("failover: " + detail);  // said once on the progress output
    const auto secondary = m_secondary;
    l.unlock();
    st.result = "done";
    st.outcome = detail;
    st.end = custody::utc_now_text();
    st.audit_end = failover_audit("custody.failover.done", detail);
    // Signed by the secondary: the primary's token is gone.
    custody::write_statement(secondary->config, st);
    l.lock();
  }
  return false;
}

// Called with m_mutex held: the secondary becomes the line's station and the lanes' TLS identity.
void Line::switch_to_secondary() {
  m_station = m_secondary;
  m_tls = m_station->tls;
  ++m_tls_switches;
  m_failover_at = utc_now();
  m_failover_after = static_cast<std::int64_t>(m_done.size());
}

// journal.audit, as every custody step (cert_kind custody); a database that is away loses the row, not
// the switch (the summary and the log line still say it).
std::int64_t Line::failover_audit(const char* event, const std::string& detail) {
  try {
    auto lease = m_db->acquire();
    return custody::audit(*lease, m_config, event, detail);
  } catch (const core::Error&) {
    return 0;
  }
}

// Called with m_mutex held.
void Line::summarize_failover(LineSummary& s) const {
  if (m_options.secondary_token.empty()) return;
  s.tokens.push_back({"primary", m_config.token_label, m_config.station_id, m_by_token[0]});
  if (m_secondary)
    s.tokens.push_back({"secondary", m_secondary->config.token_label, m_secondary->config.station_id, m_by_token[1]});
  s.failover_at = m_failover_at;
  s.failover_after_devices = m_failover_after;
  s.failover_probes = m_probes;
}

}  // namespace keyline::station::line_detail

namespace keyline::station {

void print_failover_summary(const LineSummary& s, std::ostream& out) {
  if (s.tokens.empty()) return;
  for (const auto& t : s.tokens)
    out << "token " << t.role << " '" << t.token << "' (" << t.station_id << "): " << t.devices << " device(s)\n";
  if (s.failover_at.empty())
    out << "failover: none (" << s.failover_probes << " probe(s) of the primary)\n";
  else
    out << "failover: switched to the secondary at " << s.failover_at << " after " << s.failover_after_devices
        << " device(s) published\n";
}

}  // namespace keyline::station
