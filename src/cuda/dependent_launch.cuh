// Programmatic dependent launch (compute capability 9.0 and later) for the short kernels that
// follow one another in robust discovery: a kernel launched with launch_dependent may start while
// the one before it in the stream finishes. It does what needs no result of that kernel (its row
// geometry, loads of the call's inputs), then wait_for_previous_kernel() blocks until that kernel
// has completed and its writes are visible. allow_dependent_launch() in the earlier kernel lets the
// dependent grid be scheduled before it ends (its CTAs then take SM slots only as the earlier
// kernel's last CTAs free them). On older GPUs both are no-ops and the launch is an ordinary one.
//
// What a dependent kernel reads before its wait must have been written before the last kernel
// launched without launch_dependent: a chain of dependent launches may overlap more than two
// kernels, and only the wait orders a kernel after its predecessor (and, through that one's wait,
// after the ones before).
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "cuda/check.cuh"

namespace flashprefill::cuda {

__device__ __forceinline__ void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// kernel<<<grid, block, smem, stream>>>(args...), allowed to overlap the stream's previous kernel
// when `overlap` (the device's compute capability is 9.0 or later).
template <typename... Params, typename... Args>
void launch_dependent(bool overlap, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                      cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute = {};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = overlap ? 1 : 0;
  FP_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace flashprefill::cuda
