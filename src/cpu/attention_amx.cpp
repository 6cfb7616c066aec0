// bf16 attention with AMX tiles (compiler flags in src/cpu/CMakeLists.txt). Every tile is 16 rows
// of 64 bytes: a 16 x 32 bf16 operand or a 16 x 16 fp32 accumulator. Each product step keeps a
// 32 x 32 block of its result in four accumulators (tiles 0-3), fed by two tiles of the first
// operand (4, 5: Q or P, rows 0-15 and 16-31) and two of the packed second one (6, 7).
#include <immintrin.h>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <cstdint>

#include "cpu/attention_bf16.hpp"

namespace flashprefill::cpu::kernels::amx {
namespace {

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

struct Products {
  Products() {
    TileConfig config;
    for (int t = 0; t < 8; ++t) {
      config.bytes_per_row[t] = 64;
      config.rows[t] = 16;
    }
    _tile_loadconfig(&config);  // per call: other code on this thread (oneDNN) may have changed it
  }
  void finish() { _tile_release(); }

  // s[0..31][0 .. chunks * 32) = q[32][D] * K^T, K packed [D / 2][ld][2].
  void qk(const uint16_t* q, int64_t D, const uint16_t* k, int64_t ld, int64_t chunks, float* s) {
    const int64_t q_bytes = D * 2, k_bytes = ld * 4, s_bytes = ld * 4;
    for (int64_t c = 0; c < chunks; ++c) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t d = 0; d < D; d += 32) {
        _tile_loadd(4, q + d, q_bytes);
        _tile_loadd(5, q + 16 * D + d, q_bytes);
        const uint16_t* k_tile = k + (d / 2) * ld * 2 + c * 64;  // dims d .. d + 31, keys 32c ..
        _tile_loadd(6, k_tile, k_bytes);
        _tile_loadd(7, k_tile + 32, k_bytes);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      float* out = s + c * 32;
      _tile_stored(0, out, s_bytes);
      _tile_stored(1, out + 16, s_bytes);
      _tile_stored(2, out + 16 * ld, s_bytes);
      _tile_stored(3, out + 16 * ld + 16, s_bytes);
    }
  }

  // o[32][D] += p[32][0 .. chunks * 32) * V, V packed [ld / 2][D][2].
  void pv(const uint16_t* p, int64_t ld, int64_t chunks, const uint16_t* v, int64_t D, float* o) {
    const int64_t p_bytes = ld * 2, v_bytes = D * 4, o_bytes = D * 4;
    for (int64_t d = 0; d < D; d += 32) {
      _tile_loadd(0, o + d, o_bytes);
      _tile_loadd(1, o + d + 16, o_bytes);
      _tile_loadd(2, o + 16 * D + d, o_bytes);
      _tile_loadd(3, o + 16 * D + d + 16, o_bytes);
      for (int64_t c = 0; c < chunks; ++c) {
        _tile_loadd(4, p + c * 32, p_bytes);
        _tile_loadd(5, p + 16 * ld + c * 32, p_bytes);
        const uint16_t* v_tile = v + c * 16 * D * 2 + d * 2;  // keys 32c .. 32c + 31, dims d ..
        _tile_loadd(6, v_tile, v_bytes);
        _tile_loadd(7, v_tile + 32, v_bytes);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, o + d, o_bytes);
      _tile_stored(1, o + d + 16, o_bytes);
      _tile_stored(2, o + 16 * D + d, o_bytes);
      _tile_stored(3, o + 16 * D + d + 16, o_bytes);
    }
  }
};

}  // namespace

bool enable() {
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  static const bool granted = syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  return granted;
#else
  return false;
#endif
}

}  // namespace flashprefill::cpu::kernels::amx

#define FP_BF16_ISA amx
#include "cpu/attention_bf16_impl.hpp"
#undef FP_BF16_ISA
