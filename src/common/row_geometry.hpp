// The geometry of one layout row, shared by every backend, the fp64 reference, the CUDA kernels
// and the tools. A layout row is (sequence b, query head h, query block i of the sequence's chunk):
// its rows are numbered seq_row_offset[b] + h * num_query_blocks + i (BlockSparseLayout), its query
// block has the absolute (key-axis) index first_query_block + i, and its query rows are the chunk
// rows whose absolute positions (bottom-right aligned: chunk row t sits at L_kv - L_q + t) fall in
// that block.
#pragma once

#include <cstdint>

#include "common/problem.hpp"

namespace flashprefill::detail {

// Absolute query positions [begin, end): empty when begin >= end.
struct PositionRange {
  int64_t begin = 0, end = 0;
  FP_HOST_DEVICE bool empty() const { return begin >= end; }
};

struct LayoutRow {
  int64_t seq = 0, head = 0;
  int64_t block_local = 0;  // i: 0 .. num_query_blocks - 1
  int64_t block_abs = 0;    // first_query_block + i: the query block's index on the key axis
  SeqExtent extent;

  // Absolute position of chunk row 0.
  FP_HOST_DEVICE int64_t shift() const { return extent.len_kv - extent.len_q; }
  // Causal key blocks 0 .. block_abs.
  FP_HOST_DEVICE int64_t num_causal_blocks() const { return block_abs + 1; }
  FP_HOST_DEVICE int64_t key_blocks(int64_t block) const {
    return num_key_blocks(extent.len_kv, block);
  }
  FP_HOST_DEVICE int64_t kv_head(int64_t group) const { return head / group; }
  FP_HOST_DEVICE int64_t block_start(int64_t block) const { return block_abs * block; }
  // The positions among [first, first + count) that hold a query of the chunk; a kernel that
  // splits the block in slices asks per slice.
  FP_HOST_DEVICE PositionRange positions(int64_t first, int64_t count) const {
    const int64_t s = shift(), last = first + count;
    return {first > s ? first : s, last < extent.len_kv ? last : extent.len_kv};
  }
  // The positions of the row's queries: the whole block but for a partial first or last block.
  FP_HOST_DEVICE PositionRange positions(int64_t block) const {
    return positions(block_start(block), block);
  }
};

// The row (seq, head, block_local) of sequence extent s, for block size `block` (a kernel
// specialised for one block size passes it as a constant: the divisions become shifts).
FP_HOST_DEVICE inline LayoutRow layout_row(const SeqExtent& s, int64_t seq, int64_t head,
                                           int64_t block_local, int64_t block) {
  LayoutRow r;
  r.seq = seq;
  r.head = head;
  r.block_local = block_local;
  r.block_abs = first_query_block(s.len_q, s.len_kv, block) + block_local;
  r.extent = s;
  return r;
}

// Layout rows of one sequence: H_q * num_query_blocks.
FP_HOST_DEVICE inline int64_t layout_rows_of(const Problem& p, const SeqExtent& s) {
  return p.heads_q * num_query_blocks(s.len_q, s.len_kv, p.block());
}

// Host code: visit(row, index) for every layout row in layout order. Reads cu_seqlens, so `p` must
// point at host memory (a CPU problem, or a copy whose cu_seqlens were copied to the host).
template <typename Visit>
void for_each_layout_row(const Problem& p, Visit&& visit) {
  int64_t index = 0;
  for (int64_t b = 0; b < p.num_seqs; ++b) {
    const SeqExtent s = p.seq(b);
    const int64_t nqb = num_query_blocks(s.len_q, s.len_kv, p.block());
    for (int64_t h = 0; h < p.heads_q; ++h)
      for (int64_t i = 0; i < nqb; ++i) visit(layout_row(s, b, h, i, p.block()), index++);
  }
}

}  // namespace flashprefill::detail
