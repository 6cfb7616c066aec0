// Robust discovery (docs/ROBUST.md) inside the score kernels of every architecture: each layout
// row's query sum and its query farthest from their mean, taken from the query tile the kernel
// already holds in shared memory (no second read of Q from global memory). representatives.cu
// turns them into the two representatives of each (kv head, query block).
#pragma once

#include <cstdint>

#include "cuda/discovery.cuh"
#include "cuda/sm80/mma.cuh"

namespace flashprefill::cuda::discovery {

// Floats of shared-memory scratch write_query_summary needs for a tile of kTileRows rows.
template <int kHeadDim, int kThreads, int kTileRows>
constexpr int query_summary_scratch_floats() {
  return kTileRows * (kHeadDim / 8 + 1) + (kThreads / 32) * kHeadDim + kHeadDim + 64;
}

// Called by all kThreads threads of the CTA after its last read of the scratch's former contents.
// load_chunk(t, c): the 8 elements (16 bytes) of chunk c of tile row t. Tile rows
// [first_row, end_row) hold the row's queries (end_row > first_row). Writes, for layout row `row`:
// query_sum[row] (fp32, sums in a fixed order), query_far[row] (that query's elements, exactly) and
// query_far_distance[row] (its squared distance to the fp32 mean; the lowest row wins ties).
// Each thread loads its rows once, into registers: one pass over the tile in shared memory, few
// shuffles (the partial distances meet in shared memory), four barriers.
template <int kHeadDim, int kThreads, int kTileRows, bool kIsBf16, typename LoadChunk>
__device__ inline void write_query_summary(LoadChunk load_chunk, int first_row, int end_row,
                                           float* scratch, const Buffers& buffers, int64_t row) {
  using Half = sm80::HalfType<kIsBf16>;
  using Element = typename Half::type;
  constexpr int kChunks = kHeadDim / 8, kPhases = kThreads / kChunks, kWarps = kThreads / 32;
  constexpr int kRowsPerThread = kTileRows / kPhases;
  static_assert(kThreads % kChunks == 0 && kChunks <= 32 && kTileRows % kPhases == 0 &&
                kThreads >= kTileRows);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int chunk = tid % kChunks, phase = tid / kChunks;
  float* distance_part = scratch;                                     // [kTileRows][kChunks + 1]
  float* column_part = scratch + kTileRows * (kChunks + 1);           // [kWarps][kHeadDim]
  float* mean = column_part + kWarps * kHeadDim;                      // [kHeadDim]
  float* best_of_warp = mean + kHeadDim;                              // [kWarps <= 32]
  int* best_row_of_warp = reinterpret_cast<int*>(best_of_warp + 32);  // [kWarps]

  uint4 rows[kRowsPerThread];  // rows phase + kPhases * r
  float sum[8] = {};
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) {
    const int t = phase + kPhases * r;
    rows[r] = t >= first_row && t < end_row ? load_chunk(t, chunk) : make_uint4(0, 0, 0, 0);
    const Element* e = reinterpret_cast<const Element*>(&rows[r]);
#pragma unroll
    for (int d = 0; d < 8; ++d) sum[d] += Half::to_float(e[d]);  // zeros outside the rows
  }
  // The warp's phases of one chunk: lanes kChunks apart.
#pragma unroll
  for (int offset = kChunks; offset < 32; offset *= 2)
#pragma unroll
    for (int d = 0; d < 8; ++d) sum[d] += __shfl_xor_sync(0xffffffffu, sum[d], offset);
  if (lane < kChunks)
#pragma unroll
    for (int d = 0; d < 8; ++d) column_part[warp * kHeadDim + chunk * 8 + d] = sum[d];
  __syncthreads();
  for (int d = tid; d < kHeadDim; d += kThreads) {
    float total = 0.0f;
    for (int w = 0; w < kWarps; ++w) total += column_part[w * kHeadDim + d];
    buffers.query_sum[row * kHeadDim + d] = total;
    mean[d] = total / float(end_row - first_row);
  }
  __syncthreads();

  float m[8];
#pragma unroll
  for (int d = 0; d < 8; ++d) m[d] = mean[chunk * 8 + d];
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) {
    const Element* e = reinterpret_cast<const Element*>(&rows[r]);
    float distance = 0.0f;
#pragma unroll
    for (int d = 0; d < 8; ++d) {
      const float diff = Half::to_float(e[d]) - m[d];
      distance = fmaf(diff, diff, distance);
    }
    distance_part[(phase + kPhases * r) * (kChunks + 1) + chunk] = distance;
  }
  __syncthreads();
  float best = -1.0f;  // one row per thread
  int best_row = end_row;
  if (tid >= first_row && tid < end_row) {
    best = 0.0f;
    for (int c = 0; c < kChunks; ++c) best += distance_part[tid * (kChunks + 1) + c];
    best_row = tid;
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    const float other = __shfl_xor_sync(0xffffffffu, best, offset);
    const int other_row = __shfl_xor_sync(0xffffffffu, best_row, offset);
    if (other > best || (other == best && other_row < best_row)) best = other, best_row = other_row;
  }
  if (lane == 0) best_of_warp[warp] = best, best_row_of_warp[warp] = best_row;
  __syncthreads();
  float far_distance = best_of_warp[0];
  int far_row = best_row_of_warp[0];
  for (int w = 1; w < kWarps; ++w)
    if (best_of_warp[w] > far_distance ||
        (best_of_warp[w] == far_distance && best_row_of_warp[w] < far_row))
      far_distance = best_of_warp[w], far_row = best_row_of_warp[w];
  if (tid < kChunks)
    reinterpret_cast<uint4*>(static_cast<Element*>(buffers.query_far) + row * kHeadDim)[tid] =
        load_chunk(far_row, tid);
  if (tid == 0) buffers.query_far_distance[row] = far_distance;
}

}  // namespace flashprefill::cuda::discovery
