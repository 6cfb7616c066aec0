// Steps 3-4 of ALGORITHM.md from a given score matrix (the select_blocks stage); the fused path
// selects inside the score kernels (select_row.cuh).
#include "cuda/check.cuh"
#include "cuda/discovery.cuh"
#include "cuda/select_row.cuh"

namespace flashprefill::cuda::discovery {
namespace {

using detail::Problem;

// Steps 3-4 from a given score matrix (the select_blocks stage): S -> log2 S, then select_row.
__global__ void select_from_scores_kernel(const Problem p, const int64_t* seq_row_offset,
                                          const float* scores, int64_t ld, Buffers buffers) {
  const RowOfGrid r = row_of_grid(p, seq_row_offset);
  if (!r.valid) return;
  extern __shared__ float
      log_score[];  // [log_score_capacity(num_j)] then 128 floats of reduction scratch
  const int64_t num_j = r.num_causal_blocks();
  float* reduce_smem = log_score + log_score_capacity(num_j);
  float thread_max = -INFINITY;
  for (int64_t j = threadIdx.x; j < num_j; j += blockDim.x) {
    log_score[j] = log2f(scores[r.row * ld + j]);  // log2(0) = -inf
    thread_max = fmaxf(thread_max, log_score[j]);
  }
  __syncthreads();
  const float max_log_score = block_max(thread_max, reduce_smem);
  select_row(p, r.alpha, log_score, max_log_score, num_j, r.block_abs, r.num_kv_blocks,
             buffers.kept_bits + r.row * buffers.words, buffers.words, buffers.counts + r.row,
             reduce_smem);
}

}  // namespace

void select_from_scores(const Problem& p, const int64_t* seq_row_offset, const float* scores,
                        int64_t ld, const Buffers& buffers) {
  if (grid_query_blocks(p) == 0 || p.num_seqs == 0) return;
  const dim3 grid = score_grid(p);
  const size_t smem =
      size_t(log_score_capacity(num_key_blocks(p.len_kv, p.params.block_size)) + 128) * 4;
  FP_CUDA_CHECK(cudaFuncSetAttribute(select_from_scores_kernel,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  select_from_scores_kernel<<<grid, 256, smem, static_cast<cudaStream_t>(p.stream)>>>(
      p, seq_row_offset, scores, ld, buffers);
  FP_CUDA_CHECK_LAUNCH();
}

}  // namespace flashprefill::cuda::discovery
