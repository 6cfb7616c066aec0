// Which Ampere attention instantiation serves a problem (one .cu file per head dim and dtype).
#include <string>

#include "cuda/check.cuh"
#include "cuda/sparse_attention.cuh"

namespace flashprefill::cuda::ampere {

template <int kHeadDim, bool kIsBf16>
void launch_sparse_attention(const SparseAttentionParams& params);

bool supports(const detail::Problem& p, int device_major, int device_minor) {
  return device_major >= 8 && (p.head_dim == 64 || p.head_dim == 128 || p.head_dim == 256) && p.params.block_size % 64 == 0;
}

void run(const SparseAttentionParams& params) {
  const detail::Problem& p = params.problem;
  if (p.params.block_size % 64 != 0)
    throw Error("flashprefill: the CUDA attention kernel needs block_size a multiple of 64; got " + std::to_string(p.params.block_size));
  const bool bf16 = p.dtype == DType::bf16;
  if (p.head_dim == 64) return bf16 ? launch_sparse_attention<64, true>(params) : launch_sparse_attention<64, false>(params);
  if (p.head_dim == 128) return bf16 ? launch_sparse_attention<128, true>(params) : launch_sparse_attention<128, false>(params);
  if (p.head_dim == 256) return bf16 ? launch_sparse_attention<256, true>(params) : launch_sparse_attention<256, false>(params);
  throw Error("flashprefill: the CUDA attention kernel supports head dim 64, 128 and 256; got " + std::to_string(p.head_dim));
}

}  // namespace flashprefill::cuda::ampere
