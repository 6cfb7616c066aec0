// flashprefill: block-sparse prefill attention with FlashPrefill's pattern discovery.
// The algorithm and its steps (1-5) are ../docs/ALGORITHM.md; every function here implements it
// on the device its tensors live on (CPU or CUDA), with the same results.
#pragma once

#include <cstddef>
#include <cstdint>

#include "flashprefill/error.hpp"
#include "flashprefill/layout.hpp"
#include "flashprefill/params.hpp"
#include "flashprefill/tensor.hpp"

namespace flashprefill {

// Packed sequences, FlashAttention's varlen convention: q [T_q, H_q, D], k and v [T_kv, H_kv, D];
// sequence b owns tokens cu_seqlens[b] .. cu_seqlens[b + 1] (int32 [num_seqs + 1], on the
// tensors' device). max_seqlen_* are host-side upper bounds, as in FlashAttention.
struct Varlen {
  TensorView cu_seqlens_q;
  TensorView cu_seqlens_kv;
  int64_t max_seqlen_q = 0;
  int64_t max_seqlen_kv = 0;

  bool enabled() const { return !cu_seqlens_q.empty_view(); }
};

// A paged K/V cache, vLLM's layout: k and v are page pools [num_pages, page_size, H_kv, D] (any
// strides, D contiguous; k = kv[0] and v = kv[1] of vLLM's combined [2, num_pages, page_size,
// H_kv, D] cache are two views of one tensor). Sequence b's key t is row t % page_size of page
// block_table[b, t / page_size]. page_size (the pools' dim 1) is a power of two >= 16 (16 ... 256
// and up). Queries are packed: varlen.cu_seqlens_q, max_seqlen_q and max_seqlen_kv (a host bound
// on seq_lens_kv) are given, varlen.cu_seqlens_kv is not. Pages are read in place.
struct PagedKV {
  TensorView block_table;  // int32 [num_seqs, max_pages_per_seq], row stride free
  TensorView seq_lens_kv;  // int32 [num_seqs]: L_kv per sequence, L_q <= L_kv
  bool enabled() const { return !block_table.empty_view(); }
};

// One attention call. Padded batch: q [B, L_q, H_q, D], k and v [B, L_kv, H_kv, D].
// Varlen batch: as Varlen says. Paged K/V: as PagedKV says. Head dim (last) contiguous; other
// strides free. Causal, bottom-right aligned: L_q <= L_kv per sequence (L_q < L_kv is chunked
// prefill).
struct AttentionArgs {
  TensorView q, k, v;
  TensorView out;  // like q, same dtype; not needed by the discovery stages
  TensorView lse;  // optional fp32 natural-log softmax_lse: [B, H_q, L_q] padded, [H_q, T_q] varlen
  Varlen varlen;   // not enabled: padded batch
  PagedKV paged;   // enabled: k and v are page pools
  void* stream = nullptr;  // cudaStream_t for the CUDA backend; ignored on the CPU
};

// Caller-provided scratch memory on the tensors' device. Empty: the library allocates from a
// per-(device, stream) cache that grows and is kept (so the first call allocates; later calls and
// CUDA graph capture after one warm-up call do not; a graph must not outlive a later growth).
struct Workspace {
  void* data = nullptr;
  size_t bytes = 0;
};

// ---- The one call: steps 1-5 -------------------------------------------------------------------
void flash_prefill(const AttentionArgs& args, const Params& params = {}, Workspace workspace = {});
size_t flash_prefill_workspace_size(const AttentionArgs& args, const Params& params = {});

// ---- The stages, each callable on its own ------------------------------------------------------
// Capacities for the stage outputs, from shapes alone (no device read).
struct StageShapes {
  int64_t num_seqs = 0;
  int64_t pooled_key_slots = 0;  // rows of pooled_keys
  int64_t max_rows = 0;          // layout rows (and rows of the score matrix)
  int64_t max_key_blocks = 0;    // columns of the score matrix
  int64_t max_cols = 0;          // layout col_idx capacity
};
StageShapes stage_shapes(const AttentionArgs& args, const Params& params = {});

// Allocates a layout on the tensors' device, sized by stage_shapes().
LayoutStorage allocate_layout(const AttentionArgs& args, const Params& params = {});

// Step 1: pooled_keys fp32 [pooled_key_slots, H_kv, D]. Sequence b's key block j is slot
// b * num_key_blocks(L_kv) + j (padded), cu_seqlens_kv[b] / B + b + j (varlen) or
// b * num_key_blocks(max_seqlen_kv) + j (paged).
void pool_keys(const AttentionArgs& args, const Params& params, const TensorView& pooled_keys);

// Step 2, materialised for inspection: scores fp32 [max_rows, max_key_blocks], layout row order;
// S[i, j] for causal j, 0 elsewhere.
void block_scores(const AttentionArgs& args, const Params& params, const TensorView& pooled_keys,
                  const TensorView& scores);

// Steps 3-4 from a score matrix.
void select_blocks(const AttentionArgs& args, const Params& params, const TensorView& scores,
                   const BlockSparseLayout& layout);

// Steps 1-4 fused, without a score matrix: what flash_prefill runs.
void discover_layout(const AttentionArgs& args, const Params& params,
                     const BlockSparseLayout& layout, Workspace workspace = {});

// Step 5 on any layout of the right shape (yours or discover_layout's).
void block_sparse_attention(const AttentionArgs& args, const Params& params,
                            const BlockSparseLayout& layout, Workspace workspace = {});

// Dense causal attention, bottom-right aligned: the baseline.
void dense_attention(const AttentionArgs& args, const Params& params = {});

// Kept and causal block counts of a layout (copied to the host; for tools, not the hot path).
struct LayoutStats {
  int64_t kept_blocks = 0;
  int64_t causal_blocks = 0;
  double density() const {
    return causal_blocks ? double(kept_blocks) / double(causal_blocks) : 0.0;
  }
};
LayoutStats layout_stats(const AttentionArgs& args, const Params& params,
                         const BlockSparseLayout& layout);

// The CPU kernel variant that runs inputs of this dtype (bf16, fp16 or fp32) on this machine:
// "amx", "avx512bf16" (bf16 products, bf16 only), "avx512", "avx2" or "generic" (fp32 products).
// The widest the processor supports, capped by FLASHPREFILL_CPU_KERNELS=<one of these> if set.
const char* cpu_kernel_variant(DType dtype);

}  // namespace flashprefill
