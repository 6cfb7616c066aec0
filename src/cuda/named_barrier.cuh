// Every named barrier (bar.sync / bar.arrive, ids 1-15; 0 is __syncthreads) of the CUDA kernels.
// Ids are per kernel: a kernel uses only its own, so ids of different kernels may coincide.
#pragma once

namespace flashprefill::cuda {

enum class NamedBarrier : int {
  // sm_90 attention: the consumer warpgroups' turns at issuing wgmmas (consumer c waits on
  // kConsumerTurn0 + c), and the rendezvous at which the producer warp hands them their next row.
  kConsumerTurn0 = 1,
  kConsumerTurn1 = 2,
  kRowHandover = 3,
  // sm_90 attention, small pages loaded by the whole producer warpgroup: its first warp hands
  // each row to the other three.
  kProducerRow = 4,
  // sm_90 score kernel: its one warpgroup (barrier 0 is the same set of threads, but says more).
  kScoreWarpgroup = 1,
  // select_row (score kernels of both families): warp 0 collects the other warps' kept counts.
  kSelectCount = 2,
};

// Among `threads` threads, a multiple of 32: the warps that take part.
__device__ __forceinline__ void named_barrier_sync(NamedBarrier id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(int(id)), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_barrier_arrive(NamedBarrier id, int threads) {
  asm volatile("bar.arrive %0, %1;" ::"r"(int(id)), "r"(threads) : "memory");
}

}  // namespace flashprefill::cuda
