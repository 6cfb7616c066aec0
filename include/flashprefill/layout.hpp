// flashprefill: the block-sparse layout of ALGORITHM.md step 4, in CSR form.
#pragma once

#include <cstdint>

#include "flashprefill/tensor.hpp"

#if defined(__CUDACC__)
#define FP_HOST_DEVICE __host__ __device__
#else
#define FP_HOST_DEVICE
#endif

namespace flashprefill {

// Query row t of a chunk of L_q queries against L_kv keys sits at absolute position
// (L_kv - L_q) + t; its query block is that position / B. A sequence's query blocks are
// therefore first_query_block .. first_query_block + num_query_blocks - 1 (absolute indices).
// In any signed integer type (GPU kernels whose values fit use 32 bits: no 64-bit division).
namespace detail {
template <typename Index>
FP_HOST_DEVICE constexpr Index first_query_block_in(Index len_q, Index len_kv, Index block_size) {
  return (len_kv - len_q) / block_size;
}
template <typename Index>
FP_HOST_DEVICE constexpr Index num_query_blocks_in(Index len_q, Index len_kv, Index block_size) {
  return len_q == 0 ? 0 : (len_kv - 1) / block_size - (len_kv - len_q) / block_size + 1;
}
template <typename Index>
FP_HOST_DEVICE constexpr Index num_key_blocks_in(Index len_kv, Index block_size) {
  return (len_kv + block_size - 1) / block_size;
}
}  // namespace detail
FP_HOST_DEVICE constexpr int64_t first_query_block(int64_t len_q, int64_t len_kv,
                                                   int64_t block_size) {
  return detail::first_query_block_in(len_q, len_kv, block_size);
}
FP_HOST_DEVICE constexpr int64_t num_query_blocks(int64_t len_q, int64_t len_kv,
                                                  int64_t block_size) {
  return detail::num_query_blocks_in(len_q, len_kv, block_size);
}
FP_HOST_DEVICE constexpr int64_t num_key_blocks(int64_t len_kv, int64_t block_size) {
  return detail::num_key_blocks_in(len_kv, block_size);
}

// Rows are ordered (sequence, query head, local query block):
//   row(b, h, i) = seq_row_offset[b] + h * num_query_blocks(b) + i,   0 <= i < num_query_blocks(b),
// and local block i is absolute query block first_query_block(b) + i. Row r's kept key blocks are
// col_idx[row_ptr[r] .. row_ptr[r + 1]), absolute key block indices of that sequence, ascending.
// All arrays live on one device; the capacities below are host-side bounds for allocation.
struct BlockSparseLayout {
  int block_size = 128;
  int64_t num_seqs = 0;
  int64_t num_heads = 0;      // H_q
  int64_t max_rows = 0;       // row_ptr holds max_rows + 1 entries
  int64_t max_cols = 0;       // col_idx capacity: every causal block of every row
  TensorView seq_row_offset;  // int64 [num_seqs + 1]
  TensorView row_ptr;         // int64 [max_rows + 1]; entries past the last row are unspecified
  TensorView col_idx;         // int32 [max_cols]
};

// A layout with its own memory.
struct LayoutStorage {
  Buffer seq_row_offset, row_ptr, col_idx;
  BlockSparseLayout view;
};

}  // namespace flashprefill
