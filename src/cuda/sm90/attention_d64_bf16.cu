// Instantiation: head dim 64, bf16.
#include "cuda/sm90/attention_kernel.cuh"

namespace flashprefill::cuda::sm90 {
template void launch_sparse_attention<64, true>(const SparseAttentionParams& params,
                                                const TensorMaps& maps);
}  // namespace flashprefill::cuda::sm90
