// Instantiation: head dim 64, fp16.
#include "cuda/ampere/attention_kernel.cuh"
#include "cuda/check.cuh"

namespace flashprefill::cuda::ampere {
template void launch_sparse_attention<64, false>(const SparseAttentionParams& params);
}  // namespace flashprefill::cuda::ampere
