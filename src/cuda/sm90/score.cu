// Host side of the Hopper score kernel: which problems it serves and the launch per head dim/dtype.
#include "cuda/dispatch.hpp"
#include "cuda/sm90/score_kernel.cuh"
#include "cuda/sm90/tensor_map.hpp"

namespace flashprefill::cuda::sm90 {
namespace {

template <int kHeadDim, bool kIsBf16, bool kSummarizeQueries>
void launch(const detail::Problem& p, const int64_t* seq_row_offset,
            const discovery::Buffers& buffers, float* scores, int64_t ld, dim3 grid,
            const ScoreMaps& maps) {
  using Traits = ScoreTraits<kHeadDim, kIsBf16, kSummarizeQueries>;
  const size_t smem = Traits::smem_bytes(num_key_blocks(p.len_kv, p.params.block_size));
  auto kernel = score_rows_kernel<Traits>;
  FP_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<grid, Traits::kThreads, smem, static_cast<cudaStream_t>(p.stream)>>>(
      p, seq_row_offset, buffers, scores, ld, maps);
  FP_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool supports_scoring(const detail::Problem& p) {
  const int64_t max_key_blocks = num_key_blocks(p.len_kv, p.params.block_size);
  const size_t smem = p.params.discovery == Discovery::robust
                           ? ScoreTraits<128, true, true>::smem_bytes(max_key_blocks)
                           : ScoreTraits<128, true>::smem_bytes(max_key_blocks);
  return p.params.block_size == 128 && (p.head_dim == 64 || p.head_dim == 128) &&
         smem <= 227 * 1024 && tma_addressable(p.q, p.q_stride);
}

void score_rows(const detail::Problem& p, const int64_t* seq_row_offset,
                const discovery::Buffers& buffers, float* scores, int64_t ld, dim3 grid) {
  const int64_t slots = detail::stage_shapes_of(p).pooled_key_slots;
  ScoreMaps maps;
  maps.q = make_tensor_map(p, p.q, p.q_stride, p.heads_q, p.varlen ? p.total_q : p.len_q,
                           ScoreTraits<128, true>::kBlockM, "q");
  const bool robust = p.params.discovery == Discovery::robust;
  maps.pooled = make_pooled_map(p, buffers.pooled_half, slots, ScoreTraits<128, true>::kKeyTile,
                                "pooled keys");
  dispatch_head_dim_and_dtype<64, 128>(
      p, "the sm_90 score kernel", [&](auto head_dim, auto is_bf16) {
        constexpr int kHeadDim = decltype(head_dim)::value;
        constexpr bool kIsBf16 = decltype(is_bf16)::value;
        if (robust)
          launch<kHeadDim, kIsBf16, true>(p, seq_row_offset, buffers, scores, ld, grid, maps);
        else
          launch<kHeadDim, kIsBf16, false>(p, seq_row_offset, buffers, scores, ld, grid, maps);
      });
}

}  // namespace flashprefill::cuda::sm90
