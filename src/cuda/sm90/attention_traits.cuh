// The sm_90 attention kernel's fixed shapes (tile sizes, warpgroups, pipeline depths, register
// split) and its shared-memory layout.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "cuda/sm80/mma.cuh"
#include "cuda/sm90/mma.cuh"

namespace flashprefill::cuda::sm90 {

template <int kHeadDim_, bool kIsBf16_>
struct AttentionTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr bool kIsBf16 = kIsBf16_;
  static constexpr int kBlockM = 128;   // query rows per CTA: the whole query block
  static constexpr int kBlockN = 128;   // keys per tile: one key block
  static constexpr int kConsumers = 2;  // consumer warpgroups, 64 rows each
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kStages =
      kHeadDim == 64 ? 4 : 2;  // K/V ring depth: what fits beside two Q buffers
  static constexpr int kQBuffers = 2;
  static constexpr int kPanels = kHeadDim / 64;  // 64-column TMA boxes per row
  static constexpr int kProducerRegisters = 24;
  static constexpr int kConsumerRegisters = 240;
  // When all four producer warps load (KVLoad::kFourWarps), they need more than 24 registers not
  // to spill; the consumers give up 8.
  static constexpr int kFourWarpProducerRegisters = 40;
  static constexpr int kFourWarpConsumerRegisters = 232;
  using QPanels = SwizzledPanels<kBlockM>;
  using KVPanels = SwizzledPanels<kBlockN>;
  static constexpr int kQBytes = kPanels * QPanels::kPanelBytes;
  static constexpr int kTileBytes = kPanels * KVPanels::kPanelBytes;  // one K or V tile
  static constexpr int kProducerThreads = 128;                        // the producer warpgroup
  // mbarriers, then two row slots for the consumers and two for the producer's other warps when
  // all four load (the order index of the next row, handed over at each rendezvous).
  static constexpr int kBarrierBytes = 8 * (2 * kQBuffers + 4 * kStages) + 4 * 2 * 2;
  // +1024: the dynamic shared window is aligned up to the swizzle atom inside the kernel.
  static constexpr int kSmemBytes =
      kQBuffers * kQBytes + 2 * kStages * kTileBytes + kBarrierBytes + 1024;
  // The producer warp and both consumer warpgroups meet at each row handover.
  static constexpr int kRowHandoverThreads = 32 + 128 * kConsumers;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory budget of one H100 SM");
};

struct TensorMaps {
  CUtensorMap q, k,
      v;  // [batch, token, head, dim] seen as 4-D (dim, head, token, batch), 128B swizzle
};

// Q[kQBuffers] | K[kStages] | V[kStages] | mbarriers | row slots, from the dynamic shared window
// aligned up to the 128B-swizzle atom (1024 bytes). Each full/empty pair guards one buffer: TMA
// completes `full`, the consumers' releases complete `empty`.
template <typename Traits>
struct SharedStorage {
  unsigned char *q, *k, *v;
  uint64_t *q_full, *q_empty, *k_full, *v_full, *k_empty, *v_empty;
  int32_t* row_slot;       // [2], see RowScheduler
  int32_t* producer_slot;  // [2], the same among the producer's warps when all four load

  __device__ __forceinline__ static SharedStorage carve(unsigned char* smem_raw) {
    SharedStorage s;
    const uint32_t raw_address = sm80::smem_address(smem_raw);
    s.q = smem_raw + ((1024 - raw_address % 1024) % 1024);
    s.k = s.q + Traits::kQBuffers * Traits::kQBytes;
    s.v = s.k + Traits::kStages * Traits::kTileBytes;
    auto* barriers = reinterpret_cast<uint64_t*>(s.v + Traits::kStages * Traits::kTileBytes);
    s.q_full = barriers;
    s.q_empty = s.q_full + Traits::kQBuffers;
    s.k_full = s.q_empty + Traits::kQBuffers;
    s.v_full = s.k_full + Traits::kStages;
    s.k_empty = s.v_full + Traits::kStages;
    s.v_empty = s.k_empty + Traits::kStages;
    s.row_slot = reinterpret_cast<int32_t*>(s.v_empty + Traits::kStages);
    s.producer_slot = s.row_slot + 2;
    return s;
  }

  // One thread, before the CTA's first barrier. kv_full_arrivals: how many threads arm each K/V
  // tile's TMA (one per loading warp).
  __device__ __forceinline__ void init_barriers(int kv_full_arrivals) const {
    for (int b = 0; b < Traits::kQBuffers; ++b) {
      Barrier::init(&q_full[b], 1);
      Barrier::init(&q_empty[b], Traits::kConsumers);
    }
    for (int s = 0; s < Traits::kStages; ++s) {
      Barrier::init(&k_full[s], kv_full_arrivals);
      Barrier::init(&v_full[s], kv_full_arrivals);
      Barrier::init(&k_empty[s], Traits::kConsumers);  // one arrival per consumer warpgroup
      Barrier::init(&v_empty[s], Traits::kConsumers);
    }
    cutlass::arch::fence_barrier_init();
  }
};

}  // namespace flashprefill::cuda::sm90
