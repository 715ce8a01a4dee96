// keyline-station-faulty: the operator's keyline-station CLI (station/main.cpp, compiled here with its
// main renamed) plus a fault hook for the crash tests. Test-only: built next to the programs in
// build/bin so the e2e scripts find it, never installed, and the operator's binary has neither the
// option nor the environment variable (docs/line.md, "Crash tests").
//
//   --crash-at STEP[:N]  (anywhere on the command line) or KEYLINE_STATION_CRASH_AT=STEP[:N]:
//   abort() -- like kill -9: no clean-up, no flush -- the N-th time (default 1) STEP is reached.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "keyline/station/fault_hook.h"

int keyline_station_main(int argc, char** argv);  // station/main.cpp

namespace {

std::string g_step;
long g_nth = 1;
std::atomic<long> g_seen{0};

void crash_hook(const std::string& step) {
  if (step == g_step && g_seen.fetch_add(1) + 1 == g_nth) std::abort();
}

// Steps the station's fault points name (step_name() in station/src/personalize.cpp, and "drain").
bool known_step(const std::string& s) {
  for (const char* k : {"connect", "read-device", "claim", "attest", "issue", "store", "backup", "record", "publish", "done",
                        "drain"})
    if (s == k) return true;
  return false;
}

// Arms the hook from STEP[:N]; false when the spec is not valid.
bool arm(const std::string& spec) {
  const auto colon = spec.find(':');
  g_step = spec.substr(0, colon);
  if (!known_step(g_step)) return false;
  if (colon != std::string::npos) {
    char* end = nullptr;
    g_nth = std::strtol(spec.c_str() + colon + 1, &end, 10);
    if (g_nth < 1 || *end != '\0' || end == spec.c_str() + colon + 1) return false;
  }
  keyline::station::install_fault_hook(&crash_hook);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::string spec;
  if (const char* env = std::getenv("KEYLINE_STATION_CRASH_AT")) spec = env;
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--crash-at") == 0 && i + 1 < argc) {
      spec = argv[++i];
    } else if (std::strncmp(argv[i], "--crash-at=", 11) == 0) {
      spec = argv[i] + 11;
    } else {
      if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0)
        std::puts("keyline-station-faulty (crash tests only): keyline-station plus --crash-at STEP[:N] or "
                  "KEYLINE_STATION_CRASH_AT=STEP[:N]\n");
      rest.push_back(argv[i]);
    }
  }
  if (!spec.empty() && !arm(spec)) {
    std::fprintf(stderr,
                 "keyline-station-faulty: --crash-at wants STEP[:N], STEP one of connect, read-device, claim, "
                 "attest, issue, store, backup, record, publish, done, drain, and N >= 1\n");
    return 2;
  }
  rest.push_back(nullptr);
  return keyline_station_main(static_cast<int>(rest.size()) - 1, rest.data());
}
