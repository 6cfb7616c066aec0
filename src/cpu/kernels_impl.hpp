// The body of the CPU kernels (see kernels.hpp), compiled once per instruction set: the including
// file defines FP_KERNEL_ISA (the namespace name) and is built with that ISA's compiler flags.
// Nothing here may include a header with inline functions of its own, so that no wide-ISA copy of
// a shared inline function can leak to other translation units.
#include <cstdint>

#include "cpu/kernels.hpp"

namespace flashprefill::cpu::kernels::FP_KERNEL_ISA {

using ::flashprefill::cpu::kernels::kColumnTile;
using ::flashprefill::cpu::kernels::kRowGroup;

// 2^x for finite x, 0 for x <= -126 or -inf. Relative error about 2e-7.
[[gnu::always_inline]] static inline float exp2_approx(float x) {
  const float clamped = x < -126.0f ? -126.0f : x;
  const float whole = __builtin_rintf(clamped);
  const float f = clamped - whole;  // in [-0.5, 0.5]
  // Taylor series of 2^f = e^(f ln 2) to degree 6: error < 1e-7 on [-0.5, 0.5].
  float poly = 1.5403530e-4f;
  poly = poly * f + 1.3333558e-3f;
  poly = poly * f + 9.6181291e-3f;
  poly = poly * f + 5.5504109e-2f;
  poly = poly * f + 2.4022651e-1f;
  poly = poly * f + 6.9314718e-1f;
  poly = poly * f + 1.0f;
  const int32_t exponent = (static_cast<int32_t>(whole) + 127) << 23;
  const float scale = __builtin_bit_cast(float, exponent);
  return x < -126.0f ? 0.0f : poly * scale;
}

void qk(const float* q, int64_t m, int64_t D, const float* kt, int64_t ld_kt, int64_t n, float* s,
        int64_t ld_s) {
  // Column panels outermost: one D x 64 panel of kt stays in L1 while every row group uses it.
  for (int64_t c0 = 0; c0 < n; c0 += kColumnTile)
    for (int64_t r = 0; r < m; r += kRowGroup) {
      float acc[kRowGroup][kColumnTile] = {};
      for (int64_t d = 0; d < D; ++d) {
        const float* k_row = kt + d * ld_kt + c0;
        for (int i = 0; i < kRowGroup; ++i) {
          const float qv = q[(r + i) * D + d];
          for (int c = 0; c < kColumnTile; ++c) acc[i][c] += qv * k_row[c];
        }
      }
      for (int i = 0; i < kRowGroup; ++i)
        for (int c = 0; c < kColumnTile; ++c) s[(r + i) * ld_s + c0 + c] = acc[i][c];
    }
}

void pv(const float* p, int64_t ld_p, int64_t m, int64_t n, const float* v, int64_t D, float* o) {
  // Column panels outermost: one n x 64 panel of v stays in L1 while every row group uses it.
  for (int64_t d0 = 0; d0 < D; d0 += kColumnTile)
    for (int64_t r = 0; r < m; r += kRowGroup) {
      float acc[kRowGroup][kColumnTile];
      for (int i = 0; i < kRowGroup; ++i)
        for (int c = 0; c < kColumnTile; ++c) acc[i][c] = o[(r + i) * D + d0 + c];
      for (int64_t s = 0; s < n; ++s) {
        const float* v_row = v + s * D + d0;
        for (int i = 0; i < kRowGroup; ++i) {
          const float pval = p[(r + i) * ld_p + s];
          for (int c = 0; c < kColumnTile; ++c) acc[i][c] += pval * v_row[c];
        }
      }
      for (int i = 0; i < kRowGroup; ++i)
        for (int c = 0; c < kColumnTile; ++c) o[(r + i) * D + d0 + c] = acc[i][c];
    }
}

void exp2_rows(float* x, int64_t rows, int64_t cols, int64_t ld, const float* row_max) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * ld;
    const float shift = row_max[r];
    for (int64_t c = 0; c < cols; ++c) row[c] = exp2_approx(row[c] - shift);
  }
}

void online_softmax_block(float* s, int64_t m, int64_t m_pad, int64_t ld, int64_t keys,
                          int64_t first_visible, float* row_max, float* row_sum, float* o,
                          int64_t D) {
  constexpr int kLanes = 16;  // explicit partial maxima and sums: fp reductions that vectorise
  constexpr float kNegInf = -__builtin_inff();
  for (int64_t r = 0; r < m; ++r) {
    float* x = s + r * ld;
    int64_t visible = first_visible + r + 1;
    visible = visible < 0 ? 0 : visible > keys ? keys : visible;
    for (int64_t c = visible; c < ld; ++c) x[c] = kNegInf;
    float lane_max[kLanes];
    for (int l = 0; l < kLanes; ++l) lane_max[l] = row_max[r];
    for (int64_t c = 0; c < ld; c += kLanes)
      for (int l = 0; l < kLanes; ++l)
        lane_max[l] = lane_max[l] > x[c + l] ? lane_max[l] : x[c + l];
    float new_max = lane_max[0];
    for (int l = 1; l < kLanes; ++l) new_max = new_max > lane_max[l] ? new_max : lane_max[l];
    const float shift =
        new_max == kNegInf ? 0.0f : new_max;  // nothing visible yet: avoid -inf - -inf
    float lane_sum[kLanes] = {};
    for (int64_t c = 0; c < ld; c += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        const float pval = exp2_approx(x[c + l] - shift);
        x[c + l] = pval;
        lane_sum[l] += pval;
      }
    float sum = 0.0f;
    for (int l = 0; l < kLanes; ++l) sum += lane_sum[l];
    const float correction = exp2_approx(row_max[r] - shift);  // 0 while row_max is -inf
    row_sum[r] = row_sum[r] * correction + sum;
    for (int64_t d = 0; d < D; ++d) o[r * D + d] *= correction;
    row_max[r] = new_max;
  }
  for (int64_t r = m; r < m_pad; ++r)
    for (int64_t c = 0; c < ld; ++c) s[r * ld + c] = 0.0f;
}

}  // namespace flashprefill::cpu::kernels::FP_KERNEL_ISA
