// Step 2 of ALGORITHM.md on Hopper: block scores of one layout row (query block i, query head h)
// per CTA with wgmma, then steps 3-4 in shared memory (select_row.cuh, shared with sm_80).
//
// The product is computed transposed, x^T = Kbar Q^T: pooled keys are the M side (64 per
// warpgroup, 128 per step), the block's 128 queries the N side. The per-key-block statistics
// step 2 needs, max_t x[t, j] and sum_t exp(x[t, j] - max), are then reductions along N, which
// the wgmma accumulator layout keeps inside a thread and its quad (no shared-memory transposes).
// Kbar enters as hi + lo 16-bit parts (~16 mantissa bits): both are A operands of one accumulation
// chain against the same Q, so the scores match the fp32 CPU backend to well within the
// threshold's rounding. Q and the pooled-key tiles arrive by TMA (one thread issues, an mbarrier
// counts the bytes), so the warps spend their instructions on the scores.
#pragma once

#include <cfloat>

#include "common/problem.hpp"
#include "cuda/check.cuh"
#include "cuda/discovery.cuh"
#include "cuda/hopper/sm90.cuh"
#include "cuda/mma.cuh"
#include "cuda/select_row.cuh"

namespace flashprefill::cuda::discovery::hopper {

struct ScoreMaps {
  CUtensorMap q;       // as the attention kernel's (boxes of 128 tokens)
  CUtensorMap hi, lo;  // pooled keys [slots][H_kv][D], boxes of 64 slots
};

template <int kHeadDim_, bool kIsBf16_>
struct ScoreTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr bool kIsBf16 = kIsBf16_;
  static constexpr int kBlockM = 128;    // queries: one query block (block_size 128)
  // One warpgroup (64 pooled keys per step) and a small footprint, so that three CTAs share an SM
  // and one's loads and exponentials overlap another's wgmmas. Measured against two warpgroups
  // (128 keys per step, two CTAs per SM), also TMA-fed: 3.8 vs 5.0 ms of discovery at 128K.
  static constexpr int kWarpgroups = 1;
  static constexpr int kKeyTile = 64 * kWarpgroups;
  static constexpr int kThreads = 128 * kWarpgroups;
  static constexpr int kMinCtasPerSm = 3;
  // One stage: a second one (prefetch) would cost the third CTA per SM, and measured slower
  // (H100, 128K: 4.0 -> 5.5 ms of discovery).
  static constexpr int kStages = 1;
  using QPanels = sm90::SwizzledPanels<kBlockM>;
  using KeyPanels = sm90::SwizzledPanels<kKeyTile>;
  static constexpr int kPanels = kHeadDim / 64;
  static constexpr int kQBytes = kPanels * QPanels::kPanelBytes;
  static constexpr int kKeyBytes = kPanels * KeyPanels::kPanelBytes;  // one of hi, lo
  static constexpr int kReduceFloats = 128;
  // Q | (hi | lo)[kStages] | col_max[max_key_blocks] | col_sum[max_key_blocks] | reduction scratch | barrier, +1024 to align.
  static size_t smem_bytes(int64_t max_key_blocks) {
    return 1024 + kQBytes + 2 * kStages * kKeyBytes + size_t(2 * max_key_blocks + kReduceFloats) * 4 + 16;
  }
};

template <typename Traits>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinCtasPerSm)
    score_rows_kernel(const detail::Problem p, const int64_t* seq_row_offset, const Buffers buffers, float* scores, int64_t scores_ld,
                      const __grid_constant__ ScoreMaps maps) {
  using namespace sm90;
  constexpr int D = Traits::kHeadDim;
  const RowOfGrid r = row_of_grid(p, seq_row_offset);
  if (!r.valid) return;

  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw_address = sm80::smem_address(smem_raw);
  unsigned char* q_smem = smem_raw + ((1024 - raw_address % 1024) % 1024);
  unsigned char* key_smem = q_smem + Traits::kQBytes;  // stage s: hi at 2s, lo at 2s + 1 (kKeyBytes each)
  const int64_t num_j = r.block_abs + 1;
  auto* col_max = reinterpret_cast<float*>(key_smem + 2 * Traits::kStages * Traits::kKeyBytes);
  float* col_sum = col_max + r.num_kv_blocks;
  float* reduce_smem = col_sum + r.num_kv_blocks;
  auto* loaded = reinterpret_cast<uint64_t*>(reduce_smem + Traits::kReduceFloats);  // 8-byte aligned: 2n + 128 floats in

  const int tid = threadIdx.x;
  const int64_t block = p.params.block_size, shift = r.extent.len_kv - r.extent.len_q;
  const int64_t block_start = r.block_abs * block;
  const int64_t kv_head = r.head / p.group;
  const int64_t slot0 = p.pooled_slot0(r.seq, r.extent);

  // Rows the selection keeps whole (the last query blocks) need no scores when only the layout is
  // wanted: every causal block is kept, so S = 1 for each (select_row then keeps them all).
  const bool skip_scores = scores == nullptr && r.block_abs >= r.num_kv_blocks - p.params.last_full_blocks;

  const int warp = tid / 32, lane = tid % 32, g = lane / 4, quad = lane % 4;
  const float scale_log2 = p.params.scale * 1.4426950408889634f;
  const bool partial_block = block_start < shift || block_start + block > r.extent.len_kv;
  const uint32_t q_address = sm80::smem_address(q_smem);
  const uint32_t key_address = sm80::smem_address(key_smem);
  const int num_tiles = skip_scores ? 0 : int((num_j + Traits::kKeyTile - 1) / Traits::kKeyTile);
  if (skip_scores)
    for (int64_t j = tid; j < num_j; j += Traits::kThreads) col_max[j] = 0.0f, col_sum[j] = 1.0f;
  if (tid == 0) {
    sm90::Barrier::init(loaded, 1);
    cutlass::arch::fence_barrier_init();
  }

  constexpr uint64_t kCacheHint = uint64_t(cute::TMA::CacheHintSm90::EVICT_NORMAL);
  for (int tile = 0; tile < num_tiles; ++tile) {
    __syncthreads();  // the previous tile's wgmmas (every warp) have read the stage; the barrier is initialised
    if (tid == 0) {
      // Tile 0 brings the block's queries too. Rows before the chunk have negative coordinates
      // (zeros, or the previous sequence when packed) and rows past the sequence read zeros or the
      // next one: all are masked below. Slots past the row's blocks are masked the same way.
      const uint32_t bytes = 2 * Traits::kKeyBytes + (tile == 0 ? Traits::kQBytes : 0);
      sm90::Barrier::arrive_and_expect_tx(loaded, bytes);
      if (tile == 0) {
        const int32_t q_token = int32_t(r.extent.q_token0 + block_start - shift);
        const int32_t batch = p.varlen ? 0 : int32_t(r.seq);
        for (int panel = 0; panel < Traits::kPanels; ++panel)
          cute::SM90_TMA_LOAD_4D::copy(&maps.q, loaded, kCacheHint, q_smem + panel * Traits::QPanels::kPanelBytes, panel * 64,
                                       int32_t(r.head), q_token, batch);
      }
      const int32_t slot = int32_t(slot0 + int64_t(tile) * Traits::kKeyTile);
      for (int panel = 0; panel < Traits::kPanels; ++panel) {
        const int panel_offset = panel * Traits::KeyPanels::kPanelBytes;
        cute::SM90_TMA_LOAD_3D::copy(&maps.hi, loaded, kCacheHint, key_smem + panel_offset, panel * 64, int32_t(kv_head), slot);
        cute::SM90_TMA_LOAD_3D::copy(&maps.lo, loaded, kCacheHint, key_smem + Traits::kKeyBytes + panel_offset, panel * 64,
                                     int32_t(kv_head), slot);
      }
    }
    sm90::Barrier::wait(loaded, tile & 1);
    const int64_t j0 = int64_t(tile) * Traits::kKeyTile;
    const uint32_t hi_address = key_address;
    const uint32_t lo_address = hi_address + Traits::kKeyBytes;

    // x^T[j, t] for 64 key blocks x 128 queries: hi then lo against the same Q.
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

    // Element 4 * nt + e: key block j0 + 16 * warp + g + 8 * (e / 2), query row 8 * nt + 2 * quad + (e % 2).
    // Masked (-inf): blocks past the row block, queries outside the chunk or the sequence, and the
    // diagonal block for queries that do not see all its keys (ALGORITHM.md step 2).
    const bool needs_mask = partial_block || j0 + Traits::kKeyTile - 1 >= r.block_abs;
#pragma unroll
    for (int i = 0; i < 64; ++i) {
      x[i] *= scale_log2;
      if (needs_mask) {
        const int64_t j = j0 + 16 * warp + g + 8 * ((i % 4) / 2);
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
      const int64_t j = j0 + 16 * warp + g + 8 * half;
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
