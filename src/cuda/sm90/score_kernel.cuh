// Step 2 of ALGORITHM.md on Hopper: block scores of one layout row (query block i, query head h)
// per CTA with wgmma, then steps 3-4 in shared memory (select_row.cuh, shared with sm_80).
//
// The product is computed transposed, x^T = Kbar Q^T: pooled keys are the M side (64 per tile),
// the block's 128 queries the N side. The per-key-block statistics step 2 needs, max_t x[t, j] and
// sum_t exp(x[t, j] - max), are then reductions along N, which the wgmma accumulator layout keeps
// inside a thread and its quad (no shared-memory transposes). Kbar enters in the input dtype (as
// the paper's reference stores its pooled keys), so one bf16/fp16 wgmma chain computes x.
//
// One warpgroup per CTA and a small footprint, so that three CTAs share an SM and one's
// exponentials overlap another's wgmmas; within a CTA, tiles go in pairs on two accumulators, the
// second tile's wgmmas running while the first is scored. The pairing pays only while it keeps the
// third CTA per SM (kMinCtasPerSm; measurements in bench/RESULTS.md).
// Q and the pooled-key tiles arrive by TMA into a ring of kStages stages: the tile `kStages` ahead
// is requested as soon as a tile's wgmma has read its stage, so loads land while the warps score.
//
// Exponentials are skipped where they cannot matter (the fused path without min_budget): a block
// whose best query scores m_j with m_j - M <= log(alpha / (2 * 128)), M any score seen so far in
// the row, has S[i, j] <= 128 exp(m_j - M_row) < alpha / 2 <= alpha * max_j S[i, j] / 2 (the
// block holding M_row has S >= 1): it is dropped whatever its sum, with a factor 2 to spare for
// rounding. A warp skips its exponentials when all 16 of its blocks qualify. The key tiles are
// visited diagonal tile first, then the sink tile, then the rest from the diagonal back: the
// largest scores of a row usually lie on the local band or the sinks, so M is high from the first
// steps and most far tiles skip (how many, in this order and in ascending order: bench/RESULTS.md).
//
// Robust discovery (kSummarizeQueries, docs/ROBUST.md): the CTA also writes the row's core sum and
// far query (query_summary.cuh) from the query tile, before its first product.
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
#include "cuda/sm90/mma.cuh"

namespace flashprefill::cuda::sm90 {

// Steps 2-4's pieces shared with the sm_80 score kernel (src/cuda/select_row.cuh).
using discovery::Buffers;
using discovery::finish_row;
using discovery::kSelectScratchFloats;
using discovery::log_score_capacity;
using discovery::row_of_grid;
using discovery::RowOfGrid;

struct ScoreMaps {
  CUtensorMap q;       // as the attention kernel's (boxes of 128 tokens)
  CUtensorMap pooled;  // pooled keys [slots][H_kv][D] in the input dtype, boxes of 64 slots
};

template <int kHeadDim_, bool kIsBf16_, bool kSummarizeQueries_ = false>
struct ScoreTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr bool kIsBf16 = kIsBf16_;
  static constexpr bool kSummarizeQueries = kSummarizeQueries_;
  static constexpr int kBlockM = 128;  // queries: one query block (block_size 128)
  static constexpr int kKeyTile = 64;  // pooled keys per wgmma tile (its M), one TMA box
  static constexpr int kThreads = 128;
  static constexpr int kMinCtasPerSm = 3;  // two accumulators fit in 168 registers
  static constexpr int kStages = 2;
  using QPanels = sm90::SwizzledPanels<kBlockM>;
  using KeyPanels = sm90::SwizzledPanels<kKeyTile>;
  static constexpr int kPanels = kHeadDim / 64;
  static constexpr int kQBytes = kPanels * QPanels::kPanelBytes;
  static constexpr int kKeyBytes = kPanels * KeyPanels::kPanelBytes;
  // warp_running_max, then select_row's scratch
  static constexpr int kReduceFloats = 8 + kSelectScratchFloats;
  // The query summary runs before any log_score is written (score_tile starts with a barrier of
  // every warp): its scratch is log_score's memory, which long rows (where shared memory is tight)
  // have to spare.
  static constexpr int kSummaryFloats =
      kSummarizeQueries ? discovery::query_summary_scratch_floats<kHeadDim, kThreads / 32>() : 0;
  static_assert(kReduceFloats % 2 == 0 && kSummaryFloats % 2 == 0, "8-byte aligned barriers");
  __host__ __device__ static int64_t log_score_floats(int64_t num_key_blocks) {
    const int64_t capacity = log_score_capacity(num_key_blocks);
    return capacity > kSummaryFloats ? capacity : kSummaryFloats;
  }
  // Q | keys[kStages] | log_score[max_key_blocks, padded] (or the summary's scratch) | reduction
  // scratch | barriers, +1024 to align.
  static size_t smem_bytes(int64_t max_key_blocks) {
    return 1024 + kQBytes + size_t(kStages) * kKeyBytes +
           size_t(log_score_floats(max_key_blocks) + kReduceFloats) * 4 + 8 * (kStages + 1);
  }
};

// The key tile scored at step `step` of a row of `num_tiles` tiles: the diagonal tile, tile 0, then
// descending (see the header).
__device__ inline int key_tile_at(int step, int num_tiles) {
  if (step == 0) return num_tiles - 1;
  return step == 1 ? 0 : num_tiles - step;
}

// What the tile epilogues need of the row's geometry, in 32 bits (positions fit, see make_problem).
struct RowBounds32 {
  int32_t block_start, shift, len_kv, num_j;
};

// Descriptors of a K-major operand of `Panels` (64-column panels) at `address`, one per k16 step:
// 16 elements (32 bytes) along a 128-byte row, then the next panel.
template <typename Panels, int kSteps>
__device__ __forceinline__ void k_major_descriptors(uint32_t address, uint64_t (&desc)[kSteps]) {
  const uint64_t first = sm90::make_desc_k_major(address);
#pragma unroll
  for (int kk = 0; kk < kSteps; ++kk)
    desc[kk] = sm90::desc_advance(first, (kk / 4) * Panels::kPanelBytes + (kk % 4) * 32);
}

// Issues x = A B^T for one m64n128 tile as one committed wgmma group of kSteps steps of the atom
// Op: A (64 rows, K-major `APanels` at a_address) gets its descriptors here, B's the caller made
// once. The caller waits for it (warpgroup_wait) and fences x before reading it.
template <typename Op, typename APanels, int kSteps>
__device__ __forceinline__ void issue_tile_gmma(uint32_t a_address, uint64_t (&b_desc)[kSteps],
                                                float (&x)[64]) {
  uint64_t a_desc[kSteps];
  k_major_descriptors<APanels>(a_address, a_desc);
  fence_descriptors(a_desc);
  fence_descriptors(b_desc);
  fence_accumulators(x);
  cute::warpgroup_arrive();
#pragma unroll
  for (int kk = 0; kk < kSteps; ++kk)
    gmma_ss_impl<Op>(a_desc[kk], b_desc[kk], x,
                     kk == 0 ? gmma::ScaleOut::Zero : gmma::ScaleOut::One,
                     std::make_index_sequence<64>{});
  cute::warpgroup_commit_batch();
}

// x^T = Kbar Q^T for one tile of 64 pooled keys (K-major, at key_address) and the row's queries,
// whose descriptors the caller made once per row.
template <typename Traits>
__device__ __forceinline__ void issue_tile_product(uint32_t key_address,
                                                   uint64_t (&q_desc)[Traits::kHeadDim / 16],
                                                   float (&x)[64]) {
  issue_tile_gmma<typename GmmaSS<Traits::kIsBf16, 128>::Op, typename Traits::KeyPanels>(
      key_address, q_desc, x);
}

// Tiles step .. num_tiles - 1 of a row, in pairs on two accumulators: the second tile's wgmmas run
// while the first is reduced; an odd count's last tile goes alone. wait(step) waits for a tile's
// operands, issue(step, x) issues its product into x, reduce(step, x) consumes x. No wgmma is in
// flight across the loop's back edge: ptxas serialises wgmmas whose accumulators it cannot track
// there (C7514).
template <typename Wait, typename Issue, typename Reduce>
__device__ __forceinline__ void tiles_in_pairs(int step, int num_tiles, float (&x_first)[64],
                                               float (&x_second)[64], Wait&& wait, Issue&& issue,
                                               Reduce&& reduce) {
  for (; step + 1 < num_tiles; step += 2) {
    wait(step);
    wait(step + 1);
    issue(step, x_first);
    issue(step + 1, x_second);
    cute::warpgroup_wait<1>();
    fence_accumulators(x_first);
    reduce(step, x_first);
    cute::warpgroup_wait<0>();
    fence_accumulators(x_second);
    reduce(step + 1, x_second);
  }
  if (step < num_tiles) {
    wait(step);
    issue(step, x_first);
    cute::warpgroup_wait<0>();
    fence_accumulators(x_first);
    reduce(step, x_first);
  }
}

// Largest of a thread's 32 scores of one key block (x element 4 * nt + 2 * half + {0, 1}), as a
// tree: five dependent steps instead of a chain of 31.
__device__ __forceinline__ float max_of_half(const float (&x)[64], int half) {
  float level[16];
#pragma unroll
  for (int nt = 0; nt < 16; ++nt) level[nt] = fmaxf(x[4 * nt + 2 * half], x[4 * nt + 2 * half + 1]);
#pragma unroll
  for (int k = 0; k < 8; ++k) level[k] = fmaxf(level[k], level[k + 8]);
#pragma unroll
  for (int k = 0; k < 4; ++k) level[k] = fmaxf(level[k], level[k + 4]);
  return fmaxf(fmaxf(level[0], level[2]), fmaxf(level[1], level[3]));
}

// log2 S of one key block over the quad's rows: log2 of the sum of exp2(x * scale_log2 - shift)
// over the thread's 32 scores of `half` (as max_of_half) and the quad's other lanes, plus the shift
// (m * scale_log2, m the block's maximum, the same in every lane of the quad); -inf when m is -inf
// (a masked block has S = 0).
__device__ __forceinline__ float log2_block_score(const float (&x)[64], int half, float m,
                                                  float scale_log2) {
  const bool masked = m == -INFINITY;
  const float shift_x2 = masked ? 0.0f : m * scale_log2;
  float s[4] = {};  // four partial sums: independent adds
#pragma unroll
  for (int nt = 0; nt < 16; ++nt)
    s[nt % 4] += fast_exp2(fmaf(x[4 * nt + 2 * half], scale_log2, -shift_x2)) +
                 fast_exp2(fmaf(x[4 * nt + 2 * half + 1], scale_log2, -shift_x2));
  float sum = (s[0] + s[1]) + (s[2] + s[3]);
  sum += __shfl_xor_sync(0xffffffffu, sum, 1);
  sum += __shfl_xor_sync(0xffffffffu, sum, 2);
  return masked ? -INFINITY : shift_x2 + __log2f(sum);  // sum >= 1: the maximum's own term
}

// Step 2's statistics of one exact tile. x holds x^T[64 key blocks][128 queries]; element i is key
// block j[(i % 4) / 2] (j >= num_j: none, masked) and query row 8 * (i / 4) + 2 * quad + (i % 2).
// Writes log_score[j] (select_row.cuh) for the thread's two blocks. `mask`: the tile may hold
// blocks past the row, queries outside the chunk or the sequence, or the diagonal block, which
// queries that do not see all its keys must not score (ALGORITHM.md step 2).
//
// The warps share their largest scores so far through warp_running_max: written at the end of step
// t into slot (t + 1) % 2 and read after step t + 1's barrier, so no write races a read. A warp
// skips a tile when every lane's scores lie below that maximum + skip_offset (the header): its own
// maxima need no shuffles then, and they cannot raise the row maximum, so warp_max_so_far (the
// warp's largest score, the row maximum once reduced over warps) is updated only on tiles it
// scores.
template <typename Traits>
__device__ __forceinline__ void reduce_exact_tile(float (&x)[64], const int32_t (&j)[2], bool mask,
                                                  const RowBounds32& row, float scale_log2,
                                                  bool may_skip, float skip_offset,
                                                  float* warp_running_max, int step,
                                                  float* log_score, float& warp_max_so_far,
                                                  float& thread_max_log_score) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, quad = lane % 4;
  const float4 seen = *reinterpret_cast<const float4*>(warp_running_max + 4 * (step % 2));
  const float running_max = fmaxf(fmaxf(seen.x, seen.y), fmaxf(seen.z, seen.w));
  if (mask) {
    // Query position pos sees block j when pos >= first_visible[half] (the block's last key, or the
    // chunk start) and pos < len_kv.
    int32_t first_visible[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      first_visible[half] = INT32_MAX;
      if (j[half] < row.num_j)
        first_visible[half] = max(min((j[half] + 1) * Traits::kBlockM, row.len_kv) - 1, row.shift);
    }
    const int32_t pos0 = row.block_start + 2 * quad;
#pragma unroll
    for (int i = 0; i < 64; ++i) {
      const int32_t pos = pos0 + 8 * (i / 4) + (i % 2);
      if (pos < first_visible[(i % 4) / 2] || pos >= row.len_kv) x[i] = -INFINITY;
    }
  }
  float m[2] = {max_of_half(x, 0), max_of_half(x, 1)};
  const bool skip =
      may_skip && __all_sync(0xffffffffu, fmaxf(m[0], m[1]) < running_max + skip_offset);
  if (skip) {
    // Every block of the warp is dropped (S = 0 is below any threshold; log2 0 = -inf).
#pragma unroll
    for (int half = 0; half < 2; ++half)
      if (quad == 0 && j[half] < row.num_j) log_score[j[half]] = -INFINITY;
  } else {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      m[half] = fmaxf(m[half], __shfl_xor_sync(0xffffffffu, m[half], 1));
      m[half] = fmaxf(m[half], __shfl_xor_sync(0xffffffffu, m[half], 2));
    }
    float warp_max = fmaxf(m[0], m[1]);
#pragma unroll
    for (int offset = 4; offset < 32; offset *= 2)
      warp_max = fmaxf(warp_max, __shfl_xor_sync(0xffffffffu, warp_max, offset));
    warp_max_so_far = fmaxf(warp_max_so_far, warp_max);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const float log_sum = log2_block_score(x, half, m[half], scale_log2);
      if (quad == 0 && j[half] < row.num_j) log_score[j[half]] = log_sum;
      thread_max_log_score = fmaxf(thread_max_log_score, log_sum);
    }
  }
  // Read after the next step's barrier.
  if (lane == 0) warp_running_max[4 * ((step + 1) % 2) + warp] = warp_max_so_far;
}

template <typename Traits>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinCtasPerSm)
    score_rows_kernel(const detail::Problem p, const int64_t* seq_row_offset, const Buffers buffers,
                      float* scores, int64_t scores_ld, const __grid_constant__ ScoreMaps maps) {
  constexpr int kStages = Traits::kStages, kKeyTile = Traits::kKeyTile;
  constexpr int kBlock = Traits::kBlockM;  // == params.block_size (supports() in score.cu)
  // Robust discovery's combine kernel follows (dependent_launch.cuh).
  if constexpr (Traits::kSummarizeQueries) allow_dependent_launch();
  const RowOfGrid r = row_of_grid<kBlock>(p, seq_row_offset);
  if (!r.valid) return;

  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw_address = sm80::smem_address(smem_raw);
  unsigned char* q_smem = smem_raw + ((1024 - raw_address % 1024) % 1024);
  unsigned char* key_smem = q_smem + Traits::kQBytes;  // stage s at s * kKeyBytes
  auto* log_score = reinterpret_cast<float*>(key_smem + kStages * Traits::kKeyBytes);
  float* reduce_smem = log_score + Traits::log_score_floats(r.num_kv_blocks);
  auto* key_full = reinterpret_cast<uint64_t*>(
      reduce_smem + Traits::kReduceFloats);  // 8-byte aligned: an even number of floats in
  uint64_t* q_full = key_full + kStages;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4;
  const int64_t shift = r.shift();
  const int64_t block_start = r.block_start(kBlock);
  const int32_t kv_head = int32_t(r.head) / int32_t(p.group);  // 32-bit: no 64-bit division call
  const int32_t slot0 = int32_t(p.pooled_slot0(r.seq, r.extent, kBlock));
  const int64_t num_j = r.num_causal_blocks();
  const RowBounds32 geometry{int32_t(block_start), int32_t(shift), int32_t(r.extent.len_kv),
                             int32_t(num_j)};

  // Rows the selection keeps whole (the last query blocks) need no scores when only the layout is
  // wanted: every causal block is kept whatever its score.
  const bool skip_scores =
      scores == nullptr && r.block_abs >= r.num_kv_blocks - p.params.last_full_blocks;
  const int num_tiles = skip_scores ? 0 : int((num_j + kKeyTile - 1) / kKeyTile);
  const bool partial_block = block_start < shift || block_start + kBlock > r.extent.len_kv;
  float warp_max_so_far = -INFINITY, thread_max_log_score = -INFINITY;
  if (skip_scores)
    for (int64_t j = tid; j < num_j; j += Traits::kThreads) log_score[j] = 0.0f;

  const float scale_log2 = p.params.scale * detail::kLog2e;
  // Skipping exponentials (see the header) needs the exact scores of every candidate: only on the
  // fused path, without min_budget. In raw score units: skip when m_j < M + skip_offset.
  const bool may_skip = scores == nullptr && p.params.min_budget == 0 && r.alpha > 0.0f;
  const float skip_offset = (log2f(r.alpha) - log2f(float(2 * Traits::kBlockM))) / scale_log2;
  // [2][4]: each warp's largest score so far (reduce_exact_tile); 16-byte aligned.
  float* warp_running_max = reduce_smem;
  if (tid < 8) warp_running_max[tid] = -INFINITY;

  constexpr uint64_t kCacheHint = uint64_t(cute::TMA::CacheHintSm90::EVICT_NORMAL);
  const auto load_keys = [&](int step) {  // one thread
    const int stage = step % kStages, tile = key_tile_at(step, num_tiles);
    barrier_arrive_expect_tx(&key_full[stage], Traits::kKeyBytes);
    for (int panel = 0; panel < Traits::kPanels; ++panel) {
      unsigned char* panel_smem =
          key_smem + stage * Traits::kKeyBytes + panel * Traits::KeyPanels::kPanelBytes;
      cute::SM90_TMA_LOAD_3D::copy(&maps.pooled, &key_full[stage], kCacheHint, panel_smem,
                                   panel * 64, int32_t(kv_head), slot0 + tile * kKeyTile);
    }
  };
  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) Barrier::init(&key_full[s], 1);
    Barrier::init(q_full, 1);
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();
  if (tid == 0 && num_tiles > 0) {
    // Rows before the chunk have negative coordinates (zeros, or the previous sequence when packed)
    // and rows past the sequence read zeros or the next one: all are masked below. Slots past the
    // row's blocks are masked the same way.
    const int32_t q_token = int32_t(r.extent.q_token0 + block_start - shift);
    const int32_t batch = p.varlen ? 0 : int32_t(r.seq);
    barrier_arrive_expect_tx(q_full, Traits::kQBytes);
    for (int panel = 0; panel < Traits::kPanels; ++panel)
      cute::SM90_TMA_LOAD_4D::copy(&maps.q, q_full, kCacheHint,
                                   q_smem + panel * Traits::QPanels::kPanelBytes, panel * 64,
                                   int32_t(r.head), q_token, batch);
    for (int step = 0; step < kStages && step < num_tiles; ++step) load_keys(step);
  }
  if (num_tiles > 0) barrier_wait(q_full, 0);

  uint64_t q_desc[Traits::kHeadDim / 16];
  k_major_descriptors<typename Traits::QPanels>(sm80::smem_address(q_smem), q_desc);
  const uint32_t key_address = sm80::smem_address(key_smem);
  const auto issue_product = [&](int step, float(&x)[64]) {
    issue_tile_product<Traits>(key_address + (step % kStages) * Traits::kKeyBytes, q_desc, x);
  };
  const auto wait_for_keys = [&](int step) {
    barrier_wait(&key_full[step % kStages], (step / kStages) & 1);
  };
  const auto score_tile = [&](int step, float(&x)[64]) {
    // Every warp's wgmma has read the stage (and written its warp_running_max): refill it with the
    // tile kStages ahead, which then lands while this one is scored.
    named_barrier_sync(NamedBarrier::kScoreWarpgroup, Traits::kThreads);
    if (tid == 0 && step + kStages < num_tiles) load_keys(step + kStages);
    const int32_t j0 = key_tile_at(step, num_tiles) * kKeyTile;
    const bool mask = partial_block || j0 + kKeyTile - 1 >= r.block_abs;
    const int32_t j[2] = {j0 + 16 * warp + g, j0 + 16 * warp + g + 8};
    reduce_exact_tile<Traits>(x, j, mask, geometry, scale_log2, may_skip, skip_offset,
                              warp_running_max, step, log_score, warp_max_so_far,
                              thread_max_log_score);
  };
  // Tiles in pairs on two accumulators (x^T[j, t] for 64 key blocks x 128 queries each).
  float x_first[64], x_second[64];
  if constexpr (Traits::kSummarizeQueries) {
    // Robust discovery: the row's core query sum and far query (query_summary.cuh), before the
    // first product: with the first tile's accumulator live beside the summary's registers, ptxas
    // spilled across the whole kernel. Its scratch is log_score's memory, which score_tile writes
    // only after a barrier of every warp. Rows kept whole load no queries and need no summary
    // (representatives.cu skips them too).
    if (num_tiles > 0) {
      const detail::PositionRange rows = r.positions(kBlock);
      using QPanels = typename Traits::QPanels;
      using Layout = discovery::QueryTileLayout<QPanels::kRowBytes, QPanels::kPanelCols / 8,
                                                QPanels::kPanelBytes>;
      discovery::write_query_summary<Layout, Traits::kHeadDim, Traits::kThreads, kBlock,
                                     Traits::kIsBf16>(
          sm80::smem_address(q_smem), int(rows.begin - block_start), int(rows.end - block_start),
          log_score, buffers, r.row);
    }
  }
  tiles_in_pairs(0, num_tiles, x_first, x_second, wait_for_keys, issue_product, score_tile);
  // M2 = the row's largest score (every tile is scored without skipping when scores are wanted).
  const float thread_max_x2 = warp_max_so_far * scale_log2;
  finish_row(p, r.alpha, log_score, thread_max_x2, thread_max_log_score, num_j, r.block_abs,
             r.num_kv_blocks, r.row, buffers, scores, scores_ld, reduce_smem + 8);
}

}  // namespace flashprefill::cuda::sm90
