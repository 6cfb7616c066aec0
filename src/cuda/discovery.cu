// Steps 1-4 on the GPU; see discovery.cuh.
#include <cub/device/device_scan.cuh>

#include <cfloat>

#include "common/constants.hpp"
#include "cuda/arch.hpp"
#include "cuda/check.cuh"
#include "cuda/discovery.cuh"
#include "cuda/dispatch.hpp"
#include "cuda/mma.cuh"
#include "cuda/select_row.cuh"

namespace flashprefill::cuda::discovery {
namespace {

using detail::Problem;
using detail::SeqExtent;

constexpr int kKeyChunk = 64;  // pooled keys scored per step

__global__ void fill_seq_row_offsets_kernel(const Problem p, int64_t* seq_row_offset) {
  // One thread: num_seqs is small, and this keeps the prefix exact without a scan.
  int64_t offset = 0;
  for (int64_t b = 0; b < p.num_seqs; ++b) {
    seq_row_offset[b] = offset;
    offset += detail::layout_rows_of(p, p.seq(b));
  }
  seq_row_offset[p.num_seqs] = offset;
}

// Step 1: one CTA per (key block, kv head, sequence). Each thread sums 8 dims (one 16-byte load
// per key) over a strided subset of the block's keys; the partial sums meet in shared memory. The
// mean is kept in fp32 when asked (the pool_keys stage) and rounded to the input dtype for scoring.
constexpr int kPoolThreads = 256;
template <bool kIsBf16>
__global__ void __launch_bounds__(kPoolThreads) pool_keys_kernel(const Problem p, float* pooled, void* pooled_half) {
  using Half = sm80::HalfType<kIsBf16>;
  using Element = typename Half::type;
  const int64_t j = blockIdx.x, kv_head = blockIdx.y, b = blockIdx.z;
  const SeqExtent s = p.seq(b);
  const int64_t block = p.params.block_size;
  if (j >= num_key_blocks(s.len_kv, block)) return;
  const int64_t key_begin = j * block, key_end = min((j + 1) * block, s.len_kv);
  const auto* k = static_cast<const Element*>(p.k);
  const int chunks = int(p.head_dim / 8), groups = kPoolThreads / chunks;  // head_dim 64..256: 32..8 key groups
  const int chunk = threadIdx.x % chunks, group = threadIdx.x / chunks;
  float sum[8] = {};
  for (int64_t key = key_begin + group; key < key_end; key += groups) {
    const uint4 raw = *reinterpret_cast<const uint4*>(k + p.k_offset(b, s, key, kv_head) + chunk * 8);
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
  for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < count; n += int64_t(gridDim.x) * blockDim.x)
    static_cast<Element*>(pooled_half)[n] = Half::from_float(pooled[n]);
}

// Step 2 for one layout row per CTA (kBlockM query rows = kBlockM / 16 warps), then either the
// selection (fused path) or the S row written out. x = scale * q . Kbar with tensor cores (Kbar in
// the input dtype), fp32 accumulation; each key block's log2-domain score lands in shared memory.
template <int kHeadDim, bool kIsBf16, int kBlockM>
__global__ void __launch_bounds__(kBlockM * 2) score_rows_kernel(const Problem p, const int64_t* seq_row_offset, Buffers buffers,
                                                                  float* scores, int64_t scores_ld) {
  using namespace sm80;
  using Half = HalfType<kIsBf16>;
  using Element = typename Half::type;
  using Swizzle = SwizzledTile<kHeadDim>;
  constexpr int kWarps = kBlockM / 16, kThreads = kWarps * 32, D = kHeadDim;
  const RowOfGrid r = row_of_grid(p, seq_row_offset);
  if (!r.valid) return;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  Element* q_smem = reinterpret_cast<Element*>(smem_raw);           // [kBlockM][D]
  Element* key_smem = q_smem + kBlockM * D;                          // [kKeyChunk][D]
  float* warp_max = reinterpret_cast<float*>(key_smem + kKeyChunk * D);  // [kWarps][kKeyChunk]
  float* warp_sum = warp_max + kWarps * kKeyChunk;                   // [kWarps][kKeyChunk]
  float* reduce_smem = warp_sum + kWarps * kKeyChunk;                // 128 floats
  float* log_score = reduce_smem + 128;                              // [log_score_capacity(num_kv_blocks)]
  const int64_t num_j = r.num_causal_blocks();

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, quad = lane % 4;
  const int64_t block = p.params.block_size, shift = r.shift();
  const int64_t block_start = r.block_start(block);
  const int64_t kv_head = r.kv_head(p.group);
  const int64_t slot0 = p.pooled_slot0(r.seq, r.extent);

  // Queries of the block (rows outside the chunk or past the sequence are zero and masked below).
  const auto* q_base = static_cast<const Element*>(p.q);
  for (int chunk = tid; chunk < kBlockM * Swizzle::kChunks; chunk += kThreads) {
    const int row = chunk / Swizzle::kChunks, c = chunk % Swizzle::kChunks;
    const int64_t pos = block_start + row;
    const bool valid = pos >= shift && pos < r.extent.len_kv;
    cp_async_16(q_smem + Swizzle::offset(row, c), q_base + p.q_offset(r.seq, r.extent, valid ? pos - shift : 0, r.head) + c * 8,
                valid ? 16 : 0);
  }
  cp_async_commit();

  const float scale_log2 = p.params.scale * detail::kLog2e;
  const int64_t row_pos[2] = {block_start + warp * 16 + g, block_start + warp * 16 + g + 8};
  bool row_in_block[2];
  for (int h = 0; h < 2; ++h) row_in_block[h] = row_pos[h] >= shift && row_pos[h] < r.extent.len_kv;
  float thread_max_x2 = -INFINITY, thread_max_log_score = -INFINITY;

  for (int64_t j0 = 0; j0 < num_j; j0 += kKeyChunk) {
    // This chunk's pooled keys (past num_j: zero, masked below).
    for (int chunk = tid; chunk < kKeyChunk * Swizzle::kChunks; chunk += kThreads) {
      const int row = chunk / Swizzle::kChunks, c = chunk % Swizzle::kChunks;
      const bool valid = j0 + row < num_j;
      const int64_t index = ((slot0 + (valid ? j0 + row : 0)) * p.heads_kv + kv_head) * D + c * 8;
      cp_async_16(key_smem + Swizzle::offset(row, c), static_cast<const Element*>(buffers.pooled_half) + index, valid ? 16 : 0);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    float x[kKeyChunk / 8][4] = {};
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t q_frag[4];
      ldmatrix_x4(q_frag, q_smem + Swizzle::offset(warp * 16 + (lane % 16), 2 * kk + lane / 16));
#pragma unroll
      for (int np = 0; np < kKeyChunk / 16; ++np) {
        const int key_row = 16 * np + (lane % 8) + (lane / 16) * 8, key_chunk = 2 * kk + (lane / 8) % 2;
        uint32_t key[4];
        ldmatrix_x4(key, key_smem + Swizzle::offset(key_row, key_chunk));
        const uint32_t key0[2] = {key[0], key[1]}, key1[2] = {key[2], key[3]};
        mma_16816<kIsBf16>(x[2 * np], q_frag, key0);
        mma_16816<kIsBf16>(x[2 * np + 1], q_frag, key1);
      }
    }
    // Mask: rows not in the block, blocks past the row (j > i), and the diagonal block for rows
    // that do not see all its keys (ALGORITHM.md step 2). Then per column: max and sum of exp2.
#pragma unroll
    for (int nt = 0; nt < kKeyChunk / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t j = j0 + nt * 8 + 2 * quad + (e & 1);
        const int h = e / 2;
        const bool visible = row_in_block[h] && j < num_j &&
                             detail::key_block_visible(j, row_pos[h], r.extent.len_kv, block);
        x[nt][e] = visible ? x[nt][e] * scale_log2 : -INFINITY;
      }
#pragma unroll
    for (int nt = 0; nt < kKeyChunk / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float m = fmaxf(x[nt][e], x[nt][e + 2]);
        for (int offset = 4; offset < 32; offset *= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
        const float shift_m = m == -INFINITY ? 0.0f : m;
        float s = exp2f(x[nt][e] - shift_m) + exp2f(x[nt][e + 2] - shift_m);
        for (int offset = 4; offset < 32; offset *= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
        if (g == 0) {
          warp_max[warp * kKeyChunk + nt * 8 + 2 * quad + e] = m;
          warp_sum[warp * kKeyChunk + nt * 8 + 2 * quad + e] = s;
        }
      }
    __syncthreads();
    for (int c = tid; c < kKeyChunk && j0 + c < num_j; c += kThreads) {
      float m = -INFINITY;
      for (int w = 0; w < kWarps; ++w) m = fmaxf(m, warp_max[w * kKeyChunk + c]);
      float s = 0.0f;
      if (m != -INFINITY)
        for (int w = 0; w < kWarps; ++w) s += warp_sum[w * kKeyChunk + c] * exp2f(warp_max[w * kKeyChunk + c] - m);
      const float value = m == -INFINITY ? -INFINITY : m + log2f(s);
      log_score[j0 + c] = value;
      thread_max_x2 = fmaxf(thread_max_x2, m);
      thread_max_log_score = fmaxf(thread_max_log_score, value);
    }
    __syncthreads();
  }

  finish_row(p, log_score, thread_max_x2, thread_max_log_score, num_j, r.block_abs, r.num_kv_blocks, r.row, buffers, scores, scores_ld,
             reduce_smem);
}

// Steps 3-4 from a given score matrix (the select_blocks stage): S -> log2 S, then select_row.
__global__ void select_from_scores_kernel(const Problem p, const int64_t* seq_row_offset, const float* scores, int64_t ld,
                                          Buffers buffers) {
  const RowOfGrid r = row_of_grid(p, seq_row_offset);
  if (!r.valid) return;
  extern __shared__ float log_score[];  // [log_score_capacity(num_j)] then 128 floats of reduction scratch
  const int64_t num_j = r.num_causal_blocks();
  float* reduce_smem = log_score + log_score_capacity(num_j);
  float thread_max = -INFINITY;
  for (int64_t j = threadIdx.x; j < num_j; j += blockDim.x) {
    log_score[j] = log2f(scores[r.row * ld + j]);  // log2(0) = -inf
    thread_max = fmaxf(thread_max, log_score[j]);
  }
  __syncthreads();
  const float max_log_score = block_max(thread_max, reduce_smem);
  select_row(p, log_score, max_log_score, num_j, r.block_abs, r.num_kv_blocks, buffers.kept_bits + r.row * buffers.words, buffers.words,
             buffers.counts + r.row, reduce_smem);
}

// One warp per row: the set bits of the row's mask, in ascending order, at row_ptr[row].
__global__ void compact_kernel(const Buffers buffers, int64_t max_rows, const int64_t* row_ptr, int32_t* col_idx) {
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= max_rows) return;
  const uint32_t* bits = buffers.kept_bits + row * buffers.words;
  int64_t out = row_ptr[row];
  const int64_t end = row_ptr[row + 1];
  for (int64_t w0 = 0; w0 < buffers.words && out < end; w0 += 32) {
    const uint32_t word = w0 + lane < buffers.words ? bits[w0 + lane] : 0u;
    int before = __popc(word);
    for (int offset = 1; offset < 32; offset *= 2) {  // inclusive scan of the counts over lanes
      const int other = __shfl_up_sync(0xffffffffu, before, offset);
      if (lane >= offset) before += other;
    }
    const int total = __shfl_sync(0xffffffffu, before, 31);
    int64_t position = out + before - __popc(word);
    for (uint32_t rest = word; rest; rest &= rest - 1) col_idx[position++] = int32_t((w0 + lane) * 32 + __ffs(rest) - 1);
    out += total;
  }
}

template <int kHeadDim, bool kIsBf16, int kBlockM>
void launch_score_rows(const Problem& p, const int64_t* seq_row_offset, const Buffers& buffers, float* scores, int64_t ld,
                       dim3 grid, int64_t max_key_blocks) {
  constexpr int kWarps = kBlockM / 16;
  const size_t smem = size_t(kBlockM + kKeyChunk) * kHeadDim * 2 + size_t(log_score_capacity(max_key_blocks) + 2 * kWarps * kKeyChunk + 128) * 4;
  auto kernel = score_rows_kernel<kHeadDim, kIsBf16, kBlockM>;
  FP_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<grid, kWarps * 32, smem, static_cast<cudaStream_t>(p.stream)>>>(p, seq_row_offset, buffers, scores, ld);
  FP_CUDA_CHECK_LAUNCH();
}

// Query blocks per sequence: exact for padded batches, a bound for varlen (kernels skip the rest).
int64_t grid_query_blocks(const Problem& p) {
  const int64_t block = p.params.block_size;
  return p.varlen ? p.len_q / block + 2 : num_query_blocks(p.len_q, p.len_kv, block);
}

}  // namespace

detail::DiscoveryPlan plan(const Problem& p, int64_t max_rows) {
  const StageShapes shapes = detail::stage_shapes_of(p);
  detail::DiscoveryPlan plan;
  plan.max_rows = max_rows;
  plan.words = (shapes.max_key_blocks + 31) / 32;
  plan.slots = shapes.pooled_key_slots;
  detail::RegionAllocator regions;
  plan.pooled_half = regions.take(size_t(plan.slots * p.heads_kv * p.head_dim) * 2);
  plan.counts = regions.take(size_t(max_rows) * 8);
  plan.kept_bits = regions.take(size_t(max_rows * plan.words) * 4);
  size_t scan_bytes = 0;
  FP_CUDA_CHECK(cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, static_cast<const int64_t*>(nullptr),
                                              static_cast<int64_t*>(nullptr), max_rows > 0 ? max_rows : 1));
  plan.scan_temp = regions.take(scan_bytes);
  plan.bytes = regions.bytes();
  return plan;
}

Buffers carve(const detail::DiscoveryPlan& plan, void* workspace) {
  Buffers b;
  b.pooled = nullptr;  // the fp32 means are the pool_keys stage's output, in the caller's memory
  b.pooled_half = plan.pooled_half.in<void>(workspace);
  b.counts = plan.counts.in<int64_t>(workspace);
  b.kept_bits = plan.kept_bits.in<uint32_t>(workspace);
  b.scan_temp = plan.scan_temp.in<void>(workspace);
  b.scan_temp_bytes = plan.scan_temp.bytes;
  b.words = plan.words;
  return b;
}

void fill_seq_row_offsets(const Problem& p, int64_t* seq_row_offset) {
  fill_seq_row_offsets_kernel<<<1, 1, 0, static_cast<cudaStream_t>(p.stream)>>>(p, seq_row_offset);
  FP_CUDA_CHECK_LAUNCH();
}

void pool_keys(const Problem& p, const Buffers& buffers) {
  const int64_t max_blocks = num_key_blocks(p.len_kv, p.params.block_size);  // len_kv: the max_seqlen bound for varlen
  if (max_blocks == 0 || p.num_seqs == 0) return;
  const dim3 grid(unsigned(max_blocks), unsigned(p.heads_kv), unsigned(p.num_seqs));
  auto stream = static_cast<cudaStream_t>(p.stream);
  dispatch_dtype(p, [&](auto is_bf16) {
    pool_keys_kernel<decltype(is_bf16)::value><<<grid, kPoolThreads, 0, stream>>>(p, buffers.pooled, buffers.pooled_half);
  });
  FP_CUDA_CHECK_LAUNCH();
}

void round_pooled(const Problem& p, const float* pooled, int64_t slots, const Buffers& buffers) {
  const int64_t count = slots * p.heads_kv * p.head_dim;
  if (count == 0) return;
  const unsigned blocks = unsigned(std::min<int64_t>((count + 255) / 256, 4096));
  auto stream = static_cast<cudaStream_t>(p.stream);
  dispatch_dtype(p, [&](auto is_bf16) {
    round_pooled_kernel<decltype(is_bf16)::value><<<blocks, 256, 0, stream>>>(pooled, count, buffers.pooled_half);
  });
  FP_CUDA_CHECK_LAUNCH();
}

dim3 score_grid(const Problem& p) { return dim3(unsigned(grid_query_blocks(p) * p.heads_q), unsigned(p.num_seqs)); }

void score_rows(const Problem& p, const int64_t* seq_row_offset, const Buffers& buffers, float* scores, int64_t scores_ld) {
  if (grid_query_blocks(p) == 0 || p.num_seqs == 0) return;
  const dim3 grid = score_grid(p);
#ifdef FLASHPREFILL_HAS_HOPPER_KERNEL
  if (use_hopper_kernels(device_info(p)) && hopper::supports(p)) return hopper::score_rows(p, seq_row_offset, buffers, scores, scores_ld, grid);
#endif
  const int64_t max_key_blocks = num_key_blocks(p.len_kv, p.params.block_size);
  const bool found = dispatch_int<64, 128>(p.params.block_size, [&](auto block) {
    dispatch_head_dim_and_dtype<64, 128, 256>(p, "the sm_80 score kernel", [&](auto head_dim, auto is_bf16) {
      launch_score_rows<decltype(head_dim)::value, decltype(is_bf16)::value, decltype(block)::value>(
          p, seq_row_offset, buffers, scores, scores_ld, grid, max_key_blocks);
    });
  });
  if (!found)
    throw Error("flashprefill: the sm_80 score kernel supports block_size 64 and 128; got " + std::to_string(p.params.block_size));
}

void select_from_scores(const Problem& p, const int64_t* seq_row_offset, const float* scores, int64_t ld, const Buffers& buffers) {
  if (grid_query_blocks(p) == 0 || p.num_seqs == 0) return;
  const dim3 grid = score_grid(p);
  const size_t smem = size_t(log_score_capacity(num_key_blocks(p.len_kv, p.params.block_size)) + 128) * 4;
  FP_CUDA_CHECK(cudaFuncSetAttribute(select_from_scores_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  select_from_scores_kernel<<<grid, 256, smem, static_cast<cudaStream_t>(p.stream)>>>(p, seq_row_offset, scores, ld, buffers);
  FP_CUDA_CHECK_LAUNCH();
}

void compact(const Problem& p, const Buffers& buffers, int64_t max_rows, int64_t* row_ptr, int32_t* col_idx) {
  auto stream = static_cast<cudaStream_t>(p.stream);
  FP_CUDA_CHECK(cudaMemsetAsync(row_ptr, 0, sizeof(int64_t), stream));
  if (max_rows == 0) return;
  size_t scan_bytes = buffers.scan_temp_bytes;
  FP_CUDA_CHECK(cub::DeviceScan::InclusiveSum(buffers.scan_temp, scan_bytes, buffers.counts, row_ptr + 1, max_rows, stream));
  constexpr int kWarpsPerCta = 8;
  compact_kernel<<<unsigned((max_rows + kWarpsPerCta - 1) / kWarpsPerCta), kWarpsPerCta * 32, 0, stream>>>(buffers, max_rows, row_ptr,
                                                                                                           col_idx);
  FP_CUDA_CHECK_LAUNCH();
}

}  // namespace flashprefill::cuda::discovery
