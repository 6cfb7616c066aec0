// Pattern discovery on the GPU (ALGORITHM.md steps 1-4) without a host round trip: pool keys
// (pool_keys.cu), score one layout row per CTA with tensor cores and select in shared memory
// (sm80/score_kernel.cuh, sm90/score_kernel.cuh, both ending in select_row.cuh), then an exact CSR
// layout by a device-wide scan of the kept counts and a compaction of per-row bitmasks
// (compact.cu). The select_blocks stage selects from a given score matrix (select_blocks.cu);
// discovery.cu plans the workspace and picks the score kernel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/problem.hpp"
#include "workspace.hpp"

namespace flashprefill::cuda::discovery {

// Device buffers of one discovery pass, carved from the workspace by its plan.
struct Buffers {
  float* pooled = nullptr;  // [slots][H_kv][D] fp32 means (step 1); nullptr: not wanted
  // [slots][H_kv][D] the means rounded to the input dtype: what scoring reads
  void* pooled_half = nullptr;
  // Robust discovery (docs/ROBUST.md; nullptr in exact mode), as DiscoveryPlan describes them.
  float* query_sum = nullptr;           // [max_rows][D] the sum of the row's core queries
  float* query_core_count = nullptr;    // [max_rows] how many core queries
  void* query_far = nullptr;            // [max_rows][D]
  float* query_far_distance = nullptr;  // [max_rows]
  // [kv_rows][2][D]: the group's core query and its far query, each scaled by its own power of two
  // and rounded to e4m3 (docs/ROBUST.md), in the input dtype (exact) and as e4m3 bytes; the scales
  // [kv_rows][2]
  void* representatives = nullptr;
  uint8_t* representatives_e4m3 = nullptr;
  float* representative_scale = nullptr;
  // [kv_rows][2][words * 32]: log2 units, times the representative's scale (the rescue divides it
  // out by scaling its threshold instead)
  float* representative_best = nullptr;
  int64_t kv_rows = 0;
  int64_t* counts = nullptr;      // [max_rows] kept blocks per row
  uint32_t* kept_bits = nullptr;  // [max_rows][words] kept-block bitmask
  int64_t words = 0;              // bitmask words per row
  void* scan_temp = nullptr;      // CUB scan scratch
  size_t scan_temp_bytes = 0;
};

// The workspace of one discovery pass for a layout of max_rows rows (key blocks and slots from
// stage_shapes_of), and the buffers at its offsets.
detail::DiscoveryPlan plan(const detail::Problem& p, int64_t max_rows);
Buffers carve(const detail::DiscoveryPlan& plan, void* workspace);

void fill_seq_row_offsets(const detail::Problem& p, int64_t* seq_row_offset);
// Step 1.
void pool_keys(const detail::Problem& p, const Buffers& buffers);
// Caller-given fp32 pooled keys ([slots][H_kv][D]) rounded to the input dtype, for scoring.
void round_pooled(const detail::Problem& p, const float* pooled, int64_t slots,
                  const Buffers& buffers);
// Scores every row; writes S (scores != nullptr) or selects (kept_bits + counts).
void score_rows(const detail::Problem& p, const int64_t* seq_row_offset, const Buffers& buffers,
                float* scores, int64_t scores_ld);
// Selection from a given score matrix.
void select_from_scores(const detail::Problem& p, const int64_t* seq_row_offset,
                        const float* scores, int64_t ld, const Buffers& buffers);
// Robust discovery's second test (docs/ROBUST.md), after score_rows wrote each row's core sum and
// far query: the representatives of each (kv head, query block), their best key per key block, and
// the blocks they keep added to kept_bits and counts (src/cuda/representatives.cu).
void rescue_rows(const detail::Problem& p, const int64_t* seq_row_offset, const Buffers& buffers);
// counts -> row_ptr (scan), kept_bits -> col_idx.
void compact(const detail::Problem& p, const Buffers& buffers, int64_t max_rows, int64_t* row_ptr,
             int32_t* col_idx);

// Score CTAs: x over (query block, head), heads fastest (see row_of_grid), y over sequences.
dim3 score_grid(const detail::Problem& p);
// The grid's query blocks per sequence: exact for padded batches, a bound for varlen (CTAs past a
// sequence's blocks return at once).
int64_t grid_query_blocks(const detail::Problem& p);

}  // namespace flashprefill::cuda::discovery

namespace flashprefill::cuda {
// The mma.sync score kernel (src/cuda/sm80/score.cu): block size 64 or 128, head dim 64, 128 or
// 256.
namespace sm80 {
void score_rows(const detail::Problem& p, const int64_t* seq_row_offset,
                const discovery::Buffers& buffers, float* scores, int64_t ld, dim3 grid);
}  // namespace sm80
// The wgmma score kernel (src/cuda/sm90/score.cu, sm_90a): block size 128, head dim 64 or 128.
namespace sm90 {
bool supports_scoring(const detail::Problem& p);
void score_rows(const detail::Problem& p, const int64_t* seq_row_offset,
                const discovery::Buffers& buffers, float* scores, int64_t ld, dim3 grid);
// Robust discovery's best keys with e4m3 wgmma (src/cuda/sm90/best_keys.cu): block size 128, head
// dim 128, contiguous K that TMA can address; false (nothing launched) otherwise.
bool best_keys(const detail::Problem& p, const int64_t* seq_row_offset,
               const discovery::Buffers& buffers);
}  // namespace sm90
}  // namespace flashprefill::cuda
