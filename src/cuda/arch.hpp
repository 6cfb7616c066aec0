// Which kernels a CUDA device gets (src/cuda/backend.cu defines these).
#pragma once

#include "common/problem.hpp"

namespace flashprefill::cuda {

struct DeviceInfo {
  int major = 0, minor = 0, sms = 0;
};
DeviceInfo device_info(const detail::Problem& p);

// True on compute capability 9.0 when the sm_90a kernels were built, unless the environment
// variable FLASHPREFILL_CUDA_KERNELS=ampere asks for the sm_80 kernels (read on every call, so
// tests can run both kernel families on one GPU; also a fallback switch for users).
bool use_hopper_kernels(const DeviceInfo& info);

}  // namespace flashprefill::cuda
