// serve --station-deny (docs/api.md, "Retired station certificates"): the att12 finding was a station TLS
// certificate replaced by `keys roll station-tls` (its key still on the token, valid until 2028) that still
// published, with a log line naming only the station. Here the real server program: a station publishes
// (201), its certificate goes on the deny list and the next publish from it is 403 with nothing stored,
// though the server accepted (and remembered) that certificate a moment before; another station's still
// 201; every publish line names the certificate (serial, SHA-256). The list is re-read when the file
// changes; a file that does not parse keeps the list in force at a reload and stops the server at start.

// The fixture's log helpers are not used here.
#pragma GCC diagnostic ignored "-Wunused-function"
#include "tlog_fixture.h"

namespace {

// What the deny list and the log call a certificate: its DER's SHA-256 and its serial, upper-case hex.
std::string fingerprint_of(const std::string& pem_file) {
  std::string f = Botan::X509_Certificate(pem_file).fingerprint("SHA-256");
  f.erase(std::remove(f.begin(), f.end(), ':'), f.end());
  return f;
}
std::string serial_of(const std::string& pem_file) {
  return to_hex(Botan::X509_Certificate(pem_file).serial_number());
}
std::string station_pem(const std::string& who) { return pki().dir + "/" + who + ".pem"; }

// Writes the deny file as a new inode (rename), as an editor or `keys roll`'s atomic write does.
void write_deny(const std::string& path, const std::string& text) {
  write_file(path + ".new", text);
  std::filesystem::rename(path + ".new", path);
}

// The access log's publish lines with this status.
std::vector<std::string> publish_lines(const Server& s, int status) {
  std::vector<std::string> out;
  std::istringstream in(slurp(s.log));
  for (std::string line; std::getline(in, line);)
    if (line.find("\"route\":\"publish\"") != std::string::npos &&
        line.find("\"status\":" + std::to_string(status) + ",") != std::string::npos)
      out.push_back(line);
  return out;
}
// Whether a publish line with this status holds `what`; the access line is written once the answer is
// sent, so it is waited for (at most 2 s).
bool logged(const Server& s, int status, const std::string& what) {
  for (int i = 0; i < 20; ++i) {
    const auto lines = publish_lines(s, status);
    if (std::any_of(lines.begin(), lines.end(), [&](const std::string& l) { return l.find(what) != std::string::npos; }))
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

// Publishes record n from `who` until the answer is `want` (the list is looked at once a second), at
// most 4 s; the last answer.
http::Response publish_until(const Server& s, const std::string& who, std::uint32_t n, int want) {
  http::Response r;
  for (int i = 0; i < 40; ++i) {
    r = s.client(who)->post("/v1/records", pki().record(n).to_json(), "application/json");
    if (r.status == want) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return r;
}

bool stored(const Server& s, std::uint32_t n) { return s.get("/v1/records/" + pki().record(n).chip_id.str()).status == 200; }

}  // namespace

TEST_CASE("station deny list: a certificate accepted before is refused 403 once listed, nothing stored") {
  Database db;
  const std::string deny = pki().dir + "/deny-1.txt";
  write_deny(deny, "# no station is denied yet\n");
  Server s(db, {"--no-log", "--station-deny", deny});
  const std::string fp1 = fingerprint_of(station_pem("station")), fp2 = fingerprint_of(station_pem("station2"));

  // One keep-alive client: the server has verified and remembered its certificate before it is listed.
  const auto c = s.client("station");
  REQUIRE(c->post("/v1/records", pki().record(8000).to_json(), "application/json").status == 201);
  REQUIRE(c->post("/v1/records", pki().record(8000).to_json(), "application/json").status == 200);
  CHECK(logged(s, 201, "\"detail\":\"station station-1 serial " + serial_of(station_pem("station")) + " sha256 " + fp1 +
                          "\""));
  CHECK(logged(s, 200, "identical re-publish by station station-1 serial " + serial_of(station_pem("station")) +
                          " sha256 " + fp1));

  // The entry as openssl prints a fingerprint (colons), with a comment after it.
  const std::string openssl_form = Botan::X509_Certificate(station_pem("station")).fingerprint("SHA-256");
  write_deny(deny, "# retired by keys roll station-tls\nsha256 Fingerprint=" + openssl_form + "  # station-1 v1\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  const auto refused = c->post("/v1/records", pki().record(8001).to_json(), "application/json");
  CHECK(refused.status == 403);
  CHECK(refused.body.find("/problems/certificate-denied\"") != std::string::npos);
  CHECK(refused.body.find(fp1) == std::string::npos);  // the wire says why, the log says which
  CHECK_FALSE(stored(s, 8001));
  // An identical re-publish of what it published before is refused too: no 200 for a denied certificate.
  CHECK(c->post("/v1/records", pki().record(8000).to_json(), "application/json").status == 403);
  // A fresh connection with the same certificate: the same.
  CHECK(s.client("station")->post("/v1/records", pki().record(8002).to_json(), "application/json").status == 403);
  CHECK_FALSE(stored(s, 8002));

  // Another station's certificate is not on the list.
  CHECK(s.client("station2")->post("/v1/records", pki().record(8003).to_json(), "application/json").status == 201);
  CHECK(stored(s, 8003));

  CHECK(logged(s, 403, "station 'station-1' certificate serial " + serial_of(station_pem("station")) + " sha256 " +
                          fp1 + " is on the deny list " + deny));
  CHECK(logged(s, 201, "station station-2 serial " + serial_of(station_pem("station2")) + " sha256 " + fp2));
  CHECK(publish_lines(s, 403).size() == 3);
  // The reload was logged (an info line with the entries now in force).
  CHECK(slurp(s.log).find("\"event\":\"station_deny\"") != std::string::npos);
  CHECK(slurp(s.log).find("\"entries\":1") != std::string::npos);
}

TEST_CASE("station deny list: issuer-serial entries; a bad or missing file at a reload keeps the list in force") {
  Database db;
  const std::string deny = pki().dir + "/deny-2.txt";
  const std::string issuer = fingerprint_of(pki().dir + "/service_ca.pem");
  write_deny(deny, "issuer-serial " + issuer + " " + serial_of(station_pem("station2")) + "\n");
  Server s(db, {"--no-log", "--station-deny", deny});
  CHECK(s.client("station2")->post("/v1/records", pki().record(8100).to_json(), "application/json").status == 403);
  CHECK_FALSE(stored(s, 8100));
  CHECK(s.client("station")->post("/v1/records", pki().record(8101).to_json(), "application/json").status == 201);

  // A line that is no entry: the list stays (never "no list"), an error line names the line.
  write_deny(deny, "issuer-serial " + issuer + " " + serial_of(station_pem("station2")) + "\nnot an entry\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  CHECK(s.client("station2")->post("/v1/records", pki().record(8102).to_json(), "application/json").status == 403);
  CHECK(s.client("station")->post("/v1/records", pki().record(8103).to_json(), "application/json").status == 201);
  const std::string log = slurp(s.log);
  CHECK(log.find("\"level\":\"error\"") != std::string::npos);
  CHECK(log.find("line 2: ") != std::string::npos);
  CHECK(log.find("the previous list stays in force") != std::string::npos);

  // The file gone: still in force.
  std::filesystem::remove(deny);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  CHECK(s.client("station2")->post("/v1/records", pki().record(8104).to_json(), "application/json").status == 403);
  CHECK_FALSE(stored(s, 8104));

  // A good file again (the serial under another issuer, so another certificate): station2 publishes, no restart.
  const std::string other_issuer(64, 'A');
  write_deny(deny, "issuer-serial " + other_issuer + " " + serial_of(station_pem("station2")) + "\n");
  CHECK(publish_until(s, "station2", 8105, 201).status == 201);
  CHECK(stored(s, 8105));
}

TEST_CASE("station deny list at start: a bad or missing file stops serve (exit 2); the config file's key works") {
  Database db;
  const auto& d = pki().dir;
  const std::string base = bin() + " serve --db '" + db.role_nopw + "' --db-password-file " + d +
                           "/role.pass --listen 127.0.0.1:0 --ops-listen 127.0.0.1:0 --trust " + d +
                           "/root.pem --tls-cert " + d + "/server.pem --tls-key " + d + "/server.key --station-ca " + d +
                           "/service_ca.pem --no-log --log off";
  write_file(d + "/deny-bad.txt", "sha256:" + fingerprint_of(station_pem("station")) + "\nsha256:12AB\n");
  int rc = -1;
  auto out = sh("timeout 20 " + base + " --station-deny " + d + "/deny-bad.txt 2>&1", &rc);
  CHECK(rc == 2);
  CHECK(out.find("deny-bad.txt line 2: not a SHA-256 fingerprint") != std::string::npos);
  out = sh("timeout 20 " + base + " --station-deny " + d + "/deny-missing.txt 2>&1", &rc);
  CHECK(rc == 2);
  CHECK(out.find("deny-missing.txt: cannot be read") != std::string::npos);

  // [serve] station-deny = "...": the flag's key, as every setting's (the bad file named again).
  write_file(d + "/deny.toml", "[serve]\nstation-deny = \"" + d + "/deny-bad.txt\"\n");
  out = sh("timeout 20 " + bin() + " --config " + d + "/deny.toml" + base.substr(bin().size()) + " 2>&1", &rc);
  CHECK(rc == 2);
  CHECK(out.find("deny-bad.txt line 2: not a SHA-256 fingerprint") != std::string::npos);

  // A good file at start: its entries counted on stdout, and enforced from the first publish.
  const std::string deny = d + "/deny-3.txt";
  write_deny(deny, "sha256:" + fingerprint_of(station_pem("station2")) + "\n");
  Server s(db, {"--no-log", "--station-deny", deny});
  CHECK(s.client("station2")->post("/v1/records", pki().record(8200).to_json(), "application/json").status == 403);
  CHECK(s.client("station")->post("/v1/records", pki().record(8201).to_json(), "application/json").status == 201);
  CHECK(slurp(s.log + ".out").find("station deny list " + deny + ", 1 entries") != std::string::npos);
}
