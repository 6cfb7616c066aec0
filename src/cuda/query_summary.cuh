// Robust discovery (docs/ROBUST.md) inside the score kernels of every architecture: each layout
// row's core query sum and its query farthest from their mean, taken from the query tile the kernel
// already holds in shared memory (no second read of Q from global memory). representatives.cu
// turns them into the two representatives of each (kv head, query block).
#pragma once

#include <cstdint>

#include "cuda/discovery.cuh"
#include "cuda/sm80/mma.cuh"

namespace flashprefill::cuda::discovery {

// A query tile in shared memory as a score kernel keeps it: rows of kRowBytes, their 16-byte chunks
// XOR-swizzled with row % 8 inside panels of kPanelChunks chunks, panels kPanelBytes apart (sm_90:
// the TMA box's 64-column panels; sm_80: one panel, the whole row).
template <int kRowBytes_, int kPanelChunks_, int kPanelBytes_>
struct QueryTileLayout {
  static constexpr int kRowBytes = kRowBytes_, kPanelChunks = kPanelChunks_;
  static constexpr int kPanelBytes = kPanelBytes_;
  static_assert(kPanelChunks >= 8 && (kPanelChunks & (kPanelChunks - 1)) == 0);
  __device__ __forceinline__ static uint32_t offset(uint32_t row, uint32_t chunk) {
    return (chunk / kPanelChunks) * kPanelBytes + row * kRowBytes +
           (((chunk % kPanelChunks) ^ (row % 8)) << 4);
  }
};

// One lane's ldmatrix.x4 addresses for 16-row tiles of a query tile, rows 16 tile + r and chunk
// 2 s + h for the lane's (r, h), in one of two orders of the four 8x8 matrices:
//  - kRowsFirst (r = lane % 16, h = lane / 16): rows 0-7 | rows 8-15 of the low chunk, then of the
//    high chunk: the A fragment of the rows (m16n8k16);
//  - kChunksFirst (r = lane % 8 + 8 (lane / 16), h = lane / 8 % 2): the low | high chunk of
//    rows 0-7, then of rows 8-15: with .trans, the A fragment of the tile's transpose.
// The swizzle term depends on the lane and on s only (16 tile is a multiple of 8), so an address is
// a lane constant, an immediate and one XOR with an immediate.
enum class MatrixOrder { kRowsFirst, kChunksFirst };
template <typename Layout, MatrixOrder kOrder>
struct TileRowAddress {
  uint32_t lane_row, lane_swizzle;
  __device__ __forceinline__ TileRowAddress(uint32_t tile_address, int lane) {
    const int r = kOrder == MatrixOrder::kRowsFirst ? lane % 16 : lane % 8 + 8 * (lane / 16);
    const int h = kOrder == MatrixOrder::kRowsFirst ? lane / 16 : lane / 8 % 2;
    lane_row = tile_address + uint32_t(r) * Layout::kRowBytes;
    lane_swizzle = uint32_t(h ^ (lane % 8)) << 4;
  }
  __device__ __forceinline__ uint32_t operator()(int tile, int s) const {
    constexpr int P = Layout::kPanelChunks;
    return lane_row + uint32_t(tile * 16 * Layout::kRowBytes + (2 * s / P) * Layout::kPanelBytes) +
           (lane_swizzle ^ uint32_t((2 * s % P) << 4));
  }
};

// An unsigned key of a float (not NaN) that orders as the float does, and back.
__device__ __forceinline__ uint32_t ordered_key(float x) {
  const uint32_t bits = __float_as_uint(x);
  return bits & 0x80000000u ? ~bits : bits | 0x80000000u;
}
__device__ __forceinline__ float best_of_key(uint32_t key) {
  return __uint_as_float(key & 0x80000000u ? key & 0x7fffffffu : ~key);
}

// Floats of shared-memory scratch write_query_summary needs: each warp's partial sums, the per-warp
// far pairs (16 x 8 bytes), lowest keys and core counts (16 + 16 words), then the mean in the input
// dtype. Its start must be 8-byte aligned.
template <int kHeadDim, int kWarps>
constexpr int query_summary_scratch_floats() {
  static_assert(kWarps <= 16 && (kWarps * kHeadDim) % 2 == 0);
  return kWarps * kHeadDim + 64 + kHeadDim / 2;
}

// Each warp's sums of the rows of its 16-row tiles selected by mask (mask[k]: the B fragment of
// the row mask over tile k's rows 2 quad, 2 quad + 1 (+ 8), repeated over the 8 columns), for every
// dimension, into partial[warp][kHeadDim]: Q^T through ldmatrix.trans as A times the mask column.
// A group of dimension slices at a time, all of its fragments loaded before its products: slice by
// slice, each short chain (load, product, product, store) waited on the one before it.
template <typename Layout, int kHeadDim, int kWarps, int kTilesPerWarp, bool kIsBf16>
__device__ __forceinline__ void masked_row_sums(
    const TileRowAddress<Layout, MatrixOrder::kChunksFirst>& chunks_first,
    const uint32_t (&mask)[kTilesPerWarp][2], float* partial) {
  constexpr int kSlices = kHeadDim / 16;
  constexpr int kGroup = kSlices < 8 / kTilesPerWarp ? kSlices : 8 / kTilesPerWarp;
  static_assert(kGroup > 0 && kSlices % kGroup == 0);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, quad = lane % 4;
#pragma unroll
  for (int s0 = 0; s0 < kSlices; s0 += kGroup) {
    uint32_t q_transposed[kGroup][kTilesPerWarp][4];
#pragma unroll
    for (int s = 0; s < kGroup; ++s)
#pragma unroll
      for (int k = 0; k < kTilesPerWarp; ++k)
        sm80::ldmatrix_x4_trans(q_transposed[s][k], chunks_first(k * kWarps, s0 + s));
    float sum[kGroup][4] = {};  // every column is the sum: rows g, g + 8 are dims 16 s + g, + 8
#pragma unroll
    for (int k = 0; k < kTilesPerWarp; ++k)
#pragma unroll
      for (int s = 0; s < kGroup; ++s)
        sm80::mma_16816<kIsBf16>(sum[s], q_transposed[s][k], mask[k]);
    if (quad == 0) {
#pragma unroll
      for (int s = 0; s < kGroup; ++s) {
        partial[warp * kHeadDim + 16 * (s0 + s) + g] = sum[s][0];
        partial[warp * kHeadDim + 16 * (s0 + s) + g + 8] = sum[s][2];
      }
    }
  }
}

// Each dimension's total over the warps' partial sums ([kWarps][kHeadDim] in shared memory), handed
// to store(d, total); every thread takes dimensions tid, tid + kThreads, ...
template <int kHeadDim, int kThreads, typename Store>
__device__ __forceinline__ void store_warp_totals(const float* partial, Store&& store) {
  constexpr int kWarps = kThreads / 32;
#pragma unroll
  for (int i = 0; i < (kHeadDim + kThreads - 1) / kThreads; ++i) {
    const int d = threadIdx.x + i * kThreads;
    if (d >= kHeadDim) break;
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += partial[w * kHeadDim + d];
    store(d, total);
  }
}

// Called by all kThreads threads of the CTA, once the tile has landed; scratch is the CTA's own.
// The tile (`Layout`, at shared-memory byte address tile_address) holds kTileRows rows; rows
// [first_row, end_row) hold the row's queries (end_row > first_row). Writes, for layout row `row`
// (docs/ROBUST.md, step 1): query_far[row] (the query farthest from the mean rounded to the input
// dtype, its elements exactly; the lowest row wins ties), query_far_distance[row] (that squared
// distance), and query_sum[row] / query_core_count[row]: the sum (fp32) and the number of the core
// queries, those whose distance is at most the midrange of the rows' distances.
//
// All products on the tensor cores (mma.sync), a few hundred instructions per warp:
//  - sums: Q^T mask, Q^T through ldmatrix.trans as A and the mask column repeated as B; each warp
//    sums its own 16-row tiles for every dimension (short, independent accumulator chains), and
//    the warps' partial sums meet in shared memory; once over the rows for the mean, once over
//    the core rows;
//  - distances: ||q||^2 - 2 q . mean + ||mean||^2, with ||q||^2 the diagonal of each 16-row block
//    of Q Q^T and q . mean from the mean as a B column.
template <typename Layout, int kHeadDim, int kThreads, int kTileRows, bool kIsBf16>
__device__ inline void write_query_summary(uint32_t tile_address, int first_row, int end_row,
                                           float* scratch, const Buffers& buffers, int64_t row) {
  using Half = sm80::HalfType<kIsBf16>;
  using Element = typename Half::type;
  constexpr int kChunks = kHeadDim / 8, kSlices = kHeadDim / 16, kWarps = kThreads / 32;
  constexpr int kRowTiles = kTileRows / 16, kTilesPerWarp = kRowTiles / kWarps;
  static_assert(kTileRows % 16 == 0 && kHeadDim % 16 == 0 && kThreads % 32 == 0);
  static_assert(kRowTiles % kWarps == 0, "each warp takes the same number of 16-row tiles");
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, quad = lane % 4;
  float* partial = scratch;  // [kWarps][kHeadDim]
  // Per warp: its far (distance key, ~row) pair, its lowest distance key, its core count.
  auto* far_of_warp = reinterpret_cast<uint64_t*>(scratch + kWarps * kHeadDim);  // [kWarps]
  auto* lowest_of_warp = reinterpret_cast<uint32_t*>(far_of_warp + 16);          // [kWarps]
  int* core_count_of_warp = reinterpret_cast<int*>(lowest_of_warp + 16);         // [kWarps]
  auto* mean = reinterpret_cast<Element*>(scratch + kWarps * kHeadDim + 64);     // [kHeadDim]
  // Warp w takes the 16-row tiles w, w + kWarps, ...: tile k of the warp is tile warp + k kWarps.
  const uint32_t warp_tiles = tile_address + uint32_t(warp * 16 * Layout::kRowBytes);
  const TileRowAddress<Layout, MatrixOrder::kRowsFirst> rows_first(warp_tiles, lane);
  const TileRowAddress<Layout, MatrixOrder::kChunksFirst> chunks_first(warp_tiles, lane);
  const auto valid_row = [&](int t) { return t >= first_row && t < end_row; };

  // Sums of every row, for the mean.
  uint32_t mask[kTilesPerWarp][2];
#pragma unroll
  for (int k = 0; k < kTilesPerWarp; ++k)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int t = 16 * (warp + k * kWarps) + 2 * quad + 8 * h;
      mask[k][h] =
          sm80::pack(Half::from_floats(valid_row(t) ? 1.0f : 0.0f, valid_row(t + 1) ? 1.0f : 0.0f));
    }
  masked_row_sums<Layout, kHeadDim, kWarps, kTilesPerWarp, kIsBf16>(chunks_first, mask, partial);
  __syncthreads();
  const float inv_rows = 1.0f / float(end_row - first_row);
  store_warp_totals<kHeadDim, kThreads>(
      partial, [&](int d, float total) { mean[d] = Half::from_float(total * inv_rows); });
  __syncthreads();

  float mean_norm = 0.0f;  // ||mean||^2 of the rounded mean, in every lane
#pragma unroll
  for (int i = 0; i < kHeadDim / 32; ++i) {
    const float m = Half::to_float(mean[lane + 32 * i]);
    mean_norm = fmaf(m, m, mean_norm);
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    mean_norm += __shfl_xor_sync(0xffffffffu, mean_norm, offset);

  // Distances: two accumulator chains per product (even and odd dimension slices) halve the chain.
  const uint32_t* mean_pairs = reinterpret_cast<const uint32_t*>(mean);
  float gram[kTilesPerWarp][2][2][4] = {}, dot[kTilesPerWarp][4] = {};
#pragma unroll
  for (int kk = 0; kk < kSlices; ++kk) {
    const uint32_t mean_col[2] = {mean_pairs[8 * kk + quad], mean_pairs[8 * kk + 4 + quad]};
#pragma unroll
    for (int k = 0; k < kTilesPerWarp; ++k) {
      // The A fragment of the 16 rows is also the B fragment of their transpose, one k8 half at a
      // time: register 0 (2) holds rows 0-7 at dims 2 quad (+ 8), register 1 (3) rows 8-15. As
      // m16n8k8 steps each B fragment is one of those registers, where an m16n8k16 B pair would
      // need two moved next to each other.
      uint32_t a[4];
      sm80::ldmatrix_x4(a, rows_first(k * kWarps, kk));
      const uint32_t a_low[2] = {a[0], a[1]}, a_high[2] = {a[2], a[3]};
      sm80::mma_1688<kIsBf16>(gram[k][kk % 2][0], a_low, a[0]);
      sm80::mma_1688<kIsBf16>(gram[k][kk % 2][1], a_low, a[1]);
      sm80::mma_1688<kIsBf16>(gram[k][kk % 2][0], a_high, a[2]);
      sm80::mma_1688<kIsBf16>(gram[k][kk % 2][1], a_high, a[3]);
      sm80::mma_16816<kIsBf16>(dot[k], a, mean_col);
    }
  }
  // Row g's diagonal element is column g of the first n8 tile, row g + 8's column g of the second:
  // in the lane whose quad is g / 2, element g % 2 (rows g) or 2 + g % 2 (rows g + 8). A row that
  // rounding puts below zero still competes: the far row is always one of the block's rows.
  // Each row's distance also goes to shared memory (partial's floats, free until the core sums):
  // the core vote, after the far row is known, reads it in the lanes whose B fragment holds the
  // row, not in the lane that computed it.
  float* row_distance = partial;  // [kTileRows]; +inf for rows outside [first_row, end_row)
  float best = -INFINITY, lowest = INFINITY;
  int best_row = first_row;
  if (quad == g / 2) {
    const bool odd = g % 2;  // selects, not an index: the accumulators stay in registers
#pragma unroll
    for (int k = 0; k < kTilesPerWarp; ++k) {
      const int t0 = 16 * (warp + k * kWarps) + g, t1 = t0 + 8;
      const float gram0 =
          (odd ? gram[k][0][0][1] : gram[k][0][0][0]) + (odd ? gram[k][1][0][1] : gram[k][1][0][0]);
      const float gram1 =
          (odd ? gram[k][0][1][3] : gram[k][0][1][2]) + (odd ? gram[k][1][1][3] : gram[k][1][1][2]);
      const float d0 = gram0 - 2.0f * dot[k][0] + mean_norm;
      const float d1 = gram1 - 2.0f * dot[k][2] + mean_norm;
      row_distance[t0] = valid_row(t0) ? d0 : INFINITY;
      row_distance[t1] = valid_row(t1) ? d1 : INFINITY;
      if (valid_row(t0)) {
        if (d0 > best) best = d0, best_row = t0;
        lowest = fminf(lowest, d0);
      }
      if (valid_row(t1)) {
        if (d1 > best) best = d1, best_row = t1;  // t1 > t0: ties keep t0
        lowest = fminf(lowest, d1);
      }
    }
  }
  // The warp's largest distance and, among the lanes holding it, the lowest row, and its smallest
  // distance: reductions on an unsigned key that orders as the floats do (+ 0.0f makes -0 equal
  // to +0). Across the warps, each thread takes the maximum of (key, ~row) pairs, one 64-bit
  // value each, and the minimum of the lowest keys: every load first, then selects (compares
  // and branches after each load made a chain of shared-memory round trips).
  const uint32_t key = ordered_key(best + 0.0f);
  const uint32_t warp_key = __reduce_max_sync(0xffffffffu, key);
  best_row =
      int(__reduce_min_sync(0xffffffffu, key == warp_key ? uint32_t(best_row) : 0xffffffffu));
  const uint32_t warp_lowest = __reduce_min_sync(0xffffffffu, ordered_key(lowest + 0.0f));
  if (lane == 0) {
    far_of_warp[warp] = uint64_t(warp_key) << 32 | ~uint32_t(best_row);
    lowest_of_warp[warp] = warp_lowest;
  }
  __syncthreads();
  uint64_t far = far_of_warp[0];
  uint32_t lowest_key = lowest_of_warp[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) {
    far = far > far_of_warp[w] ? far : far_of_warp[w];
    lowest_key = min(lowest_key, lowest_of_warp[w]);
  }
  const float far_distance = best_of_key(uint32_t(far >> 32));
  const float lowest_distance = best_of_key(lowest_key);
  const int far_row = int(~uint32_t(far));

  // The core rows: distance at most the midrange (never empty: the nearest row is one). Each lane
  // reads the distances of its B fragment's rows; the warp counts its own tiles' core rows.
  const float midrange = 0.5f * (lowest_distance + far_distance);
  const auto in_core = [&](int t) { return row_distance[t] <= midrange ? 1.0f : 0.0f; };
  int core_count = 0;
#pragma unroll
  for (int k = 0; k < kTilesPerWarp; ++k)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int t = 16 * (warp + k * kWarps) + 2 * quad + 8 * h;
      const float first = in_core(t), second = in_core(t + 1);
      mask[k][h] = sm80::pack(Half::from_floats(first, second));
      core_count += int(first + second);
    }
  // Lanes of one quad hold the same rows (g varies over the B fragment's columns): count one g.
  core_count = __reduce_add_sync(0xffffffffu, g == 0 ? core_count : 0);
  if (lane == 0) core_count_of_warp[warp] = core_count;
  __syncthreads();  // every lane has read row_distance before the core sums overwrite it
  masked_row_sums<Layout, kHeadDim, kWarps, kTilesPerWarp, kIsBf16>(chunks_first, mask, partial);
  __syncthreads();
  store_warp_totals<kHeadDim, kThreads>(
      partial, [&](int d, float total) { buffers.query_sum[row * kHeadDim + d] = total; });
  if (tid < kChunks) {
    uint4 chunk;
    asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(chunk.x), "=r"(chunk.y), "=r"(chunk.z), "=r"(chunk.w)
                 : "r"(tile_address + Layout::offset(uint32_t(far_row), uint32_t(tid))));
    reinterpret_cast<uint4*>(static_cast<Element*>(buffers.query_far) + row * kHeadDim)[tid] =
        chunk;
  }
  if (tid == 0) {
    int count = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) count += core_count_of_warp[w];
    buffers.query_far_distance[row] = far_distance;
    buffers.query_core_count[row] = float(count);
  }
}

}  // namespace flashprefill::cuda::discovery
