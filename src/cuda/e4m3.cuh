// Robust discovery's e4m3 scales on the GPU (docs/ROBUST.md, src/common/e4m3.hpp): the largest
// magnitude of a warp's or a CTA's values, reduced as bits (non-negative floats order as their bits
// do), and the power of two that puts it in [128, 256).
#pragma once

#include <cstdint>

#include "common/e4m3.hpp"

namespace flashprefill::cuda {

// Every lane's `top` (>= 0) reduced over the warp; the result in every lane.
__device__ __forceinline__ float warp_max_magnitude(float top) {
  return __uint_as_float(__reduce_max_sync(0xffffffffu, __float_as_uint(top)));
}

// The e4m3 scale of the largest of every thread's `top` (>= 0) in a CTA of kThreads threads, in
// every thread. warp_top: kThreads / 32 words of shared memory. Ends with a barrier, after which
// warp_top may be reused.
template <int kThreads>
__device__ __forceinline__ float cta_e4m3_scale(float top, uint32_t* warp_top) {
  const float warp_max = warp_max_magnitude(top);
  if (threadIdx.x % 32 == 0) warp_top[threadIdx.x / 32] = __float_as_uint(warp_max);
  __syncthreads();
  uint32_t block_max = warp_top[0];
#pragma unroll
  for (int w = 1; w < kThreads / 32; ++w) block_max = max(block_max, warp_top[w]);
  return detail::e4m3_scale_of(__uint_as_float(block_max));
}

}  // namespace flashprefill::cuda
