// Offline proof checks (issue #18). The JSON form is transparency-dev's test data
// (tests/vectors/merkle/README.md); the verifiers are core::merkle's (docs/transparency.md).
#include "keyline/recovery/log_verify.h"

#include <Poco/Exception.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/ParseHandler.h>
#include <Poco/JSON/Parser.h>

#include <exception>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <vector>

#include "keyline/core/error.h"
#include "keyline/core/merkle.h"

namespace keyline::recovery::log_verify {
namespace {

[[noreturn]] void bad(const std::string& what) {
  throw core::FormatError(core::ErrorCode::BadProof, "proof file: " + what);
}

// Poco::JSON keeps the last of repeated keys; a file that says "treeSize" twice means two things,
// so it is refused rather than read one way here and another way by the tool that wrote it.
class StrictHandler : public Poco::JSON::ParseHandler {
 public:
  void reset() override {
    m_keys.clear();
    ParseHandler::reset();
  }
  void startObject() override {
    m_keys.emplace_back();
    ParseHandler::startObject();
  }
  void endObject() override {
    if (!m_keys.empty()) m_keys.pop_back();
    ParseHandler::endObject();
  }
  void key(const std::string& k) override {
    if (!m_keys.empty() && !m_keys.back().insert(k).second) bad("key \"" + printable(k) + "\" appears twice");
    ParseHandler::key(k);
  }

  static std::string printable(std::string_view s) {
    std::string out;
    for (const char c : s.substr(0, 64)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
    return s.size() > 64 ? out + "..." : out;
  }

 private:
  std::vector<std::set<std::string>> m_keys;
};

// Poco 1.11 reads 18446744073709551616 (2^64) as 0: its overflow check misses the first value past
// UInt64's range, while larger ones throw. So the integer tokens are checked in the text itself
// before Poco sees them, and so are signs. Outside strings a JSON number is the only token with a digit
// (RFC 8259 section 6); anything else wrong is left to Poco.
void check_integer_tokens(std::string_view json) {
  constexpr std::string_view max = "18446744073709551615";
  bool in_string = false;
  for (std::size_t i = 0; i < json.size(); ++i) {
    const char c = json[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
      continue;
    }
    if (c < '0' || c > '9') continue;
    std::size_t end = i;
    while (end < json.size() && json[end] >= '0' && json[end] <= '9') ++end;
    const std::string_view digits = json.substr(i, end - i);
    const bool fraction = end < json.size() && (json[end] == '.' || json[end] == 'e' || json[end] == 'E');
    // Every number of this form is a size or an index; "-0" would otherwise pass as 0.
    if (!fraction && i > 0 && json[i - 1] == '-') bad("integer -" + std::string(digits.substr(0, 24)) + " is negative");
    if (!fraction && (digits.size() > max.size() || (digits.size() == max.size() && digits > max)))
      bad("integer " + std::string(digits.substr(0, 24)) + (digits.size() > 24 ? "..." : "") + " is above 2^64-1");
    i = end - 1;
    if (fraction)  // skip the rest of the number so its exponent is not read as an integer
      while (i + 1 < json.size() && std::string_view("0123456789.eE+-").find(json[i + 1]) != std::string_view::npos) ++i;
  }
}

Poco::JSON::Object::Ptr parse_object(std::string_view json) {
  check_integer_tokens(json);
  Poco::Dynamic::Var root;
  try {
    Poco::JSON::Parser parser(new StrictHandler);
    parser.setAllowNullByte(false);
    parser.setAllowComments(false);
    parser.setDepth(4);  // object, array of strings: anything deeper is not this form
    root = parser.parse(std::string(json));
  } catch (const core::Error&) {
    throw;
  } catch (const Poco::Exception& e) {
    bad("not JSON (" + StrictHandler::printable(e.message()) + ")");
  } catch (const std::exception&) {
    // Poco's parser can surface std exceptions (bad_cast, out_of_range) on odd input.
    bad("not JSON");
  }
  if (root.type() != typeid(Poco::JSON::Object::Ptr)) bad("not a JSON object");
  return root.extract<Poco::JSON::Object::Ptr>();
}

void only_fields(const Poco::JSON::Object& obj, const std::set<std::string>& allowed) {
  for (const auto& [name, value] : obj)
    if (allowed.count(name) == 0) bad("unknown field \"" + StrictHandler::printable(name) + "\"");
}

Poco::Dynamic::Var required(const Poco::JSON::Object& obj, const std::string& name) {
  if (!obj.has(name)) bad("missing field \"" + name + "\"");
  return obj.get(name);
}

// Poco hands non-negative integers over as Int64 (or UInt64 above 2^63-1), anything with a '.' or an
// exponent as double, and throws on integers beyond 2^64-1.
std::uint64_t get_u64(const Poco::JSON::Object& obj, const std::string& name) {
  const Poco::Dynamic::Var v = required(obj, name);
  if (v.type() == typeid(Poco::UInt64)) return v.extract<Poco::UInt64>();
  if (v.type() == typeid(Poco::Int64)) {
    const Poco::Int64 n = v.extract<Poco::Int64>();
    if (n < 0) bad("\"" + name + "\" is negative");
    return static_cast<std::uint64_t>(n);
  }
  bad("\"" + name + "\" is not an integer 0..2^64-1");
}

core::Bytes to_hash_bytes(const Poco::Dynamic::Var& v, const std::string& name) {
  if (v.type() != typeid(std::string)) bad("\"" + name + "\" is not a base64 string");
  try {
    return core::from_base64(v.extract<std::string>());
  } catch (const core::FormatError&) {
    bad("\"" + name + "\" is not standard base64 (RFC 4648 section 4)");
  }
}

core::Bytes get_hash(const Poco::JSON::Object& obj, const std::string& name) {
  return to_hash_bytes(required(obj, name), name);
}

std::vector<core::Bytes> get_proof(const Poco::JSON::Object& obj) {
  const Poco::Dynamic::Var v = required(obj, "proof");
  if (v.isEmpty()) return {};  // Go writes a nil slice as null
  if (v.type() != typeid(Poco::JSON::Array::Ptr)) bad("\"proof\" is neither null nor an array");
  const auto arr = v.extract<Poco::JSON::Array::Ptr>();
  std::vector<core::Bytes> out;
  for (std::size_t i = 0; i < arr->size(); ++i)
    out.push_back(to_hash_bytes(arr->get(static_cast<unsigned>(i)), "proof[" + std::to_string(i) + "]"));
  return out;
}

ProbeNotes get_notes(const Poco::JSON::Object& obj) {
  ProbeNotes n;
  if (obj.has("desc")) {
    const Poco::Dynamic::Var v = obj.get("desc");
    if (v.type() != typeid(std::string)) bad("\"desc\" is not a string");
    n.desc = v.extract<std::string>();
  }
  if (obj.has("wantErr")) {
    const Poco::Dynamic::Var v = obj.get("wantErr");
    if (v.type() != typeid(bool)) bad("\"wantErr\" is not true or false");
    n.want_err = v.extract<bool>();
  }
  return n;
}

std::string describe_hash(const core::Bytes& h) {
  if (h.empty()) return "(empty)";
  if (h.size() > 96) return "(" + std::to_string(h.size()) + " bytes, not shown)";
  std::string s = core::to_base64(h);
  if (h.size() != core::merkle::hash_size) s += " (" + std::to_string(h.size()) + " bytes)";
  return s;
}

std::string describe_notes(const ProbeNotes& n) {
  std::string s;
  if (!n.desc.empty()) s += "\n  desc: " + StrictHandler::printable(n.desc);
  if (n.want_err) s += std::string("\n  the file expects: ") + (*n.want_err ? "invalid (wantErr true)" : "valid (wantErr false)");
  return s;
}

std::string describe_proof(const std::vector<core::Bytes>& proof) {
  std::string s = "\n  proof: " + std::to_string(proof.size()) + " hash" + (proof.size() == 1 ? "" : "es");
  // A real proof has at most 2 * 64 hashes; a file stuffed with more is not printed whole.
  constexpr std::size_t shown = 130;
  for (std::size_t i = 0; i < proof.size() && i < shown; ++i)
    s += "\n    [" + std::to_string(i) + "] " + describe_hash(proof[i]);
  if (proof.size() > shown) s += "\n    ... " + std::to_string(proof.size() - shown) + " more";
  return s;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw core::ConfigError(core::ErrorCode::Usage, "cannot read proof file " + path);
  std::string data;
  data.resize(max_file_size + 1);
  in.read(data.data(), static_cast<std::streamsize>(data.size()));
  if (in.bad()) throw core::ConfigError(core::ErrorCode::Usage, "cannot read proof file " + path);
  const auto n = static_cast<std::size_t>(in.gcount());
  if (n > max_file_size)
    throw core::ConfigError(core::ErrorCode::Usage,
                            "proof file " + path + " is larger than " + std::to_string(max_file_size) + " bytes");
  data.resize(n);
  return data;
}

}  // namespace

InclusionProbe parse_inclusion(std::string_view json) {
  const auto obj = parse_object(json);
  only_fields(*obj, {"leafIdx", "treeSize", "root", "leafHash", "proof", "desc", "wantErr"});
  InclusionProbe p;
  p.leaf_index = get_u64(*obj, "leafIdx");
  p.tree_size = get_u64(*obj, "treeSize");
  p.root = get_hash(*obj, "root");
  p.leaf_hash = get_hash(*obj, "leafHash");
  p.proof = get_proof(*obj);
  p.notes = get_notes(*obj);
  return p;
}

ConsistencyProbe parse_consistency(std::string_view json) {
  const auto obj = parse_object(json);
  only_fields(*obj, {"size1", "size2", "root1", "root2", "proof", "desc", "wantErr"});
  ConsistencyProbe p;
  p.size1 = get_u64(*obj, "size1");
  p.size2 = get_u64(*obj, "size2");
  p.root1 = get_hash(*obj, "root1");
  p.root2 = get_hash(*obj, "root2");
  p.proof = get_proof(*obj);
  p.notes = get_notes(*obj);
  return p;
}

Report check(const InclusionProbe& p) {
  Report r;
  r.checked = "inclusion proof (RFC 9162 section 2.1.3.2)\n  leaf " + std::to_string(p.leaf_index) +
              " (0-based) in a tree of " + std::to_string(p.tree_size) + " leaves\n  leaf hash: " +
              describe_hash(p.leaf_hash) + "\n  root: " + describe_hash(p.root) + describe_proof(p.proof) +
              describe_notes(p.notes);
  try {
    core::merkle::verify_inclusion(p.leaf_index, p.tree_size, p.leaf_hash, p.proof, p.root);
    r.valid = true;
  } catch (const core::FormatError& e) {
    r.reason = e.what();
  }
  return r;
}

Report check(const ConsistencyProbe& p) {
  Report r;
  r.checked = "consistency proof (RFC 9162 section 2.1.4.2)\n  from size " + std::to_string(p.size1) + " to size " +
              std::to_string(p.size2) + "\n  root1: " + describe_hash(p.root1) + "\n  root2: " +
              describe_hash(p.root2) + describe_proof(p.proof) + describe_notes(p.notes);
  try {
    core::merkle::verify_consistency(p.size1, p.size2, p.proof, p.root1, p.root2);
    r.valid = true;
  } catch (const core::FormatError& e) {
    r.reason = e.what();
  }
  return r;
}

Report check_inclusion_file(const std::string& path) { return check(parse_inclusion(read_file(path))); }
Report check_consistency_file(const std::string& path) { return check(parse_consistency(read_file(path))); }

std::string format_report(const Report& r) {
  return r.checked + (r.valid ? "\nvalid\n" : "\nINVALID: " + r.reason + "\n");
}

}  // namespace keyline::recovery::log_verify
