// K and V of one call packed for the bf16 attention kernels (attention_bf16.hpp), and the call of
// those kernels for one layout row. Plain C++: the ISA-specific code is behind
// kernels::*::attend_rows.
#pragma once

#include <cstdint>
#include <vector>

#include "common/problem.hpp"
#include "cpu/attention_bf16.hpp"
#include "cpu/isa.hpp"

namespace flashprefill::cpu {

// Per (key block slot, kv head), in the pooled-key slot numbering of flashprefill.hpp, one packed
// K block and one packed V block of n_pad * D bf16 each. O(L * H_kv * D) memory, made once per
// call.
struct PackedBf16KV {
  int64_t n_pad = 0, block_elems = 0;
  std::vector<uint16_t> k, v;
};
PackedBf16KV pack_bf16_kv(const detail::Problem& p);

// One query head's layout row for attend_rows_bf16: the head and its kept key blocks (ascending).
struct HeadBlocks {
  int64_t head;
  const int32_t* blocks;
  int64_t num_blocks;
};

// Step 5 for query rows [t_begin, t_end) of sequence seq, for up to kernels::kMaxGroupHeads query
// heads of one GQA group, with the bf16 kernels of `isa` (amx or avx512bf16). `scratch` is the
// thread's own.
void attend_rows_bf16(Isa isa, const detail::Problem& p, const PackedBf16KV& kv, int64_t seq,
                      const detail::SeqExtent& extent, int64_t t_begin, int64_t t_end,
                      const HeadBlocks* heads, int64_t num_heads, std::vector<float>& scratch);

// Pooled keys rounded to bf16 (exact: scoring reads them so), packed per (sequence, kv head) as one
// K block of ld = round_up(num_key_blocks, kKeyChunk) columns, for the bf16 step-2 kernels.
struct PackedPooledKeys {
  std::vector<std::vector<uint16_t>> per_pair;  // index seq * H_kv + kv_head
  std::vector<int64_t> ld;
};
PackedPooledKeys pack_pooled_keys_bf16(const detail::Problem& p, const float* pooled_keys);

// Step 2 for query rows [t_begin, t_end) of (sequence seq, head) in query block block_abs, with the
// bf16 kernels of `isa`: scores[0 .. block_abs].
void score_row_bf16(Isa isa, const detail::Problem& p, const PackedPooledKeys& pooled, int64_t seq,
                    const detail::SeqExtent& extent, int64_t head, int64_t block_abs,
                    int64_t t_begin, int64_t t_end, float* scores, std::vector<float>& scratch);

}  // namespace flashprefill::cpu
