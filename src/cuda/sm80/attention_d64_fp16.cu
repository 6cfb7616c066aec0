// Instantiation: head dim 64, fp16.
#include "cuda/check.cuh"
#include "cuda/sm80/attention_kernel.cuh"

namespace flashprefill::cuda::sm80 {
template void launch_sparse_attention<64, false>(const SparseAttentionParams& params);
}  // namespace flashprefill::cuda::sm80
