// keyline-device: the emulated device (docs/protocol.md). Options only; the work is in keyline_device.
#include <CLI/CLI.hpp>

#include "keyline/core/config_file.h"
#include "keyline/core/guard.h"
#include "keyline/device/commands.h"
#include "keyline/device/kps_agent.h"
#include "keyline/device/log.h"
#include "keyline/device/service_agent.h"

int main(int argc, char** argv) {
  using namespace keyline::device;
  CLI::App app{"keyline-device: emulated device for the keyline line (chip, flash, APDU server)"};
  app.require_subcommand(1);
  keyline::core::config::set_strict_config(app);
  app.footer("Exit codes: 0 ok, 1 failure, 2 usage, 3 bad input, 4 unavailable, 5 refused.");

  std::string dir, rom_ca, fleet_dir, vendor_dir, vendor_name = "keyline emulated chip vendor";
  std::size_t count = 0;
  auto* make = app.add_subcommand("make", "chip fab: make one device (--dir) or a fleet (--dir with --count)");
  make->add_option("--dir", dir, "device directory, or fleet directory with --count")->required();
  make->add_option("--count", count, "make a fleet of N devices as DIR/dev-0000 ...");
  make->add_option("--rom-ca", rom_ca, "manufacturer root certificate (PEM) burnt into ROM")->required()->check(CLI::ExistingFile);
  make->add_option("--vendor", vendor_dir, "chip vendor directory (vendor-init): SD and attestation keys with certificates")
      ->check(CLI::ExistingDirectory);

  auto* vendor_init = app.add_subcommand("vendor-init", "make an emulated chip vendor: its CA key and certificate in DIR");
  vendor_init->add_option("DIR", vendor_dir, "vendor directory (vendor.key mode 0600, vendor.crt)")->required();
  vendor_init->add_option("--name", vendor_name, "the vendor's name (CA subject CN and O)")->capture_default_str();

  ServeConfig serve_config;
  std::string serve_cut;
  auto* serve = app.add_subcommand("serve", "serve APDUs over TCP (vpcd framing) or to pcscd's vpcd driver");
  serve->add_option("--dir", serve_config.dir, "one device directory");
  serve->add_option("--fleet", serve_config.fleet, "fleet directory: one port per device from the --listen port");
  serve->add_option("--listen", serve_config.listen, "HOST:PORT to listen on (port 0: any)")->envname("KEYLINE_DEVICE_LISTEN");
  serve->add_option("--vpcd", serve_config.vpcd, "connect to pcscd's vpcd driver at HOST:PORT instead (e.g. 127.0.0.1:35963)");
  serve->add_option("--idle-timeout-ms", serve_config.idle_timeout_ms, "close idle connections after this long");
  serve->add_option("--max-connections", serve_config.max_connections,
                    "connections open at once, all devices together (more are closed at once)")
      ->capture_default_str();
  serve->add_option("--max-connections-per-device", serve_config.max_connections_per_device,
                    "connections open at once to one device (more are closed at once)")
      ->capture_default_str();
  serve->add_option("--memory-budget-mib", serve_config.memory_budget_mib,
                    "MiB all connections may hold in frame buffers and gathered command data")
      ->capture_default_str()->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20));
  serve->add_flag("--allow-reset", serve_config.device.allow_reset, "let 80 C8 reset a personalized device to BLANK");
  serve->add_option("--delays", serve_config.delays, "hardware delay preset: none | realistic (10/50/300 ms)");
  serve->add_option("--delay-id-ms", serve_config.device.faults.delay_id_ms, "delay of GET DATA CPLC");
  serve->add_option("--delay-store-ms", serve_config.device.faults.delay_store_ms, "delay of each STORE DATA block");
  serve->add_option("--delay-flash-ms", serve_config.device.faults.delay_flash_ms, "delay of each flash write");
  serve->add_option("--drop-after-bytes", serve_config.device.faults.drop_after_bytes, "drop each connection after N bytes in");
  serve->add_option("--power-cut-at-byte", serve_cut, "cut the power after N bytes of the next flash write");
  serve->add_option("--fail-rate", serve_config.device.faults.fail_rate, "answer this share of APDUs with 6F00");
  serve->add_flag("--corrupt-backup", serve_config.device.faults.corrupt_backup,
                  "GET DATA DF20 returns the backup with one bit flipped (a damaged chip read-out)");
  std::string protocol = "t1";
  serve->add_option("--protocol", protocol,
                    "t1: the ATR offers T=0 and T=1; t0: T=0 only (case 4 answers by 61XX/GET RESPONSE, 6CXX)")
      ->check(CLI::IsMember({"t1", "t0"}))->capture_default_str();
  serve->add_flag("--no-extended", [&](std::int64_t) { serve_config.device.card.extended = false; },
                  "the ATR says no extended-length APDUs; extended ones are answered 6700");
  serve->add_flag("--mute", serve_config.device.card.mute, "a card that gives no ATR when powered on (mute)");
  serve->add_flag("--quiet", [](std::int64_t) { set_quiet(true); }, "no log lines");

  auto* boot = app.add_subcommand("boot", "boot from flash offline and print the identity");
  boot->add_option("--dir", dir, "device directory")->required();
  auto* status = app.add_subcommand("status", "lifecycle, chip ID, IMEI and flash state");
  status->add_option("--dir", dir, "device directory")->required();
  auto* wipe = app.add_subcommand("wipe-flash", "erase the flash (simulated flash loss)");
  wipe->add_option("--dir", dir, "device directory")->required();
  auto* corrupt = app.add_subcommand("corrupt-flash", "flip one bit of the sealed backup in flash");
  corrupt->add_option("--dir", dir, "device directory")->required();

  // Application keys and the KPS agent (docs/kps.md).
  std::string label, from_chip, in_file, transfer_id;
  auto* key_new = app.add_subcommand("key-new", "create a random 32-byte application key in secure storage");
  key_new->add_option("--dir", dir, "device directory")->required();
  key_new->add_option("--label", label, "key label ([A-Za-z0-9._-]{1,64})")->required();
  auto* key_kcv = app.add_subcommand("key-kcv", "print a key's check value (first 3 bytes of AES-ECB(key, 0^16))");
  key_kcv->add_option("--dir", dir, "device directory")->required();
  key_kcv->add_option("--label", label, "key label")->required();

  KpsClientConfig kps_config;
  auto* kps = app.add_subcommand("kps", "key transfer through keyline-kps (the device's agent)");
  kps->require_subcommand(1);
  const auto kps_common = [&](CLI::App* sub) {
    sub->add_option("--dir", kps_config.dir, "device directory")->required();
    sub->add_option("--kps", kps_config.url, "KPS base URL, https://HOST:PORT")->envname("KEYLINE_KPS_URL")->required();
    sub->add_option("--ca", kps_config.ca, "CA file (PEM) that issued the KPS server certificate")
        ->envname("KEYLINE_KPS_CA")->required();
    sub->add_option("--kps-key", kps_config.kps_key, "the KPS signing public key (PEM): every answer must verify with it")
        ->envname("KEYLINE_KPS_KEY")->required();
    sub->add_option("--clock-offset-s", kps_config.clock_offset_s, "test only: shift this device's clock (seconds)")
        ->envname("KEYLINE_DEVICE_CLOCK_OFFSET");
  };
  auto* kps_request_cmd = kps->add_subcommand("request", "target: ask for a key held by another device");
  kps_common(kps_request_cmd);
  kps_request_cmd->add_option("--from", from_chip, "chip ID of the source device")->required();
  kps_request_cmd->add_option("--label", label, "label of the key on the source (kept on the target)")->required();
  auto* kps_serve_cmd = kps->add_subcommand("serve-once",
                                            "source: answer every pending transfer request (seal to the target, upload)");
  kps_common(kps_serve_cmd);
  auto* kps_receive_cmd = kps->add_subcommand("receive", "target: fetch, open, store and acknowledge delivered keys");
  kps_common(kps_receive_cmd);
  auto* kps_open_cmd = kps->add_subcommand("open-file", "target, offline: open a sealed key from a file and store it");
  kps_open_cmd->add_option("--dir", kps_config.dir, "device directory")->required();
  kps_open_cmd->add_option("--in", in_file, "KLKE envelope (source-signed sealed key)")->required();
  kps_open_cmd->add_option("--transfer", transfer_id, "transfer id the key was sealed for")->required();
  kps_open_cmd->add_option("--label", label, "label to store the key under")->required();
  kps_open_cmd->add_option("--from", from_chip, "chip ID of the source (default: the envelope's, still verified)");
  KpsAgentOptions agent_options;
  auto* kps_agent_cmd = kps->add_subcommand("agent", "daemon: long-poll notices, serve and receive, reconnect; SIGTERM stops it");
  kps_common(kps_agent_cmd);
  kps_agent_cmd->add_option("--wait", agent_options.wait_s, "long-poll wait in seconds (0..30)")->check(CLI::Range(0, 30));
  kps_agent_cmd->add_flag("--once", agent_options.once, "one poll and its notices, then exit");
  kps_agent_cmd->add_option("--max-backoff-ms", agent_options.max_backoff_ms, "reconnect backoff ceiling")
      ->check(CLI::Range(250, 600000));
  auto* kps_policy_cmd = kps->add_subcommand("policy", "the source's own policy (D/secure/kps-policy)");
  kps_policy_cmd->require_subcommand(1);
  std::string policy_target;
  auto* kps_policy_add = kps_policy_cmd->add_subcommand("add", "allow a target (chip ID or *) keys whose label matches a glob");
  kps_policy_add->add_option("--dir", kps_config.dir, "device directory")->required();
  kps_policy_add->add_option("--target", policy_target, "target chip ID, or * for any")->required();
  kps_policy_add->add_option("--label", label, "label glob (* and ?)")->required();

  // The service channel (docs/service.md "The device side").
  ServiceAgentConfig agent_config;
  std::string out_file;
  auto* agent = app.add_subcommand("service-agent", "call keyline-service over HTTPS and run its APDU batches on this device");
  agent->add_option("--dir", agent_config.dir, "device directory");
  agent->add_option("--service", agent_config.url, "keyline-service base URL, https://HOST:PORT")->envname("KEYLINE_SERVICE_URL");
  agent->add_option("--ca", agent_config.ca, "CA file (PEM) that issued the service's TLS certificate")->envname("KEYLINE_SERVICE_CA");
  auto* agent_open = agent->add_subcommand("open", "open a message a third party sealed to this device's transport key");
  agent_open->add_option("--dir", agent_config.dir, "device directory")->required();
  agent_open->add_option("--in", in_file, "sealed message (HPKE enc || ciphertext)")->required()->check(CLI::ExistingFile);
  agent_open->add_option("--out", out_file, "where the opened message goes (mode 0600)")->required();

  try {
    keyline::core::config::refuse_secret_flags(argc, argv);
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : keyline::core::exit_code::usage;
  }
  return keyline::core::run_guarded("keyline-device", [&]() -> int {
    if (*make) return cmd_make(dir, count, rom_ca, make->get_option("--count")->count() > 0, vendor_dir);
    if (*vendor_init) return cmd_vendor_init(vendor_dir, vendor_name);
    if (*serve) {
      if (!serve_cut.empty()) serve_config.device.faults.power_cut_at_byte = std::stoull(serve_cut);
      if (protocol == "t0") serve_config.device.card.protocol = Protocol::t0;
      return cmd_serve(serve_config);
    }
    if (*boot) return cmd_boot(dir);
    if (*status) return cmd_status(dir);
    if (*wipe) return cmd_wipe_flash(dir);
    if (*key_new) return cmd_key_new(dir, label);
    if (*key_kcv) return cmd_key_kcv(dir, label);
    if (*kps_request_cmd) return cmd_kps_request(kps_config, from_chip, label);
    if (*kps_serve_cmd) return cmd_kps_serve_once(kps_config);
    if (*kps_receive_cmd) return cmd_kps_receive(kps_config);
    if (*kps_open_cmd) return cmd_kps_open_file(kps_config.dir, in_file, transfer_id, label, from_chip);
    if (*kps_agent_cmd) return cmd_kps_agent(kps_config, agent_options);
    if (*kps_policy_add) return cmd_kps_policy_add(kps_config.dir, policy_target, label);
    if (*agent_open) return cmd_service_open(agent_config.dir, in_file, out_file);
    if (*agent) {
      if (agent_config.dir.empty() || agent_config.url.empty() || agent_config.ca.empty())
        throw keyline::core::ConfigError(keyline::core::ErrorCode::Usage, "service-agent needs --dir, --service and --ca");
      return cmd_service_agent(agent_config);
    }
    return cmd_corrupt_flash(dir);
  });
}
