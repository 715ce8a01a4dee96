// The line's summary as JSON (`keyline-station run --summary-json FILE`): what print_summary shows, for
// scripts (docs/line.md), and the failover's switch (docs/custody.md "Failover").
#include <sstream>

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>

#include "keyline/station/line.h"

namespace keyline::station {

namespace {

Poco::JSON::Object::Ptr failover_json(const LineSummary& s) {
  Poco::JSON::Object::Ptr f = new Poco::JSON::Object;
  f->set("switched", !s.failover_at.empty());
  if (!s.failover_at.empty()) {
    f->set("at", s.failover_at);
    f->set("after_devices", s.failover_after_devices);
  }
  f->set("probes", s.failover_probes);
  Poco::JSON::Array::Ptr tokens = new Poco::JSON::Array;
  for (const auto& t : s.tokens) {
    Poco::JSON::Object::Ptr o = new Poco::JSON::Object;
    o->set("role", t.role);
    o->set("token", t.token);
    o->set("station_id", t.station_id);
    o->set("devices", t.devices);
    tokens->add(o);
  }
  f->set("tokens", tokens);
  return f;
}

}  // namespace

std::string summary_json(const LineSummary& s) {
  Poco::JSON::Object o;
  o.set("done", s.done);
  o.set("already_done", s.already_done);
  o.set("failed", s.failed);
  o.set("chips_refused", s.chips_refused);
  o.set("channel", s.channel);
  o.set("key_source", s.key_source);
  o.set("publishing", s.publishing);
  o.set("refused", s.refused);
  o.set("skipped", s.skipped);
  o.set("backlog", s.backlog);
  o.set("unfinished", s.unfinished);
  o.set("seconds", s.seconds);
  o.set("halted", s.halted);
  Poco::JSON::Array::Ptr failures = new Poco::JSON::Array;
  for (const auto& f : s.failures) failures->add(f);
  o.set("failures", failures);
  if (!s.tokens.empty()) o.set("failover", failover_json(s));
  std::ostringstream out;
  o.stringify(out);
  return out.str();
}

}  // namespace keyline::station
