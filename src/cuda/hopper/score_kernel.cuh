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
// exponentials overlap another's wgmmas. Q and the pooled-key tiles arrive by TMA into a ring of
// kStages stages: the tile `kStages` ahead is requested as soon as a tile's wgmma has read its
// stage, so loads land while the warps score.
//
// Exponentials are skipped where they cannot matter (the fused path without min_budget): a block
// whose best query scores m_j with m_j - M <= log(alpha / (2 * 128)), M any score seen so far in
// the row, has S[i, j] <= 128 exp(m_j - M_row) < alpha / 2 <= alpha * max_j S[i, j] / 2 (the
// block holding M_row has S >= 1): it is dropped whatever its sum, with a factor 2 to spare for
// rounding. A warp skips its exponentials when all 16 of its blocks qualify. The key tiles are
// visited diagonal tile first, then the sink tile, then the rest from the diagonal back: the largest
// scores of a row usually lie on the local band or the sinks, so M is high from the first steps and
// most far tiles skip (a CPU simulation of the structured input: 87% of warp-tiles skip in this
// order at 32K and 96% at 128K, against 28% and 20% in ascending order).
//
// Long rows (head dim 128, at least filter_min_tiles key tiles, on the fused path) are pre-filtered
// (common/int8_filter.hpp): pass 1 scores every key tile in int8 (wgmma s8, twice the bf16 rate, no
// exponentials) and bounds each block's best query score; blocks whose upper bound lies below the
// row's best lower bound + log(alpha / (2 * 128)) are dropped by the same argument as above, and
// pass 2 gathers the others (the candidates: a few percent of a long row's blocks, usually one
// tile) into exact tiles scored as every tile is scored without the filter. The layouts are the
// same with and without it.
#pragma once

#include <cfloat>

#include "common/int8_filter.hpp"
#include "common/problem.hpp"
#include "cuda/check.cuh"
#include "cuda/discovery.cuh"
#include "cuda/hopper/sm90.cuh"
#include "cuda/mma.cuh"
#include "cuda/select_row.cuh"

namespace flashprefill::cuda::discovery::hopper {

struct ScoreMaps {
  CUtensorMap q;            // as the attention kernel's (boxes of 128 tokens)
  CUtensorMap pooled;       // pooled keys [slots][H_kv][D] in the input dtype, boxes of 64 slots
  CUtensorMap pooled_int8;  // the int8 pooled keys [slots][H_kv][128], boxes of 64 slots (filter only)
};

template <int kHeadDim_, bool kIsBf16_>
struct ScoreTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr bool kIsBf16 = kIsBf16_;
  static constexpr int kBlockM = 128;  // queries: one query block (block_size 128)
  static constexpr int kKeyTile = 64;  // pooled keys per wgmma tile (its M)
  static constexpr int kThreads = 128;
  static constexpr int kMinCtasPerSm = 3;
  static constexpr int kStages = 2;
  using QPanels = sm90::SwizzledPanels<kBlockM>;
  using KeyPanels = sm90::SwizzledPanels<kKeyTile>;
  static constexpr int kPanels = kHeadDim / 64;
  static constexpr int kQBytes = kPanels * QPanels::kPanelBytes;
  static constexpr int kKeyBytes = kPanels * KeyPanels::kPanelBytes;
  static constexpr int kReduceFloats = 128;
  // Named barrier of the CTA's one warpgroup (1: barrier 0, __syncthreads, is the same here but says
  // more than is meant).
  static constexpr int kWarpgroupBarrier = 1;

  // The int8 pre-filter, for head dim 128 (an int8 row of 128 values is one 128-byte swizzled row).
  // Its query block and two key stages take the exact path's key ring; once pass 1 is done, the
  // gathered exact tile and the candidate list (int16) take the same space.
  static constexpr bool kHasFilter = kHeadDim == 128;
  static constexpr int kInt8QBytes = kBlockM * 128;
  static constexpr int kInt8KeyBytes = kKeyTile * 128;
  static constexpr int kInt8Stages = 2;
  static constexpr int kMaxCandidates = (kStages - 1) * kKeyBytes / 2;  // the ring after one gathered tile
  static_assert(!kHasFilter || kInt8QBytes + kInt8Stages * kInt8KeyBytes <= kStages * kKeyBytes, "filter space");

  // Q | keys[kStages] | log_score[max_key_blocks, padded] | reduction scratch | barriers, +1024 to align.
  static size_t smem_bytes(int64_t max_key_blocks) {
    return 1024 + kQBytes + size_t(kStages) * kKeyBytes + size_t(log_score_capacity(max_key_blocks) + kReduceFloats) * 4 +
           8 * (kStages + 1);
  }
};

// The key tile scored at step `step` of a row of `num_tiles` tiles: the diagonal tile, tile 0, then
// descending (see the header).
__device__ inline int key_tile_at(int step, int num_tiles) {
  if (step == 0) return num_tiles - 1;
  return step == 1 ? 0 : num_tiles - step;
}

// What the tile epilogues need of the row (32-bit: positions fit, see make_problem).
struct RowGeometry {
  int32_t block_start, shift, len_kv, num_j, block;
};

// x^T = Kbar Q^T for one tile of 64 pooled keys (K-major, at key_address) and the row's queries.
template <typename Traits>
__device__ __forceinline__ void exact_tile_product(uint32_t key_address, uint32_t q_address, float (&x)[64]) {
  using namespace sm90;
  constexpr int D = Traits::kHeadDim;
  uint64_t a[D / 16], b[D / 16];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t offset = (kk % 4) * 32;  // 16 elements along the 128-byte row
    a[kk] = make_desc_k_major(key_address + (kk / 4) * Traits::KeyPanels::kPanelBytes + offset);
    b[kk] = make_desc_k_major(q_address + (kk / 4) * Traits::QPanels::kPanelBytes + offset);
  }
  fence_descriptors(a);
  fence_descriptors(b);
  fence_accumulators(x);
  cute::warpgroup_arrive();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) gmma_ss<Traits::kIsBf16, 128>(a[kk], b[kk], x, kk == 0 ? gmma::ScaleOut::Zero : gmma::ScaleOut::One);
  cute::warpgroup_commit_batch();
  cute::warpgroup_wait<0>();
  fence_accumulators(x);
}

// Step 2's statistics of one exact tile. x holds x^T[64 key blocks][128 queries]; element i is key
// block j[(i % 4) / 2] (j >= num_j: none, masked) and query row 8 * (i / 4) + 2 * quad + (i % 2).
// Writes log_score[j] (select_row.cuh) for the thread's two blocks and updates its maxima. `mask`:
// the tile may hold blocks past the row, queries outside the chunk or the sequence, or the diagonal
// block, which queries that do not see all its keys must not score (ALGORITHM.md step 2). The warps
// exchange their running maxima through warp_running_max: written at the end of step t into slot
// (t + 1) % 2 and read after step t + 1's barrier, so no write races a read.
template <typename Traits>
__device__ __forceinline__ void reduce_exact_tile(float (&x)[64], const int32_t (&j)[2], bool mask, const RowGeometry& row,
                                                  float scale_log2, bool may_skip, float skip_offset, float* warp_running_max,
                                                  int step, float* log_score, float& thread_max_x2, float& thread_max_log_score) {
  using namespace sm90;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, quad = lane % 4;
  const float* seen = warp_running_max + 4 * (step % 2);
  float running_max = fmaxf(fmaxf(seen[0], seen[1]), fmaxf(seen[2], seen[3]));
  if (mask) {
    // Query position pos sees block j when pos >= first_visible[half] (the block's last key, or the
    // chunk start) and pos < len_kv.
    int32_t first_visible[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      first_visible[half] = INT32_MAX;
      if (j[half] < row.num_j) first_visible[half] = max(min((j[half] + 1) * row.block, row.len_kv) - 1, row.shift);
    }
    const int32_t pos0 = row.block_start + 2 * quad;
#pragma unroll
    for (int i = 0; i < 64; ++i) {
      const int32_t pos = pos0 + 8 * (i / 4) + (i % 2);
      if (pos < first_visible[(i % 4) / 2] || pos >= row.len_kv) x[i] = -INFINITY;
    }
  }
  float m[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    m[half] = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < 16; ++nt) m[half] = fmaxf(m[half], fmaxf(x[4 * nt + 2 * half], x[4 * nt + 2 * half + 1]));
    m[half] = fmaxf(m[half], __shfl_xor_sync(0xffffffffu, m[half], 1));
    m[half] = fmaxf(m[half], __shfl_xor_sync(0xffffffffu, m[half], 2));
  }
  float warp_max = fmaxf(m[0], m[1]);
#pragma unroll
  for (int offset = 4; offset < 32; offset *= 2) warp_max = fmaxf(warp_max, __shfl_xor_sync(0xffffffffu, warp_max, offset));
  running_max = fmaxf(running_max, warp_max);
  const bool hopeless = m[0] < running_max + skip_offset && m[1] < running_max + skip_offset;
  const bool skip = may_skip && __all_sync(0xffffffffu, hopeless);
  thread_max_x2 = fmaxf(thread_max_x2, warp_max * scale_log2);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float log_sum = -INFINITY;
    if (!skip) {  // warp-uniform: every lane takes part in the shuffles (a masked block has m = -inf, s = 0)
      const bool masked = m[half] == -INFINITY;
      const float shift_x2 = masked ? 0.0f : m[half] * scale_log2;
      float s = 0.0f;
#pragma unroll
      for (int nt = 0; nt < 16; ++nt)
        s += fast_exp2(fmaf(x[4 * nt + 2 * half], scale_log2, -shift_x2)) + fast_exp2(fmaf(x[4 * nt + 2 * half + 1], scale_log2, -shift_x2));
      s += __shfl_xor_sync(0xffffffffu, s, 1);
      s += __shfl_xor_sync(0xffffffffu, s, 2);
      log_sum = masked ? -INFINITY : shift_x2 + __log2f(s);  // s >= 1: the maximum's own term
    }
    if (quad == 0 && j[half] < row.num_j) log_score[j[half]] = log_sum;
    thread_max_log_score = fmaxf(thread_max_log_score, log_sum);
  }
  if (lane == 0) warp_running_max[4 * ((step + 1) % 2) + warp] = running_max;  // read after the next step's barrier
}

template <bool kIsBf16>
__device__ __forceinline__ float2 unpack_pair(uint32_t word) {
  if constexpr (kIsBf16) return make_float2(__uint_as_float(word << 16), __uint_as_float(word & 0xffff0000u));
  else return __half22float2(*reinterpret_cast<const __half2*>(&word));
}
// The low bytes of four words, in order, as one word.
__device__ __forceinline__ uint32_t pack_low_bytes(uint32_t b0, uint32_t b1, uint32_t b2, uint32_t b3) {
  return __byte_perm(__byte_perm(b0, b1, 0x0040), __byte_perm(b2, b3, 0x0040), 0x5410);
}

struct QueryQuantization {
  float scale, max_l1;  // sQ and max_t L1(q_t) of int8_filter.hpp
};

// The filter's query block: Q (as TMA wrote it: 16-bit, two 128B-swizzled panels) quantized with one
// scale into a [128 queries][128] int8 tile, 128B-swizzled as wgmma reads it. One query row per
// thread. `scratch`: 8 floats. Ends with the tile visible to wgmma.
template <typename Traits>
__device__ __forceinline__ QueryQuantization quantize_query_block(const unsigned char* q_smem, unsigned char* q_int8, float* scratch) {
  static_assert(Traits::kThreads == Traits::kBlockM && Traits::kHeadDim == 128, "one 128-value row per thread");
  using QPanels = typename Traits::QPanels;
  const int row = threadIdx.x, warp = row / 32, lane = row % 32;
  float max_abs[2] = {0.0f, 0.0f}, l1[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // partials: shorter dependency chains
#pragma unroll
  for (int chunk = 0; chunk < 16; ++chunk) {
    const uint4 raw = *reinterpret_cast<const uint4*>(q_smem + QPanels::offset(row, chunk));
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const float2 v = unpack_pair<Traits::kIsBf16>(words[w]);
      max_abs[w % 2] = fmaxf(max_abs[w % 2], fmaxf(fabsf(v.x), fabsf(v.y)));
      l1[w] += fabsf(v.x) + fabsf(v.y);
    }
  }
  float block_abs = fmaxf(max_abs[0], max_abs[1]), block_l1 = (l1[0] + l1[1]) + (l1[2] + l1[3]);
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    block_abs = fmaxf(block_abs, __shfl_xor_sync(0xffffffffu, block_abs, offset));
    block_l1 = fmaxf(block_l1, __shfl_xor_sync(0xffffffffu, block_l1, offset));
  }
  if (lane == 0) scratch[2 * warp] = block_abs, scratch[2 * warp + 1] = block_l1;
  sm90::named_barrier_sync(Traits::kWarpgroupBarrier, Traits::kThreads);
#pragma unroll
  for (int w = 0; w < Traits::kThreads / 32; ++w) block_abs = fmaxf(block_abs, scratch[2 * w]), block_l1 = fmaxf(block_l1, scratch[2 * w + 1]);
  const float inverse = detail::int8_filter::inverse_scale(block_abs);
#pragma unroll
  for (int out = 0; out < 8; ++out) {  // 16 int8 values: the input chunks 2 out and 2 out + 1
    uint32_t packed[4];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const uint4 raw = *reinterpret_cast<const uint4*>(q_smem + QPanels::offset(row, 2 * out + half));
      const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
      uint32_t bits[8];
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        const float2 v = unpack_pair<Traits::kIsBf16>(words[w]);
        bits[2 * w] = detail::int8_filter::quantize_bits(v.x, inverse);
        bits[2 * w + 1] = detail::int8_filter::quantize_bits(v.y, inverse);
      }
      packed[2 * half] = pack_low_bytes(bits[0], bits[1], bits[2], bits[3]);
      packed[2 * half + 1] = pack_low_bytes(bits[4], bits[5], bits[6], bits[7]);
    }
    *reinterpret_cast<uint4*>(q_int8 + row * 128 + ((out ^ (row % 8)) << 4)) = make_uint4(packed[0], packed[1], packed[2], packed[3]);
  }
  sm90::fence_proxy_async_shared();
  sm90::named_barrier_sync(Traits::kWarpgroupBarrier, Traits::kThreads);  // the tile is whole; scratch is free again
  return {1.0f / inverse, block_l1};
}

// The candidates of a filtered row in ascending order into `list`; every other block gets
// log_score = -inf (dropped whatever its sum). log_score holds each block's upper bound (log2 units)
// below the diagonal; the diagonal block, which only some queries see, is always a candidate.
// Returns the count. All threads; `counts`: one int per warp.
__device__ __forceinline__ int compact_candidates(float* log_score, int32_t num_j, int32_t diagonal, float threshold, int16_t* list,
                                                  int* counts) {
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, warps = blockDim.x / 32;
  int total = 0;
  for (int32_t j0 = 0; j0 < num_j; j0 += blockDim.x) {
    const int32_t j = j0 + tid;
    bool candidate = false;
    if (j < num_j) {
      candidate = j == diagonal || !(log_score[j] < threshold);  // a NaN bound keeps the block
      if (!candidate) log_score[j] = -INFINITY;
    }
    const uint32_t ballot = __ballot_sync(0xffffffffu, candidate);
    if (lane == 0) counts[warp] = __popc(ballot);
    __syncthreads();
    int before = total;
    for (int w = 0; w < warps; ++w) {
      before += w < warp ? counts[w] : 0;
      total += counts[w];
    }
    if (candidate) list[before + __popc(ballot & ((1u << lane) - 1u))] = int16_t(j);
    __syncthreads();  // counts are rewritten next round
  }
  return total;
}

// Tile `tile` of the candidate list (64 slots; slots past the count read zeros and are masked) from
// the pooled keys in the input dtype, into the swizzled layout TMA gives the exact path. All threads;
// ends with the tile visible to wgmma.
template <typename Traits>
__device__ __forceinline__ void gather_key_tile(unsigned char* tile_smem, const void* pooled_half, const int16_t* list, int count,
                                                int tile, int64_t slot0, int64_t heads_kv, int64_t kv_head) {
  constexpr int kChunks = Traits::kHeadDim / 8;  // 16-byte chunks per key
  const auto* pooled = static_cast<const uint16_t*>(pooled_half);
  for (int n = threadIdx.x; n < Traits::kKeyTile * kChunks; n += Traits::kThreads) {
    const int slot = n / kChunks, chunk = n % kChunks, index = tile * Traits::kKeyTile + slot;
    const bool valid = index < count;
    const int64_t j = valid ? list[index] : 0;
    sm80::cp_async_16(tile_smem + Traits::KeyPanels::offset(slot, chunk), pooled + ((slot0 + j) * heads_kv + kv_head) * Traits::kHeadDim + chunk * 8,
                      valid ? 16 : 0);
  }
  sm80::cp_async_commit();
  sm80::cp_async_wait<0>();
  sm90::fence_proxy_async_shared();
  sm90::named_barrier_sync(Traits::kWarpgroupBarrier, Traits::kThreads);
}

template <typename Traits>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinCtasPerSm)
    score_rows_kernel(const detail::Problem p, const int64_t* seq_row_offset, const Buffers buffers, float* scores, int64_t scores_ld,
                      const __grid_constant__ ScoreMaps maps, int filter_min_tiles) {
  using namespace sm90;
  constexpr int kStages = Traits::kStages, kKeyTile = Traits::kKeyTile;
  const RowOfGrid r = row_of_grid(p, seq_row_offset);
  if (!r.valid) return;

  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw_address = sm80::smem_address(smem_raw);
  unsigned char* q_smem = smem_raw + ((1024 - raw_address % 1024) % 1024);
  unsigned char* key_smem = q_smem + Traits::kQBytes;  // stage s at s * kKeyBytes
  auto* log_score = reinterpret_cast<float*>(key_smem + kStages * Traits::kKeyBytes);
  float* reduce_smem = log_score + log_score_capacity(r.num_kv_blocks);
  auto* key_full = reinterpret_cast<uint64_t*>(reduce_smem + Traits::kReduceFloats);  // 8-byte aligned: n + 128 floats in
  uint64_t* q_full = key_full + kStages;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, quad = lane % 4;
  const int64_t block = p.params.block_size, shift = r.extent.len_kv - r.extent.len_q;
  const int64_t block_start = r.block_abs * block;
  const int64_t kv_head = r.head / p.group;
  const int32_t slot0 = int32_t(p.pooled_slot0(r.seq, r.extent));
  const int64_t num_j = r.block_abs + 1;
  const RowGeometry geometry{int32_t(block_start), int32_t(shift), int32_t(r.extent.len_kv), int32_t(num_j), int32_t(block)};

  // Rows the selection keeps whole (the last query blocks) need no scores when only the layout is
  // wanted: every causal block is kept whatever its score.
  const bool skip_scores = scores == nullptr && r.block_abs >= r.num_kv_blocks - p.params.last_full_blocks;
  const int num_tiles = skip_scores ? 0 : int((num_j + kKeyTile - 1) / kKeyTile);
  const bool partial_block = block_start < shift || block_start + block > r.extent.len_kv;
  // The host enables the filter (filter_min_tiles > 0) only on the fused path, without min_budget,
  // with alpha > 0. Partial query blocks take the exact path (its bounds assume every query valid).
  bool filter = false;
  if constexpr (Traits::kHasFilter)
    filter = filter_min_tiles > 0 && num_tiles >= filter_min_tiles && !partial_block && num_j >= 2 && num_j <= Traits::kMaxCandidates;
  float thread_max_x2 = -INFINITY, thread_max_log_score = -INFINITY;
  if (skip_scores)
    for (int64_t j = tid; j < num_j; j += Traits::kThreads) log_score[j] = 0.0f;

  const float scale_log2 = p.params.scale * 1.4426950408889634f;
  // Skipping exponentials (see the header) needs the exact scores of every candidate: only on the
  // fused path, without min_budget. In raw score units: skip when m_j < M + skip_offset.
  const bool may_skip = scores == nullptr && p.params.min_budget == 0 && p.params.alpha > 0.0f;
  const float skip_offset = (log2f(p.params.alpha) - log2f(float(2 * Traits::kBlockM))) / scale_log2;
  // [2][4]: each warp's largest score so far (reduce_exact_tile).
  float* warp_running_max = reduce_smem;
  if (tid < 8) warp_running_max[tid] = -INFINITY;

  constexpr uint64_t kCacheHint = uint64_t(cute::TMA::CacheHintSm90::EVICT_NORMAL);
  const auto load_keys = [&](int step) {  // one thread
    const int stage = step % kStages, tile = key_tile_at(step, num_tiles);
    barrier_arrive_expect_tx(&key_full[stage], Traits::kKeyBytes);
    for (int panel = 0; panel < Traits::kPanels; ++panel)
      cute::SM90_TMA_LOAD_3D::copy(&maps.pooled, &key_full[stage], kCacheHint,
                                   key_smem + stage * Traits::kKeyBytes + panel * Traits::KeyPanels::kPanelBytes, panel * 64,
                                   int32_t(kv_head), slot0 + tile * kKeyTile);
  };
  // The filter's int8 key tiles, in ascending order, into the stages after its int8 query block.
  const auto load_int8_keys = [&](int step) {  // one thread
    const int stage = step % Traits::kInt8Stages;
    barrier_arrive_expect_tx(&key_full[stage], Traits::kInt8KeyBytes);
    cute::SM90_TMA_LOAD_3D::copy(&maps.pooled_int8, &key_full[stage], kCacheHint,
                                 key_smem + Traits::kInt8QBytes + stage * Traits::kInt8KeyBytes, 0, int32_t(kv_head),
                                 slot0 + step * kKeyTile);
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
      cute::SM90_TMA_LOAD_4D::copy(&maps.q, q_full, kCacheHint, q_smem + panel * Traits::QPanels::kPanelBytes, panel * 64,
                                   int32_t(r.head), q_token, batch);
    if (filter)
      for (int step = 0; step < Traits::kInt8Stages && step < num_tiles; ++step) load_int8_keys(step);
    else
      for (int step = 0; step < kStages && step < num_tiles; ++step) load_keys(step);
  }
  if (num_tiles > 0) barrier_wait(q_full, 0);

  const uint32_t q_address = sm80::smem_address(q_smem);
  const uint32_t key_address = sm80::smem_address(key_smem);
  if (!filter) {
    for (int step = 0; step < num_tiles; ++step) {
      const int stage = step % kStages;
      barrier_wait(&key_full[stage], (step / kStages) & 1);
      float x[64];  // x^T[j, t] for 64 key blocks x 128 queries
      exact_tile_product<Traits>(key_address + stage * Traits::kKeyBytes, q_address, x);
      // Every warp's wgmma has read the stage (and written its warp_running_max): refill it with the
      // tile kStages ahead, which then lands while this one is scored.
      named_barrier_sync(Traits::kWarpgroupBarrier, Traits::kThreads);
      if (tid == 0 && step + kStages < num_tiles) load_keys(step + kStages);
      const int32_t j0 = key_tile_at(step, num_tiles) * kKeyTile;
      const int32_t j[2] = {j0 + 16 * warp + g, j0 + 16 * warp + g + 8};
      reduce_exact_tile<Traits>(x, j, partial_block || j0 + kKeyTile - 1 >= r.block_abs, geometry, scale_log2, may_skip, skip_offset,
                                warp_running_max, step, log_score, thread_max_x2, thread_max_log_score);
    }
  } else if constexpr (Traits::kHasFilter) {
    // Pass 1: int8 x^T for every key tile; each block's interval (int8_filter.hpp) below the diagonal,
    // its upper end kept in log_score, the best lower end a lower bound on the row's M.
    unsigned char* q_int8 = key_smem;
    const QueryQuantization query = quantize_query_block<Traits>(q_smem, q_int8, reduce_smem + 8);
    const uint32_t q_int8_address = sm80::smem_address(q_int8);
    float thread_lower = -INFINITY;
    for (int step = 0; step < num_tiles; ++step) {
      const int stage = step % Traits::kInt8Stages;
      barrier_wait(&key_full[stage], (step / Traits::kInt8Stages) & 1);
      uint32_t product[64];  // q~ . k~, exact int32; the layout of x above
      {
        const uint32_t stage_address = key_address + Traits::kInt8QBytes + stage * Traits::kInt8KeyBytes;
        uint64_t a[4], b[4];
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {  // k32 steps of 32 bytes along the 128-byte rows
          a[kk] = make_desc_k_major(stage_address + kk * 32);
          b[kk] = make_desc_k_major(q_int8_address + kk * 32);
        }
        fence_descriptors(a);
        fence_descriptors(b);
        fence_accumulators(product);
        cute::warpgroup_arrive();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) gmma_s8_ss(a[kk], b[kk], product, kk == 0 ? gmma::ScaleOut::Zero : gmma::ScaleOut::One);
        cute::warpgroup_commit_batch();
        cute::warpgroup_wait<0>();
        fence_accumulators(product);
      }
      named_barrier_sync(Traits::kWarpgroupBarrier, Traits::kThreads);
      if (tid == 0 && step + Traits::kInt8Stages < num_tiles) load_int8_keys(step + Traits::kInt8Stages);
      const int32_t j[2] = {step * kKeyTile + 16 * warp + g, step * kKeyTile + 16 * warp + g + 8};
      float2 key_stats[2];  // {sj, L1(k~_j)}, loaded before the reduction hides their latency
#pragma unroll
      for (int half = 0; half < 2; ++half)
        key_stats[half] = j[half] < r.block_abs ? buffers.pooled_int8_stats[(slot0 + j[half]) * p.heads_kv + kv_head] : make_float2(0.0f, 0.0f);
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        int32_t best = INT32_MIN;
#pragma unroll
        for (int nt = 0; nt < 16; ++nt) best = __vimax3_s32(best, int32_t(product[4 * nt + 2 * half]), int32_t(product[4 * nt + 2 * half + 1]));
        best = max(best, __shfl_xor_sync(0xffffffffu, best, 1));
        best = max(best, __shfl_xor_sync(0xffffffffu, best, 2));
        if (j[half] < r.block_abs) {  // below the diagonal: every query of the (full) block sees it
          const detail::int8_filter::Interval interval =
              detail::int8_filter::best_score_interval(best, key_stats[half].x, key_stats[half].y, query.scale, query.max_l1);
          thread_lower = fmaxf(thread_lower, interval.lower * scale_log2);
          if (quad == 0) log_score[j[half]] = interval.upper * scale_log2;
        }
      }
    }
    // M2 >= lower; a block whose upper end lies below lower + log2(alpha / (2 * 128)) is dropped (see
    // the header). No finite lower bound (tiny or huge values): every block is a candidate.
    const float lower = block_max(thread_lower, reduce_smem + 8);
    const float threshold = isfinite(lower) ? lower + log2f(p.params.alpha) - log2f(float(2 * Traits::kBlockM)) : -INFINITY;
    auto* list = reinterpret_cast<int16_t*>(key_smem + Traits::kKeyBytes);
    const int count = compact_candidates(log_score, int32_t(num_j), int32_t(r.block_abs), threshold, list, reinterpret_cast<int*>(reduce_smem + 16));

    // Pass 2: the candidates, 64 at a time, scored exactly; the tile holding the diagonal first, so
    // that the exponential skip has the row's largest scores early. The gathered tile overwrites the
    // int8 query block, which the async proxy read.
    fence_proxy_async_shared();
    const int gathered = (count + kKeyTile - 1) / kKeyTile;
    for (int step = 0; step < gathered; ++step) {
      const int tile = gathered - 1 - step;
      gather_key_tile<Traits>(key_smem, buffers.pooled_half, list, count, tile, slot0, p.heads_kv, kv_head);
      float x[64];
      exact_tile_product<Traits>(key_address, q_address, x);
      named_barrier_sync(Traits::kWarpgroupBarrier, Traits::kThreads);  // every wgmma has read the tile: the next gather may overwrite it
      int32_t j[2];
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int index = tile * kKeyTile + 16 * warp + g + 8 * half;
        j[half] = index < count ? int32_t(list[index]) : INT32_MAX;
      }
      // Only the last tile holds the diagonal block and empty slots.
      reduce_exact_tile<Traits>(x, j, tile == gathered - 1, geometry, scale_log2, may_skip, skip_offset, warp_running_max, step, log_score,
                                thread_max_x2, thread_max_log_score);
    }
  }
  finish_row(p, log_score, thread_max_x2, thread_max_log_score, num_j, r.block_abs, r.num_kv_blocks, r.row, buffers, scores, scores_ld,
             reduce_smem + 8);
}

}  // namespace flashprefill::cuda::discovery::hopper
