// The body of the bf16 attention row (see attention_bf16.hpp), shared by the AMX and AVX-512 BF16
// variants: the including file defines a `Products` policy (the two matrix products on one slab)
// and is compiled with AVX-512 BF16 (and AMX) flags. The online softmax is AVX-512 in both.
//
// Per kept key block and slab of 32 query rows (ALGORITHM.md step 5, FlashAttention's tiling):
// S = Q K^T (fp32), the causal mask, the running max and sum, P = exp2(S * factor - max) rounded to
// bf16, O += P V (fp32). Nothing here calls a function defined outside this file but intrinsics.
#include <immintrin.h>

#include <cstdint>

#include "common/constants.hpp"
#include "cpu/attention_bf16.hpp"

// GCC 12's AVX-512 headers pass _mm512_undefined_ps() through (max, scalef, roundscale, the
// reductions' extracts) and then warn that it may be uninitialised: a false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace flashprefill::cpu::kernels::FP_BF16_ISA {
namespace {

constexpr float kNegInf = -__builtin_inff();

// 2^x for x <= ~0 (finite), with the fraction's polynomial and vscalefps; inputs below -126 give
// values below 2^-126, which the callers' sums cannot tell from 0. Relative error < 3e-6 (P is
// rounded to bf16, 4e-3, before it multiplies V).
[[gnu::always_inline]] inline __m512 exp2_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-126.0f));
  const __m512 whole = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, whole);  // [-0.5, 0.5]
  // Degree-4 fit of 2^f on [-0.5, 0.5] minimising the relative error (max 2.6e-6).
  __m512 poly = _mm512_set1_ps(9.5701078e-3f);
  poly = _mm512_fmadd_ps(poly, f, _mm512_set1_ps(5.5917859e-2f));
  poly = _mm512_fmadd_ps(poly, f, _mm512_set1_ps(2.4024744e-1f));
  poly = _mm512_fmadd_ps(poly, f, _mm512_set1_ps(6.9312179e-1f));
  poly = _mm512_fmadd_ps(poly, f, _mm512_set1_ps(9.9999928e-1f));
  return _mm512_scalef_ps(poly, whole);
}

[[gnu::always_inline]] inline float exp2_scalar(float x) {
  return _mm512_cvtss_f32(exp2_nonpositive(_mm512_set1_ps(x)));
}

// Lanes [0, count) of a 16-lane vector, count clamped to [0, 16].
[[gnu::always_inline]] inline __mmask16 first_lanes(int64_t count) {
  return count >= 16  ? __mmask16(0xffff)
         : count <= 0 ? __mmask16(0)
                      : __mmask16((1u << count) - 1u);
}

// One key block of the online softmax on a slab: rows r < rows of s [kSlabRows][ld] (columns
// [0, cols), cols a multiple of 32); row r sees keys c < clamp(first_visible + r + 1, 0, keys).
// Updates row_max (exp2 domain) and row_sum, rescales o's rows, writes P (bf16) to p
// [kSlabRows][ld]. Returns false when no row sees any key (nothing to accumulate).
bool softmax_block(const float* s, int64_t rows, int64_t ld, int64_t cols, int64_t keys,
                   int64_t first_visible, float factor, float* row_max, float* row_sum, float* o,
                   int64_t D, uint16_t* p) {
  bool any = false;
  const __m512 factor_v = _mm512_set1_ps(factor);
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = s + r * ld;
    uint16_t* pr = p + r * ld;
    int64_t visible = first_visible + r + 1;
    visible = visible < 0 ? 0 : visible > keys ? keys : visible;
    if (visible == 0) {
      for (int64_t c = 0; c < cols; c += 32) _mm512_storeu_si512(pr + c, _mm512_setzero_si512());
      continue;
    }
    any = true;
    // Two running maxima (and sums below): one chain of dependent max/add ops per vector would
    // wait out each op's latency.
    __m512 max_lo = _mm512_set1_ps(kNegInf), max_hi = max_lo;
    for (int64_t c = 0; c < visible; c += 32) {
      max_lo = _mm512_mask_max_ps(max_lo, first_lanes(visible - c), max_lo, _mm512_loadu_ps(x + c));
      max_hi = _mm512_mask_max_ps(max_hi, first_lanes(visible - c - 16), max_hi,
                                  _mm512_loadu_ps(x + c + 16));
    }
    // factor > 0, so the maximum of the scaled scores is the scaled maximum (rounding is
    // monotonic).
    const float block_max = _mm512_reduce_max_ps(_mm512_max_ps(max_lo, max_hi)) * factor;
    const float new_max = block_max > row_max[r] ? block_max : row_max[r];
    const __m512 shift = _mm512_set1_ps(new_max);
    __m512 sum_lo = _mm512_setzero_ps(), sum_hi = sum_lo;
    for (int64_t c = 0; c < cols; c += 32) {
      const __mmask16 lo = first_lanes(visible - c), hi = first_lanes(visible - c - 16);
      const __m512 p_lo = _mm512_maskz_mov_ps(
          lo, exp2_nonpositive(_mm512_fmsub_ps(_mm512_loadu_ps(x + c), factor_v, shift)));
      const __m512 p_hi = _mm512_maskz_mov_ps(
          hi, exp2_nonpositive(_mm512_fmsub_ps(_mm512_loadu_ps(x + c + 16), factor_v, shift)));
      sum_lo = _mm512_add_ps(sum_lo, p_lo);
      sum_hi = _mm512_add_ps(sum_hi, p_hi);
      _mm512_storeu_si512(pr + c, (__m512i)_mm512_cvtne2ps_pbh(p_hi, p_lo));
    }
    // Exactly 1 while the maximum stands (the polynomial is not exact at 0), so O is left alone.
    const float correction = row_max[r] == new_max   ? 1.0f
                             : row_max[r] == kNegInf ? 0.0f
                                                     : exp2_scalar(row_max[r] - new_max);
    row_sum[r] = row_sum[r] * correction + _mm512_reduce_add_ps(_mm512_add_ps(sum_lo, sum_hi));
    if (correction != 1.0f) {
      const __m512 c_v = _mm512_set1_ps(correction);
      for (int64_t d = 0; d < D; d += 16)
        _mm512_storeu_ps(o + r * D + d, _mm512_mul_ps(c_v, _mm512_loadu_ps(o + r * D + d)));
    }
    row_max[r] = new_max;
  }
  return any;
}

}  // namespace

void attend_rows(const Bf16Rows& rows) {
  const int64_t D = rows.head_dim, ld = rows.n_pad, m = rows.m,
                m_pad = (m + kSlabRows - 1) / kSlabRows * kSlabRows;
  float* s = rows.scratch;                                        // [32][ld] fp32, one slab
  uint16_t* p = reinterpret_cast<uint16_t*>(s + kSlabRows * ld);  // [32][ld] bf16, one slab
  uint16_t* q_all = p + kSlabRows * ld;                           // per head [m_pad][D] bf16
  float* o_all =
      reinterpret_cast<float*>(q_all + kMaxGroupHeads * m_pad * D);  // per head [m_pad][D] fp32
  float* max_all = o_all + kMaxGroupHeads * m_pad * D;  // per head [m_pad], exp2 domain
  float* sum_all = max_all + kMaxGroupHeads * m_pad;    // per head [m_pad]
  int64_t cursor[kMaxGroupHeads];
  for (int64_t h = 0; h < rows.num_heads; ++h) {
    uint16_t* q = q_all + h * m_pad * D;
    float* o = o_all + h * m_pad * D;
    for (int64_t r = 0; r < m_pad; ++r) {
      for (int64_t d = 0; d < D; d += 32)
        _mm512_storeu_si512(q + r * D + d,
                            r < m ? _mm512_loadu_si512(rows.heads[h].q + r * rows.q_stride + d)
                                  : _mm512_setzero_si512());
      for (int64_t d = 0; d < D; d += 16) _mm512_storeu_ps(o + r * D + d, _mm512_setzero_ps());
      max_all[h * m_pad + r] = kNegInf;
      sum_all[h * m_pad + r] = 0.0f;
    }
    cursor[h] = 0;
  }
  Products products;
  // Key blocks outermost, ascending over the union of the heads' lists (each head still sees its
  // own blocks in ascending order): each is read from memory once and reused from cache by every
  // slab of every head that keeps it.
  for (;;) {
    int64_t block_index = -1;
    for (int64_t h = 0; h < rows.num_heads; ++h)
      if (cursor[h] < rows.heads[h].num_blocks) {
        const int64_t j = rows.heads[h].blocks[cursor[h]];
        block_index = block_index < 0 || j < block_index ? j : block_index;
      }
    if (block_index < 0) break;
    const int64_t key0 = block_index * rows.block;
    const uint16_t* kp = rows.k_packed + block_index * rows.block_stride;
    const uint16_t* vp = rows.v_packed + block_index * rows.block_stride;
    for (int64_t h = 0; h < rows.num_heads; ++h) {
      if (cursor[h] >= rows.heads[h].num_blocks || rows.heads[h].blocks[cursor[h]] != block_index)
        continue;
      ++cursor[h];
      for (int64_t r0 = 0; r0 < m; r0 += kSlabRows) {
        const int64_t slab_rows = m - r0 < kSlabRows ? m - r0 : kSlabRows;
        const int64_t slab_pos =
            rows.first_pos + r0;  // row r of the slab sees keys <= slab_pos + r
        int64_t key_end = key0 + rows.block < rows.len_kv ? key0 + rows.block : rows.len_kv;
        key_end = key_end < slab_pos + slab_rows
                      ? key_end
                      : slab_pos + slab_rows;  // no row of the slab sees past this
        const int64_t keys = key_end - key0;
        if (keys <= 0) continue;
        const int64_t chunks = (keys + kKeyChunk - 1) / kKeyChunk;
        float* o = o_all + (h * m_pad + r0) * D;
        products.qk(q_all + (h * m_pad + r0) * D, D, kp, ld, chunks, s);
        if (!softmax_block(s, slab_rows, ld, chunks * kKeyChunk, keys, slab_pos - key0, rows.factor,
                           max_all + h * m_pad + r0, sum_all + h * m_pad + r0, o, D, p))
          continue;
        for (int64_t r = slab_rows; r < kSlabRows;
             ++r)  // rows past the row's end take part in P V as zeros
          for (int64_t c = 0; c < chunks * kKeyChunk; c += 32)
            _mm512_storeu_si512(p + r * ld + c, _mm512_setzero_si512());
        products.pv(p, ld, chunks, vp, D, o);
      }
    }
  }
  products.finish();
  for (int64_t h = 0; h < rows.num_heads; ++h)
    for (int64_t r = 0; r < m; ++r) {
      const float row_sum = sum_all[h * m_pad + r], row_max = max_all[h * m_pad + r];
      const float* o = o_all + (h * m_pad + r) * D;
      const __m512 inverse = _mm512_set1_ps(row_sum > 0.0f ? 1.0f / row_sum : 0.0f);
      uint16_t* out = rows.heads[h].out + r * rows.out_stride;
      for (int64_t d = 0; d < D; d += 32) {
        const __m512 lo = _mm512_mul_ps(_mm512_loadu_ps(o + d), inverse);
        const __m512 hi = _mm512_mul_ps(_mm512_loadu_ps(o + d + 16), inverse);
        _mm512_storeu_si512(out + d, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
      }
      if (rows.heads[h].lse)
        rows.heads[h].lse[r] =
            row_sum > 0.0f ? (row_max + __builtin_log2f(row_sum)) * detail::kLn2 : kNegInf;
    }
}

void score_row(const Bf16ScoreRow& row) {
  const int64_t D = row.head_dim, ld = row.ld,
                m_pad = (row.m + kSlabRows - 1) / kSlabRows * kSlabRows;
  const int64_t chunks = (row.num_blocks + kKeyChunk - 1) / kKeyChunk;
  float* s = row.scratch;                                     // [m_pad][ld] fp32
  uint16_t* q = reinterpret_cast<uint16_t*>(s + m_pad * ld);  // [32][D] bf16, one slab
  float* sums = s + m_pad * ld + kSlabRows * D / 2;           // [ld]
  Products products;
  for (int64_t r0 = 0; r0 < row.m; r0 += kSlabRows) {
    for (int64_t r = 0; r < kSlabRows; ++r)
      for (int64_t d = 0; d < D; d += 32)
        _mm512_storeu_si512(q + r * D + d,
                            r0 + r < row.m ? _mm512_loadu_si512(row.q + (r0 + r) * row.q_stride + d)
                                           : _mm512_setzero_si512());
    products.qk(q, D, row.kbar, ld, chunks, s + r0 * ld);
  }
  products.finish();
  // M = max over rows and visible blocks; the diagonal block only for rows that see it whole.
  const int64_t diagonal = row.num_blocks - 1;
  __m512 max_v = _mm512_set1_ps(kNegInf);
  for (int64_t r = 0; r < row.m; ++r) {
    const int64_t visible = r >= row.diagonal_from ? row.num_blocks : diagonal;
    for (int64_t c = 0; c < visible; c += 16)
      max_v = _mm512_mask_max_ps(max_v, first_lanes(visible - c), max_v,
                                 _mm512_loadu_ps(s + r * ld + c));
  }
  const float row_max = _mm512_reduce_max_ps(max_v);
  for (int64_t c = 0; c < ld; c += 16) _mm512_storeu_ps(sums + c, _mm512_setzero_ps());
  if (row_max != kNegInf) {
    const __m512 factor_v = _mm512_set1_ps(row.factor),
                 shift = _mm512_set1_ps(row_max * row.factor);
    for (int64_t r = 0; r < row.m; ++r) {
      const int64_t visible = r >= row.diagonal_from ? row.num_blocks : diagonal;
      for (int64_t c = 0; c < visible; c += 16) {
        const __m512 x = _mm512_fmsub_ps(_mm512_loadu_ps(s + r * ld + c), factor_v, shift);
        const __m512 p = _mm512_maskz_mov_ps(first_lanes(visible - c), exp2_nonpositive(x));
        _mm512_storeu_ps(sums + c, _mm512_add_ps(_mm512_loadu_ps(sums + c), p));
      }
    }
  }
  for (int64_t j = 0; j < row.num_blocks; ++j) row.scores[j] = sums[j];
}

}  // namespace flashprefill::cpu::kernels::FP_BF16_ISA
