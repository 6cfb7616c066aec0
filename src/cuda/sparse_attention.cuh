// The contract between the CUDA backend's host code (src/cuda/backend.cu) and the block-sparse
// attention kernels of ALGORITHM.md step 5: the sm_90 kernel (src/cuda/sm90/) and the sm_80 kernel
// (src/cuda/sm80/), which is also the fallback on every other GPU.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/problem.hpp"
#include "common/row_geometry.hpp"

namespace flashprefill::cuda {

// One unit of work is one layout row: (sequence b, query head h, local query block i). Its query
// rows are the chunk rows t whose absolute position (L_kv - L_q) + t falls in absolute block
// first_query_block(b) + i; its key blocks are col_idx[row_ptr[row] .. row_ptr[row + 1]) (or, when
// `dense`, every block 0 .. i_abs), each masked causally (s <= position) and to s < L_kv.
struct SparseAttentionParams {
  detail::Problem problem;        // device pointers, strides, resolved params (block_size, scale)
  const int64_t* seq_row_offset;  // [num_seqs + 1], device
  const int64_t* row_ptr;         // [max_rows + 1], device (unused when dense)
  const int32_t* col_idx;         // device (unused when dense)
  bool dense = false;             // our dense path: the same kernel with every causal block kept
  // device, rows in the order to start them (longest first); nullptr: see row_at
  const int32_t* row_order = nullptr;
  int64_t max_rows = 0;  // rows r >= seq_row_offset[num_seqs] are skipped
  // device int: persistent kernels zero it at launch and take rows from it
  int* work_counter = nullptr;
  int num_sms = 0;
  cudaStream_t stream = nullptr;
};

// The row started order_index-th. Without row_order: padded batches go by query block, last first
// (causal rows grow with the block, so the long rows start first and short ones fill the tail),
// then sequence, then head, so the query heads of one GQA group run side by side and read the same
// K/V tiles while they are in L2; varlen batches take the last rows first.
__device__ inline int64_t row_at(const SparseAttentionParams& params, int64_t order_index) {
  if (params.row_order) return params.row_order[order_index];
  const detail::Problem& p = params.problem;
  if (p.varlen) return params.max_rows - 1 - order_index;
  // padded: row = (b * H_q + h) * nqb + i for the B * H_q * nqb rows (a caller's layout may have
  // room for more: those indices stay past the end, where decode_row finds no row). Rows fit int32
  // (as col_idx does), and 32-bit division is a few instructions where 64-bit is a subroutine call.
  const int32_t heads = int32_t(p.num_seqs * p.heads_q), order = int32_t(order_index);
  const int32_t nqb = int32_t(num_query_blocks(p.len_q, p.len_kv, p.params.block_size));
  if (order >= heads * nqb) return order_index;
  return int64_t(order % heads) * nqb + (nqb - 1 - order / heads);
}

struct RowCoord : detail::LayoutRow {
  bool valid = false;  // false for rows past the last sequence's rows
};

// Row -> (b, h, i): a binary search over seq_row_offset (num_seqs is small).
__device__ inline RowCoord decode_row(const SparseAttentionParams& params, int64_t row) {
  const detail::Problem& p = params.problem;
  RowCoord c;
  if (row >= params.seq_row_offset[p.num_seqs]) return c;
  int64_t lo = 0, hi = p.num_seqs - 1;  // the last b with seq_row_offset[b] <= row
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (params.seq_row_offset[mid] <= row)
      lo = mid;
    else
      hi = mid - 1;
  }
  const detail::SeqExtent extent = p.seq(lo);
  const int64_t block = p.params.block_size;
  const int32_t nqb = int32_t(num_query_blocks(extent.len_q, extent.len_kv, block));
  // rows fit int32, as col_idx does
  const int32_t local = int32_t(row - params.seq_row_offset[lo]);
  static_cast<detail::LayoutRow&>(c) =
      detail::layout_row(extent, lo, local / nqb, local % nqb, block);
  c.valid = true;
  return c;
}

namespace sm90 {
bool supports_attention(const detail::Problem& p, int device_major,
                        int device_minor);  // sm_90, head dim, block 128
void run_attention(const SparseAttentionParams& params);
}  // namespace sm90

namespace sm80 {
bool supports_attention(const detail::Problem& p, int device_major, int device_minor);
void run_attention(const SparseAttentionParams& params);
}  // namespace sm80

}  // namespace flashprefill::cuda
