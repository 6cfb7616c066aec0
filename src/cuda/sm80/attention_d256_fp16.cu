// Instantiation: head dim 256, fp16.
#include "cuda/check.cuh"
#include "cuda/sm80/attention_kernel.cuh"

namespace flashprefill::cuda::sm80 {
template void launch_sparse_attention<256, false>(const SparseAttentionParams& params);
}  // namespace flashprefill::cuda::sm80
