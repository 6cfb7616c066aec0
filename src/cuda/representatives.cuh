// Where robust discovery's kernels (docs/ROBUST.md; representatives.cu, sm90/best_keys.cu) find
// their rows: the representatives are stored per (sequence, kv head, query block), and a key block
// meets those of the later query blocks that the exact rule does not keep whole.
#pragma once

#include <cstdint>

#include "common/problem.hpp"
#include "common/row_geometry.hpp"

namespace flashprefill::cuda::discovery {

// The representatives' row of (sequence b, kv head, query block block_local of the chunk): the
// layout row of the group's first head, divided by the group (seq_row_offset counts heads_q rows
// per query block).
__device__ __forceinline__ int64_t kv_row_of(const detail::Problem& p,
                                             const int64_t* seq_row_offset, int64_t b,
                                             int64_t kv_head, int64_t nqb, int64_t block_local) {
  return seq_row_offset[b] / p.group + kv_head * nqb + block_local;
}

// The query blocks (absolute indices [begin, end)) whose representatives key block j of sequence b
// meets: i >= j, and before the last query blocks, which the exact rule keeps whole
// (detail::ForcedBlocks::whole_row). Their representatives are rows 2 (i - begin) + rep from
// kv_row0 on (set only when the range is not empty).
struct KeyBlockRows {
  int64_t begin = 0, end = 0, kv_row0 = 0;
  __device__ bool empty() const { return begin >= end; }
  __device__ int64_t rows() const { return 2 * (end - begin); }
};
__device__ inline KeyBlockRows key_block_rows(const detail::Problem& p,
                                              const int64_t* seq_row_offset,
                                              const detail::SeqExtent& s, int64_t b,
                                              int64_t kv_head, int64_t j, int64_t block) {
  const int64_t first_qb = first_query_block(s.len_q, s.len_kv, block);
  const int64_t nqb = num_query_blocks(s.len_q, s.len_kv, block);
  const int64_t nkb = num_key_blocks(s.len_kv, block);
  KeyBlockRows r;
  r.begin = max(j, first_qb);
  r.end = min(first_qb + nqb,
              nkb - int64_t(p.params.last_full_blocks > 0 ? p.params.last_full_blocks : 0));
  if (!r.empty()) r.kv_row0 = kv_row_of(p, seq_row_offset, b, kv_head, nqb, r.begin - first_qb);
  return r;
}

// The (sequence, kv head, query block) of group row x of a grid with x over (query block, kv head),
// kv heads fastest (x = block_local * heads_kv + kv_head; a kernel with several rows per CTA
// passes blockIdx.x * rows_per_cta + its row), and y over sequences. row0 is the layout row of the
// group's first head (head kv_head * group + u is u * nqb rows further), kv_row the
// representatives' row.
struct GroupRow {
  detail::LayoutRow first;  // the layout row of the group's first head
  int64_t kv_head, nqb, row0, kv_row;
};
// False (and r unset) past a varlen sequence's query blocks (and past the grid's last row, whose
// block_local is then >= grid_query_blocks >= nqb) and on a query block the exact rule keeps
// whole: the row has nothing to do.
//
// The block counts and kv_row_of's division are computed here in 32 bits: the CUDA backend keeps
// tokens and layout rows below 2^31 (api.cpp), where the results are the same, and the 64-bit
// division subroutine's calls made the per-row kernels keep values on the stack.
__device__ inline bool group_row_of_grid(const detail::Problem& p, const int64_t* seq_row_offset,
                                         uint32_t x, GroupRow& r) {
  const uint32_t heads_kv = uint32_t(p.heads_kv);
  const int64_t b = blockIdx.y;
  // Read first, so that its round trip overlaps varlen's reads of cu_seqlens (b < num_seqs).
  const int64_t seq_row0 = seq_row_offset[b];
  const int32_t block_local = int32_t(x / heads_kv);
  r.kv_head = x % heads_kv;
  const detail::SeqExtent s = p.seq(b);
  const int32_t block = p.params.block_size, len_q = int32_t(s.len_q), len_kv = int32_t(s.len_kv);
  const int32_t first_qb = detail::first_query_block_in(len_q, len_kv, block);
  r.nqb = detail::num_query_blocks_in(len_q, len_kv, block);
  if (block_local >= r.nqb) return false;
  const int32_t key_blocks = detail::num_key_blocks_in(len_kv, block);
  r.first.seq = b;
  r.first.head = r.kv_head * p.group;
  r.first.block_local = block_local;
  r.first.block_abs = first_qb + block_local;
  r.first.extent = s;
  const detail::ForcedBlocks<int64_t> forced(r.first.block_abs, key_blocks, p.params);
  if (forced.whole_row) return false;
  r.row0 = seq_row0 + r.kv_head * p.group * r.nqb + block_local;
  r.kv_row = int64_t(uint32_t(seq_row0) / uint32_t(p.group)) + r.kv_head * r.nqb + block_local;
  return true;
}

}  // namespace flashprefill::cuda::discovery
