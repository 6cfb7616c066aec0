// Run-time head dim and dtype -> template arguments: the one dispatch of every CUDA launch.
#pragma once

#include <string>
#include <type_traits>

#include "common/problem.hpp"

namespace flashprefill::cuda {

// Calls f(std::integral_constant<int, kValue>{}) for the kValue equal to `value`; false when none
// is.
template <int... kValues, typename F>
bool dispatch_int(int64_t value, F&& f) {
  return ((value == kValues ? (f(std::integral_constant<int, kValues>{}), true) : false) || ...);
}

template <int... kValues>
std::string listed() {
  std::string text;
  ((text += (text.empty() ? "" : ", ") + std::to_string(kValues)), ...);
  return text;
}

// f(head_dim, is_bf16) with head_dim an integral_constant<int, D> of kHeadDims and is_bf16 a
// bool_constant, for p's head dim and dtype (bf16 or fp16); `kernel` names the caller in the error.
template <int... kHeadDims, typename F>
void dispatch_head_dim_and_dtype(const detail::Problem& p, const char* kernel, F&& f) {
  const bool found = dispatch_int<kHeadDims...>(p.head_dim, [&](auto head_dim) {
    if (p.dtype == DType::bf16)
      f(head_dim, std::true_type{});
    else
      f(head_dim, std::false_type{});
  });
  if (!found)
    throw Error(std::string("flashprefill: ") + kernel + " supports head dim " +
                listed<kHeadDims...>() + "; got " + std::to_string(p.head_dim));
}

// f(is_bf16) for p's dtype (bf16 or fp16).
template <typename F>
void dispatch_dtype(const detail::Problem& p, F&& f) {
  if (p.dtype == DType::bf16)
    f(std::true_type{});
  else
    f(std::false_type{});
}

}  // namespace flashprefill::cuda
