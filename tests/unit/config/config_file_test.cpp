#include <doctest/doctest.h>

#include <cstdlib>
#include <fstream>

#include "keyline/core/config_file.h"
#include "keyline/core/error.h"

using namespace keyline::core;
using config::Kind;

namespace {

std::string refusal(const std::string& text) {
  try {
    config::parse_toml(text, "t.toml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

// A small program shaped like the servers: a root option and a serve subcommand.
struct Program {
  CLI::App app{"p"};
  std::string db, listen = "0.0.0.0:1", path;
  int threads = 4;
  double ratio = 1;
  bool verbose = false;
  std::vector<std::string> trust;
  CLI::App* serve = nullptr;
  Program() {
    config::set_strict_config(app);
    app.add_option("--path", path);
    serve = app.add_subcommand("serve");
    serve->add_option("--db", db)->envname("KEYLINE_TEST_CONFIG_DB");
    serve->add_option("--listen", listen);
    serve->add_option("--threads", threads);
    serve->add_option("--ratio", ratio);
    serve->add_option("--trust", trust);
    serve->add_flag("--verbose", verbose);
  }
};

std::string write_config(const std::string& name, const std::string& text) {
  const std::string path = std::string(std::getenv("KEYLINE_BINARY_DIR") ? std::getenv("KEYLINE_BINARY_DIR") : "/tmp") +
                           "/unit_config_" + name + ".toml";
  std::ofstream(path) << text;
  return path;
}

// The exception text of parsing argv against a fresh Program, "" when it parsed.
std::string parse(Program& p, std::vector<std::string> args) {
  std::vector<const char*> argv{"p"};
  for (auto& a : args) argv.push_back(a.c_str());
  try {
    p.app.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const CLI::ParseError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("parse_toml flattens tables and keeps kinds and lines") {
  const auto e = config::parse_toml("# c\nid = \"a\"\n[serve]\nthreads = 8\nratio = 0.5\non = true\n"
                                    "trust = [\"x\", \"y\"]\n[serve.sub]\nk = 'lit'\n",
                                    "t.toml");
  REQUIRE(e.size() == 6);
  CHECK(e[0].key == "id");
  CHECK(e[0].section.empty());
  CHECK(e[0].kind == Kind::String);
  CHECK(e[0].line == 2);
  CHECK(e[1].section == std::vector<std::string>{"serve"});
  CHECK(e[1].kind == Kind::Integer);
  CHECK(e[1].values == std::vector<std::string>{"8"});
  CHECK(e[1].line == 4);
  CHECK(e[2].kind == Kind::Float);
  CHECK(e[3].kind == Kind::Boolean);
  CHECK(e[3].values == std::vector<std::string>{"true"});
  CHECK(e[4].array);
  CHECK(e[4].values == std::vector<std::string>{"x", "y"});
  CHECK(e[5].section == std::vector<std::string>{"serve", "sub"});
  CHECK(e[5].values == std::vector<std::string>{"lit"});
}

TEST_CASE("parse_toml refuses what no setting is, naming the line") {
  CHECK(refusal("a = 1\nb = \n").rfind("t.toml:2:", 0) == 0);
  CHECK(refusal("a = 1\na = 2\n").rfind("t.toml:2:", 0) == 0);  // a key twice (TOML 1.0: invalid)
  CHECK(refusal("x = {a = 1}\n").find("inline tables") != std::string::npos);
  CHECK(refusal("[[x]]\na = 1\n").find("arrays of tables") != std::string::npos);
  CHECK(refusal("\n\nd = 1979-05-27\n").rfind("t.toml:3:", 0) == 0);
  CHECK(refusal("m = [1, \"a\"]\n").find("mixed kinds") != std::string::npos);
  CHECK(refusal("s = \"unterminated\n") != "");
  CHECK(refusal("").empty());
}

TEST_CASE("StrictToml: a good file sets the options") {
  Program p;
  const auto path = write_config("good", "path = \"/p\"\n[serve]\ndb = \"dbname=x\"\nthreads = 8\nratio = 2\n"
                                         "verbose = true\ntrust = [\"a.pem\", \"b.pem\"]\n");
  CHECK(parse(p, {"--config", path, "serve"}) == "");
  CHECK(p.path == "/p");
  CHECK(p.db == "dbname=x");
  CHECK(p.threads == 8);
  CHECK(p.ratio == 2);
  CHECK(p.verbose);
  CHECK(p.trust == std::vector<std::string>{"a.pem", "b.pem"});
}

TEST_CASE("StrictToml: an unknown key, a wrong type, an unknown section are refused with file and line") {
  {
    Program p;
    const auto path = write_config("unknown", "[serve]\nthreads = 8\nthread = 9\n");
    const auto msg = parse(p, {"--config", path, "serve"});
    CHECK(msg.find(path + ":3:") != std::string::npos);
    CHECK(msg.find("unknown key \"thread\" in [serve]") != std::string::npos);
  }
  {
    Program p;
    const auto path = write_config("type", "[serve]\n\nthreads = \"8\"\n");
    const auto msg = parse(p, {"--config", path, "serve"});
    CHECK(msg.find(path + ":3:") != std::string::npos);
    CHECK(msg.find("\"threads\" in [serve] must be an integer, not a string") != std::string::npos);
  }
  {
    Program p;
    const auto path = write_config("flag", "[serve]\nverbose = 1\n");
    CHECK(parse(p, {"--config", path, "serve"}).find("must be a boolean") != std::string::npos);
  }
  {
    Program p;
    const auto path = write_config("array", "[serve]\nlisten = [\"a\", \"b\"]\n");
    CHECK(parse(p, {"--config", path, "serve"}).find("not an array") != std::string::npos);
  }
  {
    Program p;
    const auto path = write_config("section", "[serv]\nthreads = 8\n");
    const auto msg = parse(p, {"--config", path, "serve"});
    CHECK(msg.find(path + ":2:") != std::string::npos);
    CHECK(msg.find("unknown section [serv]") != std::string::npos);
  }
  {
    Program p;  // a serve key at the top is not the root's
    const auto path = write_config("root", "threads = 8\n");
    CHECK(parse(p, {"--config", path, "serve"}).find("unknown key \"threads\"") != std::string::npos);
  }
}

TEST_CASE("StrictToml: flag over environment over file") {
  const auto path = write_config("precedence", "[serve]\ndb = \"from-file\"\n");
  ::unsetenv("KEYLINE_TEST_CONFIG_DB");
  {
    Program p;
    CHECK(parse(p, {"--config", path, "serve"}) == "");
    CHECK(p.db == "from-file");
  }
  ::setenv("KEYLINE_TEST_CONFIG_DB", "from-env", 1);
  {
    Program p;
    CHECK(parse(p, {"--config", path, "serve"}) == "");
    CHECK(p.db == "from-env");
  }
  {
    Program p;
    CHECK(parse(p, {"--config", path, "serve", "--db", "from-flag"}) == "");
    CHECK(p.db == "from-flag");
  }
  ::unsetenv("KEYLINE_TEST_CONFIG_DB");
}

TEST_CASE("refuse_secret_flags: a secret's value on the command line") {
  auto refused = [](std::vector<const char*> argv) {
    try {
      config::refuse_secret_flags(static_cast<int>(argv.size()), argv.data());
    } catch (const CLI::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(refused({"p", "serve", "--sign-pin", "1234"}).find("--sign-pin-file") != std::string::npos);
  CHECK(refused({"p", "--db-password=hunter2"}).find("--db-password takes") != std::string::npos);
  CHECK(refused({"p", "--pin", "1"}) != "");
  CHECK(refused({"p", "--master-key-hex", "00"}) != "");
  CHECK(refused({"p", "--pin-file", "f", "--db-password-file", "g", "--log-key", "k"}) == "");
  CHECK(refused({"p", "--", "--pin"}) == "");
  // The message never repeats the value.
  CHECK(refused({"p", "--db-password=hunter2"}).find("hunter2") == std::string::npos);
}
