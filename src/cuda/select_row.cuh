// The end of step 2 and steps 3-4 for one layout row, shared by the score kernels of every
// architecture (src/cuda/sm80/score_kernel.cuh, src/cuda/sm90/score_kernel.cuh). Every function
// here is called by all threads of the CTA.
//
// The row's block scores arrive as one float per key block j in shared memory, in log2 units:
//   log_score[j] = log2 sum_t exp2(x2[t, j])      (x2 = x * log2(e); -inf where every x is -inf)
// so S[i, j] of ALGORITHM.md is exp2(log_score[j] - M2), M2 = max_{t, j} x2[t, j]. The threshold
// S[i, j] >= alpha * max_j S[i, j] is then log_score[j] >= max_j log_score[j] + log2(alpha): the
// row maximum M2 cancels, and one float per block is all that shared memory holds.
#pragma once

#include <cfloat>
#include <cstdint>

#include "common/problem.hpp"
#include "common/row_geometry.hpp"
#include "cuda/discovery.cuh"
#include "cuda/named_barrier.cuh"
#include "cuda/sm80/mma.cuh"

namespace flashprefill::cuda::discovery {

// The layout row of a score CTA. Grid: x over (query block, head) with heads fastest and the last
// query blocks (the longest rows of the causal triangle) first, so the grid ends on short rows and
// the heads of one GQA group run side by side; y is the sequence. kBlock: the block size when the
// kernel is specialised for one (its 64-bit divisions, a subroutine call each, become shifts), 0
// for params.block_size.
struct RowOfGrid : detail::LayoutRow {
  int64_t row = 0;  // its index in the layout
  int64_t num_kv_blocks = 0;
  float alpha = 0.0f;  // step 3's alpha of the row's head (Problem::alpha_of_head)
  bool valid = false;  // false: a varlen sequence with fewer query blocks than the grid has
};
template <int kBlock = 0>
__device__ inline RowOfGrid row_of_grid(const detail::Problem& p, const int64_t* seq_row_offset) {
  const int32_t heads = int32_t(p.heads_q);
  const int32_t grid_blocks = int32_t(gridDim.x) / heads;
  const int64_t head = int32_t(blockIdx.x) % heads;
  const int64_t block_local = grid_blocks - 1 - int32_t(blockIdx.x) / heads;
  const int64_t seq = blockIdx.y;
  const detail::SeqExtent extent = p.seq(seq);
  const int64_t block = kBlock > 0 ? kBlock : p.params.block_size;
  RowOfGrid r;
  static_cast<detail::LayoutRow&>(r) = detail::layout_row(extent, seq, head, block_local, block);
  const int64_t nqb = num_query_blocks(extent.len_q, extent.len_kv, block);
  r.valid = block_local < nqb;
  r.row = seq_row_offset[seq] + head * nqb + block_local;
  r.num_kv_blocks = r.key_blocks(block);
  r.alpha = p.alpha_of_head(head);
  return r;
}

// Floats of shared memory for a row's log_score: whole 32-block words, so the selection's
// vectorised reads of a word stay inside the array (and what follows stays 8-byte aligned).
__host__ __device__ inline int64_t log_score_capacity(int64_t num_key_blocks) {
  return (num_key_blocks + 31) / 32 * 32;
}

// Max of a value over the CTA; `scratch` holds one float per warp. Ends with a barrier, so the
// scratch can be reused at once.
__device__ inline float block_max(float value, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int offset = 16; offset > 0; offset /= 2)
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  float result = -INFINITY;
  for (int w = 0; w < warps; ++w) result = fmaxf(result, scratch[w]);
  __syncthreads();
  return result;
}

// Layout of the selection's scratch (`reduce_smem`, at least kSelectScratchFloats floats, up to 8
// warps): the min_budget search's per-warp bests, then the row maxima and the kept counts per warp.
// Separate regions, so that a warp writing one never races a slower warp still reading another.
constexpr int kBudgetScratch = 0;   // [32] floats, then [32] int64 (floats 32..95)
constexpr int kMaxLogScratch = 96;  // [8]
constexpr int kMaxX2Scratch = 104;  // [8]
constexpr int kCountScratch = 112;  // [8] ints
constexpr int kSelectScratchFloats = 120;

// Steps 3-4 for one row (`alpha`: its RowOfGrid::alpha): the kept bitmask (`words` 32-bit words)
// and its popcount. min_budget ties go to the smaller j (as the CPU backend). reduce_smem: the
// scratch above. Without min_budget there is no full barrier: warp 0 waits for the others' counts
// and writes the total, the other warps return at once (so a caller may not reuse log_score or the
// scratch after this without a barrier first).
__device__ inline void select_row(const detail::Problem& p, float alpha, const float* log_score,
                                  float max_log_score, int64_t num_j, int64_t block_abs,
                                  int64_t num_kv_blocks, uint32_t* bits, int64_t words,
                                  int64_t* count, float* reduce_smem) {
  const int tid = threadIdx.x, threads = blockDim.x;
  // alpha = 0: log2(0) = -inf keeps every block, blocks with S = 0 included (S >= 0 * max).
  const float threshold = max_log_score + log2f(alpha);
  // Budget: the min_budget best blocks, found one by one (min_budget is small).
  __shared__ int64_t budget_pick[64];
  const int budget = int(min(int64_t(min(p.params.min_budget, 64)), num_j));
  float* best_of_warp = reduce_smem + kBudgetScratch;
  for (int n = 0; n < budget; ++n) {
    float best = -INFINITY;
    int64_t best_j = num_j;
    for (int64_t j = tid; j < num_j; j += threads) {
      bool taken = false;
      for (int m = 0; m < n; ++m) taken |= budget_pick[m] == j;
      if (!taken &&
          (best_j == num_j || log_score[j] > best || (log_score[j] == best && j < best_j)))
        best = log_score[j], best_j = j;
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      const float other = __shfl_xor_sync(0xffffffffu, best, offset);
      const int64_t other_j = __shfl_xor_sync(0xffffffffu, best_j, offset);
      if (other_j != num_j &&
          (best_j == num_j || other > best || (other == best && other_j < best_j)))
        best = other, best_j = other_j;
    }
    if (tid % 32 == 0)
      best_of_warp[tid / 32] = best,
                         reinterpret_cast<int64_t*>(best_of_warp + 32)[tid / 32] = best_j;
    __syncthreads();
    if (tid == 0) {
      float b = -INFINITY;
      int64_t bj = num_j;
      for (int w = 0; w < threads / 32; ++w) {
        const float v = best_of_warp[w];
        const int64_t vj = reinterpret_cast<int64_t*>(best_of_warp + 32)[w];
        if (vj != num_j && (bj == num_j || v > b || (v == b && vj < bj))) b = v, bj = vj;
      }
      budget_pick[n] = bj;
    }
    __syncthreads();
  }
  // One block per thread, a word per warp by ballot (threads is a multiple of 32): no serial loop
  // over a word's bits. Words past the row's blocks are written as zeros.
  const detail::ForcedBlocks<int32_t> forced(block_abs, num_kv_blocks, p.params);
  const int32_t blocks = int32_t(num_j);
  int kept = 0;
  for (int32_t j = tid; j < int32_t(words) * 32; j += threads) {
    bool keep = false;
    if (j < blocks) {
      keep = forced.contains(j) || log_score[j] >= threshold;
      for (int m = 0; m < budget; ++m) keep |= budget_pick[m] == j;
    }
    const uint32_t word = __ballot_sync(0xffffffffu, keep);
    if (tid % 32 == 0) {
      bits[j / 32] = word;
      kept += __popc(word);
    }
  }
  for (int offset = 16; offset > 0; offset /= 2) kept += __shfl_xor_sync(0xffffffffu, kept, offset);
  int* warp_kept = reinterpret_cast<int*>(reduce_smem + kCountScratch);
  if (tid % 32 == 0) warp_kept[tid / 32] = kept;
  if (tid >= 32) {
    named_barrier_arrive(NamedBarrier::kSelectCount, threads);
    return;
  }
  named_barrier_sync(NamedBarrier::kSelectCount, threads);
  if (tid == 0) {
    int64_t total = 0;
    for (int w = 0; w < threads / 32; ++w) total += warp_kept[w];
    *count = total;
  }
}

// The row's log-domain scores are complete in shared memory, or about to be: every thread calls
// this after writing its own. Either write S (scores != nullptr, the block_scores stage) or select
// the row into buffers. thread_max_x2 and thread_max_log_score are each thread's maxima over what
// it wrote (M2 and max log_score once reduced). One full barrier; see select_row for the rest.
__device__ inline void finish_row(const detail::Problem& p, float alpha, const float* log_score,
                                  float thread_max_x2, float thread_max_log_score, int64_t num_j,
                                  int64_t block_abs, int64_t num_kv_blocks, int64_t row,
                                  const Buffers& buffers, float* scores, int64_t scores_ld,
                                  float* reduce_smem) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int offset = 16; offset > 0; offset /= 2) {
    thread_max_log_score =
        fmaxf(thread_max_log_score, __shfl_xor_sync(0xffffffffu, thread_max_log_score, offset));
    thread_max_x2 = fmaxf(thread_max_x2, __shfl_xor_sync(0xffffffffu, thread_max_x2, offset));
  }
  if (lane == 0)
    reduce_smem[kMaxLogScratch + warp] = thread_max_log_score,
                                 reduce_smem[kMaxX2Scratch + warp] = thread_max_x2;
  __syncthreads();  // every log_score and every warp's maxima are written
  float max_log_score = -INFINITY, max_x2 = -INFINITY;
  for (int w = 0; w < warps; ++w)
    max_log_score = fmaxf(max_log_score, reduce_smem[kMaxLogScratch + w]),
    max_x2 = fmaxf(max_x2, reduce_smem[kMaxX2Scratch + w]);
  if (scores) {
    for (int64_t j = threadIdx.x; j < scores_ld; j += blockDim.x) {
      const bool some = j < num_j && log_score[j] != -INFINITY;
      scores[row * scores_ld + j] = some ? exp2f(log_score[j] - max_x2) : 0.0f;
    }
    return;
  }
  select_row(p, alpha, log_score, max_log_score, num_j, block_abs, num_kv_blocks,
             buffers.kept_bits + row * buffers.words, buffers.words, buffers.counts + row,
             reduce_smem);
}

}  // namespace flashprefill::cuda::discovery
