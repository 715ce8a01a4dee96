#include "keyline/core/device_channel.h"

#include "keyline/core/device_link.h"
#include "keyline/core/error.h"
#include "keyline/core/pcsc.h"

namespace keyline::core {

std::unique_ptr<DeviceChannel> open_device_channel(const std::string& address, const ChannelOptions& options) {
  const std::string scheme = kPcscScheme;
  if (address.compare(0, scheme.size(), scheme) == 0) {
    std::string reader = address.substr(scheme.size());
    if (reader.empty()) throw ConfigError(ErrorCode::Config, "device address 'pcsc:' names no reader");
    return std::make_unique<pcsc::PcscChannel>(std::move(reader), options);
  }
  std::pair<std::string, int> endpoint;
  try {
    endpoint = DeviceLink::parse_endpoint(address);
  } catch (const ConfigError& e) {
    throw ConfigError(ErrorCode::Config, std::string("device address must be HOST:PORT or pcsc:READER (") + e.what() + ")");
  }
  const auto& [host, port] = endpoint;
  DeviceLinkOptions o;
  o.connect_timeout = options.connect_timeout;
  o.io_timeout = options.io_timeout;
  o.max_chunk = options.max_chunk;
  return std::make_unique<DeviceLink>(host, port, o);
}

}  // namespace keyline::core
