// Pattern discovery's host side (ALGORITHM.md steps 1-4, see discovery.cuh): the workspace plan,
// the layout's sequence offsets, and which score kernel a device gets.
#include <cub/device/device_scan.cuh>

#include "common/row_geometry.hpp"
#include "cuda/arch.hpp"
#include "cuda/check.cuh"
#include "cuda/discovery.cuh"

namespace flashprefill::cuda::discovery {
namespace {

using detail::Problem;

__global__ void fill_seq_row_offsets_kernel(const Problem p, int64_t* seq_row_offset) {
  // One thread: num_seqs is small, and this keeps the prefix exact without a scan.
  int64_t offset = 0;
  for (int64_t b = 0; b < p.num_seqs; ++b) {
    seq_row_offset[b] = offset;
    offset += detail::layout_rows_of(p, p.seq(b));
  }
  seq_row_offset[p.num_seqs] = offset;
}

}  // namespace

detail::DiscoveryPlan plan(const Problem& p, int64_t max_rows) {
  const StageShapes shapes = detail::stage_shapes_of(p);
  detail::DiscoveryPlan plan;
  plan.max_rows = max_rows;
  plan.words = (shapes.max_key_blocks + 31) / 32;
  plan.slots = shapes.pooled_key_slots;
  detail::RegionAllocator regions;
  plan.pooled_half = regions.take(size_t(plan.slots * p.heads_kv * p.head_dim) * 2);
  plan.counts = regions.take(size_t(max_rows) * 8);
  plan.kept_bits = regions.take(size_t(max_rows * plan.words) * 4);
  if (p.params.discovery == Discovery::robust) {
    plan.kv_rows = max_rows / p.group;
    plan.query_sum = regions.take(size_t(max_rows * p.head_dim) * 4);
    plan.query_core_count = regions.take(size_t(max_rows) * 4);
    plan.query_far = regions.take(size_t(max_rows * p.head_dim) * 2);
    plan.query_far_distance = regions.take(size_t(max_rows) * 4);
    plan.representatives = regions.take(size_t(plan.kv_rows * 2 * p.head_dim) * 2);
    plan.representatives_e4m3 = regions.take(size_t(plan.kv_rows * 2 * p.head_dim));
    plan.representative_scale = regions.take(size_t(plan.kv_rows * 2) * 4);
    plan.representative_best = regions.take(size_t(plan.kv_rows * 2 * plan.words * 32) * 4);
  }
  size_t scan_bytes = 0;
  FP_CUDA_CHECK(
      cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, static_cast<const int64_t*>(nullptr),
                                    static_cast<int64_t*>(nullptr), max_rows > 0 ? max_rows : 1));
  plan.scan_temp = regions.take(scan_bytes);
  plan.bytes = regions.bytes();
  return plan;
}

Buffers carve(const detail::DiscoveryPlan& plan, void* workspace) {
  Buffers b;
  b.pooled = nullptr;  // the fp32 means are the pool_keys stage's output, in the caller's memory
  b.pooled_half = plan.pooled_half.in<void>(workspace);
  if (plan.kv_rows > 0) {
    b.query_sum = plan.query_sum.in<float>(workspace);
    b.query_core_count = plan.query_core_count.in<float>(workspace);
    b.query_far = plan.query_far.in<void>(workspace);
    b.query_far_distance = plan.query_far_distance.in<float>(workspace);
    b.representatives = plan.representatives.in<void>(workspace);
    b.representatives_e4m3 = plan.representatives_e4m3.in<uint8_t>(workspace);
    b.representative_scale = plan.representative_scale.in<float>(workspace);
    b.representative_best = plan.representative_best.in<float>(workspace);
    b.kv_rows = plan.kv_rows;
  }
  b.counts = plan.counts.in<int64_t>(workspace);
  b.kept_bits = plan.kept_bits.in<uint32_t>(workspace);
  b.scan_temp = plan.scan_temp.in<void>(workspace);
  b.scan_temp_bytes = plan.scan_temp.bytes;
  b.words = plan.words;
  return b;
}

int64_t grid_query_blocks(const Problem& p) {
  const int64_t block = p.params.block_size;
  return p.varlen ? p.len_q / block + 2 : num_query_blocks(p.len_q, p.len_kv, block);
}

void fill_seq_row_offsets(const Problem& p, int64_t* seq_row_offset) {
  fill_seq_row_offsets_kernel<<<1, 1, 0, static_cast<cudaStream_t>(p.stream)>>>(p, seq_row_offset);
  FP_CUDA_CHECK_LAUNCH();
}

dim3 score_grid(const Problem& p) {
  return dim3(unsigned(grid_query_blocks(p) * p.heads_q), unsigned(p.num_seqs));
}

void score_rows(const Problem& p, const int64_t* seq_row_offset, const Buffers& buffers,
                float* scores, int64_t scores_ld) {
  if (grid_query_blocks(p) == 0 || p.num_seqs == 0) return;
  const dim3 grid = score_grid(p);
#ifdef FLASHPREFILL_HAS_HOPPER_KERNEL
  if (use_hopper_kernels(device_info(p)) && sm90::supports_scoring(p))
    return sm90::score_rows(p, seq_row_offset, buffers, scores, scores_ld, grid);
#endif
  sm80::score_rows(p, seq_row_offset, buffers, scores, scores_ld, grid);
}

}  // namespace flashprefill::cuda::discovery
