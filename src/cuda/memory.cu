// Device memory primitives for Buffer and copy_bytes (see src/device_memory.hpp).
#include "check.cuh"
#include "device_memory.hpp"

namespace flashprefill::cuda {

void* device_malloc(int device, size_t bytes) {
  int previous = 0;
  FP_CUDA_CHECK(cudaGetDevice(&previous));
  FP_CUDA_CHECK(cudaSetDevice(device));
  void* ptr = nullptr;
  const cudaError_t status = cudaMalloc(&ptr, bytes);
  cudaSetDevice(previous);
  if (status != cudaSuccess)
    throw Error("flashprefill: cudaMalloc of " + std::to_string(bytes) + " bytes on cuda:" +
                std::to_string(device) + " failed: " + cudaGetErrorString(status));
  return ptr;
}

void device_free(int device, void* ptr) noexcept {
  int previous = 0;
  if (cudaGetDevice(&previous) != cudaSuccess) return;
  cudaSetDevice(device);
  cudaFree(ptr);
  cudaSetDevice(previous);
}

void memcpy_any(void* dst, const void* src, size_t bytes) {
  FP_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
}

int device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error so later calls start clean
    return 0;
  }
  return count;
}

void synchronize(int device) {
  FP_CUDA_CHECK(cudaSetDevice(device));
  FP_CUDA_CHECK(cudaDeviceSynchronize());
}

void set_device(int device) { FP_CUDA_CHECK(cudaSetDevice(device)); }

}  // namespace flashprefill::cuda
