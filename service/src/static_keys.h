// The static SCP03 keys of one device, as a core::scp::StaticCmac (docs/service.md "Key derivation").
// Version 2: comm and K-ENC/K-MAC/K-DEK are session objects on the token (never extractable, comm
// DERIVE only, the static keys SIGN only), made per handshake and destroyed with this object.
// Version 1 (legacy, documented): comm comes out of the token's HMAC master and the static keys are
// computed in process, held in SecureBytes for the handshake only.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "keyline/core/cplc.h"
#include "keyline/core/imei.h"
#include "keyline/core/pkcs11.h"
#include "keyline/core/scp03.h"
#include "keyline/core/scp03_session.h"
#include "session.h"

namespace keyline::service {

using core::Bytes;

class DeviceStaticKeys : public StaticKeySource {
 public:
  // Throws Error(errc::NoMaster) when the token lacks that version's master, Error(BadKeyVersion)
  // for a version other than 1 or 2.
  DeviceStaticKeys(std::shared_ptr<core::Pkcs11Token> token, const std::string& master_label, int version,
                   const core::ChipId& chip, const core::Imei& imei);
  ~DeviceStaticKeys() override;
  DeviceStaticKeys(const DeviceStaticKeys&) = delete;
  DeviceStaticKeys& operator=(const DeviceStaticKeys&) = delete;

  core::scp::StaticCmac cmac() override;
  int version() const noexcept { return m_version; }

 private:
  Bytes cmac_v1(core::scp::StaticKey which, const Bytes& data) const;
  Bytes cmac_v2(core::scp::StaticKey which, const Bytes& data);

  std::shared_ptr<core::Pkcs11Token> m_token;
  int m_version;
  core::Pkcs11Handle m_comm = 0;
  core::Pkcs11Handle m_keys[3] = {0, 0, 0};          // Enc, Mac, Dek, derived on first use
  std::optional<core::scp::Scp03StaticKeys> m_soft;  // version 1 only
};

// comm of version 2 for PUT KEY (docs/service.md "Key rotation"): derived into an extractable session
// object, read and destroyed; the caller encrypts it under S-DEK and forgets it.
core::SecureBytes comm_for_rotation(core::Pkcs11Token& token, const std::string& master_label, int version,
                                    const core::ChipId& chip);

// The token label of master version `version` (docs/custody.md: "keyline-master", "keyline-master-vN").
std::string master_label(const std::string& base, int version);

}  // namespace keyline::service
