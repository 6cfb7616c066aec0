// Host side of the Hopper score kernel: which problems it serves and the launch per head dim/dtype.
#include "cuda/hopper/score_kernel.cuh"

namespace flashprefill::cuda::discovery::hopper {
namespace {

template <int kHeadDim, bool kIsBf16>
void launch(const detail::Problem& p, const int64_t* seq_row_offset, const Buffers& buffers, float* scores, int64_t ld, dim3 grid) {
  using Traits = ScoreTraits<kHeadDim, kIsBf16>;
  const size_t smem = Traits::smem_bytes(num_key_blocks(p.len_kv, p.params.block_size));
  auto kernel = score_rows_kernel<Traits>;
  FP_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<grid, Traits::kThreads, smem, static_cast<cudaStream_t>(p.stream)>>>(p, seq_row_offset, buffers, scores, ld);
  FP_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool supports(const detail::Problem& p) {
  const size_t smem = ScoreTraits<128, true>::smem_bytes(num_key_blocks(p.len_kv, p.params.block_size));
  return p.params.block_size == 128 && (p.head_dim == 64 || p.head_dim == 128) && smem <= 227 * 1024;
}

void score_rows(const detail::Problem& p, const int64_t* seq_row_offset, const Buffers& buffers, float* scores, int64_t ld,
                dim3 grid) {
  const bool bf16 = p.dtype == DType::bf16;
  if (p.head_dim == 64) return bf16 ? launch<64, true>(p, seq_row_offset, buffers, scores, ld, grid)
                                    : launch<64, false>(p, seq_row_offset, buffers, scores, ld, grid);
  return bf16 ? launch<128, true>(p, seq_row_offset, buffers, scores, ld, grid)
              : launch<128, false>(p, seq_row_offset, buffers, scores, ld, grid);
}

}  // namespace flashprefill::cuda::discovery::hopper
