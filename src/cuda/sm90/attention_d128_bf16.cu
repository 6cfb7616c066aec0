// Instantiation: head dim 128, bf16.
#include "cuda/sm90/attention_kernel.cuh"

namespace flashprefill::cuda::sm90 {
template void launch_sparse_attention<128, true>(const SparseAttentionParams& params,
                                                 const TensorMaps& maps);
}  // namespace flashprefill::cuda::sm90
