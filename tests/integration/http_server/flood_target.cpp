// A TLS server with a fixed body, for tests/support/flood.py. Makes its own test PKI, prints
// "port <n> ca <file> pid <pid>" once listening, and serves until stdin closes.
//   http_server_flood_target          core::http::Server, default ServerLimits
//   http_server_flood_target poco     Poco's HTTPServer with 16 threads, as the KPS was before
//                                     (issue 12): the flood must fail against it
#include <Poco/Net/Context.h>
#include <Poco/Net/HTTPRequestHandler.h>
#include <Poco/Net/HTTPRequestHandlerFactory.h>
#include <Poco/Net/HTTPServer.h>
#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerResponse.h>
#include <Poco/Net/SecureServerSocket.h>
#include <Poco/Net/SSLManager.h>
#include <unistd.h>

#include <iostream>
#include <string>

#include "keyline/core/http_server.h"
#include "tls_material.h"

namespace {

const char* const kBody = R"({"record":"fixed body for the flood probe"})";

void wait_for_stdin_eof() {
  std::string line;
  while (std::getline(std::cin, line)) {
  }
}

class FixedHandler : public Poco::Net::HTTPRequestHandler {
 public:
  void handleRequest(Poco::Net::HTTPServerRequest&, Poco::Net::HTTPServerResponse& res) override {
    res.setContentType("application/json");
    res.send() << kBody;
  }
};

class Factory : public Poco::Net::HTTPRequestHandlerFactory {
 public:
  Poco::Net::HTTPRequestHandler* createRequestHandler(const Poco::Net::HTTPServerRequest&) override {
    return new FixedHandler;
  }
};

int serve_poco(const keyline::test::TlsMaterial& pki) {
  Poco::Net::initializeSSL();
  Poco::Net::Context::Ptr ctx = new Poco::Net::Context(Poco::Net::Context::TLS_SERVER_USE, pki.key_file, pki.cert_file,
                                                       "", Poco::Net::Context::VERIFY_NONE);
  Poco::Net::SecureServerSocket socket(Poco::Net::SocketAddress("127.0.0.1", 0), 64, ctx);
  auto* params = new Poco::Net::HTTPServerParams;
  params->setMaxThreads(16);
  Poco::Net::HTTPServer server(new Factory, socket, params);
  server.start();
  std::cout << "port " << socket.address().port() << " ca " << pki.ca_file << " pid " << getpid() << std::endl;
  wait_for_stdin_eof();
  server.stopAll(true);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  keyline::test::TlsMaterial pki;
  if (argc > 1 && std::string(argv[1]) == "poco") return serve_poco(pki);
  keyline::core::http::ServerOptions o;
  o.name = "flood-target";
  o.listen = "127.0.0.1:0";
  o.tls_cert_file = pki.cert_file;
  o.tls_key_file = pki.key_file;
  keyline::core::http::Server server(o, [](const keyline::core::http::Request&) {
    keyline::core::http::Reply r;
    r.content_type = "application/json";
    r.body = kBody;
    return r;
  });
  server.start();
  std::cout << "port " << server.port() << " ca " << pki.ca_file << " pid " << getpid() << std::endl;
  wait_for_stdin_eof();
  const auto s = server.stats();
  std::cout << "stats accepted " << s.accepted << " timed_out " << s.timed_out << " refused " << s.refused
            << " malformed " << s.malformed << std::endl;
  server.stop();
  return 0;
}
