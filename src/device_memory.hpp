// Device memory primitives behind Buffer and copy_bytes: the CUDA backend implements them
// (src/cuda/memory.cu), or src/cuda_unavailable.cpp throws when the library has no CUDA.
#pragma once

#include <cstddef>

namespace flashprefill::cuda {

void* device_malloc(int device, size_t bytes);
void device_free(int device, void* ptr) noexcept;
// cudaMemcpy with cudaMemcpyDefault (unified addressing), then synchronise.
void memcpy_any(void* dst, const void* src, size_t bytes);
int device_count() noexcept;
void synchronize(int device);
void set_device(int device);

}  // namespace flashprefill::cuda
