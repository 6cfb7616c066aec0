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

// A paged K/V cache (vLLM's layout): k and v are page pools [num_pages, page_size, H_kv, D]
// (Strides::batch is the page stride); sequence b's key t lives in page
// block_table[b * block_table_stride + t / page_size] at row t % page_size.
struct PageTable {
  const int32_t* block_table = nullptr;  // [num_seqs, max_pages_per_seq], on `device`
  int64_t block_table_stride = 0;
  const int32_t* seq_lens_kv = nullptr;  // [num_seqs], on `device`
  int64_t num_pages = 0;
  int32_t page_size = 0;   // a power of two >= 16; 0: K/V are not paged
  int32_t page_shift = 0;  // log2(page_size)
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
  PageTable pages;       // paged K/V (then varlen holds for q; cu_seqlens_kv is unused)
  float* lse = nullptr;  // optional
  int64_t lse_batch = 0,
          lse_head = 0;  // padded [B, H_q, L_q]; varlen [H_q, T_q] (lse_batch unused)
  void* stream = nullptr;
  // params.head_alpha's data ([H_q] fp32 on `device`), or nullptr: one alpha for every head.
  const float* head_alpha = nullptr;

  FP_HOST_DEVICE int block() const { return params.block_size; }

  // ALGORITHM.md step 3's alpha for the layout rows of query head h: the one definition that every
  // backend's selection (and the fp64 reference) reads.
  FP_HOST_DEVICE float alpha_of_head(int64_t h) const {
    return head_alpha ? head_alpha[h] : params.alpha;
  }

  FP_HOST_DEVICE bool paged() const { return pages.page_size != 0; }

  FP_HOST_DEVICE SeqExtent seq(int64_t b) const {
    if (paged())  // kv_token0 is unused: keys are found through the block table
      return {cu_seqlens_q[b], 0, int64_t(cu_seqlens_q[b + 1]) - cu_seqlens_q[b],
              pages.seq_lens_kv[b]};
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
  // Keys and values on any layout (the CPU backend and the references); the CUDA kernels are
  // specialised for one layout and call the contiguous_* or paged_* form (cuda/kv_view.cuh).
  FP_HOST_DEVICE int64_t k_offset(int64_t b, const SeqExtent& s, int64_t t, int64_t h) const {
    return paged() ? paged_offset(k_stride, b, t, h) : contiguous_k_offset(b, s, t, h);
  }
  FP_HOST_DEVICE int64_t v_offset(int64_t b, const SeqExtent& s, int64_t t, int64_t h) const {
    return paged() ? paged_offset(v_stride, b, t, h) : contiguous_v_offset(b, s, t, h);
  }
  FP_HOST_DEVICE int64_t contiguous_k_offset(int64_t b, const SeqExtent& s, int64_t t,
                                             int64_t h) const {
    return (varlen ? 0 : b * k_stride.batch) + (s.kv_token0 + t) * k_stride.token +
           h * k_stride.head;
  }
  FP_HOST_DEVICE int64_t contiguous_v_offset(int64_t b, const SeqExtent& s, int64_t t,
                                             int64_t h) const {
    return (varlen ? 0 : b * v_stride.batch) + (s.kv_token0 + t) * v_stride.token +
           h * v_stride.head;
  }
  // Paged: the page holding key t of sequence b, and the element offset of (b, t, h) in a pool of
  // strides `pool` (k_stride or v_stride).
  FP_HOST_DEVICE int64_t page_of(int64_t b, int64_t t) const {
    return pages.block_table[b * pages.block_table_stride + (t >> pages.page_shift)];
  }
  FP_HOST_DEVICE int64_t paged_offset(const Strides& pool, int64_t b, int64_t t, int64_t h) const {
    return page_of(b, t) * pool.batch + (t & (pages.page_size - 1)) * pool.token + h * pool.head;
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
    return varlen && !paged() ? s.kv_token0 / block + b : b * num_key_blocks(len_kv, block);
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
  if (p.paged()) {
    // Queries packed as varlen ones; pooled keys in num_key_blocks(max_seqlen_kv) slots per
    // sequence, as for a padded batch (a sum of seq_lens_kv is not known on the host).
    s.pooled_key_slots = p.num_seqs * s.max_key_blocks;
    s.max_rows = p.heads_q * (p.total_q / block + 2 * p.num_seqs);
    s.max_cols = s.max_rows * s.max_key_blocks;
  } else if (!p.varlen) {
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
