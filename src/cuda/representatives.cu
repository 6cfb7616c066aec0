// Robust discovery's second test on the GPU (docs/ROBUST.md), after the score kernels have
// selected the exact rule's blocks and written each layout row's core sum and far query
// (query_summary.cuh). Three kernels:
//  1. combine: per (sequence, kv head, query block), the group's core query (the g heads' core
//     sums over their core counts, rounded to the input dtype) and its far query (the head whose
//     far query lies farthest from its mean): the two representatives, each scaled by its power of
//     two and rounded to e4m3 (src/common/e4m3.hpp);
//  2. best keys: per (sequence, kv head, key block j), every later representative against the
//     block's keys, scaled and rounded to e4m3 the same way, with mma.sync on those values held in
//     the input dtype (exactly), reduced to the best key: y[rep][j] = max_s scale * rep . k_s. The
//     key block stays in shared memory while the representatives stream past it, so K is read once
//     (sm_90, head dim 128: e4m3 wgmma, sm90/best_keys.cu);
//  3. rescue: per (kv head, query block), for each of its layout rows, the blocks with
//     y[rep][j] >= max_j y[rep][j] + log(alpha^2) for either representative join the exact rule's
//     bitmask, and the row's count is recomputed. The key block's scale is divided out in 2, the
//     representative's here (y carries it; so does the threshold's offset).
// Rows the exact rule keeps whole (the last query blocks) are skipped by all three.
#include <algorithm>
#include <cfloat>
#include <type_traits>

#include <cuda_fp8.h>

#include "common/constants.hpp"
#include "common/e4m3.hpp"
#include "common/row_geometry.hpp"
#include "cuda/arch.hpp"
#include "cuda/check.cuh"
#include "cuda/dependent_launch.cuh"
#include "cuda/discovery.cuh"
#include "cuda/dispatch.hpp"
#include "cuda/e4m3.cuh"
#include "cuda/kv_view.cuh"
#include "cuda/representatives.cuh"
#include "cuda/sm80/mma.cuh"

namespace flashprefill::cuda::discovery {
namespace {

using detail::Problem;
using detail::SeqExtent;

// Combine and rescue give each group row one warp, kRowWarps independent warps per CTA (no
// barrier between them): a row's work is small, so a CTA per row spent most of its instructions
// finding its row once per warp.
constexpr int kRowWarps = 4;

// The grid of the per-group-row kernels: x over (query block, kv head) rows, kRowWarps per CTA.
dim3 group_row_grid(const Problem& p, int64_t grid_blocks) {
  const int64_t rows = grid_blocks * p.heads_kv;
  return dim3(unsigned((rows + kRowWarps - 1) / kRowWarps), unsigned(p.num_seqs));
}
__device__ __forceinline__ uint32_t group_row_of_warp() {
  return blockIdx.x * kRowWarps + threadIdx.x / 32;
}

// kCount consecutive 16-byte-aligned (kCount % 4 == 0) or 8-byte-aligned (kCount == 2) floats.
template <int kCount>
__device__ __forceinline__ void load_floats(const float* src, float (&dst)[kCount]) {
  if constexpr (kCount % 4 == 0) {
#pragma unroll
    for (int c = 0; c < kCount / 4; ++c) {
      const float4 v = reinterpret_cast<const float4*>(src)[c];
      dst[4 * c] = v.x, dst[4 * c + 1] = v.y, dst[4 * c + 2] = v.z, dst[4 * c + 3] = v.w;
    }
  } else {
    static_assert(kCount == 2);
    const float2 v = *reinterpret_cast<const float2*>(src);
    dst[0] = v.x, dst[1] = v.y;
  }
}
// kWords 32-bit words (1, 2 or 4) in one access, aligned to their size.
template <int kWords>
using WordVector =
    std::conditional_t<kWords == 4, uint4, std::conditional_t<kWords == 2, uint2, uint32_t>>;

// A group's heads are read kMaxGroup at a time, every copy of a batch issued before one wait: the
// warp's time is its chain of dependent global-memory round trips, so a batch costs one round trip
// where a loop over heads cost one per head. Groups of up to kMaxGroup heads (GQA models: 1 to 8)
// take one batch. The copies go to shared memory with cp.async: in registers, the batch's loads
// took 80-128 registers a thread, which would have cut the warps resident at once.
constexpr int kMaxGroup = 8;

__device__ __forceinline__ int heads_per_batch(int64_t group) {
  return int(min(group, int64_t(kMaxGroup)));
}

// The combine kernel's shared memory per warp: [heads_per_batch][kHeadDim] core sums, then
// [kMaxGroup] far distances and [kMaxGroup] core counts.
constexpr size_t combine_warp_floats(int head_dim, int64_t group) {
  return size_t(std::min<int64_t>(group, kMaxGroup) * head_dim + 2 * kMaxGroup);
}

// 16 CTAs of 4 warps fill an SM's 64 warps: at most 32 registers, so that 128K tokens' 2048 CTAs
// (llama3-8b) are resident at once on an H100/H200. Head dim 256 spilled in 32 registers.
constexpr int combine_ctas_per_sm(int head_dim) { return head_dim == 256 ? 12 : 16; }

// 1. Combine: one warp per group row, each lane kHeadDim / 32 consecutive dims. The far head: the
// largest query_far_distance, found by a scan in head order (the lowest head wins ties); the core
// query: the heads' core sums and counts added in head order, the one divided by the other,
// rounded to the input dtype; then each representative scaled and rounded to e4m3.
template <int kHeadDim, bool kIsBf16>
__global__ void __launch_bounds__(kRowWarps * 32, combine_ctas_per_sm(kHeadDim))
    combine_kernel(const Problem p, const int64_t* seq_row_offset, Buffers buffers) {
  using Half = sm80::HalfType<kIsBf16>;
  using Element = typename Half::type;
  using Pair = typename Half::pair;
  constexpr int kDims = kHeadDim / 32, kWords = kDims / 2;  // per lane
  extern __shared__ float combine_smem[];
  allow_dependent_launch();  // the best-key kernel
  GroupRow r;
  if (!group_row_of_grid(p, seq_row_offset, group_row_of_warp(), r)) return;
  wait_for_previous_kernel();  // the score kernel's core sums and far rows
  const int lane = threadIdx.x % 32, group = int(p.group), batch = heads_per_batch(p.group);
  float* const staged_sums = combine_smem + (threadIdx.x / 32) * (batch * kHeadDim + 2 * kMaxGroup);
  float* const staged_distances = staged_sums + batch * kHeadDim;
  float* const staged_counts = staged_distances + kMaxGroup;
  const int d0 = lane * kDims;
  const int64_t head_stride = r.nqb;  // layout rows from one head's row to the next head's
  const float* distance = buffers.query_far_distance + r.row0;
  const float* core_count = buffers.query_core_count + r.row0;
  const float* query_sum = buffers.query_sum + r.row0 * kHeadDim + d0;
  int far_head = 0;
  float far_distance = 0.0f, count = 0.0f;
  float sum[kDims];
#pragma unroll
  for (int e = 0; e < kDims; ++e) sum[e] = 0.0f;
  for (int u0 = 0; u0 < group; u0 += batch) {
    const int heads = min(batch, group - u0);
    __syncwarp();  // every lane has read the previous batch's distances
    // Lane l copies its dims of each head's sum (and reads only those) and lane k head k's
    // distance and core count.
    for (int k = 0; k < heads; ++k)
      sm80::cp_async<kDims * 4>(staged_sums + k * kHeadDim + d0,
                                query_sum + (u0 + k) * head_stride * kHeadDim);
    if (lane < heads) {
      sm80::cp_async<4>(staged_distances + lane, distance + (u0 + lane) * head_stride);
      sm80::cp_async<4>(staged_counts + lane, core_count + (u0 + lane) * head_stride);
    }
    sm80::cp_async_wait_all();
    __syncwarp();  // the distances and counts, read by every lane
    for (int k = 0; k < heads; ++k) {
      const float head_distance = staged_distances[k];
      if (u0 + k == 0 || head_distance > far_distance)  // the lowest head wins ties
        far_distance = head_distance, far_head = u0 + k;
      count += staged_counts[k];
      float head_sum[kDims];
      load_floats(staged_sums + k * kHeadDim + d0, head_sum);
#pragma unroll
      for (int e = 0; e < kDims; ++e) sum[e] += head_sum[e];
    }
  }
  const auto* far = static_cast<const Element*>(buffers.query_far) +
                    (r.row0 + far_head * head_stride) * kHeadDim + d0;
  float rep[2][kDims];  // the core query rounded to the input dtype, the far query
#pragma unroll
  for (int e = 0; e < kDims; ++e) {
    rep[0][e] = Half::to_float(Half::from_float(sum[e] / count));
    rep[1][e] = Half::to_float(far[e]);
  }
  // Each representative scaled and rounded to e4m3 (docs/ROBUST.md): stored in the input dtype
  // (exact) for the mma.sync best keys, as e4m3 bytes for the sm_90 kernel's fp8 wgmma.
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    float top = 0.0f;
#pragma unroll
    for (int e = 0; e < kDims; ++e) top = fmaxf(top, fabsf(rep[k][e]));
    const float scale = detail::e4m3_scale_of(warp_max_magnitude(top));
    const int64_t rep_row = r.kv_row * 2 + k;
    WordVector<kWords> halves;
    auto* half_words = reinterpret_cast<uint32_t*>(&halves);
    uint32_t bytes[(kDims + 3) / 4] = {};
#pragma unroll
    for (int w = 0; w < kWords; ++w) {
      const float x0 = detail::round_to_e4m3(rep[k][2 * w] * scale),
                  x1 = detail::round_to_e4m3(rep[k][2 * w + 1] * scale);
      Pair pair;
      pair.x = Half::from_float(x0), pair.y = Half::from_float(x1);
      half_words[w] = *reinterpret_cast<const uint32_t*>(&pair);
      const uint32_t two = __nv_cvt_float2_to_fp8x2(make_float2(x0, x1), __NV_SATFINITE, __NV_E4M3);
      bytes[w / 2] |= two << (16 * (w % 2));
    }
    *reinterpret_cast<WordVector<kWords>*>(static_cast<Element*>(buffers.representatives) +
                                           rep_row * kHeadDim + d0) = halves;
    uint8_t* e4m3 = buffers.representatives_e4m3 + rep_row * kHeadDim + d0;
    if constexpr (kDims == 2)
      *reinterpret_cast<uint16_t*>(e4m3) = uint16_t(bytes[0]);
    else
      *reinterpret_cast<WordVector<kDims / 4>*>(e4m3) =
          *reinterpret_cast<const WordVector<kDims / 4>*>(bytes);
    if (lane == 0) buffers.representative_scale[rep_row] = scale;
  }
}

// The best-key kernel's tiles and threads (2. below).
constexpr int kRepTileRows = 64, kKeySubTile = 64, kBestThreads = 128;

// A CTA's kBestThreads threads replace the `chunks` 16-byte chunks of elements at `smem` by
// round_to_e4m3(x * scale), scale the e4m3_scale_of of their largest magnitude, and return scale.
template <bool kIsBf16>
__device__ float scale_keys_to_e4m3(typename sm80::HalfType<kIsBf16>::type* smem, int chunks) {
  using Half = sm80::HalfType<kIsBf16>;
  using Pair = typename Half::pair;
  __shared__ uint32_t warp_top[kBestThreads / 32];
  uint4* chunk_at = reinterpret_cast<uint4*>(smem);
  float top = 0.0f;
  for (int c = threadIdx.x; c < chunks; c += kBestThreads) {
    const uint4 v = chunk_at[c];
    for (const uint32_t word : {v.x, v.y, v.z, v.w}) {
      const Pair pair = *reinterpret_cast<const Pair*>(&word);
      top = fmaxf(top, fmaxf(fabsf(Half::to_float(pair.x)), fabsf(Half::to_float(pair.y))));
    }
  }
  const float scale = cta_e4m3_scale<kBestThreads>(top, warp_top);
  for (int c = threadIdx.x; c < chunks; c += kBestThreads) {
    uint4 v = chunk_at[c];
    for (uint32_t* word : {&v.x, &v.y, &v.z, &v.w}) {
      const Pair pair = *reinterpret_cast<const Pair*>(word);
      const Pair rounded = Half::from_floats(detail::round_to_e4m3(Half::to_float(pair.x) * scale),
                                             detail::round_to_e4m3(Half::to_float(pair.y) * scale));
      *word = *reinterpret_cast<const uint32_t*>(&rounded);
    }
    chunk_at[c] = v;
  }
  __syncthreads();
  return scale;
}

// 2. Best keys: one CTA (4 warps) per (key block j, kv head, sequence). The block's keys sit in
// shared memory; representatives of the query blocks i >= j come in tiles of 64 rows (32 query
// blocks x 2), double-buffered with cp.async; warp w multiplies rows 16w..16w+15 of a tile with
// 64 keys at a time and keeps each row's maximum. The keys are scaled and rounded to e4m3 in shared
// memory once they land; the representatives come so from the combine kernel.
template <int kHeadDim, bool kIsBf16, typename KV>
__global__ void __launch_bounds__(kBestThreads)
    best_keys_kernel(const Problem p, const int64_t* seq_row_offset, Buffers buffers) {
  using namespace sm80;
  using Element = typename HalfType<kIsBf16>::type;
  using Swizzle = SwizzledTile<kHeadDim>;
  constexpr int D = kHeadDim;
  allow_dependent_launch();  // the rescue kernel
  const int64_t j = blockIdx.x, kv_head = blockIdx.y, b = blockIdx.z;
  const SeqExtent s = p.seq(b);
  const int64_t block = p.params.block_size;
  const int64_t nkb = num_key_blocks(s.len_kv, block);
  if (j >= nkb) return;
  const KeyBlockRows later = key_block_rows(p, seq_row_offset, s, b, kv_head, j, block);
  if (later.empty()) return;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  auto* key_smem = reinterpret_cast<Element*>(smem_raw);  // [block][D]
  Element* rep_smem = key_smem + block * D;               // [2][kRepTileRows][D]
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, quad = lane % 4;

  const KV kv{p, b, s, kv_head};
  const auto* k = static_cast<const Element*>(p.k);
  const int64_t key0 = j * block;
  for (int64_t chunk = tid; chunk < block * Swizzle::kChunks; chunk += kBestThreads) {
    const int row = int(chunk / Swizzle::kChunks), c = int(chunk % Swizzle::kChunks);
    const bool valid = key0 + row < s.len_kv;
    cp_async_16(key_smem + Swizzle::offset(row, c),
                k + kv.k_offset(valid ? key0 + row : key0) + c * 8, valid ? 16 : 0);
  }
  wait_for_previous_kernel();  // the combine kernel's representatives
  const int64_t kv_row0 = later.kv_row0, rep_rows = later.rows();
  const auto* reps = static_cast<const Element*>(buffers.representatives) + kv_row0 * 2 * D;
  const auto load_tile = [&](int64_t tile) {
    Element* dst = rep_smem + (tile % 2) * kRepTileRows * D;
    for (int chunk = tid; chunk < kRepTileRows * Swizzle::kChunks; chunk += kBestThreads) {
      const int row = chunk / Swizzle::kChunks, c = chunk % Swizzle::kChunks;
      const int64_t rep_row = tile * kRepTileRows + row;
      const bool valid = rep_row < rep_rows;
      cp_async_16(dst + Swizzle::offset(row, c), reps + (valid ? rep_row : 0) * D + c * 8,
                  valid ? 16 : 0);
    }
  };
  const int64_t tiles = (rep_rows + kRepTileRows - 1) / kRepTileRows;
  load_tile(0);
  cp_async_commit();
  // The keys scaled and rounded to e4m3 in place (docs/ROBUST.md); rows past the sequence are
  // zeros and do not move the block's largest magnitude.
  cp_async_wait<0>();
  __syncthreads();
  const float key_scale = scale_keys_to_e4m3<kIsBf16>(key_smem, int(block * D / 8));

  const float scale_log2 = p.params.scale * detail::kLog2e / key_scale;
  const int64_t ld = buffers.words * 32;
  const int sub_tiles = int((block + kKeySubTile - 1) / kKeySubTile);
  for (int64_t tile = 0; tile < tiles; ++tile) {
    if (tile + 1 < tiles) {
      load_tile(tile + 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const Element* a_smem = rep_smem + (tile % 2) * kRepTileRows * D;
    float best[2] = {-INFINITY, -INFINITY};  // rows g and g + 8 of the warp's 16
    for (int sub = 0; sub < sub_tiles; ++sub) {
      float x[kKeySubTile / 8][4] = {};
      warp_product_abt<D, kKeySubTile, kIsBf16>(x, a_smem, warp * 16, key_smem, sub * kKeySubTile);
#pragma unroll
      for (int nt = 0; nt < kKeySubTile / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t key = key0 + sub * kKeySubTile + nt * 8 + 2 * quad + (e & 1);
          const bool valid = key < key0 + block && key < s.len_kv;
          best[e / 2] = fmaxf(best[e / 2], valid ? x[nt][e] : -INFINITY);
        }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      best[h] = fmaxf(best[h], __shfl_xor_sync(0xffffffffu, best[h], 1));
      best[h] = fmaxf(best[h], __shfl_xor_sync(0xffffffffu, best[h], 2));
      const int64_t rep_row = tile * kRepTileRows + warp * 16 + g + 8 * h;
      if (quad == 0 && rep_row < rep_rows)
        buffers.representative_best[(kv_row0 * 2 + rep_row) * ld + j] = best[h] * scale_log2;
    }
    __syncthreads();  // the stage is refilled next iteration
  }
}

// 3. Rescue: one warp per group row. The representatives' maxima over the causal blocks, then the
// rescued blocks' words (one ballot per word, lane l keeping word l of a run of 32), computed once
// when every head has params.alpha, else once per head, and each head's words read, OR-ed and
// written back coalesced. Only the words of the causal blocks are touched (select_row writes those
// past them as zeros), and their popcount is the row's count.
//
// The threshold is alpha^2 (docs/ROBUST.md: a span of up to 1 / alpha keys scores as one key);
// alpha = 0: log2(0) = -inf keeps every causal block, as the exact rule does.
__device__ __forceinline__ float log2_ratio_of_alpha(float alpha) { return 2.0f * log2f(alpha); }

// Rows of up to kStagedWords words (1024 blocks: 128K tokens at block 128) take one round trip
// (per kMaxGroup heads): both representatives' y of the row, word `lane` of each head's bitmask
// and the heads' alphas are copied to the warp's shared memory with cp.async, all issued before one
// wait (held in registers instead, the row's y took 128 registers a thread and spilled; plain loads
// of the bitmask words issued before the cp.async wait were moved after it by ptxas). Longer rows
// take the loop over chunks of 32 words in rescue_kernel: one round trip per 128 blocks for the
// maxima, one per 4 words per threshold and one per head. Both: the same maxima, thresholds,
// comparisons and counts.
constexpr int kStagedWords = 32;

// One warp's shared memory in the rescue kernel, for rows of up to `staged_words` words.
struct RescueStage {
  float* mean_y;         // [staged_words * 32]
  float* far_y;          // [staged_words * 32]
  uint32_t* head_words;  // [kMaxGroup][32]: word `lane` of heads u0 + k
  float* head_alpha;     // [kMaxGroup]: heads u0 + k's alphas (per-head alphas only)
  static constexpr size_t floats(int64_t staged_words) {
    return size_t(2 * 32 * staged_words + kMaxGroup * 32 + kMaxGroup);
  }
};
__host__ __device__ constexpr int64_t staged_words_of(int64_t words) {
  return words < kStagedWords ? words : kStagedWords;
}
size_t rescue_shared_bytes(int64_t words) {
  return kRowWarps * RescueStage::floats(staged_words_of(words)) * sizeof(float);
}

// Both representatives' maxima over a row's num_j blocks, in every lane: lane l reads blocks l,
// l + 32, ... with `load` (from shared or global memory), four independent maxima each so that
// eight loads are in flight, then the warp's.
template <typename Load>
__device__ __forceinline__ void row_maxima(const float* y_mean, const float* y_far, int num_j,
                                           Load load, float& max_mean, float& max_far) {
  const int lane = threadIdx.x % 32;
  float mean_max[4], far_max[4];
#pragma unroll
  for (int t = 0; t < 4; ++t) mean_max[t] = far_max[t] = -INFINITY;
  int j = lane;
  for (; j + 96 < num_j; j += 128) {
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      mean_max[t] = fmaxf(mean_max[t], load(y_mean + j + 32 * t));
      far_max[t] = fmaxf(far_max[t], load(y_far + j + 32 * t));
    }
  }
  for (; j < num_j; j += 32)
    mean_max[0] = fmaxf(mean_max[0], load(y_mean + j)),
    far_max[0] = fmaxf(far_max[0], load(y_far + j));
  max_mean = fmaxf(fmaxf(mean_max[0], mean_max[1]), fmaxf(mean_max[2], mean_max[3]));
  max_far = fmaxf(fmaxf(far_max[0], far_max[1]), fmaxf(far_max[2], far_max[3]));
  for (int offset = 16; offset > 0; offset /= 2) {
    max_mean = fmaxf(max_mean, __shfl_xor_sync(0xffffffffu, max_mean, offset));
    max_far = fmaxf(max_far, __shfl_xor_sync(0xffffffffu, max_far, offset));
  }
}

__device__ __forceinline__ void rescue_staged_row(const Problem& p, const Buffers& buffers,
                                                  const GroupRow& r, int num_j, const float* y_mean,
                                                  const float* y_far, float2 rep_scale) {
  extern __shared__ float rescue_smem[];
  const int lane = threadIdx.x % 32, group = int(p.group), row_words = (num_j + 31) / 32;
  const int64_t staged_words = staged_words_of(buffers.words);
  RescueStage stage;
  stage.mean_y = rescue_smem + (threadIdx.x / 32) * RescueStage::floats(staged_words);
  stage.far_y = stage.mean_y + staged_words * 32;
  stage.head_words = reinterpret_cast<uint32_t*>(stage.far_y + staged_words * 32);
  stage.head_alpha = reinterpret_cast<float*>(stage.head_words + kMaxGroup * 32);

  const bool one_alpha = p.head_alpha == nullptr;     // then every head has params.alpha
  const int64_t head_stride = r.nqb * buffers.words;  // from one head's bitmask row to the next
  uint32_t* bits_at = buffers.kept_bits + r.row0 * buffers.words + lane;  // of head u0
  int64_t* counts_at = buffers.counts + r.row0;
  const float* alpha_at = p.head_alpha + r.first.head;
  // Lane l copies, and reads, only blocks 32 w + l.
  for (int j = lane; j < num_j; j += 32) {
    sm80::cp_async<4>(stage.mean_y + j, y_mean + j);
    sm80::cp_async<4>(stage.far_y + j, y_far + j);
  }
  float max_mean = -INFINITY, max_far = -INFINITY;
  uint32_t rescued = 0;  // word `lane` of the rescued blocks
  for (int u0 = 0; u0 < group; u0 += kMaxGroup) {
    const int heads = min(kMaxGroup, group - u0);
    // Heads u0 .. u0 + heads - 1 (with the y for u0 = 0): lane l copies word l of each and lane
    // k head k's alpha.
    __syncwarp();  // every lane has read the previous heads' alphas
#pragma unroll
    for (int k = 0; k < kMaxGroup; ++k)
      if (k < heads && lane < row_words)
        sm80::cp_async<4>(stage.head_words + k * 32 + lane, bits_at + k * head_stride);
    if (!one_alpha && lane < heads) sm80::cp_async<4>(stage.head_alpha + lane, alpha_at + lane);
    sm80::cp_async_wait_all();
    __syncwarp();  // the alphas, read by every lane

    if (u0 == 0)
      row_maxima(
          stage.mean_y, stage.far_y, num_j, [](const float* y) { return *y; }, max_mean, max_far);

    for (int k = 0; k < heads; ++k) {
      if (u0 + k == 0 || !one_alpha) {
        const float log2_ratio =
            log2_ratio_of_alpha(one_alpha ? p.params.alpha : stage.head_alpha[k]);
        const float mean_threshold = max_mean + log2_ratio * rep_scale.x,
                    far_threshold = max_far + log2_ratio * rep_scale.y;
        rescued = 0;
#pragma unroll 4
        for (int w = 0; w < row_words; ++w) {
          const int block = 32 * w + lane;
          const bool keep = block < num_j && (stage.mean_y[block] >= mean_threshold ||
                                              stage.far_y[block] >= far_threshold);
          const uint32_t word = __ballot_sync(0xffffffffu, keep);
          rescued = lane == w ? word : rescued;
        }
      }
      uint32_t word = 0;
      if (lane < row_words) {
        word = stage.head_words[k * 32 + lane] | rescued;
        bits_at[k * head_stride] = word;
      }
      const int kept = int(__reduce_add_sync(0xffffffffu, unsigned(__popc(word))));
      if (lane == 0) counts_at[k * r.nqb] = kept;
    }
    bits_at += kMaxGroup * head_stride, counts_at += kMaxGroup * r.nqb, alpha_at += kMaxGroup;
  }
}

// Rows of more than kStagedWords words: 32 words (1024 blocks) at a time, y read from global memory
// for the maxima and again for each threshold.
__global__ void __launch_bounds__(kRowWarps * 32)
    rescue_kernel(const Problem p, const int64_t* seq_row_offset, Buffers buffers) {
  GroupRow r;
  if (!group_row_of_grid(p, seq_row_offset, group_row_of_warp(), r)) return;
  wait_for_previous_kernel();  // the best keys (and, before them, the score kernel's bitmasks)
  const int lane = threadIdx.x % 32, group = int(p.group);
  // 32-bit from here: num_j <= words * 32 < 2^31.
  const int num_j = int(r.first.num_causal_blocks()), row_words = (num_j + 31) / 32,
            full_words = num_j / 32;  // words whose 32 blocks are all causal
  const int64_t ld = buffers.words * 32;
  const float* y_mean = buffers.representative_best + r.kv_row * 2 * ld;
  const float* y_far = y_mean + ld;
  // y is in log2 units times each representative's scale: so are the thresholds' offsets.
  const float2 rep_scale =
      *reinterpret_cast<const float2*>(buffers.representative_scale + r.kv_row * 2);
  if (row_words <= kStagedWords) {
    rescue_staged_row(p, buffers, r, num_j, y_mean, y_far, rep_scale);
    return;
  }

  float max_mean, max_far;
  row_maxima(
      y_mean, y_far, num_j, [](const float* y) { return __ldg(y); }, max_mean, max_far);

  const auto log2_ratio_of = [&](int u) {
    return log2_ratio_of_alpha(p.alpha_of_head(r.kv_head * p.group + u));
  };
  const bool one_alpha = p.head_alpha == nullptr;  // then every head has params.alpha
  const float shared_log2_ratio = one_alpha ? log2_ratio_of(0) : 0.0f;
  for (int w0 = 0; w0 < row_words; w0 += 32) {
    const int chunk_words = min(32, row_words - w0);
    const int unchecked_words = max(0, min(chunk_words, full_words - w0));
    uint32_t rescued = 0;  // word w0 + lane of the rescued blocks
    for (int u = 0; u < group; ++u) {
      if (u == 0 || !one_alpha) {
        const float log2_ratio = one_alpha ? shared_log2_ratio : log2_ratio_of(u);
        const float mean_threshold = max_mean + log2_ratio * rep_scale.x,
                    far_threshold = max_far + log2_ratio * rep_scale.y;
        const float* mean_at = y_mean + w0 * 32 + lane;
        const float* far_at = y_far + w0 * 32 + lane;
        rescued = 0;
        int k = 0;
        // Words whose blocks are all causal go without bound checks, four at a time (eight loads
        // in flight); unroll 1: more unrolled copies of the ballot made ptxas spill on sm_80.
#pragma unroll 1
        for (; k + 4 <= unchecked_words; k += 4, mean_at += 128, far_at += 128) {
          bool keep[4];
#pragma unroll
          for (int t = 0; t < 4; ++t)
            keep[t] = (__ldg(mean_at + 32 * t) >= mean_threshold) |
                      (__ldg(far_at + 32 * t) >= far_threshold);
#pragma unroll
          for (int t = 0; t < 4; ++t) {
            const uint32_t word = __ballot_sync(0xffffffffu, keep[t]);
            rescued = lane == k + t ? word : rescued;
          }
        }
#pragma unroll 1
        for (; k < chunk_words; ++k, mean_at += 32, far_at += 32) {
          const bool keep = (w0 + k) * 32 + lane < num_j &&
                            (__ldg(mean_at) >= mean_threshold || __ldg(far_at) >= far_threshold);
          const uint32_t word = __ballot_sync(0xffffffffu, keep);
          rescued = lane == k ? word : rescued;
        }
      }
      const int64_t row = r.row0 + u * r.nqb;
      uint32_t* bits = buffers.kept_bits + row * buffers.words + w0;
      uint32_t word = 0;
      if (lane < chunk_words) {
        word = bits[lane] | rescued;
        bits[lane] = word;
      }
      const int kept = int(__reduce_add_sync(0xffffffffu, unsigned(__popc(word))));
      if (lane == 0) buffers.counts[row] = w0 == 0 ? kept : buffers.counts[row] + kept;
    }
  }
}

template <int kHeadDim, bool kIsBf16, typename KV>
void launch_best_keys(const Problem& p, const int64_t* seq_row_offset, const Buffers& buffers,
                      dim3 grid, bool overlap) {
  const size_t smem = size_t(p.params.block_size + 2 * kRepTileRows) * kHeadDim * 2;
  auto kernel = best_keys_kernel<kHeadDim, kIsBf16, KV>;
  FP_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  launch_dependent(overlap, kernel, grid, dim3(kBestThreads), smem,
                   static_cast<cudaStream_t>(p.stream), p, seq_row_offset, buffers);
}

}  // namespace

void rescue_rows(const Problem& p, const int64_t* seq_row_offset, const Buffers& buffers) {
  const int64_t grid_blocks = grid_query_blocks(p);
  if (grid_blocks == 0 || p.num_seqs == 0) return;
  auto stream = static_cast<cudaStream_t>(p.stream);
  const dim3 row_grid = group_row_grid(p, grid_blocks);
  const bool overlap = device_info(p).major >= 9;  // dependent_launch.cuh
  dispatch_head_dim_and_dtype<64, 128, 256>(
      p, "robust discovery's combine kernel", [&](auto head_dim, auto is_bf16) {
        constexpr int kHeadDim = decltype(head_dim)::value;
        const size_t smem = kRowWarps * combine_warp_floats(kHeadDim, p.group) * sizeof(float);
        launch_dependent(overlap, combine_kernel<kHeadDim, decltype(is_bf16)::value>, row_grid,
                         dim3(kRowWarps * 32), smem, stream, p, seq_row_offset, buffers);
      });
#ifdef FLASHPREFILL_HAS_HOPPER_KERNEL
  const bool hopper =
      use_hopper_kernels(device_info(p)) && sm90::best_keys(p, seq_row_offset, buffers);
#else
  const bool hopper = false;
#endif
  const dim3 best_grid(unsigned(num_key_blocks(p.len_kv, p.params.block_size)),
                       unsigned(p.heads_kv), unsigned(p.num_seqs));
  if (!hopper)
    dispatch_head_dim_and_dtype<64, 128, 256>(
        p, "robust discovery's best-key kernel", [&](auto head_dim, auto is_bf16) {
          constexpr int kHeadDim = decltype(head_dim)::value;
          constexpr bool kIsBf16 = decltype(is_bf16)::value;
          if (p.paged())
            launch_best_keys<kHeadDim, kIsBf16, PagedKV>(p, seq_row_offset, buffers, best_grid,
                                                         overlap);
          else
            launch_best_keys<kHeadDim, kIsBf16, ContiguousKV>(p, seq_row_offset, buffers, best_grid,
                                                              overlap);
        });
  launch_dependent(overlap, rescue_kernel, row_grid, dim3(kRowWarps * 32),
                   rescue_shared_bytes(buffers.words), stream, p, seq_row_offset, buffers);
}

}  // namespace flashprefill::cuda::discovery
