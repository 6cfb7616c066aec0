// Instantiation: head dim 128, bf16.
#include "cuda/hopper/attention_kernel.cuh"

namespace flashprefill::cuda::hopper {
template void launch_sparse_attention<128, true>(const SparseAttentionParams& params, const TensorMaps& maps);
}  // namespace flashprefill::cuda::hopper
