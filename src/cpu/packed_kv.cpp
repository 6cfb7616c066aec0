#include "cpu/packed_kv.hpp"

#include <algorithm>
#include <string>

#include "common/constants.hpp"
#include "common/half.hpp"
#include "cpu/attention_bf16.hpp"
#include "cpu/parallel.hpp"
#include "flashprefill/error.hpp"

namespace flashprefill::cpu {

using detail::Problem;
using detail::SeqExtent;

PackedBf16KV pack_bf16_kv(const Problem& p) {
  PackedBf16KV kv;
  const int64_t D = p.head_dim, block = p.block();
  kv.n_pad = (block + kernels::kKeyChunk - 1) / kernels::kKeyChunk * kernels::kKeyChunk;
  kv.block_elems = kv.n_pad * D;
  const int64_t slots = detail::stage_shapes_of(p).pooled_key_slots;
  kv.k.assign(static_cast<size_t>(slots * p.heads_kv * kv.block_elems), 0);
  kv.v.assign(kv.k.size(), 0);
  const uint16_t* k_in = static_cast<const uint16_t*>(p.k);
  const uint16_t* v_in = static_cast<const uint16_t*>(p.v);
  for (int64_t b = 0; b < p.num_seqs; ++b) {
    const SeqExtent s = p.seq(b);
    const int64_t slot0 = p.pooled_slot0(b, s);
    parallel_for(num_key_blocks(s.len_kv, block) * p.heads_kv, [&](int64_t n) {
      const int64_t j = n / p.heads_kv, kv_head = n % p.heads_kv;
      uint16_t* k = &kv.k[((slot0 + j) * p.heads_kv + kv_head) * kv.block_elems];
      uint16_t* v = &kv.v[((slot0 + j) * p.heads_kv + kv_head) * kv.block_elems];
      const int64_t keys = std::min(block, s.len_kv - j * block);
      for (int64_t c = 0; c < keys; ++c) {
        const uint16_t* key = k_in + p.k_offset(b, s, j * block + c, kv_head);
        const uint16_t* value = v_in + p.v_offset(b, s, j * block + c, kv_head);
        for (int64_t d = 0; d < D; ++d) {
          k[((d / 2) * kv.n_pad + c) * 2 + d % 2] = key[d];
          v[((c / 2) * D + d) * 2 + c % 2] = value[d];
        }
      }
    });
  }
  return kv;
}

void attend_rows_bf16(Isa isa, const Problem& p, const PackedBf16KV& kv, int64_t seq,
                      const SeqExtent& extent, int64_t t_begin, int64_t t_end,
                      const HeadBlocks* heads, int64_t num_heads, std::vector<float>& scratch) {
  if (num_heads < 1 || num_heads > kernels::kMaxGroupHeads)
    throw Error("flashprefill: internal error: attend_rows_bf16 given " +
                std::to_string(num_heads) + " heads");
  const int64_t D = p.head_dim, kv_head = heads[0].head / p.group;
  const size_t floats = static_cast<size_t>(FP_BF16_ROWS_SCRATCH_FLOATS(kv.n_pad, D)) + 16;
  if (scratch.size() < floats) scratch.resize(floats);
  kernels::Bf16Rows rows{};
  rows.num_heads = num_heads;
  for (int64_t h = 0; h < num_heads; ++h) {
    kernels::Bf16Head& head = rows.heads[h];
    head.q = static_cast<const uint16_t*>(p.q) + p.q_offset(seq, extent, t_begin, heads[h].head);
    head.out = static_cast<uint16_t*>(p.out) + p.out_offset(seq, extent, t_begin, heads[h].head);
    head.lse = p.lse ? p.lse + p.lse_offset(seq, extent, t_begin, heads[h].head) : nullptr;
    head.blocks = heads[h].blocks;
    head.num_blocks = heads[h].num_blocks;
  }
  rows.q_stride = p.q_stride.token;
  rows.out_stride = p.out_stride.token;
  rows.m = t_end - t_begin;
  rows.first_pos = extent.len_kv - extent.len_q + t_begin;
  rows.len_kv = extent.len_kv;
  rows.block = p.block();
  rows.block_stride = p.heads_kv * kv.block_elems;
  const int64_t first_slot = (p.pooled_slot0(seq, extent) * p.heads_kv + kv_head) * kv.block_elems;
  rows.k_packed = kv.k.data() + first_slot;
  rows.v_packed = kv.v.data() + first_slot;
  rows.n_pad = kv.n_pad;
  rows.head_dim = D;
  rows.factor = p.params.scale * detail::kLog2e;
  const uintptr_t address = reinterpret_cast<uintptr_t>(scratch.data());
  rows.scratch = reinterpret_cast<float*>((address + 63) / 64 * 64);  // 64-byte aligned
#if defined(FLASHPREFILL_CPU_BF16_KERNELS)
  if (isa == Isa::amx) return kernels::amx::attend_rows(rows);
  if (isa == Isa::avx512bf16) return kernels::avx512bf16::attend_rows(rows);
#endif
  throw Error(
      std::string("flashprefill: internal error: no bf16 attention kernel for the CPU variant ") +
      isa_name(isa));
}

PackedPooledKeys pack_pooled_keys_bf16(const Problem& p, const float* pooled_keys) {
  PackedPooledKeys packed;
  const int64_t D = p.head_dim;
  packed.per_pair.resize(static_cast<size_t>(p.num_seqs * p.heads_kv));
  packed.ld.assign(packed.per_pair.size(), 0);
  parallel_for(static_cast<int64_t>(packed.per_pair.size()), [&](int64_t n) {
    const int64_t b = n / p.heads_kv, kv_head = n % p.heads_kv;
    const SeqExtent s = p.seq(b);
    const int64_t nkb = num_key_blocks(s.len_kv, p.block()), slot0 = p.pooled_slot0(b, s);
    const int64_t ld =
        std::max<int64_t>(kernels::kKeyChunk,
                          (nkb + kernels::kKeyChunk - 1) / kernels::kKeyChunk * kernels::kKeyChunk);
    std::vector<uint16_t>& keys = packed.per_pair[n];
    keys.assign(static_cast<size_t>(ld * D), 0);
    for (int64_t j = 0; j < nkb; ++j)
      for (int64_t d = 0; d < D; ++d)
        keys[((d / 2) * ld + j) * 2 + d % 2] =
            detail::float_to_bf16(pooled_keys[((slot0 + j) * p.heads_kv + kv_head) * D + d]);
    packed.ld[n] = ld;
  });
  return packed;
}

void score_row_bf16(Isa isa, const Problem& p, const PackedPooledKeys& pooled, int64_t seq,
                    const SeqExtent& extent, int64_t head, int64_t block_abs, int64_t t_begin,
                    int64_t t_end, float* scores, std::vector<float>& scratch) {
  const int64_t D = p.head_dim, pair = seq * p.heads_kv + head / p.group,
                shift = extent.len_kv - extent.len_q;
  kernels::Bf16ScoreRow row{};
  row.q = static_cast<const uint16_t*>(p.q) + p.q_offset(seq, extent, t_begin, head);
  row.q_stride = p.q_stride.token;
  row.m = t_end - t_begin;
  row.kbar = pooled.per_pair[pair].data();
  row.ld = pooled.ld[pair];
  row.num_blocks = block_abs + 1;
  // Step 2's mask: the diagonal block counts for a row once the row sees its last valid key.
  const int64_t last_key = std::min((block_abs + 1) * p.block(), extent.len_kv) - 1;
  row.diagonal_from = std::max<int64_t>(0, last_key - (shift + t_begin));
  row.head_dim = D;
  row.factor = p.params.scale * detail::kLog2e;
  row.scores = scores;
  const size_t floats = static_cast<size_t>(FP_BF16_SCORE_SCRATCH_FLOATS(row.m, row.ld, D)) + 16;
  if (scratch.size() < floats) scratch.resize(floats);
  const uintptr_t address = reinterpret_cast<uintptr_t>(scratch.data());
  row.scratch = reinterpret_cast<float*>((address + 63) / 64 * 64);
#if defined(FLASHPREFILL_CPU_BF16_KERNELS)
  if (isa == Isa::amx) return kernels::amx::score_row(row);
  if (isa == Isa::avx512bf16) return kernels::avx512bf16::score_row(row);
#endif
  throw Error(
      std::string("flashprefill: internal error: no bf16 scoring kernel for the CPU variant ") +
      isa_name(isa));
}

}  // namespace flashprefill::cpu
