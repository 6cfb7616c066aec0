// The attention epilogue shared by the sm_80 and sm_90 kernels (their accumulators have the same
// per-thread layout): O / row sum to the output dtype, and lse = ln(sum) + max in natural log.
// Rows with no visible key (sum 0) write zeros and lse -inf.
#pragma once

#include <cfloat>
#include <cstdint>

#include "common/constants.hpp"
#include "common/problem.hpp"
#include "common/row_geometry.hpp"

namespace flashprefill::cuda {

// A thread holds two query rows (h = 0, 1: positions row_pos[h], accumulator elements 4 * dt +
// 2 * h + {0, 1} of each n8 tile dt, columns 8 * dt + 2 * quad + {0, 1}); o_at(dt, e) reads element
// e of tile dt. row_sum: the thread's partial sums (reduced here over the quad). row_max *
// max_scale is the row maximum in log2 units. Rows outside `positions` are not written. shift:
// row.shift(), which the caller has at hand (recomputing it here would keep the extent live through
// the mainloop: two registers more in kernels that spill at 255).
template <typename Half, int kDimTiles, typename OAt>
__device__ __forceinline__ void store_rows(const detail::Problem& p, const detail::LayoutRow& row,
                                           int64_t shift, const int64_t (&row_pos)[2],
                                           const detail::PositionRange& positions,
                                           const float (&row_sum)[2], const float (&row_max)[2],
                                           float max_scale, int quad, OAt o_at) {
  auto* out_base = static_cast<typename Half::type*>(p.out);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float sum = row_sum[half];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int64_t pos = row_pos[half];
    if (pos < positions.begin || pos >= positions.end) continue;
    const int64_t t = pos - shift;
    const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
    auto* out_row = out_base + p.out_offset(row.seq, row.extent, t, row.head);
#pragma unroll
    for (int dt = 0; dt < kDimTiles; ++dt) {
      const auto pair =
          Half::from_floats(o_at(dt, 2 * half) * inverse, o_at(dt, 2 * half + 1) * inverse);
      *reinterpret_cast<typename Half::pair*>(out_row + dt * 8 + 2 * quad) = pair;
    }
    if (p.lse && quad == 0)
      p.lse[p.lse_offset(row.seq, row.extent, t, row.head)] =
          sum > 0.0f ? (row_max[half] * max_scale + log2f(sum)) * detail::kLn2 : -INFINITY;
  }
}

}  // namespace flashprefill::cuda
