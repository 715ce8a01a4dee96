#include "service_card.h"

#include <botan/hash.h>

#include "keyline/core/applet_protocol.h"
#include "keyline/core/dgi.h"
#include "keyline/core/service_module.h"

namespace keyline::test {

using namespace keyline::core;

namespace {
ResponseApdu sw_only(std::uint16_t sw) {
  ResponseApdu r;
  r.sw = sw;
  return r;
}
}  // namespace

ServiceCard::ServiceCard(ChipId chip, std::uint8_t kvn, SecureBytes comm, Botan::X509_Certificate root)
    : m_chip(chip), m_kvn(kvn), m_comm(std::move(comm)), m_root(std::move(root)) {}

ResponseApdu ServiceCard::transmit(const CommandApdu& c) {
  if ((c.cla & 0x04) != 0 && c.ins != scp::kInsExternalAuthenticate) return secured(c);
  return plain_command(c);
}

ResponseApdu ServiceCard::plain_command(const CommandApdu& c) {
  const Bytes aid(std::begin(applet::kAid), std::end(applet::kAid));
  if (c.ins == applet::ins::select) return sw_only(sw::ok);
  if (c.ins == scp::kInsInitializeUpdate) {
    if (c.p1 != 0 && c.p1 != m_kvn) return sw_only(0x6A88);
    m_host_challenge.assign(c.data.begin(), c.data.end());
    m_init = scp::card_initialize(scp::static_keys_from_comm(m_comm), m_kvn, m_chip, m_host_challenge,
                                  ++counter, aid, 16);
    m_sm.reset();
    ResponseApdu r;
    const Bytes a = scp::encode_initialize_update_answer(m_init->answer);
    r.data.assign(a.begin(), a.end());
    return r;
  }
  if (c.ins == scp::kInsExternalAuthenticate && m_init) {
    try {
      m_sm.emplace(scp::card_authenticate(*m_init, m_host_challenge, c, 16));
      return sw_only(sw::ok);
    } catch (const Error&) {
      m_init.reset();
      return sw_only(0x6982);
    }
  }
  return sw_only(0x6985);
}

ResponseApdu ServiceCard::secured(const CommandApdu& wrapped) {
  if (!m_sm) return sw_only(0x6982);
  CommandApdu c;
  try {
    c = m_sm->unwrap_command(wrapped);
  } catch (const Error&) {
    // A broken channel ends the session: nothing staged is kept (Amendment D section 6.2.4 /
    // docs/service.md).
    m_sm.reset();
    m_staged.clear();
    return sw_only(0x6982);
  }
  ResponseApdu plain;
  const bool last = (c.p1 & 0x80) != 0;
  if (c.ins == 0xE2 || c.ins == 0xE8) {
    m_staged.insert(m_staged.end(), c.data.begin(), c.data.end());
    if (last) {
      const Bytes all = std::move(m_staged);
      m_staged.clear();
      if (c.ins == 0xE2) {
        for (const auto& d : decode_dgis(all.data(), all.size()))
          items[d.tag] = Bytes(d.value.begin(), d.value.end());
      } else {
        try {
          const auto m = service::parse_module(all);
          service::verify_module(m, m_root);
          if (modules.count(m.name) && modules[m.name] >= m.version)
            plain.sw = 0x6985;
          else
            modules[m.name] = m.version;
        } catch (const Error&) {
          plain.sw = 0x6982;
        }
      }
    }
  } else if (c.ins == 0xF2) {
    service::DeviceStatus st;
    st.imei = imei;
    st.lifecycle = 0x0F;
    st.kvn = m_kvn;
    for (const auto& [name, version] : modules) st.modules.push_back({name, version});
    for (const auto& [tag, value] : items) {
      const auto d = Botan::HashFunction::create_or_throw("SHA-256")->process(value);
      st.items.push_back({tag, Bytes(d.begin(), d.end())});
    }
    const Bytes enc = service::encode_device_status(st);
    plain.data.assign(enc.begin(), enc.end());
  } else if (c.ins == scp::kInsPutKey) {
    // The new key replaces the old one durably; the session keeps running under its session keys.
    try {
      auto put = scp::parse_put_comm_key(m_init->keys.dek, c);
      if (c.p1 != m_kvn || put.new_kvn <= m_kvn)
        plain.sw = 0x6A80;
      else
        m_kvn = put.new_kvn, m_comm = std::move(put.comm), plain.data.push_back(m_kvn);
    } catch (const Error&) {
      plain.sw = 0x6A80;
    }
  } else {
    plain.sw = 0x6D00;
  }
  return m_sm->wrap_response(plain);
}

}  // namespace keyline::test
