// flashprefill: the one exception type of the library.
#pragma once

#include <stdexcept>
#include <string>

namespace flashprefill {

// Thrown for bad arguments (the message names the argument, its value and what was expected)
// and for failures of the backend (the message names the call and file:line).
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace flashprefill
