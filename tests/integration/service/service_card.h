// The device's side of the service channel for integration_service, built only from core's card
// functions (core/scp03_session.h, core/scp03.h, core/service_module.h): INITIALIZE UPDATE, EXTERNAL
// AUTHENTICATE, then STORE DATA of DGIs 0Fxx, LOAD MODULE and GET STATUS under the channel. It stands
// for keyline-device's applet until the service commands land there (docs/service.md "Tests").
#pragma once

#include <botan/x509cert.h>

#include <map>
#include <optional>
#include <string>

#include "keyline/core/apdu.h"
#include "keyline/core/cplc.h"
#include "keyline/core/scp03.h"
#include "keyline/core/scp03_session.h"

namespace keyline::test {

class ServiceCard {
 public:
  ServiceCard(core::ChipId chip, std::uint8_t kvn, core::SecureBytes comm, Botan::X509_Certificate root);
  core::ResponseApdu transmit(const core::CommandApdu& c);

  // What survives a reboot (the flash): items by DGI, modules by name.
  std::map<std::uint16_t, core::Bytes> items;
  std::map<std::string, std::uint32_t> modules;
  std::uint32_t counter = 0;
  std::string imei = "490154203237518";
  void reboot() { m_sm.reset(), m_init.reset(), m_staged.clear(); }

 private:
  core::ResponseApdu secured(const core::CommandApdu& c);
  core::ResponseApdu plain_command(const core::CommandApdu& c);

  core::ChipId m_chip;
  std::uint8_t m_kvn;
  core::SecureBytes m_comm;
  Botan::X509_Certificate m_root;
  core::Bytes m_host_challenge;
  std::optional<core::scp::CardInitialize> m_init;
  std::optional<core::scp::SecureMessaging> m_sm;
  core::Bytes m_staged;  // STORE DATA / LOAD MODULE pieces before the last one
};

}  // namespace keyline::test
