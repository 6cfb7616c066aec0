// Instantiation: head dim 64, fp16.
#include "cuda/sm90/attention_kernel.cuh"

namespace flashprefill::cuda::sm90 {
template void launch_sparse_attention<64, false>(const SparseAttentionParams& params,
                                                 const TensorMaps& maps);
}  // namespace flashprefill::cuda::sm90
