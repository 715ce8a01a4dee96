// Where a device's keys come from: the part of the claim (and of the package the issue step builds)
// that differs between key sources, behind one interface (docs/station.md, "Key sources").
//   generate  P-256 identity and X25519 transport keys made on the station for each device
//   pool      pre-generated key sets, wrapped by the token, claimed from the temporary secure DB
//   device    the chip makes both keys (GENERATE KEY) and attests their public halves; the claim
//             takes only an IMEI and the flow's attest step fills the public halves
//             (key_source_device.cpp, docs/station.md)
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "keyline/core/cplc.h"
#include "keyline/core/data_package.h"
#include "keyline/core/pkcs11.h"
#include "keyline/core/pq.h"
#include "keyline/station/pool.h"

namespace Botan {
class Public_Key;
}

namespace keyline::station {

class JournalDb;

// A device's private keys and the public halves derived from them: the only halves ever certified.
// With keys made in the device the private halves stay empty and the halves are the attested ones.
struct DeviceKeys {
  core::SecureBytes identity_pkcs8;  // P-256, PKCS#8
  core::SecureBytes transport_raw;   // X25519, 32 bytes
  PublicHalves pub;
};

// A journal row's wrapped keys and the public halves they must give (journal.device columns).
struct JournalKeys {
  std::int64_t row_id = 0;
  core::Bytes identity_wrapped, transport_wrapped, identity_public, transport_public;
};

// Runs one SQL statement: inside the key source's transaction, or as a journal step of its own.
using ClaimExec = std::function<core::pq::Result(const char* sql, core::pq::Params params)>;
// Journals a claim of `keys` through `exec`. `imei` is the IMEI the source took in its transaction;
// empty: the claim statement takes the lowest free IMEI itself. Throws what the statement throws.
using ClaimWriter = std::function<void(const ClaimExec& exec, const std::string& imei, const DeviceKeys& keys)>;

class KeySource {
 public:
  virtual ~KeySource() = default;
  virtual const char* name() const noexcept = 0;
  // The chip makes the keys: no private half on the station, a version 2 package (keys_in_device).
  virtual bool keys_in_device() const noexcept { return false; }

  // A new claim: takes a key set and has `write` journal it, all or nothing: when `write` or the
  // source fails, no IMEI and no key set has left the pool. Throws Error(PoolEmpty) when the pool
  // has none, Error(KeyMismatch) for a stored key set that does not open (it is quarantined).
  virtual DeviceKeys claim(JournalDb& db, const ClaimWriter& write) = 0;

  // A resumed claim: the keys of the chip's journal row again (unwrapped for that row only).
  // Throws Error(KeyMismatch) when a blob does not open for the row or does not give its public half.
  virtual DeviceKeys reopen(const core::ChipId& chip, const JournalKeys& row) = 0;

  // The identity key the Device CA certifies: the half derived from the private key, never one read
  // from a database.
  virtual std::unique_ptr<Botan::Public_Key> identity_key(const DeviceKeys& keys) const = 0;
  // The private keys the data package carries to the device (docs/protocol.md, DGIs 8xxx).
  virtual void fill_package(core::DataPackage& package, const DeviceKeys& keys) const = 0;
};

// "generate", "pool" or "device" (StationConfig::key_source). Throws ConfigError(Config) for another name.
std::unique_ptr<KeySource> make_key_source(const std::string& name, core::Pkcs11Token& token);
std::unique_ptr<KeySource> make_device_key_source();  // key_source_device.cpp

}  // namespace keyline::station
