// Host side of the sm_80 score kernel: the launch for the block size, head dim and dtype.
#include <string>

#include "cuda/dispatch.hpp"
#include "cuda/sm80/score_kernel.cuh"

namespace flashprefill::cuda::sm80 {

void score_rows(const detail::Problem& p, const int64_t* seq_row_offset, const Buffers& buffers,
                float* scores, int64_t scores_ld, dim3 grid) {
  const int64_t max_key_blocks = num_key_blocks(p.len_kv, p.params.block_size);
  const bool found = dispatch_int<64, 128>(p.params.block_size, [&](auto block) {
    dispatch_head_dim_and_dtype<64, 128, 256>(
        p, "the sm_80 score kernel", [&](auto head_dim, auto is_bf16) {
          constexpr int kHeadDim = decltype(head_dim)::value, kBlock = decltype(block)::value;
          constexpr bool kIsBf16 = decltype(is_bf16)::value;
          if (p.params.discovery == Discovery::robust)
            launch_score_rows<kHeadDim, kIsBf16, kBlock, true>(p, seq_row_offset, buffers, scores,
                                                               scores_ld, grid, max_key_blocks);
          else
            launch_score_rows<kHeadDim, kIsBf16, kBlock, false>(p, seq_row_offset, buffers, scores,
                                                                scores_ld, grid, max_key_blocks);
        });
  });
  if (!found)
    throw Error("flashprefill: the sm_80 score kernel supports block_size 64 and 128; got " +
                std::to_string(p.params.block_size));
}

}  // namespace flashprefill::cuda::sm80
