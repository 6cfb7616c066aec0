// bf16 attention with AVX-512 BF16's vdpbf16ps (compiler flags in src/cpu/CMakeLists.txt): each
// instruction adds 16 two-term bf16 dot products to 16 fp32 lanes, reading the same packed K/V as
// the AMX tiles. Register blocks of 16 accumulators: 8 query rows x 32 keys for S, 4 rows x 64
// dims for O (the unroll pragmas keep the accumulators in registers: GCC 12 would not unroll them).
#include <immintrin.h>

#include <cstdint>

#include "cpu/attention_bf16.hpp"

namespace flashprefill::cpu::kernels::avx512bf16 {
namespace {

// A pair of bf16 values of row-major data, broadcast to every lane.
[[gnu::always_inline]] inline __m512bh pair_broadcast(const uint16_t* pair) {
  int32_t bits;
  __builtin_memcpy(&bits, pair, 4);
  return (__m512bh)_mm512_set1_epi32(bits);
}

struct Products {
  void finish() {}

  // s[0..31][0 .. chunks * 32) = q[32][D] * K^T, K packed [D / 2][ld][2].
  void qk(const uint16_t* q, int64_t D, const uint16_t* k, int64_t ld, int64_t chunks, float* s) {
    constexpr int kRows = 8;
    for (int64_t c = 0; c < chunks; ++c)
      for (int64_t r0 = 0; r0 < kSlabRows; r0 += kRows) {
        __m512 acc[kRows][2];
#pragma GCC unroll 16
        for (int r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        for (int64_t pair = 0; pair < D / 2; ++pair) {
          const uint16_t* k_row = k + pair * ld * 2 + c * 64;
          const __m512bh k0 = (__m512bh)_mm512_loadu_si512(k_row),
                         k1 = (__m512bh)_mm512_loadu_si512(k_row + 32);
#pragma GCC unroll 16
          for (int r = 0; r < kRows; ++r) {
            const __m512bh qr = pair_broadcast(q + (r0 + r) * D + 2 * pair);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], qr, k0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], qr, k1);
          }
        }
#pragma GCC unroll 16
        for (int r = 0; r < kRows; ++r) {
          _mm512_storeu_ps(s + (r0 + r) * ld + c * 32, acc[r][0]);
          _mm512_storeu_ps(s + (r0 + r) * ld + c * 32 + 16, acc[r][1]);
        }
      }
  }

  // o[32][D] += p[32][0 .. chunks * 32) * V, V packed [ld / 2][D][2].
  void pv(const uint16_t* p, int64_t ld, int64_t chunks, const uint16_t* v, int64_t D, float* o) {
    constexpr int kRows = 4, kVectors = 4;
    for (int64_t d0 = 0; d0 < D; d0 += 16 * kVectors)
      for (int64_t r0 = 0; r0 < kSlabRows; r0 += kRows) {
        __m512 acc[kRows][kVectors];
#pragma GCC unroll 16
        for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 16
          for (int x = 0; x < kVectors; ++x)
            acc[r][x] = _mm512_loadu_ps(o + (r0 + r) * D + d0 + 16 * x);
        for (int64_t pair = 0; pair < chunks * kKeyChunk / 2; ++pair) {
          __m512bh v_vec[kVectors];
#pragma GCC unroll 16
          for (int x = 0; x < kVectors; ++x)
            v_vec[x] = (__m512bh)_mm512_loadu_si512(v + (pair * D + d0 + 16 * x) * 2);
#pragma GCC unroll 16
          for (int r = 0; r < kRows; ++r) {
            const __m512bh pr = pair_broadcast(p + (r0 + r) * ld + 2 * pair);
#pragma GCC unroll 16
            for (int x = 0; x < kVectors; ++x)
              acc[r][x] = _mm512_dpbf16_ps(acc[r][x], pr, v_vec[x]);
          }
        }
#pragma GCC unroll 16
        for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 16
          for (int x = 0; x < kVectors; ++x)
            _mm512_storeu_ps(o + (r0 + r) * D + d0 + 16 * x, acc[r][x]);
      }
  }
};

}  // namespace
}  // namespace flashprefill::cpu::kernels::avx512bf16

#define FP_BF16_ISA avx512bf16
#include "cpu/attention_bf16_impl.hpp"
#undef FP_BF16_ISA
