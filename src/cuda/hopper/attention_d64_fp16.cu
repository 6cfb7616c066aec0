// Instantiation: head dim 64, fp16.
#include "cuda/hopper/attention_kernel.cuh"

namespace flashprefill::cuda::hopper {
template void launch_sparse_attention<64, false>(const SparseAttentionParams& params, const TensorMaps& maps);
}  // namespace flashprefill::cuda::hopper
