// The CPU kernels for generic (compiler flags in src/cpu/CMakeLists.txt).
#define FP_KERNEL_ISA generic
#include "cpu/kernels_impl.hpp"
