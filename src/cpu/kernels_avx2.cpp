// The CPU kernels for avx2 (compiler flags in src/cpu/CMakeLists.txt).
#define FP_KERNEL_ISA avx2
#include "cpu/kernels_impl.hpp"
