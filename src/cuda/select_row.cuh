// The end of step 2 and steps 3-4 for one layout row whose per-block column statistics sit in
// shared memory: shared by the score kernels of every architecture (src/cuda/discovery.cu,
// src/cuda/hopper/score_kernel.cuh). Every function is called by all threads of the CTA.
#pragma once

#include <cfloat>
#include <cstdint>

#include "common/problem.hpp"
#include "cuda/discovery.cuh"

namespace flashprefill::cuda::discovery {

// The layout row of a score CTA: grid (local query block, query head, sequence), the last query
// blocks (the longest rows of the causal triangle) first so the grid ends on short ones.
struct RowOfGrid {
  int64_t seq, head, block_local, block_abs, row, num_kv_blocks;
  detail::SeqExtent extent;
  bool valid;
};
__device__ inline RowOfGrid row_of_grid(const detail::Problem& p, const int64_t* seq_row_offset) {
  RowOfGrid r{};
  r.block_local = int64_t(gridDim.x) - 1 - blockIdx.x;
  r.head = blockIdx.y;
  r.seq = blockIdx.z;
  r.extent = p.seq(r.seq);
  const int64_t block = p.params.block_size;
  const int64_t nqb = num_query_blocks(r.extent.len_q, r.extent.len_kv, block);
  r.valid = r.block_local < nqb;
  r.block_abs = first_query_block(r.extent.len_q, r.extent.len_kv, block) + r.block_local;
  r.row = seq_row_offset[r.seq] + r.head * nqb + r.block_local;
  r.num_kv_blocks = num_key_blocks(r.extent.len_kv, block);
  return r;
}

// Steps 3-4 for one row whose scores S[0 .. num_j) sit in shared memory; called by all threads.
// Writes the kept bitmask and count. min_budget ties go to the smaller j (as the CPU backend).
__device__ inline void select_row(const detail::Problem& p, const float* S, int64_t num_j, int64_t block_abs, int64_t num_kv_blocks,
                           uint32_t* bits, int64_t words, int64_t* count, float* reduce_smem) {
  const int tid = threadIdx.x, threads = blockDim.x;
  float local_max = 0.0f;
  for (int64_t j = tid; j < num_j; j += threads) local_max = fmaxf(local_max, S[j]);
  for (int offset = 16; offset > 0; offset /= 2) local_max = fmaxf(local_max, __shfl_xor_sync(0xffffffffu, local_max, offset));
  if (tid % 32 == 0) reduce_smem[tid / 32] = local_max;
  __syncthreads();
  float row_max = 0.0f;
  for (int w = 0; w < threads / 32; ++w) row_max = fmaxf(row_max, reduce_smem[w]);
  const float threshold = p.params.alpha * row_max;
  __syncthreads();
  // Budget: the min_budget best blocks, found one by one (min_budget is small).
  __shared__ int64_t budget_pick[64];
  const int budget = int(min(int64_t(min(p.params.min_budget, 64)), num_j));
  for (int n = 0; n < budget; ++n) {
    float best = -1.0f;
    int64_t best_j = num_j;
    for (int64_t j = tid; j < num_j; j += threads) {
      bool taken = false;
      for (int m = 0; m < n; ++m) taken |= budget_pick[m] == j;
      if (!taken && (S[j] > best || (S[j] == best && j < best_j))) best = S[j], best_j = j;
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      const float other = __shfl_xor_sync(0xffffffffu, best, offset);
      const int64_t other_j = __shfl_xor_sync(0xffffffffu, best_j, offset);
      if (other > best || (other == best && other_j < best_j)) best = other, best_j = other_j;
    }
    if (tid % 32 == 0) reduce_smem[tid / 32] = best, reinterpret_cast<int64_t*>(reduce_smem + 32)[tid / 32] = best_j;
    __syncthreads();
    if (tid == 0) {
      float b = -1.0f;
      int64_t bj = num_j;
      for (int w = 0; w < threads / 32; ++w) {
        const float v = reduce_smem[w];
        const int64_t vj = reinterpret_cast<int64_t*>(reduce_smem + 32)[w];
        if (v > b || (v == b && vj < bj)) b = v, bj = vj;
      }
      budget_pick[n] = bj;
    }
    __syncthreads();
  }
  int64_t kept = 0;
  for (int64_t w = tid; w < words; w += threads) {
    uint32_t word = 0;
    for (int bit = 0; bit < 32; ++bit) {
      const int64_t j = w * 32 + bit;
      if (j >= num_j) break;
      bool keep = S[j] >= threshold || detail::always_kept(block_abs, j, num_kv_blocks, p.params);
      for (int m = 0; m < budget; ++m) keep |= budget_pick[m] == j;
      word |= uint32_t(keep) << bit;
    }
    bits[w] = word;
    kept += __popc(word);
  }
  for (int offset = 16; offset > 0; offset /= 2) kept += __shfl_xor_sync(0xffffffffu, kept, offset);
  __syncthreads();
  if (tid % 32 == 0) reinterpret_cast<int64_t*>(reduce_smem)[tid / 32] = kept;
  __syncthreads();
  if (tid == 0) {
    int64_t total = 0;
    for (int w = 0; w < threads / 32; ++w) total += reinterpret_cast<int64_t*>(reduce_smem)[w];
    *count = total;
  }
}

// col_max[j] = max_t x[t, j] and col_sum[j] = sum_t exp2(x[t, j] - col_max[j]) (x in log2 units)
// become S[j] = sum_t exp2(x[t, j] - M), M the row block's maximum (in place in col_sum); then
// either the S row is written out (scores != nullptr) or the row is selected into buffers.
__device__ inline void finish_row(const detail::Problem& p, const float* col_max, float* col_sum, int64_t num_j, int64_t block_abs,
                                  int64_t num_kv_blocks, int64_t row, const Buffers& buffers, float* scores, int64_t scores_ld,
                                  float* reduce_smem) {
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, warps = blockDim.x / 32;
  float local_max = -INFINITY;
  for (int64_t j = tid; j < num_j; j += blockDim.x) local_max = fmaxf(local_max, col_max[j]);
  for (int offset = 16; offset > 0; offset /= 2) local_max = fmaxf(local_max, __shfl_xor_sync(0xffffffffu, local_max, offset));
  if (lane == 0) reduce_smem[warp] = local_max;
  __syncthreads();
  float block_max = -INFINITY;
  for (int w = 0; w < warps; ++w) block_max = fmaxf(block_max, reduce_smem[w]);
  __syncthreads();
  for (int64_t j = tid; j < num_j; j += blockDim.x)
    col_sum[j] = (block_max == -INFINITY || col_max[j] == -INFINITY) ? 0.0f : col_sum[j] * exp2f(col_max[j] - block_max);
  __syncthreads();
  if (scores) {
    for (int64_t j = tid; j < scores_ld; j += blockDim.x) scores[row * scores_ld + j] = j < num_j ? col_sum[j] : 0.0f;
    return;
  }
  select_row(p, col_sum, num_j, block_abs, num_kv_blocks, buffers.kept_bits + row * buffers.words, buffers.words,
             buffers.counts + row, reduce_smem);
}

}  // namespace flashprefill::cuda::discovery
