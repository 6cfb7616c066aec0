// Instantiation: head dim 256, bf16.
#include "cuda/ampere/attention_kernel.cuh"
#include "cuda/check.cuh"

namespace flashprefill::cuda::ampere {
template void launch_sparse_attention<256, true>(const SparseAttentionParams& params);
}  // namespace flashprefill::cuda::ampere
