// Robust discovery's best keys on Hopper (docs/ROBUST.md; the sm_80 kernel and the rest of the
// second test are in src/cuda/representatives.cu): y[rep][j] = max over block j's keys of
// scale * rep . k, for every representative of the query blocks i >= j, as products of e4m3 values.
//
// The score kernel's product turned around: there, 64 pooled keys (M) meet a query block's 128
// queries (N) and each M row is reduced over N; here 64 representatives (M) meet a key block's 128
// keys (N) and each M row is reduced over N by a maximum, which the wgmma accumulator keeps within
// a thread and its quad (max_of_half). The key block is loaded once by TMA, scaled and rounded to
// e4m3 into a second buffer (each thread one key), and stays in shared memory; the
// representatives, which the combine kernel wrote as e4m3 bytes, stream past it in tiles of 64 rows
// through a ring of kStages stages, in pairs on two accumulators as in the score kernel. e4m3 wgmma
// runs twice the products per cycle of bf16 and reads half the bytes. No exponentials.
//
// Head dim 128 only: a key's 128 e4m3 bytes are one row of the 128-byte swizzle, so both operands
// take the score kernel's K-major descriptors. Other head dims, paged caches and sm_80 take the
// mma.sync kernel of representatives.cu, on the same e4m3 values held in the input dtype.
#include <cuda_fp8.h>

#include "cuda/dependent_launch.cuh"
#include "cuda/dispatch.hpp"
#include "cuda/e4m3.cuh"
#include "cuda/kv_view.cuh"
#include "cuda/representatives.cuh"
#include "cuda/sm90/score_kernel.cuh"
#include "cuda/sm90/tensor_map.hpp"

namespace flashprefill::cuda::sm90 {
namespace {

template <bool kIsBf16_>
struct BestKeyTraits {
  static constexpr bool kIsBf16 = kIsBf16_;
  static constexpr int kHeadDim = 128;  // one 128-byte e4m3 row
  static constexpr int kBlock = 128;    // keys per block == params.block_size
  static constexpr int kRepTile = 64;   // representatives per wgmma tile (its M)
  static constexpr int kThreads = 128;  // one warpgroup; thread t converts key t
  static constexpr int kMinCtasPerSm = 3;
  static constexpr int kStages = 2;
  static constexpr int kSteps = kHeadDim / 32;                       // k32 steps of e4m3 wgmma
  using KeyStaging = SwizzledPanels<kBlock>;                         // the keys as TMA writes them
  static constexpr int kStagingBytes = 2 * KeyStaging::kPanelBytes;  // two 64-column panels
  using E4m3Rows = SwizzledPanels<kBlock>;  // 128-byte rows: the same swizzle, one panel
  static constexpr int kKeyBytes = kBlock * kHeadDim;
  static constexpr int kRepBytes = kRepTile * kHeadDim;
  // staging | e4m3 keys | representative stages | barriers, +1024 to align
  static constexpr size_t kSmemBytes =
      1024 + kStagingBytes + kKeyBytes + size_t(kStages) * kRepBytes + 8 * (kStages + 1);
};

struct BestKeyMaps {
  CUtensorMap k;     // as the score kernel's q map: boxes of 128 tokens of one kv head
  CUtensorMap reps;  // the e4m3 representatives [kv_rows * 2][128 bytes], boxes of 64 rows
};

// Every thread converts its key: row `tid` of the staged keys, scaled by the block's e4m3 scale
// (its largest magnitude over the valid keys: rows past the sequence hold zeros or another
// sequence's keys) and rounded to e4m3 into the K-major, 128-byte-swizzled key operand. Returns the
// scale. Ends with the e4m3 keys visible to the wgmma (async proxy) of every thread.
template <typename Traits>
__device__ float convert_keys_to_e4m3(const unsigned char* staging, unsigned char* keys,
                                      int valid_keys, uint32_t* warp_top) {
  using Half = sm80::HalfType<Traits::kIsBf16>;
  using Pair = typename Half::pair;
  constexpr int kChunks = Traits::kHeadDim / 8;  // 16-byte chunks of a staged row
  const int row = threadIdx.x;
  uint4 chunk[kChunks];
#pragma unroll
  for (int c = 0; c < kChunks; ++c)
    chunk[c] = *reinterpret_cast<const uint4*>(staging + Traits::KeyStaging::offset(row, c));
  const auto pair_of = [](uint32_t word) { return *reinterpret_cast<const Pair*>(&word); };
  float top = 0.0f;
  if (row < valid_keys) {
#pragma unroll
    for (int c = 0; c < kChunks; ++c)
      for (const uint32_t word : {chunk[c].x, chunk[c].y, chunk[c].z, chunk[c].w}) {
        const Pair pair = pair_of(word);
        top = fmaxf(top, fmaxf(fabsf(Half::to_float(pair.x)), fabsf(Half::to_float(pair.y))));
      }
  }
  const float scale = cta_e4m3_scale<Traits::kThreads>(top, warp_top);
  // e4m3 chunk c holds elements 16 c .. 16 c + 15: staged chunks 2 c and 2 c + 1.
  const auto e4m3_pair = [&](uint32_t word) {
    const Pair pair = pair_of(word);
    return uint32_t(__nv_cvt_float2_to_fp8x2(
        make_float2(Half::to_float(pair.x) * scale, Half::to_float(pair.y) * scale), __NV_SATFINITE,
        __NV_E4M3));
  };
#pragma unroll
  for (int c = 0; c < kChunks / 2; ++c) {
    const uint4 low = chunk[2 * c], high = chunk[2 * c + 1];
    const uint4 out = {
        e4m3_pair(low.x) | e4m3_pair(low.y) << 16, e4m3_pair(low.z) | e4m3_pair(low.w) << 16,
        e4m3_pair(high.x) | e4m3_pair(high.y) << 16, e4m3_pair(high.z) | e4m3_pair(high.w) << 16};
    *reinterpret_cast<uint4*>(keys + Traits::E4m3Rows::offset(row, c)) = out;
  }
  cutlass::arch::fence_view_async_shared();  // generic-proxy writes, read by wgmma
  __syncthreads();
  return scale;
}

template <typename Traits>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinCtasPerSm)
    best_keys_kernel(const detail::Problem p, const int64_t* seq_row_offset, const Buffers buffers,
                     const __grid_constant__ BestKeyMaps maps) {
  constexpr int kStages = Traits::kStages, kRepTile = Traits::kRepTile;
  constexpr int kBlock = Traits::kBlock;
  allow_dependent_launch();  // the rescue kernel
  const int64_t j = blockIdx.x, kv_head = blockIdx.y, b = blockIdx.z;
  const detail::SeqExtent s = p.seq(b);
  const int64_t nkb = num_key_blocks(s.len_kv, kBlock);
  if (j >= nkb) return;
  const discovery::KeyBlockRows later =
      discovery::key_block_rows(p, seq_row_offset, s, b, kv_head, j, kBlock);
  if (later.empty()) return;  // no later query block that is not kept whole
  const int64_t kv_row0 = later.kv_row0;
  const int32_t rep_rows = int32_t(later.rows());  // row 2 (i - begin) + rep
  const int num_tiles = (rep_rows + kRepTile - 1) / kRepTile;

  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw_address = sm80::smem_address(smem_raw);
  unsigned char* staging = smem_raw + ((1024 - raw_address % 1024) % 1024);
  unsigned char* key_smem = staging + Traits::kStagingBytes;
  unsigned char* rep_smem = key_smem + Traits::kKeyBytes;  // stage s at s * kRepBytes
  auto* rep_full = reinterpret_cast<uint64_t*>(rep_smem + kStages * Traits::kRepBytes);
  uint64_t* key_full = rep_full + kStages;
  __shared__ uint32_t warp_top[Traits::kThreads / 32];

  const int tid = threadIdx.x, warp = tid / 32, g = (tid % 32) / 4, quad = tid % 4;
  constexpr uint64_t kCacheHint = uint64_t(cute::TMA::CacheHintSm90::EVICT_NORMAL);
  const auto load_reps = [&](int step) {  // one thread
    const int stage = step % kStages;
    barrier_arrive_expect_tx(&rep_full[stage], Traits::kRepBytes);
    cute::SM90_TMA_LOAD_2D::copy(&maps.reps, &rep_full[stage], kCacheHint,
                                 rep_smem + stage * Traits::kRepBytes, 0,
                                 int32_t(kv_row0 * 2 + step * kRepTile));
  };
  if (tid == 0) {
    for (int st = 0; st < kStages; ++st) Barrier::init(&rep_full[st], 1);
    Barrier::init(key_full, 1);
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();
  if (tid == 0) {
    // Keys past the sequence read zeros (padded) or the next sequence (packed): left out of the
    // block's scale and masked below. Rows past the representatives read zeros or other rows:
    // never written back.
    const ContiguousKV kv{p, b, s, kv_head};
    barrier_arrive_expect_tx(key_full, Traits::kStagingBytes);
    for (int panel = 0; panel < 2; ++panel)
      cute::SM90_TMA_LOAD_4D::copy(&maps.k, key_full, kCacheHint,
                                   staging + panel * Traits::KeyStaging::kPanelBytes, panel * 64,
                                   int32_t(kv_head), kv.tma_token(j * kBlock), kv.tma_batch());
    // The combine kernel's representatives: only this thread reads them (by TMA); the others
    // wait for its loads.
    wait_for_previous_kernel();
    for (int step = 0; step < kStages && step < num_tiles; ++step) load_reps(step);
  }
  barrier_wait(key_full, 0);
  const int32_t valid_keys = int32_t(min(int64_t(kBlock), s.len_kv - j * kBlock));
  const float key_scale = convert_keys_to_e4m3<Traits>(staging, key_smem, valid_keys, warp_top);

  uint64_t key_desc[Traits::kSteps];
  k_major_descriptors<typename Traits::E4m3Rows>(sm80::smem_address(key_smem), key_desc);
  const uint32_t rep_address = sm80::smem_address(rep_smem);
  // y in log2 units, times the representative's scale (the rescue kernel divides that out).
  const float y_factor = p.params.scale * detail::kLog2e / key_scale;
  float* best = buffers.representative_best;
  const int64_t ld = buffers.words * 32;

  const auto issue_product = [&](int step, float(&x)[64]) {
    // 64 e4m3 representatives against the block's 128 e4m3 keys.
    issue_tile_gmma<gmma::MMA_64x128x32_F32E4M3E4M3_SS_TN<>, typename Traits::E4m3Rows>(
        rep_address + (step % kStages) * Traits::kRepBytes, key_desc, x);
  };
  const auto wait_for_reps = [&](int step) {
    barrier_wait(&rep_full[step % kStages], (step / kStages) & 1);
  };
  const auto reduce_tile = [&](int step, float(&x)[64]) {
    // Every warp's wgmma has read the stage: refill it with the tile kStages ahead.
    named_barrier_sync(NamedBarrier::kScoreWarpgroup, Traits::kThreads);
    if (tid == 0 && step + kStages < num_tiles) load_reps(step + kStages);
    if (valid_keys < kBlock) {
#pragma unroll
      for (int i = 0; i < 64; ++i)
        if (8 * (i / 4) + 2 * quad + (i % 2) >= valid_keys) x[i] = -INFINITY;
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float m = max_of_half(x, half);
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
      const int32_t rep_row = step * kRepTile + 16 * warp + g + 8 * half;
      if (quad == 0 && rep_row < rep_rows) best[(kv_row0 * 2 + rep_row) * ld + j] = m * y_factor;
    }
  };
  // As the score kernel: tiles in pairs on two accumulators.
  float x_first[64], x_second[64];
  tiles_in_pairs(0, num_tiles, x_first, x_second, wait_for_reps, issue_product, reduce_tile);
}

}  // namespace

bool best_keys(const detail::Problem& p, const int64_t* seq_row_offset,
               const discovery::Buffers& buffers) {
  const int64_t kv_rows = buffers.kv_rows;
  if (p.params.block_size != 128 || p.head_dim != 128 || p.paged() ||
      !tma_addressable(p.k, p.k_stride) || kv_rows == 0)
    return false;
  BestKeyMaps maps;
  maps.k = make_tensor_map(p, p.k, p.k_stride, p.heads_kv, p.varlen ? p.total_kv : p.len_kv,
                           BestKeyTraits<true>::kBlock, "k");
  maps.reps = make_e4m3_rows_map(buffers.representatives_e4m3, kv_rows * 2, p.head_dim,
                                 BestKeyTraits<true>::kRepTile, "e4m3 representatives");
  const dim3 grid(unsigned(num_key_blocks(p.len_kv, p.params.block_size)), unsigned(p.heads_kv),
                  unsigned(p.num_seqs));
  const auto launch = [&](auto traits) {
    using Traits = decltype(traits);
    auto kernel = best_keys_kernel<Traits>;
    FP_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       int(Traits::kSmemBytes)));
    launch_dependent(true, kernel, grid, dim3(Traits::kThreads), Traits::kSmemBytes,
                     static_cast<cudaStream_t>(p.stream), p, seq_row_offset, buffers, maps);
  };
  if (p.dtype == DType::bf16)
    launch(BestKeyTraits<true>{});
  else
    launch(BestKeyTraits<false>{});
  return true;
}

}  // namespace flashprefill::cuda::sm90
