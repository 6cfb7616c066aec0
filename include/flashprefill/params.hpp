// flashprefill: the parameters of ALGORITHM.md, with the paper's defaults.
#pragma once

#include "flashprefill/tensor.hpp"

namespace flashprefill {

// How discovery finds key blocks (docs/ROBUST.md): `exact` is ALGORITHM.md (queries against block
// means); `robust` also keeps the blocks whose best single key, scored against the query block's
// mean and far query, comes close to their best key, so that a short span of keys that dominates
// some queries is not diluted by the rest of its block.
enum class Discovery { exact = 0, robust = 1 };

struct Params {
  int block_size = 128;  // tokens per block, queries and keys alike; a power of two >= 16
  float alpha =
      0.12f;  // keep S[i, j] >= alpha * max_j S[i, j]; in [0, 1]; 0 keeps every causal block
  int sink_blocks = 2;       // leading key blocks always kept
  int window_blocks = 4;     // key blocks on and just before the diagonal always kept
  int last_full_blocks = 2;  // the last query blocks of a sequence attend densely
  int min_budget = 0;        // if > 0, the min_budget highest-scoring blocks of a row are kept too
  float scale = 0.0f;        // softmax scale; 0 means 1 / sqrt(head_dim)
  Discovery discovery = Discovery::exact;  // the block-scoring rule (see Discovery)
  // Check the data, not only the shapes: NaN / Inf in q, k, v and consistent cu_seqlens. Costs a
  // pass over the inputs (and a host synchronisation on CUDA), so it is off by default.
  bool check_inputs = false;
  // Optional: one alpha per query head, fp32 [H_q] (contiguous). When given, the rows of query
  // head h (every sequence and query block) are thresholded with head_alpha[h] instead of `alpha`
  // (ALGORITHM.md step 3); everything else is unchanged. Values in [0, 1].
  // CPU tensors: host memory, always checked. CUDA tensors: device memory on the tensors' device,
  // read by the kernels (stream-ordered, no upload and no host synchronisation, so a CUDA graph
  // may capture the call and later replays see the values then in that memory); its values are
  // checked only with check_inputs (a host synchronisation); otherwise a value outside [0, 1]
  // gives an unspecified layout (NaN or a negative value keeps only the forced blocks), never an
  // out-of-bounds access.
  TensorView head_alpha;

  // Throws flashprefill::Error naming the first bad field.
  void validate() const;
};

}  // namespace flashprefill
