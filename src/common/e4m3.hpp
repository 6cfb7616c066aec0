// Robust discovery's best keys are products of e4m3 values (docs/ROBUST.md): each representative
// and each key block is scaled by a power of two that puts its largest magnitude in [128, 256),
// then rounded to e4m3 (ties to even, as the tensor cores' cvt.rn.satfinite). Identical on the host
// and the device, so that every backend and the reference round the same numbers the same way.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/half.hpp"

namespace flashprefill::detail {

inline constexpr float kE4m3Max = 448.0f;

// x rounded to the nearest e4m3 value, ties to even, saturating at +-448 (NaN stays NaN). Normal
// e4m3 values (|x| >= 2^-6) keep 3 mantissa bits; below, the subnormal step is 2^-9.
FP_HOST_DEVICE inline float round_to_e4m3(float x) {
  const float magnitude = std::fabs(x);
  if (magnitude != magnitude) return x;
  if (magnitude >= kE4m3Max) return x < 0 ? -kE4m3Max : kE4m3Max;
  if (magnitude < 0.015625f) {
#if defined(__CUDA_ARCH__)
    const float steps = rintf(magnitude * 512.0f);
#else
    const float steps = std::nearbyint(magnitude * 512.0f);  // the default mode: ties to even
#endif
    return x < 0 ? -steps / 512.0f : steps / 512.0f;
  }
  const uint32_t bits = float_to_bits(x);
  return bits_to_float((bits + 0x7ffffu + ((bits >> 20) & 1u)) & 0xfff00000u);
}

// The power of two that puts `top` (a largest magnitude, >= 0) in [128, 256): 2^(134 - E) for top's
// biased exponent E, at most 2^127 (tops under 2^-120, subnormals included); 1 when top is 0.
FP_HOST_DEVICE inline float e4m3_scale_of(float top) {
  if (!(top > 0.0f)) return 1.0f;
  const int biased = int((float_to_bits(top) >> 23) & 0xffu);
  const int scale_biased = 261 - biased < 254 ? 261 - biased : 254;
  return bits_to_float(uint32_t(scale_biased > 1 ? scale_biased : 1) << 23);
}

// The host backends' form: x[0 .. n) replaced by round_to_e4m3(x * s) / s, s = e4m3_scale_of of
// their largest magnitude: the same products up to the power of two s that the GPU divides out.
inline void round_to_scaled_e4m3(float* x, int64_t n) {
  float top = 0.0f;
  for (int64_t e = 0; e < n; ++e) top = std::fmax(top, std::fabs(x[e]));
  const float scale = e4m3_scale_of(top);
  for (int64_t e = 0; e < n; ++e) x[e] = round_to_e4m3(x[e] * scale) / scale;
}

}  // namespace flashprefill::detail
