#include "testenv.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>

#include <libpq-fe.h>

namespace keyline::test {

namespace {
std::string env_or_throw(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) throw std::runtime_error(std::string(name) + " is not set: run this test through ctest");
  return v;
}
}  // namespace

std::string testenv_dir() { return env_or_throw("KEYLINE_TESTENV"); }
std::string source_dir() { return env_or_throw("KEYLINE_SOURCE_DIR"); }
std::string binary_dir() { return env_or_throw("KEYLINE_BINARY_DIR"); }

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

PgEnv pg_env() {
  const std::string dir = testenv_dir() + "/pg";
  PgEnv e;
  e.conninfo = read_file(dir + "/conninfo");
  e.host = read_file(dir + "/host");
  e.port = std::stoi(read_file(dir + "/port"));
  return e;
}

std::string PgEnv::create_database(const std::string& prefix) const {
  static std::atomic<int> counter{0};
  const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
  const std::string name = prefix + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" +
                           std::to_string(now % 1000000);
  PGconn* c = PQconnectdb(conninfo.c_str());
  if (PQstatus(c) != CONNECTION_OK) {
    std::string msg = PQerrorMessage(c);
    PQfinish(c);
    throw std::runtime_error("test cluster unreachable: " + msg);
  }
  // CREATE DATABASE takes no parameters; the name is built here from digits and a fixed prefix.
  PGresult* r = PQexec(c, ("CREATE DATABASE \"" + name + "\"").c_str());
  const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  std::string msg = PQerrorMessage(c);
  PQclear(r);
  PQfinish(c);
  if (!ok) throw std::runtime_error("CREATE DATABASE failed: " + msg);
  std::string ci = conninfo;
  const auto pos = ci.find("dbname=");
  if (pos != std::string::npos) {
    const auto end = ci.find(' ', pos);
    ci.replace(pos, end == std::string::npos ? std::string::npos : end - pos, "dbname=" + name);
  } else {
    ci += " dbname=" + name;
  }
  return ci;
}

HsmEnv hsm_env() {
  const std::string dir = testenv_dir() + "/hsm";
  HsmEnv e;
  e.conf = dir + "/softhsm2.conf";
  e.module = read_file(dir + "/module");
  e.label = read_file(dir + "/label");
  e.user_pin = read_file(dir + "/user.pin");
  e.so_pin = read_file(dir + "/so.pin");
  ::setenv("SOFTHSM2_CONF", e.conf.c_str(), 1);
  return e;
}

// A free port below Linux's ephemeral range (32768-60999): a port the kernel hands out for bind(0)
// can be taken as the local end of another test's outgoing connection before the server binds it.
int free_port() {
  static std::atomic<unsigned> salt{0};
  std::minstd_rand rng(static_cast<unsigned>(::getpid()) * 7919u + salt++ +
                       static_cast<unsigned>(std::chrono::steady_clock::now().time_since_epoch().count()));
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const int port = 10000 + static_cast<int>(rng() % 22000);
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) throw std::runtime_error("socket failed");
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    const bool free = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(fd);
    if (free) return port;
  }
  throw std::runtime_error("no free port below 32000");
}

}  // namespace keyline::test
