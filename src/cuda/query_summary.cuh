// Robust discovery (docs/ROBUST.md) inside the score kernels of every architecture: each layout
// row's query sum and its query farthest from their mean, taken from the query tile the kernel
// already holds in shared memory (no second read of Q from global memory). representatives.cu
// turns them into the two representatives of each (kv head, query block).
#pragma once

#include <cstdint>

#include "cuda/discovery.cuh"
#include "cuda/sm80/mma.cuh"

namespace flashprefill::cuda::discovery {

// Floats of shared-memory scratch write_query_summary needs: the per-warp bests (32 floats, 32
// ints), then the mean in the input dtype.
template <int kHeadDim>
constexpr int query_summary_scratch_floats() {
  return 64 + kHeadDim / 2;
}

// Called by all kThreads threads of the CTA after its last read of the scratch's former contents.
// chunk_address(t, c): the shared-memory address of chunk c (8 elements, 16 bytes) of tile row t,
// as ldmatrix reads it. Tile rows [first_row, end_row) hold the row's queries (end_row >
// first_row). Writes, for layout row `row`: query_sum[row] (fp32), query_far[row] (that query's
// elements, exactly) and query_far_distance[row] (its squared distance to the mean rounded to the
// input dtype; the lowest row wins ties).
//
// All on the tensor cores (mma.sync), so the summary costs a few hundred instructions per CTA, not
// an ALU pass over every element: the sums are mask^T Q (the mask row repeated as A, Q through
// ldmatrix.trans as B); a row's distance is ||q||^2 - 2 q . mean + ||mean||^2, with ||q||^2 the
// diagonal of each 16-row block of Q Q^T and q . mean from the mean as a B column.
template <int kHeadDim, int kThreads, int kTileRows, bool kIsBf16, typename ChunkAddress>
__device__ inline void write_query_summary(ChunkAddress chunk_address, int first_row, int end_row,
                                           float* scratch, const Buffers& buffers, int64_t row) {
  using Half = sm80::HalfType<kIsBf16>;
  using Element = typename Half::type;
  constexpr int kChunks = kHeadDim / 8, kWarps = kThreads / 32;
  static_assert(kTileRows % 16 == 0 && kHeadDim % 16 == 0 && kThreads % 32 == 0);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, quad = lane % 4;
  float* best_of_warp = scratch;                                 // [32]
  int* best_row_of_warp = reinterpret_cast<int*>(scratch + 32);  // [32]
  auto* mean = reinterpret_cast<Element*>(scratch + 64);         // [kHeadDim], rounded
  const auto valid_row = [&](int t) { return t >= first_row && t < end_row; };
  const auto one_if_valid = [&](int t0) {  // the mask of rows t0, t0 + 1 as an A register
    return sm80::pack(
        Half::from_floats(valid_row(t0) ? 1.0f : 0.0f, valid_row(t0 + 1) ? 1.0f : 0.0f));
  };
  const float inv_rows = 1.0f / float(end_row - first_row);

  // Sums: warp w takes the 16-dim slices w, w + kWarps, ... over all row tiles.
  for (int slice = warp; slice < kHeadDim / 16; slice += kWarps) {
    float sum[2][4] = {};
#pragma unroll
    for (int kt = 0; kt < kTileRows / 16; ++kt) {
      const uint32_t low = one_if_valid(16 * kt + 2 * quad),
                     high = one_if_valid(16 * kt + 2 * quad + 8);
      const uint32_t a[4] = {low, low, high, high};
      uint32_t b[4];
      sm80::ldmatrix_x4_trans(b, chunk_address(16 * kt + (lane % 16), 2 * slice + lane / 16));
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      sm80::mma_16816<kIsBf16>(sum[0], a, b0);
      sm80::mma_16816<kIsBf16>(sum[1], a, b1);
    }
    if (g == 0)  // every row of the product is the sum; row 0 holds dims 8n + 2 quad + {0, 1}
#pragma unroll
      for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int d = 16 * slice + 8 * n + 2 * quad + e;
          buffers.query_sum[row * kHeadDim + d] = sum[n][e];
          mean[d] = Half::from_float(sum[n][e] * inv_rows);
        }
  }
  __syncthreads();

  float mean_norm = 0.0f;  // ||mean||^2 of the rounded mean, in every lane
  for (int d = lane; d < kHeadDim; d += 32) {
    const float m = Half::to_float(mean[d]);
    mean_norm = fmaf(m, m, mean_norm);
  }
  for (int offset = 16; offset > 0; offset /= 2)
    mean_norm += __shfl_xor_sync(0xffffffffu, mean_norm, offset);

  // Distances: warp w takes the 16-row tiles w, w + kWarps, ...
  float best = -1.0f;
  int best_row = end_row;
  const uint32_t* mean_pairs = reinterpret_cast<const uint32_t*>(mean);
  for (int mt = warp; mt < kTileRows / 16; mt += kWarps) {
    float gram[2][4] = {}, dot[4] = {};
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      uint32_t a[4], rows[4];
      sm80::ldmatrix_x4(a, chunk_address(16 * mt + (lane % 16), 2 * kk + lane / 16));
      sm80::ldmatrix_x4(
          rows, chunk_address(16 * mt + (lane % 8) + (lane / 16) * 8, 2 * kk + (lane / 8) % 2));
      const uint32_t rows_low[2] = {rows[0], rows[1]}, rows_high[2] = {rows[2], rows[3]};
      const uint32_t mean_col[2] = {mean_pairs[8 * kk + quad], mean_pairs[8 * kk + 4 + quad]};
      sm80::mma_16816<kIsBf16>(gram[0], a, rows_low);
      sm80::mma_16816<kIsBf16>(gram[1], a, rows_high);
      sm80::mma_16816<kIsBf16>(dot, a, mean_col);
    }
    // Row g's diagonal element is column g of the first n8 tile, row g + 8's column g of the
    // second: in the lane whose quad is g / 2, element g % 2 (rows g) or 2 + g % 2 (rows g + 8).
    if (quad == g / 2) {
      const int t0 = 16 * mt + g, t1 = t0 + 8;
      const bool odd = g % 2;  // selects, not an index: the accumulators stay in registers
      const float d0 = (odd ? gram[0][1] : gram[0][0]) - 2.0f * dot[0] + mean_norm;
      const float d1 = (odd ? gram[1][3] : gram[1][2]) - 2.0f * dot[2] + mean_norm;
      if (valid_row(t0) && d0 > best) best = d0, best_row = t0;
      if (valid_row(t1) && d1 > best) best = d1, best_row = t1;  // t1 > t0: ties keep t0
    }
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
        *reinterpret_cast<const uint4*>(chunk_address(far_row, tid));
  if (tid == 0) buffers.query_far_distance[row] = far_distance;
}

}  // namespace flashprefill::cuda::discovery
