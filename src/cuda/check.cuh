// Every CUDA call and launch is checked; errors carry the call and file:line.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "flashprefill/error.hpp"

#define FP_CUDA_CHECK(call)                                                                      \
  do {                                                                                           \
    const cudaError_t fp_status_ = (call);                                                       \
    if (fp_status_ != cudaSuccess)                                                               \
      throw ::flashprefill::Error(std::string("flashprefill: CUDA error '") +                    \
                                  cudaGetErrorString(fp_status_) +                               \
                                  "' in " #call " at " __FILE__ ":" + std::to_string(__LINE__)); \
  } while (0)

// After a launch: configuration errors show up here, asynchronous faults at the next synchronising
// call.
#define FP_CUDA_CHECK_LAUNCH() FP_CUDA_CHECK(cudaGetLastError())
