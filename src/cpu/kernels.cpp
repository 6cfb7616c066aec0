// Entry points of the CPU kernels and the choice of variant: by the CPU's feature flags (not its
// model name, so AMD and Intel parts both get their widest path), at most a ceiling from the
// environment or a test.
#include "cpu/kernels.hpp"

#include <atomic>
#include <cstdlib>
#include <string>

#include "cpu/attention_bf16.hpp"
#include "cpu/isa.hpp"
#include "flashprefill/error.hpp"
#include "flashprefill/flashprefill.hpp"

namespace flashprefill::cpu {
namespace kernels {

#define FP_DECLARE_KERNELS(isa)                                                                  \
  namespace isa {                                                                                \
  void qk(const float*, int64_t, int64_t, const float*, int64_t, int64_t, float*, int64_t);      \
  void pv(const float*, int64_t, int64_t, int64_t, const float*, int64_t, float*);               \
  void exp2_rows(float*, int64_t, int64_t, int64_t, const float*);                               \
  void online_softmax_block(float*, int64_t, int64_t, int64_t, int64_t, int64_t, float*, float*, \
                            float*, int64_t);                                                    \
  }
FP_DECLARE_KERNELS(avx512)
FP_DECLARE_KERNELS(avx2)
FP_DECLARE_KERNELS(generic)
#undef FP_DECLARE_KERNELS

namespace {

struct KernelTable {
  decltype(&generic::qk) qk;
  decltype(&generic::pv) pv;
  decltype(&generic::exp2_rows) exp2_rows;
  decltype(&generic::online_softmax_block) online_softmax_block;
};

#define FP_KERNEL_TABLE(isa) \
  KernelTable { isa::qk, isa::pv, isa::exp2_rows, isa::online_softmax_block }
const KernelTable kAvx512 = FP_KERNEL_TABLE(avx512), kAvx2 = FP_KERNEL_TABLE(avx2),
                  kGeneric = FP_KERNEL_TABLE(generic);
#undef FP_KERNEL_TABLE

}  // namespace
}  // namespace kernels

namespace {

bool cpu_has(Isa isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
#if defined(FLASHPREFILL_CPU_BF16_KERNELS)  // the bf16 kernels are built (src/cpu/CMakeLists.txt)
  const bool avx512bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
  const bool amx = avx512bf16 && __builtin_cpu_supports("amx-tile") &&
                   __builtin_cpu_supports("amx-bf16") && kernels::amx::enable();
#else
  const bool avx512bf16 = false, amx = false;
#endif
  switch (isa) {
    case Isa::amx:
      return amx;
    case Isa::avx512bf16:
      return avx512bf16;
    case Isa::avx512:
      return avx512;
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::generic:
      return true;
  }
  return false;
#else
  return isa == Isa::generic;
#endif
}

// The processor has AMX tiles for bf16, whether or not the OS lets this process use them.
bool amx_hardware() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("amx-bf16");
#else
  return false;
#endif
}

constexpr Isa kAll[] = {Isa::amx, Isa::avx512bf16, Isa::avx512, Isa::avx2, Isa::generic};

bool parse_isa(const std::string& name, Isa& isa) {
  for (Isa candidate : kAll)
    if (name == isa_name(candidate)) {
      isa = candidate;
      return true;
    }
  return false;
}

// The ceiling from FLASHPREFILL_CPU_KERNELS, or amx (no cap).
Isa environment_ceiling() {
  static const Isa ceiling = [] {
    const char* value = std::getenv("FLASHPREFILL_CPU_KERNELS");
    Isa isa = Isa::amx;
    if (value == nullptr || *value == '\0') return isa;
    if (!parse_isa(value, isa))
      throw Error(std::string("flashprefill: FLASHPREFILL_CPU_KERNELS is '") + value +
                  "'; expected amx, avx512bf16, avx512, avx2 or generic");
    return isa;
  }();
  return ceiling;
}

std::atomic<int> forced_ceiling{-1};  // set_isa_ceiling's value, -1 for none

Isa ceiling() {
  const int forced = forced_ceiling.load(std::memory_order_relaxed);
  return forced >= 0 ? static_cast<Isa>(forced) : environment_ceiling();
}

const kernels::KernelTable& fp32_table() {
  switch (isa_for(DType::fp32)) {
    case Isa::avx512:
      return kernels::kAvx512;
    case Isa::avx2:
      return kernels::kAvx2;
    default:
      return kernels::kGeneric;
  }
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::amx:
      return "amx";
    case Isa::avx512bf16:
      return "avx512bf16";
    case Isa::avx512:
      return "avx512";
    case Isa::avx2:
      return "avx2";
    case Isa::generic:
      return "generic";
  }
  return "unknown";
}

bool isa_supported(Isa isa) {
  static const bool supported[] = {cpu_has(Isa::amx), cpu_has(Isa::avx512bf16),
                                   cpu_has(Isa::avx512), cpu_has(Isa::avx2), true};
  return supported[static_cast<int>(isa)];
}

Isa isa_for(DType dtype) {
  const bool bf16_products = dtype == DType::bf16;  // amx and avx512bf16 multiply bf16 only
  const Isa cap = ceiling();
  for (Isa isa : kAll) {
    if (isa < cap || (!bf16_products && isa < Isa::avx512) || !isa_supported(isa)) continue;
    // On a core with AMX whose tiles the OS refused, vdpbf16ps multiplies at half the rate of fp32
    // FMAs (measured on Sapphire Rapids-class cores, bench/RESULTS.md): fall back to avx512 there,
    // unless avx512bf16 itself is asked for.
    if (isa == Isa::avx512bf16 && cap != Isa::avx512bf16 && amx_hardware()) continue;
    return isa;
  }
  return Isa::generic;
}

void set_isa_ceiling(const Isa* isa) {
  if (isa && !isa_supported(*isa))
    throw Error(std::string("flashprefill: the CPU kernel variant ") + isa_name(*isa) +
                " is not supported by this CPU");
  forced_ceiling.store(isa ? static_cast<int>(*isa) : -1, std::memory_order_relaxed);
}

namespace kernels {

void qk(const float* q, int64_t m, int64_t D, const float* kt, int64_t ld_kt, int64_t n, float* s,
        int64_t ld_s) {
  fp32_table().qk(q, m, D, kt, ld_kt, n, s, ld_s);
}
void pv(const float* p, int64_t ld_p, int64_t m, int64_t n, const float* v, int64_t D, float* o) {
  fp32_table().pv(p, ld_p, m, n, v, D, o);
}
void exp2_rows(float* x, int64_t rows, int64_t cols, int64_t ld, const float* row_max) {
  fp32_table().exp2_rows(x, rows, cols, ld, row_max);
}
void online_softmax_block(float* s, int64_t m, int64_t m_pad, int64_t ld, int64_t keys,
                          int64_t first_visible, float* row_max, float* row_sum, float* o,
                          int64_t D) {
  fp32_table().online_softmax_block(s, m, m_pad, ld, keys, first_visible, row_max, row_sum, o, D);
}

}  // namespace kernels
}  // namespace flashprefill::cpu

namespace flashprefill {
const char* cpu_kernel_variant(DType dtype) {
  if (dtype != DType::bf16 && dtype != DType::fp16 && dtype != DType::fp32)
    throw Error(std::string("flashprefill: cpu_kernel_variant: dtype ") + dtype_name(dtype) +
                "; expected bf16, fp16 or fp32");
  return cpu::isa_name(cpu::isa_for(dtype));
}
}  // namespace flashprefill
