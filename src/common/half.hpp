// bf16 / fp16 <-> fp32 by bit manipulation, identical on the host and the device, so that every
// backend and every test reads the same numbers from the same 16-bit inputs.
#pragma once

#include <cstdint>
#include <cstring>

#include "flashprefill/layout.hpp"  // FP_HOST_DEVICE

namespace flashprefill::detail {

FP_HOST_DEVICE inline float bits_to_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
#endif
}
FP_HOST_DEVICE inline uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return bits;
#endif
}

FP_HOST_DEVICE inline float bf16_to_float(uint16_t h) { return bits_to_float(uint32_t(h) << 16); }

// Round to nearest even; NaN stays NaN.
FP_HOST_DEVICE inline uint16_t float_to_bf16(float f) {
  const uint32_t bits = float_to_bits(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40u);
  return uint16_t((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

FP_HOST_DEVICE inline float fp16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));  // Inf / NaN
  if (exponent != 0) return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  if (mantissa == 0) return bits_to_float(sign);
  // Subnormal: value = mantissa * 2^-24.
  float value = float(mantissa) * 5.9604644775390625e-8f;
  return (sign ? -value : value);
}

// Round to nearest even, with overflow to Inf and gradual underflow.
FP_HOST_DEVICE inline uint16_t float_to_fp16(float f) {
  const uint32_t bits = float_to_bits(f);
  const uint16_t sign = uint16_t((bits >> 16) & 0x8000u);
  const uint32_t abs_bits = bits & 0x7fffffffu;
  if (abs_bits > 0x7f800000u) return uint16_t(sign | 0x7e00u);   // NaN
  if (abs_bits >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: Inf
  if (abs_bits < 0x38800000u) {                                  // below 2^-14: subnormal or zero
    const float magnitude = bits_to_float(abs_bits);
    // Scale so one fp16 subnormal ulp (2^-24) is 1, then round to nearest even.
    const float scaled = magnitude * 16777216.0f;
    uint32_t q = uint32_t(scaled);
    const float rest = scaled - float(q);
    if (rest > 0.5f || (rest == 0.5f && (q & 1u))) ++q;
    return uint16_t(sign | q);
  }
  const uint32_t rounded = abs_bits + 0xfffu + ((abs_bits >> 13) & 1u);
  return uint16_t(sign | ((rounded - (112u << 23)) >> 13));
}

// By run-time dtype (bf16 or fp16): for host code that reads or writes tensors of either.
FP_HOST_DEVICE inline float half_bits_to_float(uint16_t h, DType dtype) {
  return dtype == DType::bf16 ? bf16_to_float(h) : fp16_to_float(h);
}
FP_HOST_DEVICE inline uint16_t float_to_half_bits(float f, DType dtype) {
  return dtype == DType::bf16 ? float_to_bf16(f) : float_to_fp16(f);
}
// The value as the dtype holds it (round to nearest even; fp32 holds it as is).
FP_HOST_DEVICE inline float rounded_to(float f, DType dtype) {
  return dtype == DType::fp32 ? f : half_bits_to_float(float_to_half_bits(f, dtype), dtype);
}

// Element `offset` of a bf16, fp16 or fp32 tensor, as fp32; and its store (host code: the CPU
// backend and the tests, whose inputs may be fp32).
inline float load_element(const void* base, int64_t offset, DType dtype) {
  if (dtype == DType::fp32) return static_cast<const float*>(base)[offset];
  return half_bits_to_float(static_cast<const uint16_t*>(base)[offset], dtype);
}
inline void store_element(void* base, int64_t offset, float value, DType dtype) {
  if (dtype == DType::fp32)
    static_cast<float*>(base)[offset] = value;
  else
    static_cast<uint16_t*>(base)[offset] = float_to_half_bits(value, dtype);
}

}  // namespace flashprefill::detail
