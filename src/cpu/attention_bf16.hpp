// Step 5 for bf16 inputs on CPUs with bf16 dot products: S = Q K^T and O += P V as bf16 products
// with fp32 accumulation (AMX tiles, or AVX-512 BF16's vdpbf16ps), the online softmax in fp32 with
// AVX-512, P rounded to bf16 for the second product (as FlashAttention does on tensor cores).
//
// K and V are packed once per call into the pair-interleaved ("VNNI") layout that both instruction
// sets read as their second operand, one contiguous piece per (key block, kv head), so every query
// head of a GQA group reuses it:
//   K block: [D / 2][n_pad][2]   (element (key c, dim d) at ((d / 2) * n_pad + c) * 2 + d % 2)
//   V block: [n_pad / 2][D][2]   (element (key c, dim d) at ((c / 2) * D + d) * 2 + c % 2)
// n_pad is the block size rounded up to kKeyChunk; keys past the sequence's end are zeros.
//
// Only plain data and declarations here: this header is included by the files compiled with wide
// instruction sets, which must not emit their own copies of inline functions.
#pragma once

#include <cstdint>

namespace flashprefill::cpu::kernels {

constexpr int kSlabRows = 32;  // query rows per slab: two 16-row tiles
constexpr int kKeyChunk = 32;  // keys per step of P V (one bf16 tile row holds 32)

constexpr int kMaxGroupHeads = 4;  // query heads of one GQA group attended together (see Bf16Rows)

// The kept key blocks of one query head's layout row, and where its rows live.
struct Bf16Head {
  const uint16_t* q;      // m rows of D bf16, row r at q + r * q_stride
  uint16_t* out;          // like q
  float* lse;             // m consecutive floats (natural log), or null
  const int32_t* blocks;  // kept key blocks, ascending
  int64_t num_blocks;
};

// The layout rows of one query block for up to kMaxGroupHeads query heads that read the same kv
// head: the kernel walks the union of their kept blocks once, ascending, and each block it reads
// serves every slab of every head that keeps it while it is in cache.
struct Bf16Rows {
  Bf16Head heads[kMaxGroupHeads];
  int64_t num_heads;
  int64_t q_stride, out_stride;
  int64_t m;  // query rows per head
  int64_t
      first_pos;  // absolute key position of query row 0 (causal: row r sees keys <= first_pos + r)
  int64_t len_kv;
  int64_t block;             // block size (keys per block)
  const uint16_t* k_packed;  // packed K of key block j at k_packed + j * block_stride
  const uint16_t* v_packed;
  int64_t block_stride;  // elements between consecutive key blocks of this (sequence, kv head)
  int64_t n_pad;         // block rounded up to kKeyChunk
  int64_t head_dim;
  float factor;    // scale * log2(e): scores in the exp2 domain
  float* scratch;  // FP_BF16_ROWS_SCRATCH_FLOATS(n_pad, head_dim) floats, 64-byte aligned
};

// Scratch floats one thread needs for Bf16Rows: S [32][n_pad] fp32 and P [32][n_pad] bf16 for one
// slab, and per head (at most n_pad query rows) Q bf16, O fp32, running max and sum (callers round
// the pointer up to 64 bytes themselves).
#define FP_BF16_ROWS_SCRATCH_FLOATS(n_pad, head_dim)                  \
  (int64_t(::flashprefill::cpu::kernels::kSlabRows) * (n_pad)*3 / 2 + \
   ::flashprefill::cpu::kernels::kMaxGroupHeads * (n_pad) * ((head_dim) / 2 + (head_dim) + 2))

// Step 2 for one layout row with the same products: x[t][j] = q_t . kbar_j (kbar rounded to bf16,
// so the products are exact and only the fp32 accumulation order differs from the fp32 path), then
// scores[j] = sum_t exp2(x[t][j] * factor - max * factor) for j < num_blocks.
struct Bf16ScoreRow {
  const uint16_t* q;  // m rows of D bf16, row r at q + r * q_stride
  int64_t q_stride;
  int64_t m;
  const uint16_t*
      kbar;    // pooled keys of this (sequence, kv head), packed as a K block: [D / 2][ld][2]
  int64_t ld;  // a multiple of kKeyChunk, >= num_blocks
  int64_t num_blocks;  // i + 1: blocks 0 .. i
  int64_t
      diagonal_from;  // rows r >= this see all of block i (the others mask it: ALGORITHM.md step 2)
  int64_t head_dim;
  float factor;    // scale * log2(e)
  float* scores;   // num_blocks floats
  float* scratch;  // FP_BF16_SCORE_SCRATCH_FLOATS(m, ld, head_dim) floats, 64-byte aligned
};
#define FP_BF16_SCORE_SCRATCH_FLOATS(m, ld, head_dim)                                    \
  ((((m) + ::flashprefill::cpu::kernels::kSlabRows - 1) /                                \
    ::flashprefill::cpu::kernels::kSlabRows * ::flashprefill::cpu::kernels::kSlabRows) * \
       ((ld) + (head_dim) / 2) +                                                         \
   (ld))

namespace amx {
// Requests the AMX tile state from the kernel once per process (Linux: arch_prctl); false when
// refused or not Linux, and the caller uses another variant.
bool enable();
void attend_rows(const Bf16Rows& rows);
void score_row(const Bf16ScoreRow& row);
}  // namespace amx
namespace avx512bf16 {
void attend_rows(const Bf16Rows& rows);
void score_row(const Bf16ScoreRow& row);
}  // namespace avx512bf16

}  // namespace flashprefill::cpu::kernels
