// Which CPU kernel variant runs, chosen at run time by what the processor (and, for AMX, the OS)
// offers. Variants, widest first: amx and avx512bf16 serve bf16 inputs only (attention_bf16.hpp);
// the fp32 kernels (kernels.hpp) run with avx512, avx2 or generic for fp16 and fp32 inputs, and
// for bf16 ones on CPUs without bf16 dot products.
#pragma once

#include "flashprefill/tensor.hpp"

namespace flashprefill::cpu {

enum class Isa { amx, avx512bf16, avx512, avx2, generic };
const char* isa_name(Isa isa);

// The variant that runs inputs of this dtype: the widest one supported, at most the ceiling set by
// set_isa_ceiling or, failing that, by the environment variable
// FLASHPREFILL_CPU_KERNELS=amx|avx512bf16|avx512|avx2|generic (read once). One exception: where
// the CPU has AMX but the OS refused it, bf16 falls back to avx512, which is faster there than
// avx512bf16 (unless the ceiling is avx512bf16 itself).
Isa isa_for(DType dtype);

// Whether this CPU can run the variant (tests run each one that it can).
bool isa_supported(Isa isa);

// Caps the variants for the rest of the process, or (nullptr) returns to the environment's choice:
// for tests. Throws flashprefill::Error when the CPU cannot run `ceiling` itself.
void set_isa_ceiling(const Isa* ceiling);

}  // namespace flashprefill::cpu
