// Robust discovery's second test on the GPU (docs/ROBUST.md), after the score kernels have
// selected the exact rule's blocks and written each layout row's query sum and far query
// (query_summary.cuh). Three kernels:
//  1. combine: per (sequence, kv head, query block), the group's mean query (the g heads' sums over
//     g * n rows, rounded to the input dtype) and its far query (the head whose far query lies
//     farthest from its mean): the two representatives;
//  2. best keys: per (sequence, kv head, key block j), every later representative against the
//     block's keys with mma.sync, reduced to the best key: y[rep][j] = max_s scale * rep . k_s. The
//     key block stays in shared memory while the representatives stream past it, so K is read once;
//  3. rescue: per (kv head, query block), for each of its layout rows, the blocks with
//     y[rep][j] >= max_j y[rep][j] + log(alpha^2) for either representative join the exact rule's
//     bitmask, and the row's count is recomputed.
// Rows the exact rule keeps whole (the last query blocks) are skipped by all three.
#include <cfloat>

#include "common/constants.hpp"
#include "common/row_geometry.hpp"
#include "cuda/arch.hpp"
#include "cuda/check.cuh"
#include "cuda/discovery.cuh"
#include "cuda/dispatch.hpp"
#include "cuda/kv_view.cuh"
#include "cuda/representatives.cuh"
#include "cuda/select_row.cuh"
#include "cuda/sm80/mma.cuh"

namespace flashprefill::cuda::discovery {
namespace {

using detail::Problem;
using detail::SeqExtent;

// 1. One CTA of head_dim threads per (query block, kv head) (x) and sequence (y).
template <bool kIsBf16>
__global__ void combine_kernel(const Problem p, const int64_t* seq_row_offset, Buffers buffers) {
  using Half = sm80::HalfType<kIsBf16>;
  using Element = typename Half::type;
  GroupRow r;
  if (!group_row_of_grid(p, seq_row_offset, r)) return;
  const detail::PositionRange rows = r.first.positions(p.params.block_size);
  const int64_t nqb = r.nqb, row0 = r.row0, kv_row = r.kv_row;
  int64_t far_row = row0;
  for (int64_t u = 1; u < p.group; ++u)  // the lowest head wins ties
    if (buffers.query_far_distance[row0 + u * nqb] > buffers.query_far_distance[far_row])
      far_row = row0 + u * nqb;
  const float count = float(p.group * (rows.end - rows.begin));
  auto* reps = static_cast<Element*>(buffers.representatives) + kv_row * 2 * p.head_dim;
  const auto* far = static_cast<const Element*>(buffers.query_far) + far_row * p.head_dim;
  for (int64_t d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    float sum = 0.0f;
    for (int64_t u = 0; u < p.group; ++u)
      sum += buffers.query_sum[(row0 + u * nqb) * p.head_dim + d];
    reps[d] = Half::from_float(sum / count);
    reps[p.head_dim + d] = far[d];
  }
}

// 2. Best keys: one CTA (4 warps) per (key block j, kv head, sequence). The block's keys sit in
// shared memory; representatives of the query blocks i >= j come in tiles of 64 rows (32 query
// blocks x 2), double-buffered with cp.async; warp w multiplies rows 16w..16w+15 of a tile with
// 64 keys at a time and keeps each row's maximum.
constexpr int kRepTileRows = 64, kKeySubTile = 64, kBestThreads = 128;

template <int kHeadDim, bool kIsBf16, typename KV>
__global__ void __launch_bounds__(kBestThreads)
    best_keys_kernel(const Problem p, const int64_t* seq_row_offset, Buffers buffers) {
  using namespace sm80;
  using Element = typename HalfType<kIsBf16>::type;
  using Swizzle = SwizzledTile<kHeadDim>;
  constexpr int D = kHeadDim;
  const int64_t j = blockIdx.x, kv_head = blockIdx.y, b = blockIdx.z;
  const SeqExtent s = p.seq(b);
  const int64_t block = p.params.block_size;
  const int64_t nkb = num_key_blocks(s.len_kv, block);
  if (j >= nkb) return;
  const KeyBlockRows later = key_block_rows(p, seq_row_offset, s, b, kv_head, j, block);
  if (later.empty()) return;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  auto* key_smem = reinterpret_cast<Element*>(smem_raw);  // [block][D]
  Element* rep_smem = key_smem + block * D;               // [2][kRepTileRows][D]
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, quad = lane % 4;

  const KV kv{p, b, s, kv_head};
  const auto* k = static_cast<const Element*>(p.k);
  const int64_t key0 = j * block;
  for (int64_t chunk = tid; chunk < block * Swizzle::kChunks; chunk += kBestThreads) {
    const int row = int(chunk / Swizzle::kChunks), c = int(chunk % Swizzle::kChunks);
    const bool valid = key0 + row < s.len_kv;
    cp_async_16(key_smem + Swizzle::offset(row, c),
                k + kv.k_offset(valid ? key0 + row : key0) + c * 8, valid ? 16 : 0);
  }
  const int64_t kv_row0 = later.kv_row0, rep_rows = later.rows();
  const auto* reps = static_cast<const Element*>(buffers.representatives) + kv_row0 * 2 * D;
  const auto load_tile = [&](int64_t tile) {
    Element* dst = rep_smem + (tile % 2) * kRepTileRows * D;
    for (int chunk = tid; chunk < kRepTileRows * Swizzle::kChunks; chunk += kBestThreads) {
      const int row = chunk / Swizzle::kChunks, c = chunk % Swizzle::kChunks;
      const int64_t rep_row = tile * kRepTileRows + row;
      const bool valid = rep_row < rep_rows;
      cp_async_16(dst + Swizzle::offset(row, c), reps + (valid ? rep_row : 0) * D + c * 8,
                  valid ? 16 : 0);
    }
  };
  const int64_t tiles = (rep_rows + kRepTileRows - 1) / kRepTileRows;
  load_tile(0);
  cp_async_commit();

  const float scale_log2 = p.params.scale * detail::kLog2e;
  const int64_t ld = buffers.words * 32;
  const int sub_tiles = int((block + kKeySubTile - 1) / kKeySubTile);
  for (int64_t tile = 0; tile < tiles; ++tile) {
    if (tile + 1 < tiles) {
      load_tile(tile + 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const Element* a_smem = rep_smem + (tile % 2) * kRepTileRows * D;
    float best[2] = {-INFINITY, -INFINITY};  // rows g and g + 8 of the warp's 16
    for (int sub = 0; sub < sub_tiles; ++sub) {
      float x[kKeySubTile / 8][4] = {};
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t a[4];
        ldmatrix_x4(a, a_smem + Swizzle::offset(warp * 16 + (lane % 16), 2 * kk + lane / 16));
#pragma unroll
        for (int np = 0; np < kKeySubTile / 16; ++np) {
          const int key_row = sub * kKeySubTile + 16 * np + (lane % 8) + (lane / 16) * 8;
          uint32_t key[4];
          ldmatrix_x4(key, key_smem + Swizzle::offset(key_row, 2 * kk + (lane / 8) % 2));
          const uint32_t key_lo[2] = {key[0], key[1]}, key_hi[2] = {key[2], key[3]};
          mma_16816<kIsBf16>(x[2 * np], a, key_lo);
          mma_16816<kIsBf16>(x[2 * np + 1], a, key_hi);
        }
      }
#pragma unroll
      for (int nt = 0; nt < kKeySubTile / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t key = key0 + sub * kKeySubTile + nt * 8 + 2 * quad + (e & 1);
          const bool valid = key < key0 + block && key < s.len_kv;
          best[e / 2] = fmaxf(best[e / 2], valid ? x[nt][e] : -INFINITY);
        }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      best[h] = fmaxf(best[h], __shfl_xor_sync(0xffffffffu, best[h], 1));
      best[h] = fmaxf(best[h], __shfl_xor_sync(0xffffffffu, best[h], 2));
      const int64_t rep_row = tile * kRepTileRows + warp * 16 + g + 8 * h;
      if (quad == 0 && rep_row < rep_rows)
        buffers.representative_best[(kv_row0 * 2 + rep_row) * ld + j] = best[h] * scale_log2;
    }
    __syncthreads();  // the stage is refilled next iteration
  }
}

// 3. Rescue: one CTA per (query block, kv head) (x) and sequence (y), for the group's g layout
// rows. Their bitmasks are staged in shared memory, eight heads at a time (one coalesced read and
// write each), so the ballots that add a word's rescued blocks (one block per thread, as
// select_row) wait on no global memory.
constexpr int kRescueThreads = 256, kRescueHeads = 8;  // heads staged at a time
__global__ void __launch_bounds__(kRescueThreads)
    rescue_kernel(const Problem p, const int64_t* seq_row_offset, Buffers buffers) {
  GroupRow r;
  if (!group_row_of_grid(p, seq_row_offset, r)) return;
  const int64_t nqb = r.nqb, kv_row = r.kv_row, row0 = r.row0, kv_head = r.kv_head;
  const int64_t words = buffers.words, ld = words * 32, num_j = r.first.num_causal_blocks();
  const float* y_mean = buffers.representative_best + kv_row * 2 * ld;
  const float* y_far = y_mean + ld;
  extern __shared__ uint32_t group_bits[];  // [kRescueHeads][words]
  __shared__ float scratch[32];
  __shared__ int kept[kRescueHeads];
  float thread_max[2] = {-INFINITY, -INFINITY};
  for (int64_t j = threadIdx.x; j < num_j; j += kRescueThreads)
    thread_max[0] = fmaxf(thread_max[0], y_mean[j]), thread_max[1] = fmaxf(thread_max[1], y_far[j]);
  const float max_mean = block_max(thread_max[0], scratch);  // both end with a barrier
  const float max_far = block_max(thread_max[1], scratch);
  for (int64_t u0 = 0; u0 < p.group; u0 += kRescueHeads) {
    const int64_t heads = min(int64_t(kRescueHeads), p.group - u0);
    const int64_t first_row = row0 + u0 * nqb;
    for (int64_t n = threadIdx.x; n < heads * words; n += kRescueThreads)
      group_bits[n] = buffers.kept_bits[(first_row + n / words * nqb) * words + n % words];
    if (threadIdx.x < heads) kept[threadIdx.x] = 0;
    __syncthreads();
    for (int64_t j = threadIdx.x; j < ld; j += kRescueThreads) {
      const float mean_j = j < num_j ? y_mean[j] : -INFINITY;
      const float far_j = j < num_j ? y_far[j] : -INFINITY;
      for (int64_t u = 0; u < heads; ++u) {
        // The threshold is alpha^2 (docs/ROBUST.md: a span of up to 1 / alpha keys scores as one
        // key); alpha = 0: log2(0) = -inf keeps every block, as the exact rule does.
        const float log2_ratio = 2.0f * log2f(p.alpha_of_head(kv_head * p.group + u0 + u));
        const bool rescued =
            j < num_j && (mean_j >= max_mean + log2_ratio || far_j >= max_far + log2_ratio);
        const uint32_t word = __ballot_sync(0xffffffffu, rescued);
        if (threadIdx.x % 32 == 0) group_bits[u * words + j / 32] |= word;
      }
    }
    __syncthreads();
    for (int64_t n = threadIdx.x; n < heads * words; n += kRescueThreads) {
      buffers.kept_bits[(first_row + n / words * nqb) * words + n % words] = group_bits[n];
      atomicAdd(&kept[n / words], __popc(group_bits[n]));
    }
    __syncthreads();
    if (threadIdx.x < heads) buffers.counts[first_row + threadIdx.x * nqb] = kept[threadIdx.x];
  }
}

template <int kHeadDim, bool kIsBf16, typename KV>
void launch_best_keys(const Problem& p, const int64_t* seq_row_offset, const Buffers& buffers,
                      dim3 grid) {
  const size_t smem = size_t(p.params.block_size + 2 * kRepTileRows) * kHeadDim * 2;
  auto kernel = best_keys_kernel<kHeadDim, kIsBf16, KV>;
  FP_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<grid, kBestThreads, smem, static_cast<cudaStream_t>(p.stream)>>>(p, seq_row_offset,
                                                                            buffers);
  FP_CUDA_CHECK_LAUNCH();
}

}  // namespace

void rescue_rows(const Problem& p, const int64_t* seq_row_offset, const Buffers& buffers) {
  const int64_t grid_blocks = grid_query_blocks(p);
  if (grid_blocks == 0 || p.num_seqs == 0) return;
  auto stream = static_cast<cudaStream_t>(p.stream);
  dispatch_dtype(p, [&](auto is_bf16) {
    combine_kernel<decltype(is_bf16)::value>
        <<<dim3(unsigned(grid_blocks * p.heads_kv), unsigned(p.num_seqs)),
           unsigned(std::min<int64_t>(p.head_dim, 256)), 0, stream>>>(p, seq_row_offset, buffers);
  });
  FP_CUDA_CHECK_LAUNCH();
#ifdef FLASHPREFILL_HAS_HOPPER_KERNEL
  const bool hopper =
      use_hopper_kernels(device_info(p)) && sm90::best_keys(p, seq_row_offset, buffers);
#else
  const bool hopper = false;
#endif
  const dim3 best_grid(unsigned(num_key_blocks(p.len_kv, p.params.block_size)),
                       unsigned(p.heads_kv), unsigned(p.num_seqs));
  if (!hopper)
    dispatch_head_dim_and_dtype<64, 128, 256>(
        p, "robust discovery's best-key kernel", [&](auto head_dim, auto is_bf16) {
          constexpr int kHeadDim = decltype(head_dim)::value;
          constexpr bool kIsBf16 = decltype(is_bf16)::value;
          if (p.paged())
            launch_best_keys<kHeadDim, kIsBf16, PagedKV>(p, seq_row_offset, buffers, best_grid);
          else
            launch_best_keys<kHeadDim, kIsBf16, ContiguousKV>(p, seq_row_offset, buffers,
                                                              best_grid);
        });
  rescue_kernel<<<dim3(unsigned(grid_blocks * p.heads_kv), unsigned(p.num_seqs)), kRescueThreads,
                  size_t(kRescueHeads * buffers.words) * 4, stream>>>(p, seq_row_offset, buffers);
  FP_CUDA_CHECK_LAUNCH();
}

}  // namespace flashprefill::cuda::discovery
