#include "options.hpp"

#include <cctype>
#include <sstream>
#include <stdexcept>

namespace flashprefill::tools {

Options::Options(int argc, char** argv, int first, const std::set<std::string>& valued,
                 const std::set<std::string>& switches) {
  for (int n = first; n < argc; ++n) {
    const std::string arg = argv[n];
    if (arg.rfind("--", 0) != 0)
      throw UsageError("unexpected argument '" + arg + "' (options start with --)");
    const std::string name = arg.substr(2);
    if (switches.count(name)) {
      values_.insert_or_assign(
          name, std::string(1, '1'));  // (not = "1": GCC 12 -Wrestrict false positive)
    } else if (valued.count(name)) {
      if (n + 1 >= argc) throw UsageError("option --" + name + " needs a value");
      values_[name] = argv[++n];
    } else {
      throw UsageError("unknown option '" + arg + "' (see --help)");
    }
  }
}

std::string Options::text(const std::string& name, const std::string& fallback) const {
  const auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

int64_t Options::integer(const std::string& name, int64_t fallback, int64_t min_value) const {
  const auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  const std::string& raw = it->second;
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(raw, &used);
  } catch (const std::exception&) {
    throw UsageError("--" + name + " '" + raw + "' is not an integer");
  }
  if (used + 1 == raw.size()) {
    const char suffix = char(std::toupper(static_cast<unsigned char>(raw.back())));
    if (suffix == 'K')
      value *= 1024;
    else if (suffix == 'M')
      value *= 1024 * 1024;
    else
      throw UsageError("--" + name + " '" + raw + "': unknown suffix (use K or M)");
  } else if (used != raw.size()) {
    throw UsageError("--" + name + " '" + raw + "' is not an integer");
  }
  if (value < min_value)
    throw UsageError("--" + name + " is " + raw + "; expected >= " + std::to_string(min_value));
  return value;
}

double Options::real(const std::string& name, double fallback) const {
  const auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(it->second, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != it->second.size() || it->second.empty())
    throw UsageError("--" + name + " '" + it->second + "' is not a number");
  return value;
}

std::vector<int64_t> Options::integer_list(const std::string& name) const {
  std::vector<int64_t> list;
  std::stringstream stream(text(name, ""));
  std::string item;
  while (std::getline(stream, item, ',')) {
    try {
      list.push_back(std::stoll(item));
    } catch (const std::exception&) {
      throw UsageError("--" + name + ": '" + item + "' is not an integer");
    }
  }
  return list;
}

}  // namespace flashprefill::tools
