// The journal's state machine (keyline::station::route, docs/station.md "Journal states"): what each
// journal state and device lifecycle lead to.
#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "keyline/core/error.h"
#include "keyline/station/personalize.h"

using namespace keyline;
using namespace keyline::station;

namespace {

std::string names(const std::vector<Step>& steps) {
  std::string s;
  for (const Step x : steps) s += std::string(s.empty() ? "" : " ") + step_name(x);
  return s;
}

}  // namespace

TEST_CASE("journal states: the five this station writes, 'stored' of earlier versions as 'issued', others refused") {
  CHECK(parse_journal_state("claimed") == JournalState::Claimed);
  CHECK(parse_journal_state("issued") == JournalState::Issued);
  CHECK(parse_journal_state("stored") == JournalState::Issued);
  CHECK(parse_journal_state("backed_up") == JournalState::BackedUp);
  CHECK(parse_journal_state("published") == JournalState::Published);
  CHECK_THROWS_AS(parse_journal_state("void"), core::Error);  // a void row is never live
  CHECK_THROWS_AS(parse_journal_state(""), core::Error);
}

TEST_CASE("each journal state and lifecycle resumes at its step (docs/station.md, Journal states)") {
  struct Want {
    JournalState state;
    bool personalized;
    Refusal refusal;
    const char* steps;
  };
  const Want table[] = {
      {JournalState::None, false, Refusal::None, "claim issue store backup record publish"},
      {JournalState::None, true, Refusal::Personalized, ""},
      {JournalState::Claimed, false, Refusal::None, "claim issue store backup record publish"},
      {JournalState::Claimed, true, Refusal::PersonalizedVoidClaim, ""},
      {JournalState::Issued, false, Refusal::None, "claim issue store backup record publish"},
      {JournalState::Issued, true, Refusal::None, "claim backup record publish"},
      {JournalState::BackedUp, false, Refusal::LostFlash, ""},
      {JournalState::BackedUp, true, Refusal::None, "claim publish"},
      {JournalState::Published, false, Refusal::LostFlash, ""},
      {JournalState::Published, true, Refusal::Personalized, ""},
  };
  for (const auto& w : table) {
    CAPTURE(static_cast<int>(w.state));
    CAPTURE(w.personalized);
    const Route& r = route(w.state, w.personalized);
    CHECK(r.refusal == w.refusal);
    CHECK(names(r.steps) == w.steps);
  }
}

TEST_CASE("every route claims first, publishes last, and stores only into a blank device") {
  for (const JournalState s : {JournalState::None, JournalState::Claimed, JournalState::Issued, JournalState::BackedUp,
                               JournalState::Published})
    for (const bool personalized : {false, true}) {
      CAPTURE(static_cast<int>(s));
      CAPTURE(personalized);
      const Route& r = route(s, personalized);
      if (r.refusal != Refusal::None) {
        CHECK(r.steps.empty());
        continue;
      }
      REQUIRE(r.steps.size() >= 2);
      CHECK(r.steps.front() == Step::Claim);
      CHECK(r.steps.back() == Step::Publish);
      const bool stores = std::find(r.steps.begin(), r.steps.end(), Step::Store) != r.steps.end();
      CHECK(stores == !personalized);
      // Issue comes with store and only with it: a package is never stored without being issued now.
      const bool issues = std::find(r.steps.begin(), r.steps.end(), Step::Issue) != r.steps.end();
      CHECK(issues == stores);
    }
}
