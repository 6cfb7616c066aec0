// The sm_90a building blocks of the attention and score kernels: warpgroup MMA (wgmma) through
// CuTe's instruction atoms, shared-memory matrix descriptors for TMA's 128-byte swizzle, and the
// mbarrier/TMA wrappers of cutlass/arch. Only the instruction wrappers come from CUTLASS; the
// tiling is this file's and attention_kernel.cuh's.
#pragma once

#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cute/arch/copy_sm90_desc.hpp>
#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/arch/mma_sm90_desc.hpp>
#include <cute/arch/mma_sm90_gmma.hpp>

#include <cstdint>
#include <cstdio>
#include <type_traits>
#include <utility>

#include "cuda/named_barrier.cuh"
#include "cuda/sm80/mma.cuh"

namespace flashprefill::cuda::sm90 {

namespace gmma = cute::SM90::GMMA;
using Barrier = cutlass::arch::ClusterTransactionBarrier;  // a CTA is a cluster of one here

// A tile of 16-bit values as TMA writes it with CU_TENSOR_MAP_SWIZZLE_128B and a 64-element inner
// box: `panels` column panels of [rows][64], each row 128 bytes, 16-byte chunks XOR-swizzled within
// 8-row (1024-byte) atoms. Panel p holds columns [64p, 64p + 64).
template <int kRows>
struct SwizzledPanels {
  static constexpr int kPanelCols = 64;
  static constexpr int kRowBytes = 128;
  static constexpr int kPanelBytes = kRows * kRowBytes;
  // Byte offset of the 16-byte chunk `chunk` (8 elements, counted over the whole row) of row `row`.
  __device__ __forceinline__ static uint32_t offset(int row, int chunk) {
    return uint32_t((chunk / 8) * kPanelBytes + row * kRowBytes + (((chunk % 8) ^ (row % 8)) << 4));
  }
};

// Shared-memory matrix descriptor (PTX ISA "matrix-descriptor-format") for a 128B-swizzled operand.
//  K-major (rows of the operand hold K contiguously: Q, K): 8-row groups 1024 bytes apart (SBO);
//  the
//   16-element K step of one wgmma stays inside a 128-byte row, so LBO is unused (1).
//  MN-major (V as the B operand of P V, D contiguous): 64-element MN chunks one panel apart (LBO),
//   8-key groups 1024 bytes apart (SBO).
__device__ __forceinline__ uint64_t make_desc_k_major(uint32_t smem_byte_address) {
  cute::GmmaDescriptor desc;
  desc.bitfield.start_address_ = uint16_t(smem_byte_address >> 4);
  desc.bitfield.leading_byte_offset_ = 1;
  desc.bitfield.stride_byte_offset_ = 1024 >> 4;
  desc.bitfield.base_offset_ = 0;
  desc.bitfield.layout_type_ = uint8_t(gmma::LayoutType::B128);
  return desc.desc_;
}
__device__ __forceinline__ uint64_t make_desc_mn_major(uint32_t smem_byte_address,
                                                       uint32_t panel_bytes) {
  cute::GmmaDescriptor desc;
  desc.bitfield.start_address_ = uint16_t(smem_byte_address >> 4);
  desc.bitfield.leading_byte_offset_ = uint16_t(panel_bytes >> 4);
  desc.bitfield.stride_byte_offset_ = 1024 >> 4;
  desc.bitfield.base_offset_ = 0;
  desc.bitfield.layout_type_ = uint8_t(gmma::LayoutType::B128);
  return desc.desc_;
}
// The descriptor of the operand `bytes` further on: start_address_ is the low 14-bit field (address
// / 16) and shared memory ends below 2^18 bytes, so the add never carries out of it. One 32-bit add
// instead of rebuilding the bit fields.
__device__ __forceinline__ uint64_t desc_advance(uint64_t desc, uint32_t bytes) {
  return (desc & 0xffffffff00000000ull) | uint32_t(uint32_t(desc) + (bytes >> 4));
}

// wgmma m64nNk16 with fp32 accumulators, A and B both from shared memory (K-major).
template <bool kIsBf16, int N>
struct GmmaSS;
// wgmma m64nNk16 with A from registers (K-major) and B from shared memory, MN-major.
template <bool kIsBf16, int N>
struct GmmaRS;

#define FP_GMMA_ATOMS(N)                                                              \
  template <>                                                                         \
  struct GmmaSS<true, N> {                                                            \
    using Op = gmma::MMA_64x##N##x16_F32BF16BF16_SS<gmma::Major::K, gmma::Major::K>;  \
  };                                                                                  \
  template <>                                                                         \
  struct GmmaSS<false, N> {                                                           \
    using Op = gmma::MMA_64x##N##x16_F32F16F16_SS<gmma::Major::K, gmma::Major::K>;    \
  };                                                                                  \
  template <>                                                                         \
  struct GmmaRS<true, N> {                                                            \
    using Op = gmma::MMA_64x##N##x16_F32BF16BF16_RS<gmma::Major::K, gmma::Major::MN>; \
  };                                                                                  \
  template <>                                                                         \
  struct GmmaRS<false, N> {                                                           \
    using Op = gmma::MMA_64x##N##x16_F32F16F16_RS<gmma::Major::K, gmma::Major::MN>;   \
  };
FP_GMMA_ATOMS(64)
FP_GMMA_ATOMS(128)
#undef FP_GMMA_ATOMS

// The atoms take their N/2 accumulators as separate references; expand an array into them.
template <typename Op, int kCount, size_t... I>
__device__ __forceinline__ void gmma_ss_impl(uint64_t a, uint64_t b, float (&d)[kCount],
                                             gmma::ScaleOut scale, std::index_sequence<I...>) {
  Op::fma(a, b, d[I]..., scale);
}
template <typename Op, int kCount, size_t... I>
__device__ __forceinline__ void gmma_rs_impl(const uint32_t (&a)[4], uint64_t b, float (&d)[kCount],
                                             std::index_sequence<I...>) {
  Op::fma(a[0], a[1], a[2], a[3], b, d[I]..., gmma::ScaleOut::One);
}

// d (+)= A B^T for one k16 step: scale Zero overwrites d (the first step of a fresh S).
template <bool kIsBf16, int N>
__device__ __forceinline__ void gmma_ss(uint64_t a_desc, uint64_t b_desc, float (&d)[N / 2],
                                        gmma::ScaleOut scale) {
  gmma_ss_impl<typename GmmaSS<kIsBf16, N>::Op>(a_desc, b_desc, d, scale,
                                                std::make_index_sequence<N / 2>{});
}
template <bool kIsBf16, int N>
__device__ __forceinline__ void gmma_rs(const uint32_t (&a)[4], uint64_t b_desc,
                                        float (&d)[N / 2]) {
  gmma_rs_impl<typename GmmaRS<kIsBf16, N>::Op>(a, b_desc, d, std::make_index_sequence<N / 2>{});
}

// Keeps the compiler from moving accumulator reads/writes across the asynchronous wgmma.
template <int kCount>
__device__ __forceinline__ void fence_accumulators(float (&d)[kCount]) {
#pragma unroll
  for (int i = 0; i < kCount; ++i) cute::warpgroup_fence_operand(d[i]);
}

// Pins descriptors (and P fragments) before the wgmma fence: the compiler must not compute them
// between the fence and the commit, which makes ptxas serialise the wgmmas (warning C7513).
template <int kCount>
__device__ __forceinline__ void fence_descriptors(uint64_t (&desc)[kCount]) {
#pragma unroll
  for (int i = 0; i < kCount; ++i) asm volatile("" : "+l"(desc[i])::"memory");
}

// CUTLASS's mbarrier wait and arrive are asm volatile without a memory clobber, so the compiler may
// move ordinary memory accesses across them; these wrappers add the clobber, so that what a thread
// reads after a wait or writes before an arrive stays on that side of it.
__device__ __forceinline__ void barrier_wait(uint64_t* barrier, uint32_t phase) {
#ifdef FLASHPREFILL_HANG_CHECK
  // Debug builds (-DFLASHPREFILL_HANG_CHECK=ON): a wait that lasts seconds names itself and traps
  // instead of hanging the GPU.
  for (int attempt = 0; !Barrier::test_wait(barrier, phase, 1); ++attempt) {
    if (attempt == (1 << 24)) {
      printf("flashprefill: mbarrier wait timed out: block %d thread %d barrier smem+%u phase %u\n",
             int(blockIdx.x), int(threadIdx.x), unsigned(__cvta_generic_to_shared(barrier)), phase);
      __trap();
    }
  }
#else
  Barrier::wait(barrier, phase);
#endif
  asm volatile("" ::: "memory");
}
__device__ __forceinline__ void barrier_arrive(uint64_t* barrier) {
  asm volatile("" ::: "memory");
  Barrier::arrive(barrier);
}
__device__ __forceinline__ void barrier_arrive_expect_tx(uint64_t* barrier, uint32_t bytes) {
  asm volatile("" ::: "memory");
  Barrier::arrive_and_expect_tx(barrier, bytes);
}

// 2^x on the SFU (ex2.approx: ~2 ulp, far below bf16/fp16 output precision); exp2(-inf) = 0.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace flashprefill::cuda::sm90
