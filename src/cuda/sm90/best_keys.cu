// Robust discovery's best keys on Hopper (docs/ROBUST.md; the sm_80 kernel and the rest of the
// second test are in src/cuda/representatives.cu): y[rep][j] = max over block j's keys of
// scale * rep . k, for every representative of the query blocks i >= j.
//
// The score kernel's product turned around: there, 64 pooled keys (M) meet a query block's 128
// queries (N) and each M row is reduced over N; here 64 representatives (M) meet a key block's 128
// keys (N) and each M row is reduced over N by a maximum, which the wgmma accumulator keeps within
// a thread and its quad (max_of_half). The key block is loaded once by TMA and stays in shared
// memory; the representatives stream past it in tiles of 64 rows through a ring of kStages stages,
// in pairs on two accumulators as in the score kernel. No exponentials.
#include "cuda/dependent_launch.cuh"
#include "cuda/dispatch.hpp"
#include "cuda/kv_view.cuh"
#include "cuda/representatives.cuh"
#include "cuda/sm90/score_kernel.cuh"
#include "cuda/sm90/tensor_map.hpp"

namespace flashprefill::cuda::sm90 {
namespace {

struct BestKeyMaps {
  CUtensorMap k;     // as the score kernel's q map: boxes of 128 tokens of one kv head
  CUtensorMap reps;  // the representatives [kv_rows * 2][D], boxes of 64 rows
};

template <typename Traits>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinCtasPerSm)
    best_keys_kernel(const detail::Problem p, const int64_t* seq_row_offset, const Buffers buffers,
                     const __grid_constant__ BestKeyMaps maps) {
  constexpr int kStages = Traits::kStages, kRepTile = Traits::kKeyTile;
  constexpr int kBlock = Traits::kBlockM;  // keys per block == params.block_size (best_keys())
  allow_dependent_launch();                // the rescue kernel
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
  unsigned char* key_smem = smem_raw + ((1024 - raw_address % 1024) % 1024);
  unsigned char* rep_smem = key_smem + Traits::kQBytes;  // stage s at s * kKeyBytes
  auto* rep_full = reinterpret_cast<uint64_t*>(rep_smem + kStages * Traits::kKeyBytes);
  uint64_t* key_full = rep_full + kStages;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, quad = lane % 4;
  constexpr uint64_t kCacheHint = uint64_t(cute::TMA::CacheHintSm90::EVICT_NORMAL);
  const auto load_reps = [&](int step) {  // one thread
    const int stage = step % kStages;
    barrier_arrive_expect_tx(&rep_full[stage], Traits::kKeyBytes);
    for (int panel = 0; panel < Traits::kPanels; ++panel)
      cute::SM90_TMA_LOAD_2D::copy(
          &maps.reps, &rep_full[stage], kCacheHint,
          rep_smem + stage * Traits::kKeyBytes + panel * Traits::KeyPanels::kPanelBytes, panel * 64,
          int32_t(kv_row0 * 2 + step * kRepTile));
  };
  if (tid == 0) {
    for (int st = 0; st < kStages; ++st) Barrier::init(&rep_full[st], 1);
    Barrier::init(key_full, 1);
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();
  if (tid == 0) {
    // Keys past the sequence read zeros (padded) or the next sequence (packed): masked below. Rows
    // past the representatives read zeros or other rows: never written back.
    const ContiguousKV kv{p, b, s, kv_head};
    barrier_arrive_expect_tx(key_full, Traits::kQBytes);
    for (int panel = 0; panel < Traits::kPanels; ++panel)
      cute::SM90_TMA_LOAD_4D::copy(&maps.k, key_full, kCacheHint,
                                   key_smem + panel * Traits::QPanels::kPanelBytes, panel * 64,
                                   int32_t(kv_head), kv.tma_token(j * kBlock), kv.tma_batch());
    // The combine kernel's representatives: only this thread reads them (by TMA); the others
    // wait for its loads.
    wait_for_previous_kernel();
    for (int step = 0; step < kStages && step < num_tiles; ++step) load_reps(step);
  }
  barrier_wait(key_full, 0);

  uint64_t key_desc[Traits::kHeadDim / 16];
  k_major_descriptors<typename Traits::QPanels>(sm80::smem_address(key_smem), key_desc);
  const uint32_t rep_address = sm80::smem_address(rep_smem);
  const int32_t valid_keys = int32_t(min(int64_t(kBlock), s.len_kv - j * kBlock));
  const float scale_log2 = p.params.scale * detail::kLog2e;
  float* best = buffers.representative_best;
  const int64_t ld = buffers.words * 32;

  const auto issue_product = [&](int step, float(&x)[64]) {
    issue_tile_product<Traits>(rep_address + (step % kStages) * Traits::kKeyBytes, key_desc, x);
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
      if (quad == 0 && rep_row < rep_rows) best[(kv_row0 * 2 + rep_row) * ld + j] = m * scale_log2;
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
  if (p.params.block_size != 128 || (p.head_dim != 64 && p.head_dim != 128) || p.paged() ||
      !tma_addressable(p.k, p.k_stride) || kv_rows == 0)
    return false;
  BestKeyMaps maps;
  maps.k = make_tensor_map(p, p.k, p.k_stride, p.heads_kv, p.varlen ? p.total_kv : p.len_kv,
                           ScoreTraits<128, true>::kBlockM, "k");
  maps.reps = make_rows_map(p, buffers.representatives, kv_rows * 2,
                            ScoreTraits<128, true>::kKeyTile, "representatives");
  const dim3 grid(unsigned(num_key_blocks(p.len_kv, p.params.block_size)), unsigned(p.heads_kv),
                  unsigned(p.num_seqs));
  dispatch_head_dim_and_dtype<64, 128>(
      p, "the sm_90 best-key kernel", [&](auto head_dim, auto is_bf16) {
        using Traits = ScoreTraits<decltype(head_dim)::value, decltype(is_bf16)::value>;
        const size_t smem = 1024 + Traits::kQBytes + size_t(Traits::kStages) * Traits::kKeyBytes +
                            8 * (Traits::kStages + 1);
        auto kernel = best_keys_kernel<Traits>;
        FP_CUDA_CHECK(
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
        launch_dependent(true, kernel, grid, dim3(Traits::kThreads), smem,
                         static_cast<cudaStream_t>(p.stream), p, seq_row_offset, buffers, maps);
      });
  return true;
}

}  // namespace flashprefill::cuda::sm90
