// Which layout rows a persistent sm_90 attention CTA runs, and how its producer warp hands each to
// the consumer warpgroups. Rows come from a global counter as the CTA gets free for them, in
// row_at's order (long rows first): CTAs that drew long rows take fewer, so every SM ends at about
// the same time.
#pragma once

#include <cstdint>

#include "common/row_geometry.hpp"
#include "cuda/named_barrier.cuh"
#include "cuda/sparse_attention.cuh"

namespace flashprefill::cuda::sm90 {

// One layout row's work, decided identically by every thread (producer and consumers agree).
struct RowWork {
  RowCoord coord;
  int64_t row = 0, shift = 0, block_start = 0, kv_head = 0;
  detail::PositionRange positions;  // of the row's queries
  const int32_t* blocks = nullptr;  // kept key blocks (nullptr when dense)
  int num_tiles = 0;
  bool has_rows = false;  // false: no query of this row block is in the chunk

  __device__ __forceinline__ int32_t key_block(const SparseAttentionParams& params,
                                               int tile) const {
    return params.dense ? int32_t(tile) : blocks[tile];
  }
};

template <int kBlockM>
__device__ __forceinline__ RowWork row_work(const SparseAttentionParams& params,
                                            int64_t order_index) {
  const detail::Problem& p = params.problem;
  RowWork w;
  w.row = row_at(params, order_index);
  w.coord = decode_row(params, w.row);
  if (!w.coord.valid) return w;
  w.shift = w.coord.shift();
  w.block_start = w.coord.block_start(kBlockM);
  w.positions = w.coord.positions(kBlockM);
  w.has_rows = !w.positions.empty();
  w.kv_head = w.coord.kv_head(p.group);
  w.blocks = params.dense ? nullptr : params.col_idx + params.row_ptr[w.row];
  w.num_tiles = params.dense ? int(w.coord.num_causal_blocks())
                             : int(params.row_ptr[w.row + 1] - params.row_ptr[w.row]);
  return w;
}

// The row handover: the producer warp publishes the order index of the next row (-1: no more
// rows) in one of two slots, alternating, then meets the consumers at a named barrier; they read
// the slot right after. The producer's next write to that slot comes after the next rendezvous,
// which the consumers reach only once they have read it.
// The same hand-over, on barrier kBarrier, serves the producer warpgroup's own warps when they all
// load (small pages, KVLoad::kFourWarps): its first warp publishes to the other three.
template <int kHandoverThreads, NamedBarrier kBarrier = NamedBarrier::kRowHandover>
struct RowScheduler {
  int* work_counter;
  int32_t* row_slot;
  int rendezvous = 0;

  // Producer warp, all lanes (named barriers count whole warps): the next row's order index.
  __device__ __forceinline__ int64_t fetch(bool leader) const {
    const int64_t order = leader ? atomicAdd(work_counter, 1) : 0;
    return __shfl_sync(0xffffffffu, order, 0);
  }
  __device__ __forceinline__ void publish(bool leader, int32_t order) {
    if (leader) row_slot[rendezvous % 2] = order;
    named_barrier_sync(kBarrier, kHandoverThreads);
    ++rendezvous;
  }
  // Consumers: the next row's order index, or -1.
  __device__ __forceinline__ int32_t receive() {
    named_barrier_sync(kBarrier, kHandoverThreads);
    return row_slot[rendezvous++ % 2];
  }
};

}  // namespace flashprefill::cuda::sm90
