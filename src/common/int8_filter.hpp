// The int8 pre-filter of step 2 (ALGORITHM.md): a cheap, provably safe way to find the key blocks
// whose exact scores cannot matter, so that the score kernel computes exact (bf16/fp16) scores only
// for the others. Shared by the CUDA score kernel and the CPU test that checks the bound.
//
// For a query block (rows q_t of one head) and a pooled key kbar_j, both are quantized to int8 with
// one scale each (symmetric, round to nearest):
//   q = sQ q~ + e   with |e_d| <= sQ / 2,      sQ = 1 / invQ, invQ = 127 / max_{t,d} |q_td|
//   k = sj k~ + f   with |f_d| <= sj / 2,      sj = 1 / invj, invj = 127 / max_d |kbar_jd|
// and the integer product q~ . k~ is exact (int32 accumulation on the tensor cores). Writing
//   q . k = sQ sj q~.k~ + sj e.k~ + q.f
// gives |q . k - sQ sj q~.k~| <= (sj / 2) (sQ L1(k~_j) + L1(q_t)), so with m~_j = sQ sj max_t q~_t.k~_j
// the block's best query score m_j = max_t q_t . kbar_j lies in [m~_j - err_j, m~_j + err_j] with
// err_j = (sj / 2)(sQ L1(k~_j) + max_t L1(q_t)). Every rounding of the float arithmetic below is
// covered by kSlack.
//
// A block is dropped by step 3 whatever its sum once scale * m_j < M + log(alpha / (2 B)) (see
// score_kernel.cuh); with M >= max_j scale * (m~_j - err_j) the test needs only these bounds.
#pragma once

#include <cmath>
#include <cstdint>

#include "flashprefill/layout.hpp"  // FP_HOST_DEVICE

namespace flashprefill::detail::int8_filter {

constexpr float kLevels = 127.0f;
// Relative slack on every bound: covers the fp32 roundings of scales, sums and products (each a few
// units of 2^-24), a thousand times over.
constexpr float kSlack = 1.0f / 4096.0f;
// The quantization's inverse scale is capped so that it stays finite for tiny (or zero) vectors;
// the reconstruction scale is always 1 / inverse, so the rounding bound holds either way.
constexpr float kMaxInverse = 1.2676506e30f;  // 2^100

FP_HOST_DEVICE inline float inverse_scale(float max_abs) {
  const float inverse = kLevels / max_abs;  // +inf for 0: capped below
  return inverse < kMaxInverse ? inverse : kMaxInverse;
}

// round(value * inverse) as an int8 in the low byte of the result (two's complement), by the
// 1.5 * 2^23 trick: one FMA rounds the exact product to the nearest integer (ties to even), and
// |value * inverse| <= 127 (1 + 2^-24) never leaves the int8 range.
FP_HOST_DEVICE inline uint32_t quantize_bits(float value, float inverse) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
#if defined(__CUDA_ARCH__)
  return __float_as_uint(__fmaf_rn(value, inverse, kMagic));
#else
  const float rounded = std::fma(value, inverse, kMagic);
  uint32_t bits;
  __builtin_memcpy(&bits, &rounded, 4);
  return bits;
#endif
}
FP_HOST_DEVICE inline int8_t quantize(float value, float inverse) { return int8_t(quantize_bits(value, inverse) & 0xffu); }

// Half-width of the interval around sQ sj max_t q~_t.k~_j that holds max_t q_t . kbar_j (unscaled).
//   key_scale = sj, key_l1 = L1(k~_j) (an integer), query_scale = sQ, query_l1 = max_t L1(q_t).
FP_HOST_DEVICE inline float error_bound(float key_scale, float key_l1, float query_scale, float query_l1) {
  return 0.5f * (1.0f + kSlack) * key_scale * (query_scale * key_l1 + query_l1);
}

// Below this scale the fp32 arithmetic of the bound could underflow (the products of two scales
// and of a scale and a sum must stay normal numbers): such blocks get no bound, and are scored exactly.
constexpr float kMinScale = 8.6736174e-19f;  // 2^-60

// The estimate sQ sj max_t q~_t.k~_j and its interval, widened by the slack; (-inf, +inf) where
// either scale is too small to bound safely. An overflow gives an infinite (uninformative) bound.
struct Interval {
  float lower, upper;
};
FP_HOST_DEVICE inline Interval best_score_interval(int32_t max_product, float key_scale, float key_l1, float query_scale,
                                                   float query_l1) {
  if (!(key_scale >= kMinScale && query_scale >= kMinScale)) return {-INFINITY, INFINITY};
  const float estimate = float(max_product) * query_scale * key_scale;  // max_product < 2^24: exact
  const float width = error_bound(key_scale, key_l1, query_scale, query_l1) + kSlack * (estimate < 0 ? -estimate : estimate);
  return {estimate - width, estimate + width};
}

}  // namespace flashprefill::detail::int8_filter
