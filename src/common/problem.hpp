// The validated form of one call, shared by every backend (host and device code alike).
// Built by src/api.cpp after every check has passed; backends trust it.
#pragma once

#include <cstdint>

#include "flashprefill/flashprefill.hpp"

namespace flashprefill::detail {

// Element strides of a [batch, token, head, dim] tensor (dim stride is 1; batch unused for varlen).
struct Strides {
  int64_t batch = 0, token = 0, head = 0;
};

// Where sequence b lives: element offsets of its first token in q/out and k/v, and its lengths.
struct SeqExtent {
  int64_t q_token0 =
      0;  // first query token's index in the packed token axis (varlen) or 0 (padded)
  int64_t kv_token0 = 0;
  int64_t len_q = 0;
  int64_t len_kv = 0;
};

struct Problem {
  DType dtype = DType::bf16;
  Device device{};
  Params params{};  // validated; params.scale resolved (never 0)
  int64_t num_seqs = 0;
  int64_t heads_q = 0, heads_kv = 0, head_dim = 0;
  int64_t group = 1;  // heads_q / heads_kv: query head h reads kv head h / group
  bool varlen = false;
  int64_t len_q = 0, len_kv = 0;          // padded: every sequence's; varlen: max_seqlen bounds
  int64_t total_q = 0, total_kv = 0;      // tokens along the packed axis (varlen) or B * L (padded)
  const int32_t* cu_seqlens_q = nullptr;  // varlen only, on `device`
  const int32_t* cu_seqlens_kv = nullptr;
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  Strides q_stride, k_stride, v_stride, out_stride;
  float* lse = nullptr;  // optional
  int64_t lse_batch = 0,
          lse_head = 0;  // padded [B, H_q, L_q]; varlen [H_q, T_q] (lse_batch unused)
  void* stream = nullptr;

  FP_HOST_DEVICE int block() const { return params.block_size; }

  FP_HOST_DEVICE SeqExtent seq(int64_t b) const {
    if (varlen) {
      return {cu_seqlens_q[b], cu_seqlens_kv[b], int64_t(cu_seqlens_q[b + 1]) - cu_seqlens_q[b],
              int64_t(cu_seqlens_kv[b + 1]) - cu_seqlens_kv[b]};
    }
    return {0, 0, len_q, len_kv};
  }
  // Element offsets of (sequence b, token t, head h) in each tensor.
  FP_HOST_DEVICE int64_t q_offset(int64_t b, const SeqExtent& s, int64_t t, int64_t h) const {
    return (varlen ? 0 : b * q_stride.batch) + (s.q_token0 + t) * q_stride.token +
           h * q_stride.head;
  }
  FP_HOST_DEVICE int64_t out_offset(int64_t b, const SeqExtent& s, int64_t t, int64_t h) const {
    return (varlen ? 0 : b * out_stride.batch) + (s.q_token0 + t) * out_stride.token +
           h * out_stride.head;
  }
  FP_HOST_DEVICE int64_t k_offset(int64_t b, const SeqExtent& s, int64_t t, int64_t h) const {
    return (varlen ? 0 : b * k_stride.batch) + (s.kv_token0 + t) * k_stride.token +
           h * k_stride.head;
  }
  FP_HOST_DEVICE int64_t v_offset(int64_t b, const SeqExtent& s, int64_t t, int64_t h) const {
    return (varlen ? 0 : b * v_stride.batch) + (s.kv_token0 + t) * v_stride.token +
           h * v_stride.head;
  }
  FP_HOST_DEVICE int64_t lse_offset(int64_t b, const SeqExtent& s, int64_t t, int64_t h) const {
    return varlen ? h * lse_head + s.q_token0 + t : b * lse_batch + h * lse_head + t;
  }
  // First pooled-key slot of sequence b (see pool_keys in flashprefill.hpp): varlen slots need no
  // prefix sum because cu_seqlens_kv[b] / B + b never overlaps the next sequence's first slot.
  // `block`: params.block_size, which a kernel specialised for one block size may pass as a
  // constant (the divisions become shifts).
  FP_HOST_DEVICE int64_t pooled_slot0(int64_t b, const SeqExtent& s) const {
    return pooled_slot0(b, s, params.block_size);
  }
  FP_HOST_DEVICE int64_t pooled_slot0(int64_t b, const SeqExtent& s, int64_t block) const {
    return varlen ? s.kv_token0 / block + b : b * num_key_blocks(len_kv, block);
  }
};

// Capacities of the stage outputs (StageShapes in flashprefill.hpp), from shapes alone: exact for
// padded batches, bounds that need no read of cu_seqlens for varlen ones. Every backend sizes its
// buffers from this one definition.
inline StageShapes stage_shapes_of(const Problem& p) {
  const int64_t block = p.block();
  StageShapes s;
  s.num_seqs = p.num_seqs;
  s.max_key_blocks = num_key_blocks(p.len_kv, block);
  if (!p.varlen) {
    const int64_t nqb = num_query_blocks(p.len_q, p.len_kv, block);
    const int64_t first = first_query_block(p.len_q, p.len_kv, block);
    s.pooled_key_slots = p.num_seqs * s.max_key_blocks;
    s.max_rows = p.num_seqs * p.heads_q * nqb;
    // sum over the query blocks i = first .. first + nqb - 1 of (i + 1) causal key blocks
    s.max_cols = p.num_seqs * p.heads_q * (nqb * (2 * first + nqb + 1) / 2);
  } else {
    // Host-side bounds that need no read of cu_seqlens: each sequence has at most
    // L_q / B + 2 query blocks and L_kv / B + 1 key blocks.
    s.pooled_key_slots = p.total_kv / block + p.num_seqs;
    s.max_rows = p.heads_q * (p.total_q / block + 2 * p.num_seqs);
    s.max_cols = s.max_rows * s.max_key_blocks;
  }
  return s;
}

// ALGORITHM.md step 3's forced blocks of one row (query block i), on absolute block indices: the
// sinks (j < sink_end), the local window (i - j < window_blocks, so j >= window_start) and every
// block of the last query blocks of the sequence (counted on the key axis, so chunked prefill
// agrees with a full prefill of the same sequence). Its bounds are made once per row; `Index` is
// the caller's block index type (int32 in kernels: block indices fit, see make_problem). The caller
// guarantees j <= i.
template <typename Index>
struct ForcedBlocks {
  bool whole_row;
  Index sink_end, window_start;
  FP_HOST_DEVICE ForcedBlocks(int64_t i, int64_t num_kv_blocks, const Params& p)
      : whole_row(i >= num_kv_blocks - p.last_full_blocks),
        sink_end(Index(p.sink_blocks)),
        window_start(Index(i - p.window_blocks + 1)) {}
  FP_HOST_DEVICE bool contains(Index j) const {
    return whole_row || j < sink_end || j >= window_start;
  }
  // Which rule keeps j (the first that does, in this order), for tools that show why.
  enum class Rule { none, last_rows, sink, window };
  FP_HOST_DEVICE Rule rule(Index j) const {
    return whole_row           ? Rule::last_rows
           : j < sink_end      ? Rule::sink
           : j >= window_start ? Rule::window
                               : Rule::none;
  }
};
FP_HOST_DEVICE inline bool always_kept(int64_t i, int64_t j, int64_t num_kv_blocks,
                                       const Params& p) {
  return ForcedBlocks<int64_t>(i, num_kv_blocks, p).contains(j);
}

// Step 2's visibility rule: key block j counts for query position pos only if all its valid
// keys are visible (this masks only rows of the diagonal block).
FP_HOST_DEVICE inline bool key_block_visible(int64_t j, int64_t pos, int64_t len_kv,
                                             int64_t block_size) {
  const int64_t last_key = ((j + 1) * block_size < len_kv ? (j + 1) * block_size : len_kv) - 1;
  return last_key <= pos;
}

}  // namespace flashprefill::detail
