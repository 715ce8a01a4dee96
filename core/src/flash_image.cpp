#include "keyline/core/flash_image.h"

#include <cstring>
#include <string>

#include "keyline/core/error.h"

namespace keyline::core {

namespace {

constexpr char kMagic[4] = {'K', 'L', 'F', 'L'};
constexpr std::size_t kFixedSize = 4 + 1 + 4 + 2;  // magic, version, backup length, certificate count

[[noreturn]] void bad(const std::string& what) {
  throw FormatError(ErrorCode::BadFlashImage, "flash image: " + what);
}

// Bounds-checked reader: every read states how many bytes it needs before touching them.
class Reader {
 public:
  Reader(const std::uint8_t* data, std::size_t len) : m_data(data), m_len(len) {}
  std::size_t left() const { return m_len - m_pos; }
  const std::uint8_t* take(std::size_t n, const char* what) {
    if (n > left()) bad(std::string(what) + " runs past the end of the image");
    const std::uint8_t* p = m_data + m_pos;
    m_pos += n;
    return p;
  }
  std::uint8_t u8(const char* what) { return *take(1, what); }
  std::uint16_t u16(const char* what) {
    const std::uint8_t* p = take(2, what);
    return static_cast<std::uint16_t>((p[0] << 8) | p[1]);
  }
  std::uint32_t u32(const char* what) {
    const std::uint8_t* p = take(4, what);
    return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
  }

 private:
  const std::uint8_t* m_data;
  std::size_t m_len;
  std::size_t m_pos = 0;
};

}  // namespace

Bytes FlashImage::encode() const {
  if (backup.empty()) bad("empty backup package");
  if (certificates.size() > 0xFFFF) bad("too many certificates");
  Bytes out(kMagic, kMagic + 4);
  out.push_back(kFlashVersion);
  put_u32(out, static_cast<std::uint32_t>(backup.size()));
  out.insert(out.end(), backup.begin(), backup.end());
  put_u16(out, static_cast<std::uint16_t>(certificates.size()));
  for (const auto& der : certificates) {
    if (der.empty()) bad("empty certificate");
    put_u32(out, static_cast<std::uint32_t>(der.size()));
    out.insert(out.end(), der.begin(), der.end());
    if (out.size() > kFlashMaxSize) break;  // refused below; stop copying early
  }
  // Checked on the way out as on the way in, so a device never writes an image it could not read.
  if (out.size() > kFlashMaxSize || backup.size() > kFlashMaxSize)
    bad("image larger than " + std::to_string(kFlashMaxSize) + " bytes");
  return out;
}

FlashImage FlashImage::decode(const std::uint8_t* data, std::size_t len) {
  if (len > kFlashMaxSize) bad("image of " + std::to_string(len) + " bytes exceeds the 1 MiB cap");
  if (data == nullptr || len < kFixedSize) bad("shorter than the fixed fields");
  Reader r(data, len);
  if (std::memcmp(r.take(4, "magic"), kMagic, 4) != 0) bad("missing magic KLFL");
  const std::uint8_t version = r.u8("version");
  if (version != kFlashVersion) bad("unsupported version " + std::to_string(version));

  FlashImage img;
  const std::uint32_t backup_len = r.u32("backup length");
  if (backup_len == 0) bad("empty backup package");
  const std::uint8_t* b = r.take(backup_len, "backup package");
  img.backup.assign(b, b + backup_len);

  const std::uint16_t count = r.u16("certificate count");
  // Each certificate needs at least its 4-byte length and one byte: refuse counts the input cannot hold
  // before reserving anything.
  if (std::size_t{count} * 5 > r.left()) bad("certificate count " + std::to_string(count) + " exceeds the image");
  img.certificates.reserve(count);
  for (std::uint16_t i = 0; i < count; ++i) {
    const std::uint32_t n = r.u32("certificate length");
    if (n == 0) bad("empty certificate " + std::to_string(i));
    const std::uint8_t* p = r.take(n, "certificate");
    img.certificates.emplace_back(p, p + n);
  }
  if (r.left() != 0) bad(std::to_string(r.left()) + " trailing bytes");
  return img;
}

}  // namespace keyline::core
