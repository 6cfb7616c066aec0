// Step 1 of ALGORITHM.md on the GPU: the mean key of every key block (see discovery.cuh).
#include "cuda/check.cuh"
#include "cuda/discovery.cuh"
#include "cuda/dispatch.hpp"
#include "cuda/kv_view.cuh"
#include "cuda/sm80/mma.cuh"

namespace flashprefill::cuda::discovery {
namespace {

using detail::Problem;
using detail::SeqExtent;

// Step 1: one CTA per (key block, kv head, sequence). Each thread sums 8 dims (one 16-byte load
// per key) over a strided subset of the block's keys; the partial sums meet in shared memory. The
// mean is kept in fp32 when asked (the pool_keys stage) and rounded to the input dtype for scoring.
constexpr int kPoolThreads = 256;
template <bool kIsBf16, typename KV>
__global__ void __launch_bounds__(kPoolThreads)
    pool_keys_kernel(const Problem p, float* pooled, void* pooled_half) {
  using Half = sm80::HalfType<kIsBf16>;
  using Element = typename Half::type;
  const int64_t j = blockIdx.x, kv_head = blockIdx.y, b = blockIdx.z;
  const SeqExtent s = p.seq(b);
  const int64_t block = p.params.block_size;
  if (j >= num_key_blocks(s.len_kv, block)) return;
  const int64_t key_begin = j * block, key_end = min((j + 1) * block, s.len_kv);
  const auto* k = static_cast<const Element*>(p.k);
  const KV kv{p, b, s, kv_head};
  const int chunks = int(p.head_dim / 8),
            groups = kPoolThreads / chunks;  // head_dim 64..256: 32..8 key groups
  const int chunk = threadIdx.x % chunks, group = threadIdx.x / chunks;
  float sum[8] = {};
  for (int64_t key = key_begin + group; key < key_end; key += groups) {
    const uint4 raw = *reinterpret_cast<const uint4*>(k + kv.k_offset(key) + chunk * 8);
    const Element* e = reinterpret_cast<const Element*>(&raw);
#pragma unroll
    for (int d = 0; d < 8; ++d) sum[d] += Half::to_float(e[d]);
  }
  __shared__ float partial[kPoolThreads * 8];  // [group][chunk * 8 + d]
#pragma unroll
  for (int d = 0; d < 8; ++d) partial[group * p.head_dim + chunk * 8 + d] = sum[d];
  __syncthreads();
  const int64_t slot = p.pooled_slot0(b, s) + j;
  for (int64_t d = threadIdx.x; d < p.head_dim; d += kPoolThreads) {
    float total = 0.0f;
    for (int g = 0; g < groups; ++g) total += partial[g * p.head_dim + d];
    const float mean = total / float(key_end - key_begin);
    const int64_t index = (slot * p.heads_kv + kv_head) * p.head_dim + d;
    if (pooled) pooled[index] = mean;
    static_cast<Element*>(pooled_half)[index] = Half::from_float(mean);
  }
}

// Caller-given fp32 pooled keys rounded to the input dtype (the block_scores stage).
template <bool kIsBf16>
__global__ void round_pooled_kernel(const float* pooled, int64_t count, void* pooled_half) {
  using Half = sm80::HalfType<kIsBf16>;
  using Element = typename Half::type;
  for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < count;
       n += int64_t(gridDim.x) * blockDim.x)
    static_cast<Element*>(pooled_half)[n] = Half::from_float(pooled[n]);
}

}  // namespace

void pool_keys(const Problem& p, const Buffers& buffers) {
  const int64_t max_blocks =
      num_key_blocks(p.len_kv, p.params.block_size);  // len_kv: the max_seqlen bound for varlen
  if (max_blocks == 0 || p.num_seqs == 0) return;
  const dim3 grid(unsigned(max_blocks), unsigned(p.heads_kv), unsigned(p.num_seqs));
  auto stream = static_cast<cudaStream_t>(p.stream);
  dispatch_dtype(p, [&](auto is_bf16) {
    constexpr bool kIsBf16 = decltype(is_bf16)::value;
    const auto launch = [&](auto kernel) {
      kernel<<<grid, kPoolThreads, 0, stream>>>(p, buffers.pooled, buffers.pooled_half);
    };
    if (p.paged())
      launch(pool_keys_kernel<kIsBf16, PagedKV>);
    else
      launch(pool_keys_kernel<kIsBf16, ContiguousKV>);
  });
  FP_CUDA_CHECK_LAUNCH();
}

void round_pooled(const Problem& p, const float* pooled, int64_t slots, const Buffers& buffers) {
  const int64_t count = slots * p.heads_kv * p.head_dim;
  if (count == 0) return;
  const unsigned blocks = unsigned(std::min<int64_t>((count + 255) / 256, 4096));
  auto stream = static_cast<cudaStream_t>(p.stream);
  dispatch_dtype(p, [&](auto is_bf16) {
    round_pooled_kernel<decltype(is_bf16)::value>
        <<<blocks, 256, 0, stream>>>(pooled, count, buffers.pooled_half);
  });
  FP_CUDA_CHECK_LAUNCH();
}

}  // namespace flashprefill::cuda::discovery
