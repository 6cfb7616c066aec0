// Block-sparse FlashAttention for Hopper (sm_90a), ALGORITHM.md step 5, in the shape of
// FlashAttention-3: a persistent CTA per SM takes layout rows (128 query rows = one query block
// each) from a global counter, in row_at's order (long rows first), with three warpgroups.
//  - warpgroup 0, the producer (mainloop_load.cuh): one warp takes the next row
//    (row_scheduler.cuh), issues TMA loads of its Q and of the K and V tiles of its kept blocks
//    into a ring of shared-memory stages (attention_traits.cuh), and hands the row to the
//    consumers; with pages of 32 keys or fewer, all four warps issue the K/V loads (kLoad);
//  - warpgroups 1 and 2, the consumers (mainloop_mma.cuh), 64 query rows each: wgmma and the online
//    softmax, then the epilogue shared with sm_80 (cuda/epilogue.cuh).
// Tiles are 128 keys = one key block, so the causal mask is needed only on the diagonal block
// (and on a partial last block, which can only be the diagonal one).
#pragma once

#include <cfloat>

#include "common/constants.hpp"
#include "common/problem.hpp"
#include "cuda/check.cuh"
#include "cuda/epilogue.cuh"
#include "cuda/sm90/attention_traits.cuh"
#include "cuda/sm90/mainloop_load.cuh"
#include "cuda/sm90/mainloop_mma.cuh"
#include "cuda/sm90/row_scheduler.cuh"
#include "cuda/sparse_attention.cuh"

namespace flashprefill::cuda::sm90 {

// kLoad: which producer warps load K/V (mainloop_load.cuh).
template <typename Traits, typename KV, KVLoad kLoad>
__global__ void __launch_bounds__(Traits::kThreads, 1)
    sparse_attention_kernel(const __grid_constant__ SparseAttentionParams params,
                            const __grid_constant__ TensorMaps maps) {
  constexpr int D = Traits::kHeadDim;
  using Half = sm80::HalfType<Traits::kIsBf16>;
  const detail::Problem& p = params.problem;
  constexpr bool kFourWarps = kLoad == KVLoad::kFourWarps;
  using Producer = ProducerMainloop<Traits, KV, kLoad>;

  extern __shared__ unsigned char smem_raw[];
  const SharedStorage<Traits> smem = SharedStorage<Traits>::carve(smem_raw);
  if (threadIdx.x == 0) smem.init_barriers(Producer::kLoadWarps);
  __syncthreads();
  RowScheduler<Traits::kRowHandoverThreads> scheduler{params.work_counter, smem.row_slot};

  // Through a shuffle so the compiler knows it is warp-uniform: descriptors derived from it then
  // live in uniform registers, as wgmma needs, instead of being moved there between wgmmas.
  const int warpgroup = __shfl_sync(0xffffffffu, int(threadIdx.x / 128), 0);

  if (warpgroup == 0) {
    cutlass::arch::warpgroup_reg_dealloc<kFourWarps ? Traits::kFourWarpProducerRegisters
                                                    : Traits::kProducerRegisters>();
    if (threadIdx.x >= 32 * Producer::kLoadWarps) return;  // the loading warps
    const bool leader = threadIdx.x == 0, main_warp = threadIdx.x < 32;
    Producer mainloop;
    // Four loading warps: the first draws each row and hands it to the other three.
    RowScheduler<Traits::kProducerThreads, NamedBarrier::kProducerRow> producer_rows{
        params.work_counter, smem.producer_slot};
    for (;;) {
      int64_t order = main_warp ? scheduler.fetch(leader) : 0;
      if constexpr (kFourWarps) {
        if (main_warp)
          producer_rows.publish(leader, int32_t(order));
        else
          order = producer_rows.receive();
      }
      if (order >= params.max_rows) {
        if (main_warp) scheduler.publish(leader, -1);
        break;
      }
      const RowWork w = row_work<Traits::kBlockM>(params, order);
      if (!w.coord.valid || !w.has_rows)
        continue;              // no query of this block is in the chunk: nothing to write
      if (w.num_tiles == 0) {  // its consumers only write zeros: no Q, no K/V
        if (main_warp) scheduler.publish(leader, int32_t(order));
        continue;
      }
      const auto handover = [&] { scheduler.publish(leader, int32_t(order)); };
      if constexpr (kFourWarps)
        mainloop.load_four_warps(smem, maps, params, w, leader, main_warp, handover);
      else
        mainloop.load(smem, maps, params, w, leader, handover);
    }
    return;
  }

  cutlass::arch::warpgroup_reg_alloc<kFourWarps ? Traits::kFourWarpConsumerRegisters
                                                : Traits::kConsumerRegisters>();
  const int consumer = warpgroup - 1;  // rows 64 * consumer .. + 63 of the block
  const int thread = threadIdx.x % 128, warp = thread / 32, lane = thread % 32;
  const int g = lane / 4, quad = lane % 4;
  const float scale_log2 = p.params.scale * detail::kLog2e;
  const ConsumerTurns turns{consumer};
  turns.start();
  ConsumerMainloop<Traits> mainloop;
  for (;;) {
    const int32_t order = scheduler.receive();
    if (order < 0) break;
    const RowWork w = row_work<Traits::kBlockM>(params, order);
    // wgmma accumulator layout (per warp, as mma.sync's): element 4 * nt + e sits at row
    // 16 * warp + g + 8 * (e / 2), column 8 * nt + 2 * quad + (e % 2).
    const int64_t wg_first_pos = w.block_start + 64 * consumer;
    const int64_t row_pos[2] = {wg_first_pos + warp * 16 + g, wg_first_pos + warp * 16 + g + 8};
    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
    float row_max[2] = {-FLT_MAX,
                        -FLT_MAX};  // raw scores (scale not applied); finite, so no -inf - -inf
    float row_sum[2] = {0.0f, 0.0f};
    if (w.num_tiles > 0)
      mainloop.mma(smem, params, w, consumer, turns, scale_log2, row_pos, o, row_max, row_sum);
    store_rows<Half, D / 8>(p, w.coord, w.shift, row_pos, w.positions, row_sum, row_max, scale_log2,
                            quad, [&](int dt, int e) { return o[4 * dt + e]; });
  }
  turns.finish();
}

template <int kHeadDim, bool kIsBf16>
void launch_sparse_attention(const SparseAttentionParams& params, const TensorMaps& maps) {
  using Traits = AttentionTraits<kHeadDim, kIsBf16>;
  if (params.max_rows == 0) return;
  const detail::Problem& p = params.problem;
  auto kernel = !p.paged() ? sparse_attention_kernel<Traits, ContiguousKV, KVLoad::kOneWarp>
                : p.pages.page_size <= kFourWarpMaxPageSize
                    ? sparse_attention_kernel<Traits, PagedKV, KVLoad::kFourWarps>
                    : sparse_attention_kernel<Traits, PagedKV, KVLoad::kOneWarp>;
  FP_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     Traits::kSmemBytes));
  // Persistent: one CTA per SM (or fewer when there are fewer rows), rows from params.work_counter.
  if (params.work_counter == nullptr)
    throw Error("flashprefill: internal: the sm_90 attention kernel needs a work counter");
  FP_CUDA_CHECK(cudaMemsetAsync(params.work_counter, 0, sizeof(int), params.stream));
  const int64_t ctas =
      params.num_sms > 0 && params.num_sms < params.max_rows ? params.num_sms : params.max_rows;
  kernel<<<dim3(unsigned(ctas)), Traits::kThreads, Traits::kSmemBytes, params.stream>>>(params,
                                                                                        maps);
  FP_CUDA_CHECK_LAUNCH();
}

}  // namespace flashprefill::cuda::sm90
