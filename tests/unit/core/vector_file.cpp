#include "vector_file.h"

#include <fstream>
#include <sstream>

#include "testenv.h"

namespace keyline::test {

VectorFile read_vectors(const std::string& name) {
  const std::string path = source_dir() + "/tests/vectors/" + name;
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "cannot open vector file " << path);
  VectorFile vf;
  std::string line;
  REQUIRE_MESSAGE(std::getline(in, line), path << " is empty");
  REQUIRE_MESSAGE(line.rfind("# ", 0) == 0, path << " must start with a comment naming its source");
  vf.source = line.substr(2);
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::vector<std::string> row;
    for (std::string f; fields >> f;) row.push_back(f);
    vf.rows.push_back(std::move(row));
    vf.lines.push_back(line);
  }
  REQUIRE_MESSAGE(!vf.rows.empty(), path << " has no vectors");
  return vf;
}

}  // namespace keyline::test
