// The CPU backend's fp32 inner loops (fp16 and fp32 inputs; bf16 ones where the CPU has no bf16
// dot products, see attention_bf16.hpp): register-blocked fp32 micro-kernels for S = Q K^T and O +=
// P V, and the online-softmax step with a vectorisable exp2. They are plain loops with fixed trip
// counts that the compiler vectorises; kernels_impl.hpp is compiled three times (AVX-512, AVX2+FMA,
// baseline x86-64: kernels_avx512.cpp, kernels_avx2.cpp, kernels_generic.cpp) and these entry
// points call the one isa.hpp chooses. For simple FMA streams like these a
// SIMD library (Highway) would add code without adding speed.
#pragma once

#include <cstdint>

namespace flashprefill::cpu::kernels {

constexpr int kRowGroup = 4;  // query rows per micro-kernel step: 4 x 64 fp32 accumulators
constexpr int kColumnTile = 64;

// s[m][ld_s] = q[m][D] * kt[D][ld_kt] for the first n columns; m a multiple of kRowGroup,
// n a multiple of kColumnTile.
void qk(const float* q, int64_t m, int64_t D, const float* kt, int64_t ld_kt, int64_t n, float* s,
        int64_t ld_s);

// o[m][D] += p[m][ld_p] * v[n][D] (first n columns of p); m a multiple of kRowGroup, D of
// kColumnTile.
void pv(const float* p, int64_t ld_p, int64_t m, int64_t n, const float* v, int64_t D, float* o);

// In place, per row: x[r][c] = exp2(x[r][c] - row_max[r]), 0 where x is -inf.
void exp2_rows(float* x, int64_t rows, int64_t cols, int64_t ld, const float* row_max);

// One key block of the online softmax (exp2 domain), for rows r < m of the score tile s[m_pad][ld]:
// keys c >= visible(r) = clamp(first_visible + r + 1, 0, keys) are masked; the running max and
// sum are updated, o[r][D] rescaled, and s overwritten with P = exp2(s - max) (0 where masked;
// rows m .. m_pad - 1 are zeroed). `keys` <= ld and ld a multiple of 16.
void online_softmax_block(float* s, int64_t m, int64_t m_pad, int64_t ld, int64_t keys,
                          int64_t first_visible, float* row_max, float* row_sum, float* o,
                          int64_t D);

}  // namespace flashprefill::cpu::kernels
