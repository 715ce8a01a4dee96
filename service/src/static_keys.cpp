#include "static_keys.h"

#include <botan/mac.h>

#include <map>
#include <mutex>

#include "keyline/service/errors.h"

namespace keyline::service {

using core::scp::StaticKey;

namespace {

// A search makes SoftHSM pass over every token object file (core/src/pkcs11.cpp, cached_secret_key),
// dearer than the derivation it precedes, so each master's handle is found once per process. A
// master destroyed and made again under its label gives a stale handle: derive() finds it again once.
class MasterHandles {
 public:
  template <typename Op>
  auto derive(core::Pkcs11Token& token, const std::string& label, Op op)
      -> decltype(op(core::Pkcs11Handle{})) {
    try {
      return op(handle(token, label, false));
    } catch (const core::Pkcs11Error&) {
      return op(handle(token, label, true));
    }
  }

 private:
  core::Pkcs11Handle handle(core::Pkcs11Token& token, const std::string& label, bool fresh) {
    const auto key = std::make_pair(&token, label);
    {
      std::lock_guard<std::mutex> g(m_mutex);
      const auto it = m_handles.find(key);
      if (!fresh && it != m_handles.end()) return it->second;
    }
    core::Pkcs11Handle h = 0;
    try {
      h = token.find_secret_key(label);
    } catch (const core::Pkcs11Error&) {
      throw core::Error(errc::NoMaster, "the token has no master '" + label + "'");
    }
    std::lock_guard<std::mutex> g(m_mutex);
    m_handles[key] = h;
    return h;
  }
  std::mutex m_mutex;
  std::map<std::pair<core::Pkcs11Token*, std::string>, core::Pkcs11Handle> m_handles;
};

MasterHandles& masters() {
  static MasterHandles m;
  return m;
}

}  // namespace

std::string master_label(const std::string& base, int version) {
  return version == 1 ? base : base + "-v" + std::to_string(version);
}

core::SecureBytes comm_for_rotation(core::Pkcs11Token& token, const std::string& base_label, int version,
                                    const core::ChipId& chip) {
  if (version != 2) throw core::Error(errc::BadKeyVersion, "a key is rotated to derivation version 2 only");
  const Bytes data = core::scp::comm_derivation_data_v2(chip);
  const auto h = masters().derive(token, master_label(base_label, version), [&](core::Pkcs11Handle master) {
    return token.derive_aes_ecb(master, data, {32, false, false, true});
  });
  core::SecureBytes comm;
  try {
    comm = token.secret_value(h);
  } catch (...) {
    token.destroy_object(h);
    throw;
  }
  token.destroy_object(h);
  return comm;
}

DeviceStaticKeys::DeviceStaticKeys(std::shared_ptr<core::Pkcs11Token> token, const std::string& base_label,
                                   int version, const core::ChipId& chip, const core::Imei& imei)
    : m_token(std::move(token)), m_version(version) {
  if (version != 1 && version != 2)
    throw core::Error(errc::BadKeyVersion,
                      "derivation version " + std::to_string(version) + " is not 1 or 2");
  const std::string label = master_label(base_label, version);
  if (version == 1) {
    // The legacy path (docs/service.md): version 1's comm is HMAC-SHA-256 on the token, so it comes
    // out; the static keys are then computed here and forgotten with this object.
    const std::string input = "keyline/comm/v1" + imei.str();
    core::SecureBytes comm;
    try {
      comm = m_token->derive_hmac_sha256(label, Bytes(input.begin(), input.end()));
    } catch (const core::Pkcs11Error& e) {
      if (e.code() != core::ErrorCode::Pkcs11KeyNotFound) throw;
      throw core::Error(errc::NoMaster, "the token has no master '" + label + "'");
    }
    m_soft = core::scp::static_keys_from_comm(comm);
    return;
  }
  const Bytes data = core::scp::comm_derivation_data_v2(chip);
  m_comm = masters().derive(*m_token, label, [&](core::Pkcs11Handle master) {
    return m_token->derive_aes_ecb(master, data, {32, true, false, false});
  });
}

DeviceStaticKeys::~DeviceStaticKeys() {
  for (auto h : m_keys)
    if (h != 0) {
      try {
        m_token->destroy_object(h);
      } catch (...) {
      }  // the session's close frees it anyway
    }
  if (m_comm != 0) {
    try {
      m_token->destroy_object(m_comm);
    } catch (...) {
    }
  }
}

core::scp::StaticCmac DeviceStaticKeys::cmac() {
  return [this](StaticKey which, const Bytes& data) {
    return m_version == 1 ? cmac_v1(which, data) : cmac_v2(which, data);
  };
}

Bytes DeviceStaticKeys::cmac_v1(StaticKey which, const Bytes& data) const {
  const auto& k = which == StaticKey::Enc ? m_soft->enc : which == StaticKey::Mac ? m_soft->mac : m_soft->dek;
  auto mac =
      Botan::MessageAuthenticationCode::create_or_throw("CMAC(AES-" + std::to_string(k.size() * 8) + ")");
  mac->set_key(k);
  mac->update(data);
  const auto tag = mac->final();
  return Bytes(tag.begin(), tag.end());
}

Bytes DeviceStaticKeys::cmac_v2(StaticKey which, const Bytes& data) {
  auto& h = m_keys[static_cast<int>(which)];
  if (h == 0)
    h = m_token->derive_aes_ecb(m_comm, core::scp::static_key_diversifier(which), {16, false, true, false});
  return m_token->cmac(h, data);
}

}  // namespace keyline::service
