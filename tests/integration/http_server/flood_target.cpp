// A TLS core::http::Server with a fixed body, for tests/support/flood.py. Makes its own test PKI,
// prints "port <n> ca <file> pid <pid>" once listening, and serves until stdin closes.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>

#include "keyline/core/http_server.h"
#include "tls_material.h"

int main(int argc, char** argv) {
  keyline::test::TlsMaterial pki;
  keyline::core::http::ServerOptions o;
  o.name = "flood-target";
  o.listen = "127.0.0.1:0";
  o.tls_cert_file = pki.cert_file;
  o.tls_key_file = pki.key_file;
  // Optional: the limits as the servers set them are the defaults; argv[1] plain = no TLS.
  const bool plain = argc > 1 && std::string(argv[1]) == "plain";
  if (plain) o.tls_cert_file.clear();
  std::size_t closed_by_events = 0;
  keyline::core::http::Server server(
      o,
      [](const keyline::core::http::Request&) {
        keyline::core::http::Reply r;
        r.content_type = "application/json";
        r.body = R"({"record":"fixed body for the flood probe"})";
        return r;
      },
      [&closed_by_events](const keyline::core::http::Event&) { ++closed_by_events; });
  server.start();
  std::cout << "port " << server.port() << " ca " << pki.ca_file << " pid " << getpid() << std::endl;
  std::string line;
  while (std::getline(std::cin, line)) {
  }
  const auto s = server.stats();
  std::cout << "stats accepted " << s.accepted << " timed_out " << s.timed_out << " refused " << s.refused
            << " malformed " << s.malformed << std::endl;
  server.stop();
  return 0;
}
