// Throughput of the wgmma shapes the score kernel could use, alone on the GPU: back-to-back chains
// of 8 k16 steps (one 64-key tile against 128 or 256 queries, head dim 128) from 1-4 CTAs of one
// warpgroup per SM, A from shared memory (SS) or registers (RS), waiting for each chain (as the
// score kernel does) or keeping one chain in flight behind the one being read (two accumulators;
// ptxas serialises those wgmmas, warning C7514, so that variant measures the serialised form).
// The result decides where the score kernel's time goes (bench/RESULTS.md, session 7).
// Run on the device: WGMMA_PROBE=1 TESTS=0 SANITIZE=0 CLI=0 bash bench/device_run.sh
// (nvcc -std=c++20 -O3 -arch=sm_90a -I src -I <CUTLASS include> bench/wgmma_probe.cu)
#include <cuda_runtime.h>

#include <cstdio>

#include "cuda/sm90/mma.cuh"

namespace sm90 = flashprefill::cuda::sm90;
namespace gmma = cute::SM90::GMMA;

template <int N, bool kRS>
struct Atom;
template <>
struct Atom<128, false> {
  using Op = gmma::MMA_64x128x16_F32BF16BF16_SS<gmma::Major::K, gmma::Major::K>;
};
template <>
struct Atom<256, false> {
  using Op = gmma::MMA_64x256x16_F32BF16BF16_SS<gmma::Major::K, gmma::Major::K>;
};
template <>
struct Atom<128, true> {
  using Op = gmma::MMA_64x128x16_F32BF16BF16_RS<gmma::Major::K, gmma::Major::K>;
};
template <>
struct Atom<256, true> {
  using Op = gmma::MMA_64x256x16_F32BF16BF16_RS<gmma::Major::K, gmma::Major::K>;
};

template <typename Op, int kCount, size_t... I>
__device__ __forceinline__ void ss(uint64_t a, uint64_t b, float (&d)[kCount], gmma::ScaleOut s,
                                   std::index_sequence<I...>) {
  Op::fma(a, b, d[I]..., s);
}
template <typename Op, int kCount, size_t... I>
__device__ __forceinline__ void rs(const uint32_t (&a)[4], uint64_t b, float (&d)[kCount],
                                   gmma::ScaleOut s, std::index_sequence<I...>) {
  Op::fma(a[0], a[1], a[2], a[3], b, d[I]..., s);
}

template <int N, bool kRS>
__device__ __forceinline__ void chain(uint32_t a_addr, uint32_t b_addr,
                                      const uint32_t (&a_regs)[8][4], float (&d)[N / 2]) {
  using Op = typename Atom<N, kRS>::Op;
  sm90::fence_accumulators(d);
  cute::warpgroup_arrive();
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
    const uint32_t k_bytes =
        (kk % 4) * 32;  // 16 elements along a 128-byte row; panels of 64 dims follow
    const uint64_t b = sm90::make_desc_k_major(b_addr + (kk / 4) * N * 128 + k_bytes);
    const auto scale = kk == 0 ? gmma::ScaleOut::Zero : gmma::ScaleOut::One;
    if constexpr (kRS) {
      rs<Op>(a_regs[kk], b, d, scale, std::make_index_sequence<N / 2>{});
    } else {
      const uint64_t a = sm90::make_desc_k_major(a_addr + (kk / 4) * 64 * 128 + k_bytes);
      ss<Op>(a, b, d, scale, std::make_index_sequence<N / 2>{});
    }
  }
  cute::warpgroup_commit_batch();
}

// Reads an accumulator the way the score kernel's skipped tiles do: a max over the thread's values.
template <int kCount>
__device__ __forceinline__ float consume(float (&d)[kCount]) {
  float m = d[0];
#pragma unroll
  for (int i = 1; i < kCount; ++i) m = fmaxf(m, d[i]);
  return m;
}

template <int N, bool kRS, bool kPipelined>
__global__ void __launch_bounds__(128) probe(int iters, float* sink) {
  extern __shared__ unsigned char raw[];
  const uint32_t raw_addr = uint32_t(__cvta_generic_to_shared(raw));
  const uint32_t a_addr = (raw_addr + 1023) / 1024 * 1024, b_addr = a_addr + 16384;
  // Random-looking bf16 in [-1, 1) (never all zeros: zeros run faster than real data).
  auto* words = reinterpret_cast<uint32_t*>(raw + (a_addr - raw_addr));
  for (int n = threadIdx.x; n < (16384 + N * 256) / 4; n += 128) {
    const uint32_t h = (n * 2654435761u) ^ (blockIdx.x * 40503u);
    words[n] =
        ((0x3c00u | (h & 0x7fu)) << 16) | (0xbc00u | ((h >> 8) & 0x7fu));  // two bf16 near +-0.5..1
  }
  uint32_t a_regs[8][4];
#pragma unroll
  for (int kk = 0; kk < 8; ++kk)
#pragma unroll
    for (int r = 0; r < 4; ++r) a_regs[kk][r] = words[(threadIdx.x * 32 + kk * 4 + r) % 4096];
  __syncthreads();
  float m = 0.0f;
  float d0[N / 2], d1[kPipelined ? N / 2 : 1];
  if constexpr (kPipelined) {
    chain<N, kRS>(a_addr, b_addr, a_regs, d0);
    for (int it = 0; it < iters; it += 2) {
      chain<N, kRS>(a_addr, b_addr, a_regs, d1);
      cute::warpgroup_wait<1>();
      sm90::fence_accumulators(d0);
      m += consume(d0);
      chain<N, kRS>(a_addr, b_addr, a_regs, d0);
      cute::warpgroup_wait<1>();
      sm90::fence_accumulators(d1);
      m += consume(d1);
    }
    cute::warpgroup_wait<0>();
    sm90::fence_accumulators(d0);
    m += consume(d0);
  } else {
    for (int it = 0; it < iters; ++it) {
      chain<N, kRS>(a_addr, b_addr, a_regs, d0);
      cute::warpgroup_wait<0>();
      sm90::fence_accumulators(d0);
      m += consume(d0);
    }
  }
  if (m == 12345.0f) sink[threadIdx.x] = m;  // keeps the work alive
}

template <int N, bool kRS, bool kPipelined>
void run(const char* name, int sms) {
  auto kernel = probe<N, kRS, kPipelined>;
  float* sink;
  cudaMalloc(&sink, 4096);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int per_sm : {1, 2, 3, 4}) {
    const int smem = (227 * 1024) / per_sm - 1024;  // at most per_sm CTAs of this kernel per SM
    if (smem < 1024 + 16384 + N * 256) continue;
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    int fit = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit, kernel, 128, smem);
    if (fit != per_sm) continue;
    const int iters = 2000, ctas = sms * per_sm;
    kernel<<<ctas, 128, smem>>>(iters, sink);
    cudaEventRecord(start);
    kernel<<<ctas, 128, smem>>>(iters, sink);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    const double flops = 2.0 * 64 * N * 128 * double(iters) * ctas;
    const cudaError_t err = cudaGetLastError();
    std::printf("%-28s %d CTA/SM  %7.1f TFLOP/s  %s\n", name, per_sm, flops / ms / 1e9,
                err == cudaSuccess ? "" : cudaGetErrorString(err));
  }
  cudaFree(sink);
}

int main() {
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  run<128, false, false>("SS 64x128, wait each", sms);
  run<128, false, true>("SS 64x128, one in flight", sms);
  run<256, false, false>("SS 64x256, wait each", sms);
  run<128, true, false>("RS 64x128, wait each", sms);
  run<128, true, true>("RS 64x128, one in flight", sms);
  run<256, true, false>("RS 64x256, wait each", sms);
  return 0;
}
