// Which sm_80 attention instantiation serves a problem (one .cu file per head dim and dtype).
#include <string>

#include "cuda/check.cuh"
#include "cuda/dispatch.hpp"
#include "cuda/sparse_attention.cuh"

namespace flashprefill::cuda::sm80 {

template <int kHeadDim, bool kIsBf16>
void launch_sparse_attention(const SparseAttentionParams& params);

bool supports_attention(const detail::Problem& p, int device_major, int device_minor) {
  return device_major >= 8 && (p.head_dim == 64 || p.head_dim == 128 || p.head_dim == 256) &&
         p.params.block_size % 64 == 0;
}

void run_attention(const SparseAttentionParams& params) {
  const detail::Problem& p = params.problem;
  if (p.params.block_size % 64 != 0)
    throw Error("flashprefill: the CUDA attention kernel needs block_size a multiple of 64; got " +
                std::to_string(p.params.block_size));
  dispatch_head_dim_and_dtype<64, 128, 256>(
      p, "the sm_80 attention kernel", [&](auto head_dim, auto is_bf16) {
        launch_sparse_attention<decltype(head_dim)::value, decltype(is_bf16)::value>(params);
      });
}

}  // namespace flashprefill::cuda::sm80
