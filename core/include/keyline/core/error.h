// Typed errors with stable numeric codes. Codes are part of the user contract (exit codes,
// problem documents and logs quote them), so a code is never renumbered or reused.
// Ranges: 1000-1999 core, 2000-2999 device, 3000-3999 backupdb, 4000-4999 station,
// 5000-5999 recovery, 6000-6999 kps, 7000-7999 ceremony.
#pragma once

#include <stdexcept>
#include <string>

namespace keyline::core {

enum class ErrorCode : int {
  // 1000-1099: encodings and identities
  BadHex = 1001,
  BadBase64 = 1002,
  BadImei = 1010,
  BadChipId = 1011,
  // 1100-1199: wire formats (untrusted bytes)
  BadDgi = 1100,
  BadApdu = 1110,
  BadFrame = 1120,
  FrameTooLarge = 1121,
  BadCplc = 1130,
  BadDataPackage = 1140,
  BadServiceModule = 1145,  // a software module that does not parse (core/service_module.h)
  BadKeyEnvelope = 1146,    // a KLKE source-signed sealed key that does not parse (core/kps_envelope.h)
  BadBackupPackage = 1150,
  BackupDoesNotOpen = 1151,
  BadFlashImage = 1160,
  BadRecord = 1170,
  BadSignatureField = 1175,  // Signature-Input, Signature or Content-Digest that does not parse (core/http_signature.h)
  // (4000-4099 station, 5000-5099 recovery, 7001-7040 ceremony, 8000-8099 service: in their parts)
  // 1180-1189: transparency log (core merkle, signed_note, checkpoint, tlog_tiles; docs/transparency.md)
  BadProof = 1180,       // a Merkle inclusion or consistency proof that does not verify, or its arguments
  BadNote = 1181,        // a signed note that does not parse (C2SP signed-note)
  NoteNotVerified = 1182,  // no signature by a known key verifies, or a known key's signature fails
  BadCheckpoint = 1183,  // a checkpoint body that does not parse (C2SP tlog-checkpoint)
  BadTile = 1184,        // a tile path, tile or entry bundle that does not parse (C2SP tlog-tiles)
  // 1190-1199: the chip's identity and the personalization channel (docs/channel.md)
  BadCertificateStore = 1190,  // GET DATA BF21 that does not parse (GP Amendment F section 7.4.2)
  SecureChannel = 1191,        // a wrong MAC or receipt, bad padding, a command outside the session
  ChipNotGenuine = 1192,       // the chip's certificates do not chain to a listed chip vendor
  ChipIdMismatch = 1193,       // the chip's certificates name another chip ID than its CPLC
  BadAttestation = 1194,       // a key attestation statement that does not parse or verify
  AttestationMismatch = 1195,  // a valid statement for another challenge, context, key type or an old counter
  // 1200-1299: crypto, certificates, HSM
  Crypto = 1200,
  BadCertificate = 1210,
  CertificateLint = 1211,
  ChainInvalid = 1212,
  ModuleNotTrusted = 1213,  // a module's signer does not chain to the root with EKU codeSigning, or its signature fails
  BadTransportCertificate = 1214,  // a record's transport certificate fails its profile (core/record.h)
  Pkcs11 = 1250,
  Pkcs11NoToken = 1251,
  Pkcs11LoginFailed = 1252,
  Pkcs11KeyNotFound = 1253,
  Pkcs11DuplicateToken = 1254,  // two initialized tokens carry the label asked for (core/pkcs11.h find_slot)
  // 1300-1399: database
  Db = 1300,
  DbConnection = 1301,
  DbUniqueViolation = 1302,
  DbSerialization = 1303,
  // 1400-1499: network, I/O, configuration
  Io = 1400,
  Network = 1401,
  Timeout = 1402,
  Http = 1410,
  // 1420-1439: PC/SC readers (core::pcsc; docs/readers.md)
  Pcsc = 1420,               // any other PC/SC failure (the SCARD_ code is in the message)
  PcscNoService = 1421,      // pcscd is not running or its socket cannot be reached
  PcscNoReader = 1422,       // no reader matches the pattern(s) given
  PcscCardMute = 1423,       // a card is in the reader but does not answer (no ATR, unresponsive)
  PcscReaderRemoved = 1424,  // the reader went away
  PcscCardRemoved = 1425,    // the card was pulled out (a dropped link: the journal resumes it)
  ExtendedLengthRefused = 1426,  // the card or reader does not take extended-length APDUs
  Config = 1450,
  Usage = 1451,
};

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), m_code(code) {}
  ErrorCode code() const noexcept { return m_code; }
  int numeric() const noexcept { return static_cast<int>(m_code); }

 private:
  ErrorCode m_code;
};

// Untrusted input that does not parse (bytes, frames, packages, requests, config values).
class FormatError : public Error {
 public:
  using Error::Error;
};
class CryptoError : public Error {
 public:
  using Error::Error;
};
class Pkcs11Error : public Error {
 public:
  Pkcs11Error(ErrorCode code, const std::string& message, unsigned long rv = 0)
      : Error(code, message), m_rv(rv) {}
  unsigned long rv() const noexcept { return m_rv; }

 private:
  unsigned long m_rv;
};
class DbError : public Error {
 public:
  DbError(ErrorCode code, const std::string& message, std::string sqlstate = {})
      : Error(code, message), m_sqlstate(std::move(sqlstate)) {}
  const std::string& sqlstate() const noexcept { return m_sqlstate; }

 private:
  std::string m_sqlstate;
};
class IoError : public Error {
 public:
  using Error::Error;
};
class ConfigError : public Error {
 public:
  using Error::Error;
};

// Process exit codes shared by every program (documented in each --help and docs/operations.md).
namespace exit_code {
constexpr int ok = 0;
constexpr int failure = 1;      // anything not classified below
constexpr int usage = 2;        // bad flags or config
constexpr int bad_input = 3;    // input that does not parse or verify
constexpr int unavailable = 4;  // a server, database or device cannot be reached
constexpr int refused = 5;      // the peer answered but refused (HTTP 4xx, status word, conflict)
constexpr int hsm = 6;          // PKCS#11 token problems
}  // namespace exit_code

// Maps an error code to the process exit code above.
int exit_code_for(ErrorCode code) noexcept;

}  // namespace keyline::core
