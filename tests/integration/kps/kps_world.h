// What the KPS tests (kps_test.cpp, kps_attack_test.cpp) share on top of kps_fixture.h: the one World a
// process makes, reading answers' JSON, a KPS instance in process, a device's transfer request, and waiting.
#pragma once

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <doctest/doctest.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "kps_fixture.h"

namespace {

using keyline::test::Answer;
using keyline::test::Device;
using keyline::test::World;

const std::string kLabel = "user-key";

World& world() {
  static World w;
  return w;
}

Poco::JSON::Object::Ptr json(const std::string& body) {
  Poco::JSON::Parser p;
  return p.parse(body).extract<Poco::JSON::Object::Ptr>();
}

std::string str(const Poco::JSON::Object::Ptr& o, const std::string& k) { return o->getValue<std::string>(k); }

struct Kps {
  std::unique_ptr<keyline::kps::Instance> instance;
  int port = 0;
  explicit Kps(const keyline::kps::Config& c) : instance(std::make_unique<keyline::kps::Instance>(c)) {
    instance->start();
    port = instance->port();
  }
};

// POST /v1/transfers by the target device for the source's key `label`.
Answer ask(const Device& target, int port, const Device& source, const std::string& label = kLabel,
           std::map<std::string, std::string> headers = {}) {
  return world().call(target, port, "POST", "/v1/transfers",
                      "{\"source\":\"" + source.str() + "\",\"label\":\"" + label + "\"}", "application/json", headers);
}

// A transfer the KPS took (201, its answer signed); its id.
std::string requested(const Device& target, int port, const Device& source, const std::string& label = kLabel) {
  const auto a = ask(target, port, source, label);
  REQUIRE_MESSAGE(a.status == 201, a.body);
  world().verify_answer(a);
  return str(json(a.body), "id");
}

std::string state_of(const std::string& id) { return world().sql("SELECT state FROM transfers WHERE id = $1::uuid", {id}); }

bool eventually(const std::function<bool()>& done, int seconds = 10) {
  for (int i = 0; i < seconds * 10; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return done();
}

}  // namespace
