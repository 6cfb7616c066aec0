// Step 2 of ALGORITHM.md on Hopper: block scores of one layout row (query block i, query head h)
// per CTA with wgmma, then steps 3-4 in shared memory (select_row.cuh, shared with sm_80).
//
// The product is computed transposed, x^T = Kbar Q^T: pooled keys are the M side (64 per
// warpgroup, 128 per step), the block's 128 queries the N side. The per-key-block statistics
// step 2 needs, max_t x[t, j] and sum_t exp(x[t, j] - max), are then reductions along N, which
// the wgmma accumulator layout keeps inside a thread and its quad (no shared-memory transposes).
// Kbar enters as hi + lo 16-bit parts (~16 mantissa bits): both are A operands of one accumulation
// chain against the same Q, so the scores match the fp32 CPU backend to well within the
// threshold's rounding.
#pragma once

#include <cfloat>

#include "common/problem.hpp"
#include "cuda/check.cuh"
#include "cuda/discovery.cuh"
#include "cuda/hopper/sm90.cuh"
#include "cuda/mma.cuh"
#include "cuda/select_row.cuh"

namespace flashprefill::cuda::discovery::hopper {

template <int kHeadDim_, bool kIsBf16_>
struct ScoreTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr bool kIsBf16 = kIsBf16_;
  static constexpr int kBlockM = 128;    // queries: one query block (block_size 128)
  static constexpr int kKeyTile = 128;   // pooled keys per step: 64 per warpgroup
  static constexpr int kThreads = 256;   // two warpgroups
  using QPanels = sm90::SwizzledPanels<kBlockM>;
  using KeyPanels = sm90::SwizzledPanels<kKeyTile>;
  static constexpr int kPanels = kHeadDim / 64;
  static constexpr int kQBytes = kPanels * QPanels::kPanelBytes;
  static constexpr int kKeyBytes = kPanels * KeyPanels::kPanelBytes;  // one of hi, lo
  static constexpr int kReduceFloats = 128;
  // Q | hi | lo | col_max[max_key_blocks] | col_sum[max_key_blocks] | reduction scratch, +1024 to align.
  static size_t smem_bytes(int64_t max_key_blocks) {
    return 1024 + kQBytes + 2 * kKeyBytes + size_t(2 * max_key_blocks + kReduceFloats) * 4;
  }
};

template <typename Traits>
__global__ void __launch_bounds__(Traits::kThreads, 2)
    score_rows_kernel(const detail::Problem p, const int64_t* seq_row_offset, const Buffers buffers, float* scores, int64_t scores_ld) {
  using namespace sm90;
  using Element = typename sm80::HalfType<Traits::kIsBf16>::type;
  constexpr int D = Traits::kHeadDim, kChunks = D / 8;
  const RowOfGrid r = row_of_grid(p, seq_row_offset);
  if (!r.valid) return;

  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw_address = sm80::smem_address(smem_raw);
  unsigned char* q_smem = smem_raw + ((1024 - raw_address % 1024) % 1024);
  unsigned char* hi_smem = q_smem + Traits::kQBytes;
  unsigned char* lo_smem = hi_smem + Traits::kKeyBytes;
  const int64_t num_j = r.block_abs + 1;
  auto* col_max = reinterpret_cast<float*>(lo_smem + Traits::kKeyBytes);
  float* col_sum = col_max + r.num_kv_blocks;
  float* reduce_smem = col_sum + r.num_kv_blocks;

  const int tid = threadIdx.x;
  const int64_t block = p.params.block_size, shift = r.extent.len_kv - r.extent.len_q;
  const int64_t block_start = r.block_abs * block;
  const int64_t kv_head = r.head / p.group;
  const int64_t slot0 = p.pooled_slot0(r.seq, r.extent);

  // The block's queries; rows before the chunk or past the sequence are zero (and masked).
  const auto* q_base = static_cast<const Element*>(p.q);
  for (int index = tid; index < Traits::kBlockM * kChunks; index += Traits::kThreads) {
    const int row = index / kChunks, chunk = index % kChunks;
    const int64_t pos = block_start + row;
    const bool valid = pos >= shift && pos < r.extent.len_kv;
    sm80::cp_async_16(q_smem + Traits::QPanels::offset(row, chunk),
                      q_base + p.q_offset(r.seq, r.extent, valid ? pos - shift : 0, r.head) + chunk * 8, valid ? 16 : 0);
  }

  const int warpgroup = __shfl_sync(0xffffffffu, tid / 128, 0);  // warp-uniform: descriptors in uniform registers
  const int warp = (tid % 128) / 32, lane = tid % 32, g = lane / 4, quad = lane % 4;
  const float scale_log2 = p.params.scale * 1.4426950408889634f;
  const bool partial_block = block_start < shift || block_start + block > r.extent.len_kv;
  const uint32_t q_address = sm80::smem_address(q_smem);
  const uint32_t hi_address = sm80::smem_address(hi_smem) + 64 * warpgroup * Traits::KeyPanels::kRowBytes;
  const uint32_t lo_address = sm80::smem_address(lo_smem) + 64 * warpgroup * Traits::KeyPanels::kRowBytes;
  const auto* hi_base = static_cast<const Element*>(buffers.pooled_hi);
  const auto* lo_base = static_cast<const Element*>(buffers.pooled_lo);

  for (int64_t j0 = 0; j0 < num_j; j0 += Traits::kKeyTile) {
    __syncthreads();  // the previous step's wgmmas have read hi/lo
    for (int index = tid; index < Traits::kKeyTile * kChunks; index += Traits::kThreads) {
      const int row = index / kChunks, chunk = index % kChunks;
      const bool valid = j0 + row < num_j;
      const int64_t offset = ((slot0 + (valid ? j0 + row : 0)) * p.heads_kv + kv_head) * D + chunk * 8;
      sm80::cp_async_16(hi_smem + Traits::KeyPanels::offset(row, chunk), hi_base + offset, valid ? 16 : 0);
      sm80::cp_async_16(lo_smem + Traits::KeyPanels::offset(row, chunk), lo_base + offset, valid ? 16 : 0);
    }
    sm80::cp_async_commit();
    sm80::cp_async_wait<0>();
    cutlass::arch::fence_view_async_shared();  // cp.async writes -> the wgmma (async proxy) reads
    __syncthreads();

    const int64_t wg_j0 = j0 + 64 * warpgroup;
    if (wg_j0 >= num_j) continue;  // warpgroup-uniform: nothing of this half is causal

    // x^T[j, t] for the warpgroup's 64 key blocks x 128 queries: hi then lo against the same Q.
    float x[64];
    {
      uint64_t a[2 * D / 16], b[D / 16];
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const uint32_t offset = (kk / 4) * Traits::KeyPanels::kPanelBytes + (kk % 4) * 32;
        a[kk] = make_desc_k_major(hi_address + offset);
        a[D / 16 + kk] = make_desc_k_major(lo_address + offset);
        b[kk] = make_desc_k_major(q_address + (kk / 4) * Traits::QPanels::kPanelBytes + (kk % 4) * 32);
      }
      fence_descriptors(a);
      fence_descriptors(b);
      fence_accumulators(x);
      cute::warpgroup_arrive();
#pragma unroll
      for (int kk = 0; kk < 2 * D / 16; ++kk)
        gmma_ss<Traits::kIsBf16, 128>(a[kk], b[kk % (D / 16)], x, kk == 0 ? gmma::ScaleOut::Zero : gmma::ScaleOut::One);
      cute::warpgroup_commit_batch();
      cute::warpgroup_wait<0>();
      fence_accumulators(x);
    }

    // Element 4 * nt + e: key block wg_j0 + 16 * warp + g + 8 * (e / 2), query row 8 * nt + 2 * quad + (e % 2).
    // Masked (-inf): blocks past the row block, queries outside the chunk or the sequence, and the
    // diagonal block for queries that do not see all its keys (ALGORITHM.md step 2).
    const bool needs_mask = partial_block || wg_j0 + 63 >= r.block_abs;
#pragma unroll
    for (int i = 0; i < 64; ++i) {
      x[i] *= scale_log2;
      if (needs_mask) {
        const int64_t j = wg_j0 + 16 * warp + g + 8 * ((i % 4) / 2);
        const int64_t pos = block_start + 8 * (i / 4) + 2 * quad + (i % 2);
        const bool visible = j < num_j && pos >= shift && pos < r.extent.len_kv &&
                             detail::key_block_visible(j, pos, r.extent.len_kv, block);
        if (!visible) x[i] = -INFINITY;
      }
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float m = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < 16; ++nt) m = fmaxf(m, fmaxf(x[4 * nt + 2 * half], x[4 * nt + 2 * half + 1]));
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
      const float shift_m = m == -INFINITY ? 0.0f : m;
      float s = 0.0f;
#pragma unroll
      for (int nt = 0; nt < 16; ++nt) s += fast_exp2(x[4 * nt + 2 * half] - shift_m) + fast_exp2(x[4 * nt + 2 * half + 1] - shift_m);
      s += __shfl_xor_sync(0xffffffffu, s, 1);
      s += __shfl_xor_sync(0xffffffffu, s, 2);
      const int64_t j = wg_j0 + 16 * warp + g + 8 * half;
      if (quad == 0 && j < num_j) {
        col_max[j] = m;
        col_sum[j] = s;
      }
    }
  }
  __syncthreads();
  finish_row(p, col_max, col_sum, num_j, r.block_abs, r.num_kv_blocks, r.row, buffers, scores, scores_ld, reduce_smem);
}

}  // namespace flashprefill::cuda::discovery::hopper
