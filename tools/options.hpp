// Command-line options of the flashprefill tool: "--name value" pairs and bare switches, checked
// against the list each subcommand accepts.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace flashprefill::tools {

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Options {
 public:
  // Parses argv[first..]; `valued` take a value, `switches` do not. Throws UsageError on anything
  // else.
  Options(int argc, char** argv, int first, const std::set<std::string>& valued,
          const std::set<std::string>& switches);

  bool has(const std::string& name) const { return values_.count(name) != 0; }
  std::string text(const std::string& name, const std::string& fallback) const;
  int64_t integer(const std::string& name, int64_t fallback,
                  int64_t min_value) const;  // accepts 4K, 32k, 1M
  double real(const std::string& name, double fallback) const;
  std::vector<int64_t> integer_list(const std::string& name) const;  // "0,5,31"

 private:
  std::map<std::string, std::string> values_;
};

}  // namespace flashprefill::tools
