#include "keyline/core/pkcs11.h"

#include <dlfcn.h>
#include <p11-kit/pkcs11.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>
#include <map>
#include <utility>

#include <botan/ber_dec.h>
#include <botan/bigint.h>
#include <botan/der_enc.h>
#include <botan/ec_group.h>
#include <botan/hash.h>
#include <botan/pk_ops.h>

#include "keyline/core/error.h"

namespace keyline::core {

namespace {

struct RvName {
  CK_RV rv;
  const char* name;
};
#define X(n) {n, #n},
const RvName kRvNames[] = {
    {CKR_OK, "CKR_OK"},
      X(CKR_ACTION_PROHIBITED)
      X(CKR_ARGUMENTS_BAD)
      X(CKR_ATTRIBUTE_READ_ONLY)
      X(CKR_ATTRIBUTE_SENSITIVE)
      X(CKR_ATTRIBUTE_TYPE_INVALID)
      X(CKR_ATTRIBUTE_VALUE_INVALID)
      X(CKR_BUFFER_TOO_SMALL)
      X(CKR_CANCEL)
      X(CKR_CANT_LOCK)
      X(CKR_CRYPTOKI_ALREADY_INITIALIZED)
      X(CKR_CRYPTOKI_NOT_INITIALIZED)
      X(CKR_CURVE_NOT_SUPPORTED)
      X(CKR_DATA_INVALID)
      X(CKR_DATA_LEN_RANGE)
      X(CKR_DEVICE_ERROR)
      X(CKR_DEVICE_MEMORY)
      X(CKR_DEVICE_REMOVED)
      X(CKR_DOMAIN_PARAMS_INVALID)
      X(CKR_ENCRYPTED_DATA_INVALID)
      X(CKR_ENCRYPTED_DATA_LEN_RANGE)
      X(CKR_EXCEEDED_MAX_ITERATIONS)
      X(CKR_FIPS_SELF_TEST_FAILED)
      X(CKR_FUNCTION_CANCELED)
      X(CKR_FUNCTION_FAILED)
      X(CKR_FUNCTION_NOT_PARALLEL)
      X(CKR_FUNCTION_NOT_SUPPORTED)
      X(CKR_FUNCTION_REJECTED)
      X(CKR_GENERAL_ERROR)
      X(CKR_HOST_MEMORY)
      X(CKR_INFORMATION_SENSITIVE)
      X(CKR_KEY_CHANGED)
      X(CKR_KEY_FUNCTION_NOT_PERMITTED)
      X(CKR_KEY_HANDLE_INVALID)
      X(CKR_KEY_INDIGESTIBLE)
      X(CKR_KEY_NEEDED)
      X(CKR_KEY_NOT_NEEDED)
      X(CKR_KEY_NOT_WRAPPABLE)
      X(CKR_KEY_SIZE_RANGE)
      X(CKR_KEY_TYPE_INCONSISTENT)
      X(CKR_KEY_UNEXTRACTABLE)
      X(CKR_LIBRARY_LOAD_FAILED)
      X(CKR_MECHANISM_INVALID)
      X(CKR_MECHANISM_PARAM_INVALID)
      X(CKR_MUTEX_BAD)
      X(CKR_MUTEX_NOT_LOCKED)
      X(CKR_NEED_TO_CREATE_THREADS)
      X(CKR_NEW_PIN_MODE)
      X(CKR_NEXT_OTP)
      X(CKR_NO_EVENT)
      X(CKR_OBJECT_HANDLE_INVALID)
      X(CKR_OPERATION_ACTIVE)
      X(CKR_OPERATION_NOT_INITIALIZED)
      X(CKR_PIN_EXPIRED)
      X(CKR_PIN_INCORRECT)
      X(CKR_PIN_INVALID)
      X(CKR_PIN_LEN_RANGE)
      X(CKR_PIN_LOCKED)
      X(CKR_PIN_TOO_WEAK)
      X(CKR_PUBLIC_KEY_INVALID)
      X(CKR_RANDOM_NO_RNG)
      X(CKR_RANDOM_SEED_NOT_SUPPORTED)
      X(CKR_SAVED_STATE_INVALID)
      X(CKR_SESSION_CLOSED)
      X(CKR_SESSION_COUNT)
      X(CKR_SESSION_EXISTS)
      X(CKR_SESSION_HANDLE_INVALID)
      X(CKR_SESSION_PARALLEL_NOT_SUPPORTED)
      X(CKR_SESSION_READ_ONLY)
      X(CKR_SESSION_READ_ONLY_EXISTS)
      X(CKR_SESSION_READ_WRITE_SO_EXISTS)
      X(CKR_SIGNATURE_INVALID)
      X(CKR_SIGNATURE_LEN_RANGE)
      X(CKR_SLOT_ID_INVALID)
      X(CKR_STATE_UNSAVEABLE)
      X(CKR_TEMPLATE_INCOMPLETE)
      X(CKR_TEMPLATE_INCONSISTENT)
      X(CKR_TOKEN_NOT_PRESENT)
      X(CKR_TOKEN_NOT_RECOGNIZED)
      X(CKR_TOKEN_WRITE_PROTECTED)
      X(CKR_UNWRAPPING_KEY_SIZE_RANGE)
      X(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT)
      X(CKR_USER_ALREADY_LOGGED_IN)
      X(CKR_USER_ANOTHER_ALREADY_LOGGED_IN)
      X(CKR_USER_NOT_LOGGED_IN)
      X(CKR_USER_PIN_NOT_INITIALIZED)
      X(CKR_USER_TOO_MANY_TYPES)
      X(CKR_USER_TYPE_INVALID)
      X(CKR_WRAPPED_KEY_INVALID)
      X(CKR_WRAPPED_KEY_LEN_RANGE)
      X(CKR_WRAPPING_KEY_HANDLE_INVALID)
      X(CKR_WRAPPING_KEY_SIZE_RANGE)
      X(CKR_WRAPPING_KEY_TYPE_INCONSISTENT)
};
#undef X

[[noreturn]] void fail(ErrorCode code, const std::string& what, CK_RV rv) {
  throw Pkcs11Error(code, what + ": " + pkcs11_rv_name(rv), rv);
}

void check(CK_RV rv, const char* what) {
  if (rv != CKR_OK) fail(ErrorCode::Pkcs11, what, rv);
}

// CKA_EC_PARAMS for P-256: the namedCurve OID 1.2.840.10045.3.1.7 (RFC 5480 section 2.1.1.1), DER.
const CK_BYTE kP256Params[] = {0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07};

// AES-GCM as used by wrap_data: 96-bit nonce and 128-bit tag (NIST SP 800-38D sections 5.2.1.1
// and 5.2.1.2). The associated data is the domain separator "keyline wrap v1" followed by the
// caller's context (the row a blob belongs to), so a blob opens only for the purpose and the row
// it was made for (SP 800-38D section 5.2.1.1: the AAD is authenticated, not encrypted).
constexpr std::size_t kGcmNonce = 12;
constexpr std::size_t kGcmTag = 16;
const char kWrapDomain[] = "keyline wrap v1";

Bytes wrap_aad(const Bytes& context) {
  // An empty context would give the unbound AAD of blobs made before docs/decisions.md "Wrapped keys
  // are bound to their row" (migration 0006 voided those): refuse it rather than make more.
  if (context.empty()) throw CryptoError(ErrorCode::Crypto, "wrapping needs associated data naming the blob's row");
  Bytes aad(kWrapDomain, kWrapDomain + sizeof kWrapDomain - 1);
  aad.insert(aad.end(), context.begin(), context.end());
  return aad;
}

// `aad` must outlive the returned parameters (they point into it).
CK_GCM_PARAMS wrap_gcm_params(CK_BYTE_PTR nonce, Bytes& aad) {
  CK_GCM_PARAMS gcm{};
  gcm.pIv = nonce;
  gcm.ulIvLen = kGcmNonce;
  gcm.ulIvBits = kGcmNonce * 8;
  gcm.pAAD = aad.data();
  gcm.ulAADLen = aad.size();
  gcm.ulTagBits = kGcmTag * 8;
  return gcm;
}

std::string trim_label(const unsigned char* p, std::size_t n) {
  std::string s(reinterpret_cast<const char*>(p), n);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) s.pop_back();
  return s;
}

}  // namespace

std::string pkcs11_rv_name(Pkcs11Ulong rv) {
  for (const auto& n : kRvNames)
    if (n.rv == rv) return n.name;
  char buf[32];
  std::snprintf(buf, sizeof buf, "CKR_0x%08lX", rv);
  return buf;
}

// ---------------------------------------------------------------------------------------------
// Module

struct Pkcs11Module::Library {
  std::string path;
  void* dl = nullptr;
  CK_FUNCTION_LIST_PTR fn = nullptr;
  bool finalize = false;

  ~Library();
};

namespace {
// A module is initialized once per process (PKCS #11 v2.40 section 5.4: a second C_Initialize
// returns CKR_CRYPTOKI_ALREADY_INITIALIZED, and C_Finalize would pull the rug from every other
// user), so loaded modules are shared by path. The mutex also covers C_Finalize, so a module being
// unloaded and the same module being loaded again do not interleave; it is recursive because a
// failed load destroys its half-made Library while the loader still holds it.
std::recursive_mutex g_modules_mutex;
std::map<std::string, std::weak_ptr<Pkcs11Module::Library>> g_modules;
}  // namespace

Pkcs11Module::Library::~Library() {
  std::lock_guard<std::recursive_mutex> lock(g_modules_mutex);
  if (fn && finalize) fn->C_Finalize(nullptr);
  if (dl) ::dlclose(dl);
}

Pkcs11Module::Pkcs11Module(const std::string& path) {
  std::lock_guard<std::recursive_mutex> lock(g_modules_mutex);
  if (auto existing = g_modules[path].lock()) {
    m_lib = std::move(existing);
    return;
  }
  auto lib = std::make_shared<Library>();
  lib->path = path;
  lib->dl = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib->dl) {
    const char* why = ::dlerror();
    throw Pkcs11Error(ErrorCode::Pkcs11, "cannot load PKCS#11 module " + path + ": " + (why ? why : "?"));
  }
  auto get_list = reinterpret_cast<CK_C_GetFunctionList>(::dlsym(lib->dl, "C_GetFunctionList"));
  if (!get_list) throw Pkcs11Error(ErrorCode::Pkcs11, "not a PKCS#11 module (no C_GetFunctionList): " + path);
  check(get_list(&lib->fn), "C_GetFunctionList");
  // CKF_OS_LOCKING_OK: the library may use OS threading primitives, so sessions can be used from
  // several threads at once (one thread per session) - PKCS #11 v2.40 section 5.4, C_Initialize.
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  const CK_RV rv = lib->fn->C_Initialize(&args);
  if (rv == CKR_OK)
    lib->finalize = true;
  else if (rv != CKR_CRYPTOKI_ALREADY_INITIALIZED)
    fail(ErrorCode::Pkcs11, "C_Initialize " + path, rv);
  g_modules[path] = lib;
  m_lib = std::move(lib);
}

Pkcs11Module::~Pkcs11Module() = default;

const std::string& Pkcs11Module::path() const noexcept { return m_lib->path; }

Pkcs11Handle Pkcs11Module::find_slot(const std::string& token_label) const {
  CK_ULONG n = 0;
  check(m_lib->fn->C_GetSlotList(CK_TRUE, nullptr, &n), "C_GetSlotList");
  std::vector<CK_SLOT_ID> slots(n);
  if (n) check(m_lib->fn->C_GetSlotList(CK_TRUE, slots.data(), &n), "C_GetSlotList");
  slots.resize(n);
  std::vector<CK_SLOT_ID> found;
  for (CK_SLOT_ID s : slots) {
    CK_TOKEN_INFO info{};
    if (m_lib->fn->C_GetTokenInfo(s, &info) != CKR_OK) continue;
    if (!(info.flags & CKF_TOKEN_INITIALIZED)) continue;
    if (trim_label(info.label, sizeof info.label) == token_label) found.push_back(s);
  }
  if (found.empty())
    throw Pkcs11Error(ErrorCode::Pkcs11NoToken, "no initialized token labelled '" + token_label + "' in " + m_lib->path);
  // A second token of the label (one planted by whoever can write the token directory) would make the
  // choice the slot order's: neither is used.
  if (found.size() > 1)
    throw Pkcs11Error(ErrorCode::Pkcs11DuplicateToken, std::to_string(found.size()) + " initialized tokens labelled '" +
                                                           token_label + "' in " + m_lib->path + ": refusing to choose");
  return found.front();
}

std::vector<Pkcs11Ulong> Pkcs11Module::mechanisms(Pkcs11Handle slot) const {
  CK_ULONG n = 0;
  check(m_lib->fn->C_GetMechanismList(slot, nullptr, &n), "C_GetMechanismList");
  std::vector<CK_MECHANISM_TYPE> m(n);
  if (n) check(m_lib->fn->C_GetMechanismList(slot, m.data(), &n), "C_GetMechanismList");
  m.resize(n);
  return {m.begin(), m.end()};
}

// ---------------------------------------------------------------------------------------------
// Session

Pkcs11Session::Pkcs11Session(std::shared_ptr<Pkcs11Module::Library> lib, Pkcs11Handle slot,
                             const SecureBytes& user_pin)
    : m_lib(std::move(lib)) {
  CK_SESSION_HANDLE h = 0;
  check(m_lib->fn->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &h), "C_OpenSession");
  m_session = h;
  // Login state is per application and token, not per session (PKCS #11 v2.40 section 5.6):
  // every session after the first sees CKR_USER_ALREADY_LOGGED_IN, which is success here.
  const CK_RV rv = m_lib->fn->C_Login(h, CKU_USER, const_cast<CK_UTF8CHAR_PTR>(user_pin.data()), user_pin.size());
  if (rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN) return;
  m_lib->fn->C_CloseSession(h);
  m_session = 0;
  if (rv == CKR_PIN_INCORRECT || rv == CKR_PIN_INVALID || rv == CKR_PIN_LEN_RANGE || rv == CKR_PIN_LOCKED ||
      rv == CKR_PIN_EXPIRED || rv == CKR_USER_PIN_NOT_INITIALIZED)
    fail(ErrorCode::Pkcs11LoginFailed, "token login refused", rv);
  fail(ErrorCode::Pkcs11, "C_Login", rv);
}

Pkcs11Session::~Pkcs11Session() {
  if (m_session) m_lib->fn->C_CloseSession(m_session);
}

std::vector<Pkcs11Handle> Pkcs11Session::find_objects(Pkcs11Ulong object_class, const std::string& label) const {
  CK_OBJECT_CLASS cls = object_class;
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &cls, sizeof cls},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
  };
  auto* fn = m_lib->fn;
  check(fn->C_FindObjectsInit(m_session, tmpl, 2), "C_FindObjectsInit");
  std::vector<Pkcs11Handle> out;
  CK_OBJECT_HANDLE buf[16];
  CK_ULONG n = 0;
  CK_RV rv;
  while ((rv = fn->C_FindObjects(m_session, buf, 16, &n)) == CKR_OK && n > 0) out.insert(out.end(), buf, buf + n);
  fn->C_FindObjectsFinal(m_session);
  check(rv, "C_FindObjects");
  return out;
}

Bytes Pkcs11Session::attribute(Pkcs11Handle object, Pkcs11Ulong type) const {
  CK_ATTRIBUTE a{type, nullptr, 0};
  check(m_lib->fn->C_GetAttributeValue(m_session, object, &a, 1), "C_GetAttributeValue");
  if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION)
    fail(ErrorCode::Pkcs11, "C_GetAttributeValue", CKR_ATTRIBUTE_TYPE_INVALID);
  Bytes v(a.ulValueLen);
  a.pValue = v.data();
  check(m_lib->fn->C_GetAttributeValue(m_session, object, &a, 1), "C_GetAttributeValue");
  v.resize(a.ulValueLen);
  return v;
}

bool Pkcs11Session::bool_attribute(Pkcs11Handle object, Pkcs11Ulong type) const {
  const Bytes v = attribute(object, type);
  if (v.size() != sizeof(CK_BBOOL)) throw Pkcs11Error(ErrorCode::Pkcs11, "attribute is not a CK_BBOOL");
  return v[0] != CK_FALSE;
}

// ---------------------------------------------------------------------------------------------
// Token and pool

Pkcs11Token::Pkcs11Token(Pkcs11Module module, Pkcs11Handle slot, SecureBytes pin, std::size_t max_sessions)
    : m_module(std::move(module)), m_slot(slot), m_pin(std::move(pin)), m_max_sessions(std::max<std::size_t>(1, max_sessions)) {}

std::shared_ptr<Pkcs11Token> Pkcs11Token::open(const std::string& module_path, const std::string& token_label,
                                               const SecureBytes& user_pin, std::size_t max_sessions) {
  // SoftHSM 2.6's file store reads the token's files at C_Initialize under fcntl locks it does not
  // wait for: while another process holds one (two stations starting together), the token can look
  // absent. Loading the module again a moment later reads it properly; a token that really is not
  // there still fails after ~0.35 s. (With another Pkcs11Token of this process alive the module stays
  // loaded and the retry finds what the first one found.)
  std::optional<Pkcs11Module> module;
  Pkcs11Handle slot = 0;
  for (int attempt = 1;; ++attempt) {
    try {
      module.emplace(module_path);
      slot = module->find_slot(token_label);
      break;
    } catch (const Pkcs11Error& e) {
      if (e.code() != ErrorCode::Pkcs11NoToken || attempt == 4) throw;
      module.reset();
      std::this_thread::sleep_for(std::chrono::milliseconds(50 << (attempt - 1)));
    }
  }
  std::shared_ptr<Pkcs11Token> t(new Pkcs11Token(std::move(*module), slot, user_pin, max_sessions));
  // The first session logs in now, so a wrong PIN surfaces here, and it stays open for the
  // token's lifetime: closing the last session would log the application out.
  auto first = std::make_unique<Pkcs11Session>(t->m_module.library(), slot, t->m_pin);
  t->m_open = 1;
  t->m_idle.push_back(std::move(first));
  return t;
}

Pkcs11Token::~Pkcs11Token() = default;

Pkcs11Token::Lease::~Lease() {
  if (m_session) m_token->give_back(std::move(m_session));
}

Pkcs11Token::Lease Pkcs11Token::session() {
  std::unique_lock<std::mutex> lock(m_mutex);
  m_cv.wait(lock, [&] { return !m_idle.empty() || m_open < m_max_sessions; });
  if (!m_idle.empty()) {
    auto s = std::move(m_idle.back());
    m_idle.pop_back();
    return Lease(*this, std::move(s));
  }
  ++m_open;
  lock.unlock();
  try {
    return Lease(*this, std::make_unique<Pkcs11Session>(m_module.library(), m_slot, m_pin));
  } catch (...) {
    lock.lock();
    --m_open;
    m_cv.notify_one();
    throw;
  }
}

void Pkcs11Token::give_back(std::unique_ptr<Pkcs11Session> s) {
  {
    std::lock_guard<std::mutex> lock(m_mutex);
    m_idle.push_back(std::move(s));
  }
  m_cv.notify_one();
}

namespace {
CK_FUNCTION_LIST_PTR fns(const Pkcs11Module& m) { return m.library()->fn; }
}  // namespace

bool Pkcs11Token::has_private_key(const std::string& label) {
  auto s = session();
  return !s->find_objects(CKO_PRIVATE_KEY, label).empty();
}

bool Pkcs11Token::has_public_key(const std::string& label) {
  auto s = session();
  return !s->find_objects(CKO_PUBLIC_KEY, label).empty();
}

bool Pkcs11Token::has_secret_key(const std::string& label) {
  auto s = session();
  return !s->find_objects(CKO_SECRET_KEY, label).empty();
}

std::vector<std::string> Pkcs11Token::key_usages(const std::string& label) {
  static const std::pair<CK_ATTRIBUTE_TYPE, const char*> kUsages[] = {
      {CKA_ENCRYPT, "encrypt"}, {CKA_DECRYPT, "decrypt"}, {CKA_SIGN, "sign"},    {CKA_VERIFY, "verify"},
      {CKA_WRAP, "wrap"},       {CKA_UNWRAP, "unwrap"},   {CKA_DERIVE, "derive"}};
  auto s = session();
  std::vector<Pkcs11Handle> objects;
  for (const CK_OBJECT_CLASS c : {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY, CKO_SECRET_KEY})
    for (const auto h : s->find_objects(c, label)) objects.push_back(h);
  std::vector<std::string> out;
  for (const auto& [type, name] : kUsages)
    for (const auto h : objects) {
      CK_BBOOL v = CK_FALSE;
      CK_ATTRIBUTE a{type, &v, sizeof v};
      // CKR_ATTRIBUTE_TYPE_INVALID: the class has no such usage (CKA_SIGN on a public key), so it is off.
      if (fns(m_module)->C_GetAttributeValue(s->handle(), h, &a, 1) == CKR_OK && v == CK_TRUE) {
        out.push_back(name);
        break;
      }
    }
  return out;
}

Pkcs11Handle Pkcs11Token::find_private_key(const std::string& label) {
  auto s = session();
  const auto found = s->find_objects(CKO_PRIVATE_KEY, label);
  if (found.empty()) throw Pkcs11Error(ErrorCode::Pkcs11KeyNotFound, "no private key labelled '" + label + "' on the token");
  if (found.size() > 1) throw Pkcs11Error(ErrorCode::Pkcs11, "several private keys labelled '" + label + "'");
  return found.front();
}

Pkcs11Handle Pkcs11Token::find_secret_key(const std::string& label) {
  auto s = session();
  const auto found = s->find_objects(CKO_SECRET_KEY, label);
  if (found.empty()) throw Pkcs11Error(ErrorCode::Pkcs11KeyNotFound, "no secret key labelled '" + label + "' on the token");
  if (found.size() > 1) throw Pkcs11Error(ErrorCode::Pkcs11, "several secret keys labelled '" + label + "'");
  return found.front();
}

// A search costs SoftHSM a pass over every token object file (open, lock, stat: ~15 system calls
// each), which made the lookup cost more than the HMAC or the AES it preceded. A token object keeps
// its handle for as long as it exists, in every session of the application (PKCS #11 v2.40 base:
// an object handle is valid in all sessions of the application that obtained it), so it is found once.
Pkcs11Handle Pkcs11Token::cached_secret_key(const std::string& label) {
  {
    std::lock_guard<std::mutex> lock(m_handles_mutex);
    const auto it = m_secret_handles.find(label);
    if (it != m_secret_handles.end()) return it->second;
  }
  const Pkcs11Handle h = find_secret_key(label);
  std::lock_guard<std::mutex> lock(m_handles_mutex);
  m_secret_handles[label] = h;
  return h;
}

void Pkcs11Token::forget_secret_key(const std::string& label) {
  std::lock_guard<std::mutex> lock(m_handles_mutex);
  m_secret_handles.erase(label);
}

template <typename Op>
auto Pkcs11Token::with_secret_key(const std::string& label, Op op) -> decltype(op(Pkcs11Handle{})) {
  try {
    return op(cached_secret_key(label));
  } catch (const Pkcs11Error& e) {
    // Destroyed (and perhaps re-created by another process) since it was found: look again, once.
    if (e.rv() != CKR_KEY_HANDLE_INVALID && e.rv() != CKR_OBJECT_HANDLE_INVALID) throw;
    forget_secret_key(label);
    return op(cached_secret_key(label));
  }
}

void Pkcs11Token::destroy_object(Pkcs11Handle object) {
  auto s = session();
  check(fns(m_module)->C_DestroyObject(s->handle(), object), "C_DestroyObject");
  std::lock_guard<std::mutex> lock(m_handles_mutex);
  for (auto it = m_secret_handles.begin(); it != m_secret_handles.end();)
    it = it->second == object ? m_secret_handles.erase(it) : std::next(it);
}

namespace {
// Which one usage an EC key pair gets (every other usage is named false, see generate_ec_p256).
enum class EcUsage { Sign, Derive };

// One template for every EC key pair the token makes: token object, not modifiable, the private half
// sensitive and never extractable, exactly one usage on.
Pkcs11KeyPair generate_ec_pair(const Pkcs11Module& module, Pkcs11Session& s, CK_MECHANISM_TYPE mechanism,
                               const CK_BYTE* params, std::size_t params_len, EcUsage usage,
                               const std::string& label, const Bytes& id, const char* what) {
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_BBOOL sign = usage == EcUsage::Sign ? CK_TRUE : CK_FALSE;
  CK_BBOOL derive = usage == EcUsage::Derive ? CK_TRUE : CK_FALSE;
  CK_MECHANISM mech{mechanism, nullptr, 0};
  auto* lbl = const_cast<char*>(label.data());
  auto* idp = const_cast<std::uint8_t*>(id.data());
  CK_ATTRIBUTE pub[] = {
      {CKA_TOKEN, &yes, sizeof yes},          {CKA_PRIVATE, &no, sizeof no},
      {CKA_MODIFIABLE, &no, sizeof no},       {CKA_VERIFY, &sign, sizeof sign},
      {CKA_VERIFY_RECOVER, &no, sizeof no},   {CKA_ENCRYPT, &no, sizeof no},
      {CKA_WRAP, &no, sizeof no},             {CKA_DERIVE, &no, sizeof no},
      {CKA_EC_PARAMS, const_cast<CK_BYTE*>(params), params_len},
      {CKA_LABEL, lbl, label.size()},         {CKA_ID, idp, id.size()},
  };
  CK_ATTRIBUTE priv[] = {
      {CKA_TOKEN, &yes, sizeof yes},     {CKA_PRIVATE, &yes, sizeof yes},   {CKA_MODIFIABLE, &no, sizeof no},
      {CKA_SENSITIVE, &yes, sizeof yes}, {CKA_EXTRACTABLE, &no, sizeof no}, {CKA_SIGN, &sign, sizeof sign},
      {CKA_SIGN_RECOVER, &no, sizeof no}, {CKA_DECRYPT, &no, sizeof no},    {CKA_UNWRAP, &no, sizeof no},
      {CKA_DERIVE, &derive, sizeof derive}, {CKA_LABEL, lbl, label.size()}, {CKA_ID, idp, id.size()},
  };
  CK_OBJECT_HANDLE hpub = 0, hpriv = 0;
  check(fns(module)->C_GenerateKeyPair(s.handle(), &mech, pub, std::size(pub), priv, std::size(priv), &hpub, &hpriv),
        (std::string("C_GenerateKeyPair(") + what + ")").c_str());
  return {hpub, hpriv};
}
}  // namespace

Pkcs11KeyPair Pkcs11Token::generate_ec_p256(const std::string& label, const Bytes& id) {
  auto s = session();
  if (!s->find_objects(CKO_PRIVATE_KEY, label).empty())
    throw Pkcs11Error(ErrorCode::Pkcs11, "a private key labelled '" + label + "' already exists");
  // Every usage attribute is named: SoftHSM 2.6 turns on what a template leaves out (PKCS #11 v2.40
  // section 4.8 leaves the defaults to the token), which made each signing key a decryption, unwrap
  // and ECDH key as well. CKA_MODIFIABLE false: nobody holding the PIN can switch a usage on later.
  return generate_ec_pair(m_module, *s, CKM_EC_KEY_PAIR_GEN, kP256Params, sizeof kP256Params, EcUsage::Sign, label, id,
                          "P-256");
}

std::unique_ptr<Botan::ECDSA_PublicKey> Pkcs11Token::ec_public_key(const std::string& label) {
  auto s = session();
  const auto found = s->find_objects(CKO_PUBLIC_KEY, label);
  if (found.empty()) throw Pkcs11Error(ErrorCode::Pkcs11KeyNotFound, "no public key labelled '" + label + "' on the token");
  const Bytes params = s->attribute(found.front(), CKA_EC_PARAMS);
  if (params != Bytes(std::begin(kP256Params), std::end(kP256Params)))
    throw Pkcs11Error(ErrorCode::Pkcs11, "key '" + label + "' is not a P-256 key");
  const Bytes ec_point = s->attribute(found.front(), CKA_EC_POINT);
  // PKCS #11 v2.40 section 2.3.3: CKA_EC_POINT is "DER-encoding of ANSI X9.62 ECPoint value Q",
  // an OCTET STRING around the uncompressed point; some tokens hand out the bare point.
  std::vector<std::uint8_t> point;
  try {
    if (ec_point.size() == 65 && ec_point[0] == 0x04)
      point = ec_point;
    else
      Botan::BER_Decoder(ec_point).decode(point, Botan::OCTET_STRING).verify_end();
    const Botan::EC_Group group("secp256r1");
    return std::make_unique<Botan::ECDSA_PublicKey>(group, group.OS2ECP(point));
  } catch (const Botan::Exception&) {
    throw Pkcs11Error(ErrorCode::Pkcs11, "CKA_EC_POINT of '" + label + "' does not decode");
  }
}

Bytes Pkcs11Token::sign_digest_raw(Pkcs11Handle private_key, const std::uint8_t* digest, std::size_t len) {
  auto s = session();
  auto* fn = fns(m_module);
  CK_MECHANISM mech{CKM_ECDSA, nullptr, 0};
  check(fn->C_SignInit(s->handle(), &mech, private_key), "C_SignInit(CKM_ECDSA)");
  Bytes sig(132);  // r||s for curves up to P-521
  CK_ULONG n = sig.size();
  check(fn->C_Sign(s->handle(), const_cast<std::uint8_t*>(digest), len, sig.data(), &n), "C_Sign(CKM_ECDSA)");
  sig.resize(n);
  return sig;
}

Bytes Pkcs11Token::sign_ecdsa_sha256_raw(Pkcs11Handle private_key, const std::uint8_t* msg, std::size_t len) {
  auto h = Botan::HashFunction::create_or_throw("SHA-256");
  h->update(msg, len);
  const auto digest = h->final();
  return sign_digest_raw(private_key, digest.data(), digest.size());
}

Bytes Pkcs11Token::sign_ecdsa_sha256_der(Pkcs11Handle private_key, const std::uint8_t* msg, std::size_t len) {
  const Bytes raw = sign_ecdsa_sha256_raw(private_key, msg, len);
  const std::size_t half = raw.size() / 2;
  const Botan::BigInt r(raw.data(), half), s(raw.data() + half, half);
  Bytes der;
  Botan::DER_Encoder(der).start_cons(Botan::SEQUENCE).encode(r).encode(s).end_cons();
  return der;
}

namespace {
// CKA_EC_PARAMS for edwards25519. PKCS #11 v3.0 section 2.3.10 allows the RFC 8410 OID
// (1.3.101.112, id-Ed25519) or the PrintableString "edwards25519"; SoftHSM 2.6.1 takes both and
// keeps what it was given (tests/integration/pkcs11/test_ed25519.cpp). Keys are made with the OID.
const CK_BYTE kEd25519Oid[] = {0x06, 0x03, 0x2B, 0x65, 0x70};
const CK_BYTE kEd25519Name[] = {0x13, 0x0C, 'e', 'd', 'w', 'a', 'r', 'd', 's', '2', '5', '5', '1', '9'};

bool is_ed25519_params(const Bytes& p) {
  return p == Bytes(std::begin(kEd25519Oid), std::end(kEd25519Oid)) ||
         p == Bytes(std::begin(kEd25519Name), std::end(kEd25519Name));
}
}  // namespace

Pkcs11KeyPair Pkcs11Token::generate_ed25519(const std::string& label, const Bytes& id) {
  auto s = session();
  if (!s->find_objects(CKO_PRIVATE_KEY, label).empty() || !s->find_objects(CKO_PUBLIC_KEY, label).empty())
    throw Pkcs11Error(ErrorCode::Pkcs11, "a key labelled '" + label + "' already exists");
  // Every usage named, for the reason given at generate_ec_p256.
  return generate_ec_pair(m_module, *s, CKM_EC_EDWARDS_KEY_PAIR_GEN, kEd25519Oid, sizeof kEd25519Oid, EcUsage::Sign,
                          label, id, "Ed25519");
}

Bytes Pkcs11Token::ed25519_public_key(const std::string& label) {
  auto s = session();
  const auto found = s->find_objects(CKO_PUBLIC_KEY, label);
  if (found.empty()) throw Pkcs11Error(ErrorCode::Pkcs11KeyNotFound, "no public key labelled '" + label + "' on the token");
  if (found.size() > 1) throw Pkcs11Error(ErrorCode::Pkcs11, "several public keys labelled '" + label + "'");
  if (!is_ed25519_params(s->attribute(found.front(), CKA_EC_PARAMS)))
    throw Pkcs11Error(ErrorCode::Pkcs11, "key '" + label + "' is not an Ed25519 key");
  const Bytes point = s->attribute(found.front(), CKA_EC_POINT);
  // PKCS #11 v3.0 section 2.3.10: CKA_EC_POINT is the DER OCTET STRING around the 32-byte RFC 8032
  // key (SoftHSM 2.6.1); some tokens hand out the bare key.
  if (point.size() == 32) return point;
  if (point.size() == 34 && point[0] == 0x04 && point[1] == 0x20) return Bytes(point.begin() + 2, point.end());
  throw Pkcs11Error(ErrorCode::Pkcs11, "CKA_EC_POINT of '" + label + "' is not a 32-byte Ed25519 key");
}

Bytes Pkcs11Token::sign_eddsa(Pkcs11Handle private_key, const std::uint8_t* msg, std::size_t len) {
  auto s = session();
  auto* fn = fns(m_module);
  // No CK_EDDSA_PARAMS: pure Ed25519 without context (PKCS #11 v3.0 section 2.3.14), which is what
  // C2SP signed-note signature type 0x01 is.
  CK_MECHANISM mech{CKM_EDDSA, nullptr, 0};
  check(fn->C_SignInit(s->handle(), &mech, private_key), "C_SignInit(CKM_EDDSA)");
  Bytes sig(64);
  CK_ULONG n = sig.size();
  CK_BYTE empty = 0;  // a null pData for an empty message is CKR_ARGUMENTS_BAD in SoftHSM 2.6
  CK_BYTE_PTR in = len == 0 ? &empty : const_cast<std::uint8_t*>(msg);
  check(fn->C_Sign(s->handle(), in, len, sig.data(), &n), "C_Sign(CKM_EDDSA)");
  if (n != 64) throw Pkcs11Error(ErrorCode::Pkcs11, "token returned an Ed25519 signature of " + std::to_string(n) + " bytes");
  return sig;
}

Pkcs11KeyPair Pkcs11Token::generate_ec_p256_ecdh(const std::string& label, const Bytes& id) {
  auto s = session();
  if (!s->find_objects(CKO_PRIVATE_KEY, label).empty() || !s->find_objects(CKO_PUBLIC_KEY, label).empty())
    throw Pkcs11Error(ErrorCode::Pkcs11, "a key labelled '" + label + "' already exists");
  // Every usage named, for the reason given at generate_ec_p256; DERIVE is the one usage.
  return generate_ec_pair(m_module, *s, CKM_EC_KEY_PAIR_GEN, kP256Params, sizeof kP256Params, EcUsage::Derive, label,
                          id, "P-256 ECDH");
}

SecureBytes Pkcs11Token::ecdh_derive(const std::string& private_label, const Bytes& peer_point) {
  if (peer_point.size() != 65 || peer_point[0] != 0x04)
    throw Pkcs11Error(ErrorCode::Pkcs11, "ECDH peer key is not an uncompressed P-256 point");
  const Pkcs11Handle key = find_private_key(private_label);
  auto s = session();
  auto* fn = fns(m_module);
  CK_ECDH1_DERIVE_PARAMS params{CKD_NULL, 0, nullptr, peer_point.size(), const_cast<CK_BYTE*>(peer_point.data())};
  CK_MECHANISM mech{CKM_ECDH1_DERIVE, &params, sizeof params};
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
  CK_ULONG len = 32;
  // A session object that is readable (the caller needs the value for the SCP11 KDF) and good for
  // nothing on the token itself; it lives only until the C_DestroyObject below.
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &cls, sizeof cls},         {CKA_KEY_TYPE, &kt, sizeof kt},     {CKA_VALUE_LEN, &len, sizeof len},
      {CKA_TOKEN, &no, sizeof no},           {CKA_SENSITIVE, &no, sizeof no},    {CKA_EXTRACTABLE, &yes, sizeof yes},
      {CKA_ENCRYPT, &no, sizeof no},         {CKA_DECRYPT, &no, sizeof no},      {CKA_SIGN, &no, sizeof no},
      {CKA_VERIFY, &no, sizeof no},          {CKA_WRAP, &no, sizeof no},         {CKA_UNWRAP, &no, sizeof no},
      {CKA_DERIVE, &no, sizeof no},
  };
  CK_OBJECT_HANDLE secret = 0;
  check(fn->C_DeriveKey(s->handle(), &mech, key, tmpl, std::size(tmpl), &secret), "C_DeriveKey(CKM_ECDH1_DERIVE)");
  SecureBytes value(32);
  CK_ATTRIBUTE a{CKA_VALUE, value.data(), value.size()};
  const CK_RV read = fn->C_GetAttributeValue(s->handle(), secret, &a, 1);
  const CK_RV destroyed = fn->C_DestroyObject(s->handle(), secret);
  check(read, "C_GetAttributeValue(ECDH secret)");
  check(destroyed, "C_DestroyObject(ECDH secret)");
  if (a.ulValueLen != value.size()) throw Pkcs11Error(ErrorCode::Pkcs11, "token returned an ECDH secret that is not 32 bytes");
  return value;
}

// A 32-byte secret key on the token, sensitive and never extractable, with exactly the usages in `use`
// (every other usage attribute named false, for the reason given at generate_ec_p256).
Pkcs11Handle Pkcs11Token::generate_secret_key(const std::string& label, Pkcs11Ulong key_type, Pkcs11Ulong mechanism,
                                              const std::vector<Pkcs11Ulong>& use, const char* what) {
  auto s = session();
  if (!s->find_objects(CKO_SECRET_KEY, label).empty())
    throw Pkcs11Error(ErrorCode::Pkcs11, "a secret key labelled '" + label + "' already exists");
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = key_type;
  CK_ULONG len = 32;
  CK_MECHANISM mech{mechanism, nullptr, 0};
  std::vector<CK_ATTRIBUTE> tmpl = {
      {CKA_CLASS, &cls, sizeof cls},
      {CKA_KEY_TYPE, &kt, sizeof kt},
      {CKA_VALUE_LEN, &len, sizeof len},
      {CKA_TOKEN, &yes, sizeof yes},
      {CKA_PRIVATE, &yes, sizeof yes},
      {CKA_MODIFIABLE, &no, sizeof no},
      {CKA_SENSITIVE, &yes, sizeof yes},
      {CKA_EXTRACTABLE, &no, sizeof no},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
  };
  for (const CK_ATTRIBUTE_TYPE u : {CKA_ENCRYPT, CKA_DECRYPT, CKA_SIGN, CKA_VERIFY, CKA_WRAP, CKA_UNWRAP, CKA_DERIVE}) {
    const bool on = std::find(use.begin(), use.end(), u) != use.end();
    tmpl.push_back({u, on ? &yes : &no, sizeof yes});
  }
  CK_OBJECT_HANDLE h = 0;
  const std::string call = std::string("C_GenerateKey(") + what + ")";
  check(fns(m_module)->C_GenerateKey(s->handle(), &mech, tmpl.data(), tmpl.size(), &h), call.c_str());
  return h;
}

// RFC 2104 section 3: a key of L (=32 for SHA-256) bytes is the recommended minimum.
// SoftHSM 2.6 (C_GetMechanismList) offers CKM_SHA256_HMAC over CKK_GENERIC_SECRET but no
// SP 800-108 KDF mechanism, so the per-device derivation is HMAC-SHA-256 as a PRF, made by C_Sign.
Pkcs11Handle Pkcs11Token::generate_hmac_key(const std::string& label) {
  // C_Sign only: derive_hmac_sha256 never verifies, and the key must not serve as an AES or wrapping key.
  return generate_secret_key(label, CKK_GENERIC_SECRET, CKM_GENERIC_SECRET_KEY_GEN, {CKA_SIGN}, "generic secret");
}

SecureBytes Pkcs11Token::derive_hmac_sha256(const std::string& key_label, const Bytes& data) {
  return with_secret_key(key_label, [&](Pkcs11Handle key) {
    auto s = session();
    auto* fn = fns(m_module);
    CK_MECHANISM mech{CKM_SHA256_HMAC, nullptr, 0};
    check(fn->C_SignInit(s->handle(), &mech, key), "C_SignInit(CKM_SHA256_HMAC)");
    SecureBytes out(32);
    CK_ULONG n = out.size();
    check(fn->C_Sign(s->handle(), const_cast<std::uint8_t*>(data.data()), data.size(), out.data(), &n),
          "C_Sign(CKM_SHA256_HMAC)");
    out.resize(n);
    return out;
  });
}

Pkcs11Handle Pkcs11Token::generate_aes_key(const std::string& label) {
  // wrap_data/unwrap_data are C_Encrypt/C_Decrypt (AES-GCM over data blobs), so no CKA_WRAP/CKA_UNWRAP:
  // the key cannot be used to export another token key.
  return generate_secret_key(label, CKK_AES, CKM_AES_KEY_GEN, {CKA_ENCRYPT, CKA_DECRYPT}, "AES-256");
}

// The pool's private keys are data to the token (PKCS#8 blobs made in process), so wrapping is
// C_Encrypt with CKM_AES_GCM rather than C_WrapKey: CKM_AES_KEY_WRAP_PAD (offered by SoftHSM 2.6)
// only wraps key objects. GCM also authenticates, so a flipped bit in the pool does not unwrap.
Bytes Pkcs11Token::wrap_data(const std::string& key_label, const SecureBytes& plain, const Bytes& aad) {
  Bytes full_aad = wrap_aad(aad);
  return with_secret_key(key_label, [&](Pkcs11Handle key) {
    auto s = session();
    auto* fn = fns(m_module);
    Bytes out(kGcmNonce + plain.size() + kGcmTag);
    check(fn->C_GenerateRandom(s->handle(), out.data(), kGcmNonce), "C_GenerateRandom");
    CK_GCM_PARAMS gcm = wrap_gcm_params(out.data(), full_aad);
    CK_MECHANISM mech{CKM_AES_GCM, &gcm, sizeof gcm};
    check(fn->C_EncryptInit(s->handle(), &mech, key), "C_EncryptInit(CKM_AES_GCM)");
    CK_ULONG n = out.size() - kGcmNonce;
    // SoftHSM 2.6 answers CKR_ARGUMENTS_BAD to a null pData, which an empty vector gives.
    CK_BYTE empty = 0;
    CK_BYTE_PTR in = plain.empty() ? &empty : const_cast<std::uint8_t*>(plain.data());
    check(fn->C_Encrypt(s->handle(), in, plain.size(), out.data() + kGcmNonce, &n), "C_Encrypt(CKM_AES_GCM)");
    out.resize(kGcmNonce + n);
    return out;
  });
}

SecureBytes Pkcs11Token::unwrap_data(const std::string& key_label, const Bytes& wrapped, const Bytes& aad) {
  if (wrapped.size() < kGcmNonce + kGcmTag) throw CryptoError(ErrorCode::Crypto, "wrapped data too short");
  Bytes full_aad = wrap_aad(aad);
  return with_secret_key(key_label, [&](Pkcs11Handle key) {
    auto s = session();
    auto* fn = fns(m_module);
    Bytes nonce(wrapped.begin(), wrapped.begin() + kGcmNonce);
    CK_GCM_PARAMS gcm = wrap_gcm_params(nonce.data(), full_aad);
    CK_MECHANISM mech{CKM_AES_GCM, &gcm, sizeof gcm};
    check(fn->C_DecryptInit(s->handle(), &mech, key), "C_DecryptInit(CKM_AES_GCM)");
    SecureBytes out(wrapped.size() - kGcmNonce);
    CK_ULONG n = out.size();
    const CK_RV rv = fn->C_Decrypt(s->handle(), const_cast<std::uint8_t*>(wrapped.data()) + kGcmNonce,
                                   wrapped.size() - kGcmNonce, out.data(), &n);
    if (rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_ENCRYPTED_DATA_LEN_RANGE || rv == CKR_GENERAL_ERROR ||
        rv == CKR_FUNCTION_FAILED)
      throw CryptoError(ErrorCode::Crypto, "wrapped data does not open (" + pkcs11_rv_name(rv) + ")");
    check(rv, "C_Decrypt(CKM_AES_GCM)");
    out.resize(n);
    return out;
  });
}

// ---------------------------------------------------------------------------------------------
// Custody: keys that move between tokens under dual control (docs/custody.md)

Pkcs11Handle Pkcs11Token::find_public_key(const std::string& label) {
  auto s = session();
  const auto found = s->find_objects(CKO_PUBLIC_KEY, label);
  if (found.empty()) throw Pkcs11Error(ErrorCode::Pkcs11KeyNotFound, "no public key labelled '" + label + "' on the token");
  if (found.size() > 1) throw Pkcs11Error(ErrorCode::Pkcs11, "several public keys labelled '" + label + "'");
  return found.front();
}

std::string Pkcs11Token::serial() const {
  CK_TOKEN_INFO info{};
  check(fns(m_module)->C_GetTokenInfo(m_slot, &info), "C_GetTokenInfo");
  return trim_label(info.serialNumber, sizeof info.serialNumber);
}

namespace {

const char* class_name(CK_OBJECT_CLASS c) {
  return c == CKO_PRIVATE_KEY ? "private" : c == CKO_PUBLIC_KEY ? "public" : "secret";
}

std::string key_type_name(CK_KEY_TYPE t) {
  switch (t) {
    case CKK_EC: return "EC";
    case CKK_EC_EDWARDS: return "EC_EDWARDS";
    case CKK_RSA: return "RSA";
    case CKK_AES: return "AES";
    case CKK_GENERIC_SECRET: return "GENERIC_SECRET";
    default: {
      char buf[24];
      std::snprintf(buf, sizeof buf, "0x%lX", t);
      return buf;
    }
  }
}

// A CK_BBOOL attribute, false when the class has none (CKA_SENSITIVE of a public key).
bool flag(CK_FUNCTION_LIST_PTR fn, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type) {
  CK_BBOOL v = CK_FALSE;
  CK_ATTRIBUTE a{type, &v, sizeof v};
  return fn->C_GetAttributeValue(s, h, &a, 1) == CKR_OK && v == CK_TRUE;
}

std::vector<CK_OBJECT_HANDLE> objects_of_class(CK_FUNCTION_LIST_PTR fn, CK_SESSION_HANDLE s, CK_OBJECT_CLASS c) {
  CK_ATTRIBUTE tmpl{CKA_CLASS, &c, sizeof c};
  check(fn->C_FindObjectsInit(s, &tmpl, 1), "C_FindObjectsInit");
  std::vector<CK_OBJECT_HANDLE> out;
  CK_OBJECT_HANDLE buf[16];
  CK_ULONG n = 0;
  CK_RV rv;
  while ((rv = fn->C_FindObjects(s, buf, 16, &n)) == CKR_OK && n > 0) out.insert(out.end(), buf, buf + n);
  fn->C_FindObjectsFinal(s);
  check(rv, "C_FindObjects");
  return out;
}

// CKM_RSA_PKCS_OAEP with SHA-1 and MGF1-SHA-1, no label (PKCS #11 v2.40 section 2.1.8): SoftHSM 2.6.1
// wraps with no other hash (docs/design.md section 4). `p` must outlive the mechanism.
CK_MECHANISM oaep_sha1(CK_RSA_PKCS_OAEP_PARAMS& p) {
  p = CK_RSA_PKCS_OAEP_PARAMS{CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, nullptr, 0};
  return CK_MECHANISM{CKM_RSA_PKCS_OAEP, &p, sizeof p};
}

// A mirrorable master (docs/custody.md): a 32-byte secret token key, not modifiable, sensitive, extractable
// only wrapped under a trusted key, with exactly one usage on and every other one named false, for the
// reason given at generate_ec_p256. Refuses when a secret key with that label exists.
CK_OBJECT_HANDLE generate_mirrorable_secret(const Pkcs11Module& module, Pkcs11Session& s, CK_KEY_TYPE key_type,
                                            CK_MECHANISM_TYPE mechanism, CK_ATTRIBUTE_TYPE usage,
                                            const std::string& label, const Bytes& id, const char* what) {
  if (!s.find_objects(CKO_SECRET_KEY, label).empty())
    throw Pkcs11Error(ErrorCode::Pkcs11, "a secret key labelled '" + label + "' already exists");
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = key_type;
  CK_ULONG len = 32;  // HMAC: RFC 2104 section 3, as generate_hmac_key; AES: AES-256
  std::vector<CK_ATTRIBUTE> tmpl = {
      {CKA_CLASS, &cls, sizeof cls},      {CKA_KEY_TYPE, &kt, sizeof kt},    {CKA_VALUE_LEN, &len, sizeof len},
      {CKA_TOKEN, &yes, sizeof yes},      {CKA_PRIVATE, &yes, sizeof yes},   {CKA_MODIFIABLE, &no, sizeof no},
      {CKA_SENSITIVE, &yes, sizeof yes},  {CKA_EXTRACTABLE, &yes, sizeof yes},
      {CKA_WRAP_WITH_TRUSTED, &yes, sizeof yes},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
      {CKA_ID, const_cast<std::uint8_t*>(id.data()), id.size()},
  };
  for (const CK_ATTRIBUTE_TYPE u : {CKA_ENCRYPT, CKA_DECRYPT, CKA_SIGN, CKA_VERIFY, CKA_WRAP, CKA_UNWRAP, CKA_DERIVE})
    tmpl.push_back({u, u == usage ? &yes : &no, sizeof(CK_BBOOL)});
  CK_MECHANISM mech{mechanism, nullptr, 0};
  CK_OBJECT_HANDLE h = 0;
  check(fns(module)->C_GenerateKey(s.handle(), &mech, tmpl.data(), tmpl.size(), &h),
        (std::string("C_GenerateKey(") + what + ")").c_str());
  return h;
}

}  // namespace

std::vector<Pkcs11KeyInfo> Pkcs11Token::list_keys() {
  static const std::pair<CK_ATTRIBUTE_TYPE, const char*> kUsages[] = {
      {CKA_ENCRYPT, "encrypt"}, {CKA_DECRYPT, "decrypt"}, {CKA_SIGN, "sign"},    {CKA_VERIFY, "verify"},
      {CKA_WRAP, "wrap"},       {CKA_UNWRAP, "unwrap"},   {CKA_DERIVE, "derive"}};
  auto s = session();
  auto* fn = fns(m_module);
  std::vector<Pkcs11KeyInfo> out;
  for (const CK_OBJECT_CLASS c : {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY, CKO_SECRET_KEY})
    for (const auto h : objects_of_class(fn, s->handle(), c)) {
      Pkcs11KeyInfo k;
      const Bytes label = s->attribute(h, CKA_LABEL);
      k.label.assign(label.begin(), label.end());
      k.object_class = class_name(c);
      const Bytes kt = s->attribute(h, CKA_KEY_TYPE);
      CK_KEY_TYPE t = 0;
      if (kt.size() == sizeof t) std::memcpy(&t, kt.data(), sizeof t);
      k.key_type = key_type_name(t);
      k.id = s->attribute(h, CKA_ID);
      for (const auto& [type, name] : kUsages)
        if (flag(fn, s->handle(), h, type)) k.usages.push_back(name);
      k.sensitive = flag(fn, s->handle(), h, CKA_SENSITIVE);
      k.extractable = flag(fn, s->handle(), h, CKA_EXTRACTABLE);
      k.wrap_with_trusted = flag(fn, s->handle(), h, CKA_WRAP_WITH_TRUSTED);
      k.never_extractable = flag(fn, s->handle(), h, CKA_NEVER_EXTRACTABLE);
      k.trusted = flag(fn, s->handle(), h, CKA_TRUSTED);
      k.local = flag(fn, s->handle(), h, CKA_LOCAL);
      out.push_back(std::move(k));
    }
  return out;
}

Pkcs11Handle Pkcs11Token::generate_mirrorable_hmac_key(const std::string& label, const Bytes& id) {
  auto s = session();
  return generate_mirrorable_secret(m_module, *s, CKK_GENERIC_SECRET, CKM_GENERIC_SECRET_KEY_GEN, CKA_SIGN, label, id,
                                    "mirrorable");
}

// DERIVE only: the master is never an encryption, MAC or wrapping key itself (docs/service.md).
Pkcs11Handle Pkcs11Token::generate_mirrorable_aes_derive_key(const std::string& label, const Bytes& id) {
  auto s = session();
  return generate_mirrorable_secret(m_module, *s, CKK_AES, CKM_AES_KEY_GEN, CKA_DERIVE, label, id, "AES derive");
}

Pkcs11Handle Pkcs11Token::derive_aes_ecb(Pkcs11Handle base, const Bytes& data, const DerivedAesKey& attributes) {
  if (data.empty() || data.size() % 16 != 0)
    throw Pkcs11Error(ErrorCode::Pkcs11, "CKM_AES_ECB_ENCRYPT_DATA needs a multiple of 16 bytes");
  if (attributes.length != 16 && attributes.length != 32)
    throw Pkcs11Error(ErrorCode::Pkcs11, "a derived AES key is 16 or 32 bytes");
  auto s = session();
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = CKK_AES;
  CK_ULONG len = attributes.length;
  CK_BBOOL* extractable = attributes.extractable ? &yes : &no;
  // An extractable result is one the caller reads (secret_value), so it is not sensitive either.
  CK_BBOOL* sensitive = attributes.extractable ? &no : &yes;
  std::vector<CK_ATTRIBUTE> tmpl = {
      {CKA_CLASS, &cls, sizeof cls},     {CKA_KEY_TYPE, &kt, sizeof kt},        {CKA_VALUE_LEN, &len, sizeof len},
      {CKA_TOKEN, &no, sizeof no},       {CKA_PRIVATE, &yes, sizeof yes},       {CKA_SENSITIVE, sensitive, sizeof yes},
      {CKA_EXTRACTABLE, extractable, sizeof yes},
  };
  for (const CK_ATTRIBUTE_TYPE u : {CKA_ENCRYPT, CKA_DECRYPT, CKA_VERIFY, CKA_WRAP, CKA_UNWRAP})
    tmpl.push_back({u, &no, sizeof no});
  tmpl.push_back({CKA_SIGN, attributes.sign ? &yes : &no, sizeof yes});
  tmpl.push_back({CKA_DERIVE, attributes.derive ? &yes : &no, sizeof yes});
  CK_KEY_DERIVATION_STRING_DATA params{const_cast<std::uint8_t*>(data.data()), data.size()};
  CK_MECHANISM mech{CKM_AES_ECB_ENCRYPT_DATA, &params, sizeof params};
  CK_OBJECT_HANDLE h = 0;
  check(fns(m_module)->C_DeriveKey(s->handle(), &mech, base, tmpl.data(), tmpl.size(), &h),
        "C_DeriveKey(CKM_AES_ECB_ENCRYPT_DATA)");
  return h;
}

Bytes Pkcs11Token::cmac(Pkcs11Handle key, const Bytes& data) {
  auto s = session();
  auto* fn = fns(m_module);
  CK_MECHANISM mech{CKM_AES_CMAC, nullptr, 0};
  check(fn->C_SignInit(s->handle(), &mech, key), "C_SignInit(CKM_AES_CMAC)");
  Bytes out(16);
  CK_ULONG n = out.size();
  check(fn->C_Sign(s->handle(), const_cast<std::uint8_t*>(data.data()), data.size(), out.data(), &n),
        "C_Sign(CKM_AES_CMAC)");
  if (n != 16) throw Pkcs11Error(ErrorCode::Pkcs11, "the token's AES-CMAC is not 16 bytes");
  return out;
}

SecureBytes Pkcs11Token::secret_value(Pkcs11Handle key) {
  auto s = session();
  CK_ATTRIBUTE a{CKA_VALUE, nullptr, 0};
  check(fns(m_module)->C_GetAttributeValue(s->handle(), key, &a, 1), "C_GetAttributeValue(CKA_VALUE)");
  SecureBytes value(a.ulValueLen);
  a.pValue = value.data();
  check(fns(m_module)->C_GetAttributeValue(s->handle(), key, &a, 1), "C_GetAttributeValue(CKA_VALUE)");
  value.resize(a.ulValueLen);
  return value;
}

Pkcs11KeyPair Pkcs11Token::generate_rsa_receiving_pair(const std::string& label, const Bytes& id) {
  auto s = session();
  if (!s->find_objects(CKO_PRIVATE_KEY, label).empty() || !s->find_objects(CKO_PUBLIC_KEY, label).empty())
    throw Pkcs11Error(ErrorCode::Pkcs11, "a key labelled '" + label + "' already exists");
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_ULONG bits = 3072;  // NIST SP 800-57 part 1 table 2: 128-bit security, as the AES-256 and P-256 keys
  CK_BYTE exponent[] = {0x01, 0x00, 0x01};
  auto* lbl = const_cast<char*>(label.data());
  auto* idp = const_cast<std::uint8_t*>(id.data());
  CK_ATTRIBUTE pub[] = {
      {CKA_TOKEN, &yes, sizeof yes},        {CKA_PRIVATE, &no, sizeof no},       {CKA_MODIFIABLE, &no, sizeof no},
      {CKA_WRAP, &yes, sizeof yes},         {CKA_ENCRYPT, &no, sizeof no},       {CKA_VERIFY, &no, sizeof no},
      {CKA_VERIFY_RECOVER, &no, sizeof no}, {CKA_DERIVE, &no, sizeof no},        {CKA_MODULUS_BITS, &bits, sizeof bits},
      {CKA_PUBLIC_EXPONENT, exponent, sizeof exponent}, {CKA_LABEL, lbl, label.size()}, {CKA_ID, idp, id.size()},
  };
  CK_ATTRIBUTE priv[] = {
      {CKA_TOKEN, &yes, sizeof yes},       {CKA_PRIVATE, &yes, sizeof yes},   {CKA_MODIFIABLE, &no, sizeof no},
      {CKA_SENSITIVE, &yes, sizeof yes},   {CKA_EXTRACTABLE, &no, sizeof no}, {CKA_UNWRAP, &yes, sizeof yes},
      {CKA_DECRYPT, &no, sizeof no},       {CKA_SIGN, &no, sizeof no},        {CKA_SIGN_RECOVER, &no, sizeof no},
      {CKA_DERIVE, &no, sizeof no},        {CKA_LABEL, lbl, label.size()},    {CKA_ID, idp, id.size()},
  };
  CK_MECHANISM mech{CKM_RSA_PKCS_KEY_PAIR_GEN, nullptr, 0};
  CK_OBJECT_HANDLE hpub = 0, hpriv = 0;
  check(fns(m_module)->C_GenerateKeyPair(s->handle(), &mech, pub, std::size(pub), priv, std::size(priv), &hpub, &hpriv),
        "C_GenerateKeyPair(RSA-3072)");
  return {hpub, hpriv};
}

std::pair<Bytes, Bytes> Pkcs11Token::rsa_public_key(const std::string& label) {
  const Pkcs11Handle h = find_public_key(label);
  auto s = session();
  return {s->attribute(h, CKA_MODULUS), s->attribute(h, CKA_PUBLIC_EXPONENT)};
}

Bytes Pkcs11Token::wrap_key_rsa_oaep(Pkcs11Handle wrapping_public_key, Pkcs11Handle key) {
  auto s = session();
  auto* fn = fns(m_module);
  CK_RSA_PKCS_OAEP_PARAMS params{};
  CK_MECHANISM mech = oaep_sha1(params);
  CK_ULONG n = 0;
  check(fn->C_WrapKey(s->handle(), &mech, wrapping_public_key, key, nullptr, &n), "C_WrapKey(CKM_RSA_PKCS_OAEP)");
  Bytes out(n);
  check(fn->C_WrapKey(s->handle(), &mech, wrapping_public_key, key, out.data(), &n), "C_WrapKey(CKM_RSA_PKCS_OAEP)");
  out.resize(n);
  return out;
}

namespace {

// The unwrap template of a mirrorable master: `kt` with `usage` its only usage, the attributes
// generate_mirrorable_hmac_key / generate_mirrorable_aes_derive_key give.
CK_OBJECT_HANDLE unwrap_mirrorable(CK_FUNCTION_LIST_PTR fn, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE unwrapping_key,
                                   const Bytes& wrapped, const std::string& label, const Bytes& id, CK_KEY_TYPE kt,
                                   CK_ATTRIBUTE_TYPE usage) {
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  std::vector<CK_ATTRIBUTE> tmpl = {
      {CKA_CLASS, &cls, sizeof cls},     {CKA_KEY_TYPE, &kt, sizeof kt},    {CKA_TOKEN, &yes, sizeof yes},
      {CKA_PRIVATE, &yes, sizeof yes},   {CKA_SENSITIVE, &yes, sizeof yes},
      {CKA_EXTRACTABLE, &yes, sizeof yes}, {CKA_WRAP_WITH_TRUSTED, &yes, sizeof yes},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
      {CKA_ID, const_cast<std::uint8_t*>(id.data()), id.size()},
  };
  for (const CK_ATTRIBUTE_TYPE u : {CKA_ENCRYPT, CKA_DECRYPT, CKA_SIGN, CKA_VERIFY, CKA_WRAP, CKA_UNWRAP, CKA_DERIVE})
    tmpl.push_back({u, u == usage ? &yes : &no, sizeof(CK_BBOOL)});
  // Last: SoftHSM 2.6.1 applies an unwrap template in order, so CKA_MODIFIABLE false earlier makes every
  // later attribute CKR_ATTRIBUTE_READ_ONLY, and the failed call leaves a half-made, unlabelled key behind
  // (measured; docs/decisions.md "The master mirrored under dual control").
  tmpl.push_back({CKA_MODIFIABLE, &no, sizeof no});
  CK_RSA_PKCS_OAEP_PARAMS params{};
  CK_MECHANISM mech = oaep_sha1(params);
  CK_OBJECT_HANDLE h = 0;
  const CK_RV rv = fn->C_UnwrapKey(session, &mech, unwrapping_key, const_cast<std::uint8_t*>(wrapped.data()),
                                   wrapped.size(), tmpl.data(), tmpl.size(), &h);
  // A blob for another key, or changed, fails OAEP decoding (PKCS #1 v2.2 section 7.1.2: "decryption error").
  if (rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_WRAPPED_KEY_INVALID || rv == CKR_WRAPPED_KEY_LEN_RANGE ||
      rv == CKR_GENERAL_ERROR || rv == CKR_FUNCTION_FAILED || rv == CKR_ENCRYPTED_DATA_LEN_RANGE)
    throw CryptoError(ErrorCode::Crypto, "the wrapped key does not open under this token's receiving key (" +
                                             pkcs11_rv_name(rv) + ")");
  check(rv, "C_UnwrapKey(CKM_RSA_PKCS_OAEP)");
  return h;
}

}  // namespace

Pkcs11Handle Pkcs11Token::unwrap_hmac_key_rsa_oaep(Pkcs11Handle unwrapping_private_key, const Bytes& wrapped,
                                                   const std::string& label, const Bytes& id) {
  auto s = session();
  if (!s->find_objects(CKO_SECRET_KEY, label).empty())
    throw Pkcs11Error(ErrorCode::Pkcs11, "a secret key labelled '" + label + "' already exists");
  return unwrap_mirrorable(fns(m_module), s->handle(), unwrapping_private_key, wrapped, label, id, CKK_GENERIC_SECRET,
                           CKA_SIGN);
}

Pkcs11Handle Pkcs11Token::unwrap_aes_derive_key_rsa_oaep(Pkcs11Handle unwrapping_private_key, const Bytes& wrapped,
                                                         const std::string& label, const Bytes& id) {
  auto s = session();
  if (!s->find_objects(CKO_SECRET_KEY, label).empty())
    throw Pkcs11Error(ErrorCode::Pkcs11, "a secret key labelled '" + label + "' already exists");
  return unwrap_mirrorable(fns(m_module), s->handle(), unwrapping_private_key, wrapped, label, id, CKK_AES, CKA_DERIVE);
}

void Pkcs11Token::so_create_trusted_rsa_wrap_key(const std::string& module_path, const std::string& token_label,
                                                 const SecureBytes& so_pin, const std::string& label, const Bytes& id,
                                                 const Bytes& modulus, const Bytes& exponent) {
  const Pkcs11Module module(module_path);
  const Pkcs11Handle slot = module.find_slot(token_label);
  auto* fn = fns(module);
  CK_SESSION_HANDLE h = 0;
  check(fn->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &h), "C_OpenSession");
  struct Closer {
    CK_FUNCTION_LIST_PTR fn;
    CK_SESSION_HANDLE h;
    ~Closer() {
      fn->C_Logout(h);
      fn->C_CloseSession(h);
    }
  } closer{fn, h};
  const CK_RV rv = fn->C_Login(h, CKU_SO, const_cast<CK_UTF8CHAR_PTR>(so_pin.data()), so_pin.size());
  if (rv == CKR_PIN_INCORRECT || rv == CKR_PIN_INVALID || rv == CKR_PIN_LEN_RANGE || rv == CKR_PIN_LOCKED)
    fail(ErrorCode::Pkcs11LoginFailed, "Security Officer login refused", rv);
  check(rv, "C_Login(CKU_SO)");
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
  CK_KEY_TYPE kt = CKK_RSA;
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &cls, sizeof cls},       {CKA_KEY_TYPE, &kt, sizeof kt},      {CKA_TOKEN, &yes, sizeof yes},
      {CKA_PRIVATE, &no, sizeof no},       {CKA_MODIFIABLE, &no, sizeof no},    {CKA_TRUSTED, &yes, sizeof yes},
      {CKA_WRAP, &yes, sizeof yes},        {CKA_ENCRYPT, &no, sizeof no},       {CKA_VERIFY, &no, sizeof no},
      {CKA_VERIFY_RECOVER, &no, sizeof no}, {CKA_DERIVE, &no, sizeof no},
      {CKA_MODULUS, const_cast<std::uint8_t*>(modulus.data()), modulus.size()},
      {CKA_PUBLIC_EXPONENT, const_cast<std::uint8_t*>(exponent.data()), exponent.size()},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
      {CKA_ID, const_cast<std::uint8_t*>(id.data()), id.size()},
  };
  CK_OBJECT_HANDLE obj = 0;
  check(fn->C_CreateObject(h, tmpl, std::size(tmpl), &obj), "C_CreateObject(trusted RSA public key)");
}

// ---------------------------------------------------------------------------------------------
// Botan adapter

namespace {

// PK_Ops::Signature for Botan's PK_Signer. PK_Signer hands the whole message to update() and takes
// r||s (IEEE 1363 form) from sign(); with Signature_Format DER_SEQUENCE (Botan's default for
// ECDSA in X.509) it then DER-encodes the two halves itself (Botan 2.19 pubkey.cpp, PK_Signer::signature).
class TokenEcdsaSignature final : public Botan::PK_Ops::Signature {
 public:
  TokenEcdsaSignature(std::shared_ptr<Pkcs11Token> token, Pkcs11Handle key, std::size_t order_bytes,
                      std::unique_ptr<Botan::HashFunction> hash)
      : m_token(std::move(token)), m_key(key), m_order_bytes(order_bytes), m_hash(std::move(hash)) {}

  void update(const std::uint8_t msg[], std::size_t len) override { m_hash->update(msg, len); }

  Botan::secure_vector<std::uint8_t> sign(Botan::RandomNumberGenerator&) override {
    auto digest = m_hash->final();
    // EMSA1 (IEEE 1363 EMSA1, as X9.62 uses it): keep the leftmost bits of a hash longer than
    // the group order; P-256's order is byte aligned, so that is a byte truncation.
    if (digest.size() > m_order_bytes) digest.resize(m_order_bytes);
    const Bytes sig = m_token->sign_digest_raw(m_key, digest.data(), digest.size());
    if (sig.size() != 2 * m_order_bytes) throw CryptoError(ErrorCode::Crypto, "token returned a malformed ECDSA signature");
    return Botan::secure_vector<std::uint8_t>(sig.begin(), sig.end());
  }

  std::size_t signature_length() const override { return 2 * m_order_bytes; }

 private:
  std::shared_ptr<Pkcs11Token> m_token;
  Pkcs11Handle m_key;
  std::size_t m_order_bytes;
  std::unique_ptr<Botan::HashFunction> m_hash;
};

}  // namespace

Pkcs11EcdsaPrivateKey::Pkcs11EcdsaPrivateKey(std::shared_ptr<Pkcs11Token> token, const std::string& label)
    : Pkcs11EcdsaPrivateKey(token, label, token->ec_public_key(label)) {}

Pkcs11EcdsaPrivateKey::Pkcs11EcdsaPrivateKey(std::shared_ptr<Pkcs11Token> token, const std::string& label,
                                             std::unique_ptr<Botan::ECDSA_PublicKey> pub)
    : Botan::EC_PublicKey(pub->domain(), pub->public_point()),
      Botan::ECDSA_PublicKey(pub->domain(), pub->public_point()),
      m_token(std::move(token)),
      m_label(label) {
  m_handle = m_token->find_private_key(label);
}

Botan::secure_vector<std::uint8_t> Pkcs11EcdsaPrivateKey::private_key_bits() const {
  throw Pkcs11Error(ErrorCode::Pkcs11, "token key '" + m_label + "' is not extractable");
}

bool Pkcs11EcdsaPrivateKey::check_key(Botan::RandomNumberGenerator& rng, bool strong) const {
  return Botan::EC_PublicKey::check_key(rng, strong);
}

std::unique_ptr<Botan::PK_Ops::Signature> Pkcs11EcdsaPrivateKey::create_signature_op(
    Botan::RandomNumberGenerator&, const std::string& params, const std::string& provider) const {
  if (!provider.empty() && provider != "base" && provider != "pkcs11")
    throw Botan::Provider_Not_Found(algo_name(), provider);
  // Botan's padding string for ECDSA is "EMSA1(<hash>)" (Botan 2.19 x509_ca.cpp, choose_sig_padding).
  const std::string prefix = "EMSA1(";
  if (params.size() <= prefix.size() + 1 || params.compare(0, prefix.size(), prefix) != 0 || params.back() != ')')
    throw Botan::Invalid_Argument("token ECDSA key supports EMSA1(<hash>) only, not " + params);
  const std::string hash = params.substr(prefix.size(), params.size() - prefix.size() - 1);
  return std::make_unique<TokenEcdsaSignature>(m_token, m_handle, domain().get_order().bytes(),
                                               Botan::HashFunction::create_or_throw(hash));
}

}  // namespace keyline::core
