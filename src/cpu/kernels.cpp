// Entry points of the CPU kernels: pick the widest instruction set the CPU supports, once.
#include "cpu/kernels.hpp"

namespace flashprefill::cpu::kernels {

#define FP_DECLARE_KERNELS(isa)                                                                              \
  namespace isa {                                                                                             \
  void qk(const float*, int64_t, int64_t, const float*, int64_t, int64_t, float*, int64_t);                 \
  void pv(const float*, int64_t, int64_t, int64_t, const float*, int64_t, float*);                          \
  void exp2_rows(float*, int64_t, int64_t, int64_t, const float*);                                           \
  void online_softmax_block(float*, int64_t, int64_t, int64_t, int64_t, int64_t, float*, float*, float*, int64_t); \
  }
FP_DECLARE_KERNELS(avx512)
FP_DECLARE_KERNELS(avx2)
FP_DECLARE_KERNELS(generic)
#undef FP_DECLARE_KERNELS

namespace {

struct KernelTable {
  const char* name;
  decltype(&generic::qk) qk;
  decltype(&generic::pv) pv;
  decltype(&generic::exp2_rows) exp2_rows;
  decltype(&generic::online_softmax_block) online_softmax_block;
};

#define FP_KERNEL_TABLE(isa) KernelTable{#isa, isa::qk, isa::pv, isa::exp2_rows, isa::online_softmax_block}

const KernelTable& table() {
  static const KernelTable chosen = [] {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq"))
      return FP_KERNEL_TABLE(avx512);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return FP_KERNEL_TABLE(avx2);
#endif
    return FP_KERNEL_TABLE(generic);
  }();
  return chosen;
}

}  // namespace

void qk(const float* q, int64_t m, int64_t D, const float* kt, int64_t ld_kt, int64_t n, float* s, int64_t ld_s) {
  table().qk(q, m, D, kt, ld_kt, n, s, ld_s);
}
void pv(const float* p, int64_t ld_p, int64_t m, int64_t n, const float* v, int64_t D, float* o) {
  table().pv(p, ld_p, m, n, v, D, o);
}
void exp2_rows(float* x, int64_t rows, int64_t cols, int64_t ld, const float* row_max) {
  table().exp2_rows(x, rows, cols, ld, row_max);
}
void online_softmax_block(float* s, int64_t m, int64_t m_pad, int64_t ld, int64_t keys, int64_t first_visible,
                          float* row_max, float* row_sum, float* o, int64_t D) {
  table().online_softmax_block(s, m, m_pad, ld, keys, first_visible, row_max, row_sum, o, D);
}
const char* isa_name() { return table().name; }

}  // namespace flashprefill::cpu::kernels
