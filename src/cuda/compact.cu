// The end of step 4: the kept-block bitmasks of every row to the exact CSR layout (a device-wide
// scan of the kept counts, then one warp per row writing its set bits).
#include <cub/device/device_scan.cuh>

#include "cuda/check.cuh"
#include "cuda/discovery.cuh"

namespace flashprefill::cuda::discovery {
namespace {

using detail::Problem;

// One warp per row: the set bits of the row's mask, in ascending order, at row_ptr[row].
__global__ void compact_kernel(const Buffers buffers, int64_t max_rows, const int64_t* row_ptr,
                               int32_t* col_idx) {
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= max_rows) return;
  const uint32_t* bits = buffers.kept_bits + row * buffers.words;
  int64_t out = row_ptr[row];
  const int64_t end = row_ptr[row + 1];
  for (int64_t w0 = 0; w0 < buffers.words && out < end; w0 += 32) {
    const uint32_t word = w0 + lane < buffers.words ? bits[w0 + lane] : 0u;
    int before = __popc(word);
    for (int offset = 1; offset < 32; offset *= 2) {  // inclusive scan of the counts over lanes
      const int other = __shfl_up_sync(0xffffffffu, before, offset);
      if (lane >= offset) before += other;
    }
    const int total = __shfl_sync(0xffffffffu, before, 31);
    int64_t position = out + before - __popc(word);
    for (uint32_t rest = word; rest; rest &= rest - 1)
      col_idx[position++] = int32_t((w0 + lane) * 32 + __ffs(rest) - 1);
    out += total;
  }
}

}  // namespace

void compact(const Problem& p, const Buffers& buffers, int64_t max_rows, int64_t* row_ptr,
             int32_t* col_idx) {
  auto stream = static_cast<cudaStream_t>(p.stream);
  FP_CUDA_CHECK(cudaMemsetAsync(row_ptr, 0, sizeof(int64_t), stream));
  if (max_rows == 0) return;
  size_t scan_bytes = buffers.scan_temp_bytes;
  FP_CUDA_CHECK(cub::DeviceScan::InclusiveSum(buffers.scan_temp, scan_bytes, buffers.counts,
                                              row_ptr + 1, max_rows, stream));
  constexpr int kWarpsPerCta = 8;
  compact_kernel<<<unsigned((max_rows + kWarpsPerCta - 1) / kWarpsPerCta), kWarpsPerCta * 32, 0,
                   stream>>>(buffers, max_rows, row_ptr, col_idx);
  FP_CUDA_CHECK_LAUNCH();
}

}  // namespace flashprefill::cuda::discovery
