// Step 2 of ALGORITHM.md with mma.sync (sm_80, also the fallback on newer GPUs): block scores of
// one layout row per CTA, then steps 3-4 in shared memory (select_row.cuh, shared with sm_90).
#pragma once

#include <cfloat>

#include "common/constants.hpp"
#include "common/problem.hpp"
#include "cuda/check.cuh"
#include "cuda/dependent_launch.cuh"
#include "cuda/discovery.cuh"
#include "cuda/query_summary.cuh"
#include "cuda/select_row.cuh"
#include "cuda/sm80/mma.cuh"

namespace flashprefill::cuda::sm80 {

using discovery::Buffers;
using discovery::finish_row;
using discovery::log_score_capacity;
using discovery::row_of_grid;
using discovery::RowOfGrid;

constexpr int kKeyChunk = 64;  // pooled keys scored per step

// Step 2 for one layout row per CTA (kBlockM query rows = kBlockM / 16 warps), then either the
// selection (fused path) or the S row written out. x = scale * q . Kbar with tensor cores (Kbar in
// the input dtype), fp32 accumulation; each key block's log2-domain score lands in shared memory.
// kSummarizeQueries (robust discovery, docs/ROBUST.md): the row's core sum and far query as well
// (query_summary.cuh), from the query tile, once the key chunks' memory is free.
template <int kHeadDim, bool kIsBf16, int kBlockM, bool kSummarizeQueries = false>
__global__ void __launch_bounds__(kBlockM * 2)
    score_rows_kernel(const detail::Problem p, const int64_t* seq_row_offset, Buffers buffers,
                      float* scores, int64_t scores_ld) {
  using namespace sm80;
  using Half = HalfType<kIsBf16>;
  using Element = typename Half::type;
  using Swizzle = SwizzledTile<kHeadDim>;
  constexpr int kWarps = kBlockM / 16, kThreads = kWarps * 32, D = kHeadDim;
  // Robust discovery's combine kernel follows (dependent_launch.cuh).
  if constexpr (kSummarizeQueries) allow_dependent_launch();
  const RowOfGrid r = row_of_grid(p, seq_row_offset);
  if (!r.valid) return;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  Element* q_smem = reinterpret_cast<Element*>(smem_raw);                // [kBlockM][D]
  Element* key_smem = q_smem + kBlockM * D;                              // [kKeyChunk][D]
  float* warp_max = reinterpret_cast<float*>(key_smem + kKeyChunk * D);  // [kWarps][kKeyChunk]
  float* warp_sum = warp_max + kWarps * kKeyChunk;                       // [kWarps][kKeyChunk]
  float* reduce_smem = warp_sum + kWarps * kKeyChunk;                    // 128 floats
  float* log_score = reduce_smem + 128;  // [log_score_capacity(num_kv_blocks)]
  const int64_t num_j = r.num_causal_blocks();

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, quad = lane % 4;
  const int64_t block = p.params.block_size, shift = r.shift();
  const int64_t block_start = r.block_start(block);
  const int64_t kv_head = r.kv_head(p.group);
  const int64_t slot0 = p.pooled_slot0(r.seq, r.extent);

  // Queries of the block (rows outside the chunk or past the sequence are zero and masked below).
  const auto* q_base = static_cast<const Element*>(p.q);
  for (int chunk = tid; chunk < kBlockM * Swizzle::kChunks; chunk += kThreads) {
    const int row = chunk / Swizzle::kChunks, c = chunk % Swizzle::kChunks;
    const int64_t pos = block_start + row;
    const bool valid = pos >= shift && pos < r.extent.len_kv;
    cp_async_16(q_smem + Swizzle::offset(row, c),
                q_base + p.q_offset(r.seq, r.extent, valid ? pos - shift : 0, r.head) + c * 8,
                valid ? 16 : 0);
  }
  cp_async_commit();

  const float scale_log2 = p.params.scale * detail::kLog2e;
  const int64_t row_pos[2] = {block_start + warp * 16 + g, block_start + warp * 16 + g + 8};
  bool row_in_block[2];
  for (int h = 0; h < 2; ++h) row_in_block[h] = row_pos[h] >= shift && row_pos[h] < r.extent.len_kv;
  float thread_max_x2 = -INFINITY, thread_max_log_score = -INFINITY;

  for (int64_t j0 = 0; j0 < num_j; j0 += kKeyChunk) {
    // This chunk's pooled keys (past num_j: zero, masked below).
    for (int chunk = tid; chunk < kKeyChunk * Swizzle::kChunks; chunk += kThreads) {
      const int row = chunk / Swizzle::kChunks, c = chunk % Swizzle::kChunks;
      const bool valid = j0 + row < num_j;
      const int64_t index = ((slot0 + (valid ? j0 + row : 0)) * p.heads_kv + kv_head) * D + c * 8;
      cp_async_16(key_smem + Swizzle::offset(row, c),
                  static_cast<const Element*>(buffers.pooled_half) + index, valid ? 16 : 0);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    float x[kKeyChunk / 8][4] = {};
    warp_product_abt<D, kKeyChunk, kIsBf16>(x, q_smem, warp * 16, key_smem, 0);
    // Mask: rows not in the block, blocks past the row (j > i), and the diagonal block for rows
    // that do not see all its keys (ALGORITHM.md step 2). Then per column: max and sum of exp2.
#pragma unroll
    for (int nt = 0; nt < kKeyChunk / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t j = j0 + nt * 8 + 2 * quad + (e & 1);
        const int h = e / 2;
        const bool visible = row_in_block[h] && j < num_j &&
                             detail::key_block_visible(j, row_pos[h], r.extent.len_kv, block);
        x[nt][e] = visible ? x[nt][e] * scale_log2 : -INFINITY;
      }
#pragma unroll
    for (int nt = 0; nt < kKeyChunk / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float m = fmaxf(x[nt][e], x[nt][e + 2]);
        for (int offset = 4; offset < 32; offset *= 2)
          m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
        const float shift_m = m == -INFINITY ? 0.0f : m;
        float s = exp2f(x[nt][e] - shift_m) + exp2f(x[nt][e + 2] - shift_m);
        for (int offset = 4; offset < 32; offset *= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
        if (g == 0) {
          warp_max[warp * kKeyChunk + nt * 8 + 2 * quad + e] = m;
          warp_sum[warp * kKeyChunk + nt * 8 + 2 * quad + e] = s;
        }
      }
    __syncthreads();
    // Column c's statistics over the warps' rows: its maximum and log2 S (-inf when masked).
    struct ColumnStat {
      float max, log_score;
    };
    const auto merge_warps = [&](int c) {
      float m = -INFINITY;
      for (int w = 0; w < kWarps; ++w) m = fmaxf(m, warp_max[w * kKeyChunk + c]);
      float s = 0.0f;
      if (m != -INFINITY)
        for (int w = 0; w < kWarps; ++w)
          s += warp_sum[w * kKeyChunk + c] * exp2f(warp_max[w * kKeyChunk + c] - m);
      return ColumnStat{m, m == -INFINITY ? -INFINITY : m + log2f(s)};
    };
    for (int c = tid; c < kKeyChunk && j0 + c < num_j; c += kThreads) {
      const auto [m, value] = merge_warps(c);
      log_score[j0 + c] = value;
      thread_max_x2 = fmaxf(thread_max_x2, m);
      thread_max_log_score = fmaxf(thread_max_log_score, value);
    }
    __syncthreads();
  }

  if constexpr (kSummarizeQueries) {
    // The key chunk and the warps' statistics are free after the loop's last barrier.
    static_assert(discovery::query_summary_scratch_floats<D, kWarps>() * 4 <=
                  kKeyChunk * D * 2 + 2 * kWarps * kKeyChunk * 4);
    const detail::PositionRange rows = r.positions(block);
    // SwizzledTile's rows as one panel of D / 8 chunks.
    using Layout = discovery::QueryTileLayout<D * 2, Swizzle::kChunks, 0>;
    discovery::write_query_summary<Layout, D, kThreads, kBlockM, kIsBf16>(
        smem_address(q_smem), int(rows.begin - block_start), int(rows.end - block_start),
        reinterpret_cast<float*>(key_smem), buffers, r.row);
  }
  finish_row(p, r.alpha, log_score, thread_max_x2, thread_max_log_score, num_j, r.block_abs,
             r.num_kv_blocks, r.row, buffers, scores, scores_ld, reduce_smem);
}

template <int kHeadDim, bool kIsBf16, int kBlockM, bool kSummarizeQueries>
void launch_score_rows(const detail::Problem& p, const int64_t* seq_row_offset,
                       const Buffers& buffers, float* scores, int64_t ld, dim3 grid,
                       int64_t max_key_blocks) {
  constexpr int kWarps = kBlockM / 16;
  const size_t smem = size_t(kBlockM + kKeyChunk) * kHeadDim * 2 +
                      size_t(log_score_capacity(max_key_blocks) + 2 * kWarps * kKeyChunk + 128) * 4;
  auto kernel = score_rows_kernel<kHeadDim, kIsBf16, kBlockM, kSummarizeQueries>;
  FP_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<grid, kWarps * 32, smem, static_cast<cudaStream_t>(p.stream)>>>(p, seq_row_offset,
                                                                           buffers, scores, ld);
  FP_CUDA_CHECK_LAUNCH();
}

}  // namespace flashprefill::cuda::sm80
