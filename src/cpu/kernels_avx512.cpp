// The CPU kernels for avx512 (compiler flags in src/cpu/CMakeLists.txt).
#define FP_KERNEL_ISA avx512
#include "cpu/kernels_impl.hpp"
