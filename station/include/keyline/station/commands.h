// The commands of keyline-station; main.cpp only parses flags into these. Each returns an exit code
// (core/error.h exit_code) and prints what it did; errors are thrown to main's guard.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "keyline/station/config.h"
#include "keyline/station/keys.h"

namespace keyline::station {

// keys init (and keys server-cert, with options.reissue_server_certs): docs/station.md "Keys".
int cmd_keys_init(const StationConfig& config, const KeysInitOptions& options);
int cmd_keys_install_cert(const StationConfig& config, const std::string& root_pem,
                          const std::vector<std::string>& cert_files);
int cmd_pool_generate(const StationConfig& config, const std::string& tac, std::int64_t count, std::int64_t keys);
int cmd_pool_import(const StationConfig& config, const std::string& csv);
int cmd_pool_status(const StationConfig& config, bool json);
// `personalize`: the devices one after the other, then the cards in the readers matching the patterns
// (core::pcsc::match_readers), each waited for up to card_wait_s; one line per device (JSON with --json).
struct PersonalizeRequest {
  std::vector<std::string> devices;  // HOST:PORT
  std::vector<std::string> readers;  // PC/SC reader patterns ("all": every reader)
  int card_wait_s = 60;              // how long a reader without a card is waited for
  bool json = false;
};
int cmd_personalize(const StationConfig& config, const PersonalizeRequest& request);
int cmd_publish(const StationConfig& config, bool retry_refused_too = false, const std::string& chip = {});
int cmd_status(const StationConfig& config, bool json);

// The line (issue #7): devices from a profile, a fleet file, --fleet-ports and --device, personalized
// `concurrency` at a time until all are done, `count` are done, or SIGINT/SIGTERM (drain, then stop).
struct RunRequest {
  std::string profile;                // JSON line profile (optional)
  std::vector<std::string> devices;   // HOST:PORT
  std::string fleet_file;             // "listening HOST:PORT CHIPID DIR" lines
  std::string fleet_ports;            // [HOST:]BASE:COUNT
  std::vector<std::string> readers;   // PC/SC reader patterns: a line on readers (docs/line.md)
  int idle_exit_s = 0;                // a line on readers: end after this long with no card to do
  int concurrency = 0;                // 0: the profile's (default 8)
  std::int64_t count = 0;
  int publish_wait_s = 60;
  int db_wait_s = 300;
  std::string progress = "auto";      // auto | tty | plain
  std::string ops_listen;             // --ops-listen: /metrics, /healthz (docs/station.md)
  std::string status_listen;          // --status-listen: the line page
  std::string summary_json;           // also write the summary as JSON to this file
  // Failover (docs/custody.md "Failover"): the secondary token and its PKI directory.
  std::string secondary_token, secondary_module, secondary_pin_file, secondary_pki;
};
int cmd_run(const StationConfig& config, const RunRequest& request);
// The line benchmark's crypto floor (scripts/bench_line.sh): prints "floor_devices_per_s <x>".
int cmd_bench_floor(const StationConfig& config, std::int64_t devices, int threads);

}  // namespace keyline::station
