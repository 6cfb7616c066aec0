// The validation behind every public entry point (src/api.cpp), reachable by tests and tools that
// need a Problem for the fp64 reference.
#pragma once

#include "common/problem.hpp"

namespace flashprefill::detail {

enum class Needs { discovery, attention };  // attention also checks out and lse

// Checks every argument (throws flashprefill::Error naming the first bad one) and returns the
// Problem.
Problem make_problem(const AttentionArgs& args, const Params& params, Needs needs);

}  // namespace flashprefill::detail
