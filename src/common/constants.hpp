// Numeric constants shared by every backend (host and device code alike).
#pragma once

namespace flashprefill::detail {

// Softmax runs in the exp2 domain (exp(x) = exp2(x * log2 e): one ex2 instruction on a GPU), and
// the log-sum-exp goes back to natural log at the end (ln s = log2 s * ln 2).
inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;

}  // namespace flashprefill::detail
