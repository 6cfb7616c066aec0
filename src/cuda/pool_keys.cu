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
//
// kRobust (docs/ROBUST.md): also the block's key farthest from the rounded mean, in the same pass.
// Each thread keeps the keys it loaded in registers (up to kCachedKeys: a block of 128 keys at
// head dim 256, 256 at 128, 512 at 64; larger blocks re-read the rest), measures their squared
// distance to the mean over its 8 dims, and the key's lanes add theirs with shuffles; the groups'
// bests meet in shared memory, the lowest key index winning ties.
constexpr int kPoolThreads = 256;
template <bool kIsBf16, bool kRobust, typename KV>
__global__ void __launch_bounds__(kPoolThreads, kRobust ? 1 : 0)  // robust: room for the key cache
    pool_keys_kernel(const Problem p, float* pooled, void* pooled_half, void* far_half) {
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
  const auto load_key = [&](int64_t key) {
    return *reinterpret_cast<const uint4*>(k + kv.k_offset(key) + chunk * 8);
  };
  float sum[8] = {};
  const auto accumulate = [&](const uint4& raw) {
    const Element* e = reinterpret_cast<const Element*>(&raw);
#pragma unroll
    for (int d = 0; d < 8; ++d) sum[d] += Half::to_float(e[d]);
  };
  constexpr int kCachedKeys = kRobust ? 16 : 0;
  uint4 cached[kCachedKeys > 0 ? kCachedKeys : 1];
  int64_t key = key_begin + group;
#pragma unroll
  for (int c = 0; c < kCachedKeys; ++c, key += groups)
    if (key < key_end) accumulate(cached[c] = load_key(key));
  for (; key < key_end; key += groups) accumulate(load_key(key));
  __shared__ float partial[kPoolThreads * 8];  // [group][chunk * 8 + d]
#pragma unroll
  for (int d = 0; d < 8; ++d) partial[group * p.head_dim + chunk * 8 + d] = sum[d];
  __syncthreads();
  const int64_t slot = p.pooled_slot0(b, s) + j;
  __shared__ float rounded_mean[kRobust ? 256 : 1];  // head_dim <= 256
  for (int64_t d = threadIdx.x; d < p.head_dim; d += kPoolThreads) {
    float total = 0.0f;
    for (int g = 0; g < groups; ++g) total += partial[g * p.head_dim + d];
    const float mean = total / float(key_end - key_begin);
    const int64_t index = (slot * p.heads_kv + kv_head) * p.head_dim + d;
    if (pooled) pooled[index] = mean;
    static_cast<Element*>(pooled_half)[index] = Half::from_float(mean);
    if constexpr (kRobust) rounded_mean[d] = Half::to_float(Half::from_float(mean));
  }
  if constexpr (kRobust) {
    __syncthreads();
    float mean[8];
#pragma unroll
    for (int d = 0; d < 8; ++d) mean[d] = rounded_mean[chunk * 8 + d];
    // The lanes of one key: `chunks` consecutive lanes of a warp (chunks divides 32).
    const int lane = threadIdx.x % 32;
    const unsigned key_lanes =
        chunks == 32 ? 0xffffffffu : ((1u << chunks) - 1) << (lane / chunks * chunks);
    float best = -1.0f;
    int64_t best_key = key_begin;
    const auto consider = [&](const uint4& raw, int64_t key) {
      const Element* e = reinterpret_cast<const Element*>(&raw);
      float distance = 0.0f;
#pragma unroll
      for (int d = 0; d < 8; ++d) {
        const float diff = Half::to_float(e[d]) - mean[d];
        distance = fmaf(diff, diff, distance);
      }
      for (int offset = 1; offset < chunks; offset *= 2)
        distance += __shfl_xor_sync(key_lanes, distance, offset);
      if (distance > best) best = distance, best_key = key;  // keys ascend: ties keep the first
    };
    key = key_begin + group;
#pragma unroll
    for (int c = 0; c < kCachedKeys; ++c, key += groups)
      if (key < key_end) consider(cached[c], key);
    for (; key < key_end; key += groups) consider(load_key(key), key);
    __shared__ float group_best[32];
    __shared__ int64_t group_best_key[32];
    if (chunk == 0) group_best[group] = best, group_best_key[group] = best_key;
    __syncthreads();
    float far_distance = group_best[0];
    int64_t far_key = group_best_key[0];
    for (int g = 1; g < groups; ++g)
      if (group_best[g] > far_distance ||
          (group_best[g] == far_distance && group_best_key[g] < far_key))
        far_distance = group_best[g], far_key = group_best_key[g];
    const Element* far = k + kv.k_offset(far_key);
    for (int64_t d = threadIdx.x; d < p.head_dim; d += kPoolThreads)
      static_cast<Element*>(far_half)[(slot * p.heads_kv + kv_head) * p.head_dim + d] = far[d];
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
    const bool robust = p.params.discovery == Discovery::robust;
    void* far = robust ? buffers.pooled_far_half : nullptr;
    const auto launch = [&](auto kernel) {
      kernel<<<grid, kPoolThreads, 0, stream>>>(p, buffers.pooled, buffers.pooled_half, far);
    };
    if (p.paged())
      robust ? launch(pool_keys_kernel<kIsBf16, true, PagedKV>)
             : launch(pool_keys_kernel<kIsBf16, false, PagedKV>);
    else
      robust ? launch(pool_keys_kernel<kIsBf16, true, ContiguousKV>)
             : launch(pool_keys_kernel<kIsBf16, false, ContiguousKV>);
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
