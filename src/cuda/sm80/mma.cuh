// Warp-level tensor-core primitives of sm_80 (also run on sm_90): mma.sync m16n8k16 with fp32
// accumulation, ldmatrix, cp.async. Shared by the attention kernel and the score kernel.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace flashprefill::cuda::sm80 {

template <bool kIsBf16>
struct HalfType;
template <>
struct HalfType<true> {
  using type = __nv_bfloat16;
  using pair = __nv_bfloat162;
  static __device__ __forceinline__ pair from_floats(float a, float b) {
    return __floats2bfloat162_rn(a, b);
  }
  static __device__ __forceinline__ type from_float(float a) { return __float2bfloat16_rn(a); }
  static __device__ __forceinline__ float to_float(type a) { return __bfloat162float(a); }
};
template <>
struct HalfType<false> {
  using type = __half;
  using pair = __half2;
  static __device__ __forceinline__ pair from_floats(float a, float b) {
    return __floats2half2_rn(a, b);
  }
  static __device__ __forceinline__ type from_float(float a) { return __float2half_rn(a); }
  static __device__ __forceinline__ float to_float(type a) { return __half2float(a); }
};

// d += a b for one m16n8k8 step: a = rows g, g + 8 of the m16 x k8 tile (k 2 quad, + 1), b = column
// g (k 2 quad, + 1).
template <bool kIsBf16>
__device__ __forceinline__ void mma_1688(float (&d)[4], const uint32_t (&a)[2], uint32_t b) {
  if constexpr (kIsBf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(b));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(b));
  }
}

// D = A * B + D for one m16n8k16 tile. a: 4 regs (row-major A), b: 2 regs (col-major B), d: 4
// floats.
template <bool kIsBf16>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4],
                                          const uint32_t (&b)[2]) {
  if constexpr (kIsBf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

__device__ __forceinline__ uint32_t smem_address(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(smem_row)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(smem_row)));
}

// The same at a shared-memory byte address (address arithmetic kept in 32 bits).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_row));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_row));
}

// 16-byte asynchronous copy global -> shared; bytes_valid < 16 zero-fills the rest (0: all zeros).
__device__ __forceinline__ void cp_async_16(void* smem, const void* global, int bytes_valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(smem)),
               "l"(global), "r"(bytes_valid));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// Asynchronous copy global -> shared of kBytes (4, 8, or a multiple of 16) aligned bytes, cached
// in L1 (.ca, the only kind below 16 bytes), and the wait for all of the thread's copies. The wait
// is a compiler memory barrier: no block barrier follows it to keep the shared-memory reads after
// it.
template <int kBytes>
__device__ __forceinline__ void cp_async(void* smem, const void* global) {
  if constexpr (kBytes <= 16) {
    static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16);
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(smem_address(smem)),
                 "l"(global), "n"(kBytes)
                 : "memory");
  } else {
    static_assert(kBytes % 16 == 0);
#pragma unroll
    for (int c = 0; c < kBytes / 16; ++c)
      cp_async<16>(static_cast<char*>(smem) + 16 * c, static_cast<const char*>(global) + 16 * c);
  }
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
}

template <typename Pair>
__device__ __forceinline__ uint32_t pack(Pair value) {
  return *reinterpret_cast<uint32_t*>(&value);
}

// A [rows][kHeadDim] tile of 16-bit values in shared memory, rows of kHeadDim * 2 bytes split in
// 16-byte chunks; chunk c of row r is stored at chunk c ^ (r % 8) so that ldmatrix's eight row
// addresses of one 8x8 matrix hit eight different bank groups (no conflicts).
template <int kHeadDim>
struct SwizzledTile {
  static constexpr int kChunks = kHeadDim / 8;                        // 16-byte chunks per row
  __device__ __forceinline__ static int offset(int row, int chunk) {  // in elements
    return row * kHeadDim + ((chunk ^ (row & 7)) << 3);
  }
};

// x += A B^T for one warp: rows a_row0 .. a_row0 + 15 of tile a against rows b_row0 ..
// b_row0 + kRows - 1 of tile b (both SwizzledTile<kHeadDim>, K = kHeadDim), as kRows / 8 n8
// accumulator tiles (x[n]: b rows b_row0 + 8n ..).
template <int kHeadDim, int kRows, bool kIsBf16, typename Element>
__device__ __forceinline__ void warp_product_abt(float (&x)[kRows / 8][4], const Element* a,
                                                 int a_row0, const Element* b, int b_row0) {
  using Swizzle = SwizzledTile<kHeadDim>;
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
    uint32_t a_frag[4];
    ldmatrix_x4(a_frag, a + Swizzle::offset(a_row0 + (lane % 16), 2 * kk + lane / 16));
#pragma unroll
    for (int np = 0; np < kRows / 16; ++np) {
      const int b_row = b_row0 + 16 * np + (lane % 8) + (lane / 16) * 8;
      uint32_t b_frag[4];
      ldmatrix_x4(b_frag, b + Swizzle::offset(b_row, 2 * kk + (lane / 8) % 2));
      const uint32_t b_low[2] = {b_frag[0], b_frag[1]}, b_high[2] = {b_frag[2], b_frag[3]};
      mma_16816<kIsBf16>(x[2 * np], a_frag, b_low);
      mma_16816<kIsBf16>(x[2 * np + 1], a_frag, b_high);
    }
  }
}

}  // namespace flashprefill::cuda::sm80
