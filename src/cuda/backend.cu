// The CUDA backend's host side: plans the workspaces (src/api.cpp carves them), launches discovery
// and attention on the caller's stream. No host synchronisation and no allocation in
// discover_layout and block_sparse_attention (dense_attention and the inspection stages use the
// cached workspace).
#include <cub/device/device_radix_sort.cuh>

#include <climits>
#include <cstdlib>
#include <string>

#include "backend.hpp"
#include "cuda/arch.hpp"
#include "cuda/check.cuh"
#include "cuda/discovery.cuh"
#include "cuda/sparse_attention.cuh"
#include "workspace.hpp"

namespace flashprefill::cuda {
namespace {

using detail::Problem;

int64_t max_rows_of(const Problem& p) { return detail::stage_shapes_of(p).max_rows; }

void check_block_size(const Problem& p) {
  if (p.params.block_size != 64 && p.params.block_size != 128)
    throw Error("flashprefill: the CUDA backend supports block_size 64 and 128; got " +
                std::to_string(p.params.block_size));
}

void run_attention(SparseAttentionParams& params) {
  const DeviceInfo info = device_info(params.problem);
  params.num_sms = info.sms;
#ifdef FLASHPREFILL_HAS_HOPPER_KERNEL
  if (use_hopper_kernels(info) && sm90::supports_attention(params.problem, info.major, info.minor))
    return sm90::run_attention(params);
#endif
  if (!sm80::supports_attention(params.problem, info.major, info.minor) && info.major < 8)
    throw Error(
        "flashprefill: the CUDA backend needs compute capability 8.0 or newer; this GPU is " +
        std::to_string(info.major) + "." + std::to_string(info.minor));
  sm80::run_attention(params);
}

// Longest rows first: (-count, row) pairs sorted by key.
__global__ void schedule_keys_kernel(const int64_t* seq_row_offset, int64_t num_seqs,
                                     const int64_t* row_ptr, int64_t max_rows, int32_t* keys,
                                     int32_t* rows) {
  const int64_t total = seq_row_offset[num_seqs];
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < max_rows;
       r += int64_t(gridDim.x) * blockDim.x) {
    keys[r] = r < total ? -int32_t(row_ptr[r + 1] - row_ptr[r]) : INT_MAX;
    rows[r] = int32_t(r);
  }
}

// Varlen batches are sorted by kept-block count, longest first; padded batches need no sort:
// row_at's natural order (last query blocks first) already starts the long rows of a causal layout
// first, and the kernels take rows dynamically, so the tail is short rows.
bool sorts_rows(const Problem& p) { return p.varlen; }

}  // namespace

DeviceInfo device_info(const Problem& p) {
  DeviceInfo info;
  FP_CUDA_CHECK(
      cudaDeviceGetAttribute(&info.major, cudaDevAttrComputeCapabilityMajor, p.device.index));
  FP_CUDA_CHECK(
      cudaDeviceGetAttribute(&info.minor, cudaDevAttrComputeCapabilityMinor, p.device.index));
  FP_CUDA_CHECK(cudaDeviceGetAttribute(&info.sms, cudaDevAttrMultiProcessorCount, p.device.index));
  return info;
}

bool use_hopper_kernels(const DeviceInfo& info) {
#ifdef FLASHPREFILL_HAS_HOPPER_KERNEL
  const char* choice = std::getenv("FLASHPREFILL_CUDA_KERNELS");
  return info.major == 9 && info.minor == 0 &&
         !(choice != nullptr && std::string(choice) == "ampere");
#else
  return false;
#endif
}

detail::DiscoveryPlan plan_discovery(const Problem& p, int64_t max_rows) {
  check_block_size(p);
  return discovery::plan(p, max_rows);
}

// The persistent kernel's row counter, then (varlen only) the row sort.
detail::AttentionPlan plan_attention(const Problem& p, int64_t max_rows) {
  detail::AttentionPlan plan;
  plan.max_rows = max_rows;
  detail::RegionAllocator regions;
  plan.work_counter = regions.take(sizeof(int));
  if (sorts_rows(p)) {
    const size_t keys = size_t(max_rows) * 4;
    plan.sort_keys_in = regions.take(keys);
    plan.sort_keys_out = regions.take(keys);
    plan.sort_rows_in = regions.take(keys);
    plan.sort_rows_out = regions.take(keys);
    size_t sort_bytes = 0;
    FP_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
        nullptr, sort_bytes, static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
        static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
        int(max_rows > 0 ? max_rows : 1)));
    plan.sort_temp = regions.take(sort_bytes);
  }
  plan.bytes = regions.bytes();
  return plan;
}

void fill_seq_row_offsets(const Problem& p, const BlockSparseLayout& layout) {
  discovery::fill_seq_row_offsets(p, layout.seq_row_offset.ptr<int64_t>());
}

void pool_keys(const Problem& p, float* pooled_keys) {
  check_block_size(p);
  const detail::DiscoveryPlan plan = discovery::plan(p, 0);
  discovery::Buffers buffers =
      discovery::carve(plan, detail::cached_workspace(p.device, p.stream, plan.bytes));
  buffers.pooled = pooled_keys;
  discovery::pool_keys(p, buffers);
}

void block_scores(const Problem& p, const float* pooled_keys, float* scores, int64_t ld) {
  check_block_size(p);
  const detail::DiscoveryPlan plan = discovery::plan(p, max_rows_of(p));
  detail::RegionAllocator regions;
  const detail::Region offsets = regions.take(size_t(p.num_seqs + 1) * 8);
  const detail::Region discovery_scratch = regions.take(plan.bytes);
  void* scratch = detail::cached_workspace(p.device, p.stream, regions.bytes());
  const discovery::Buffers buffers = discovery::carve(plan, discovery_scratch.in<void>(scratch));
  auto* seq_row_offset = offsets.in<int64_t>(scratch);
  discovery::fill_seq_row_offsets(p, seq_row_offset);
  discovery::round_pooled(p, pooled_keys, plan.slots, buffers);
  FP_CUDA_CHECK(cudaMemsetAsync(scores, 0, size_t(max_rows_of(p) * ld) * 4,
                                static_cast<cudaStream_t>(p.stream)));
  discovery::score_rows(p, seq_row_offset, buffers, scores, ld);
}

void select_blocks(const Problem& p, const float* scores, int64_t ld,
                   const BlockSparseLayout& layout) {
  check_block_size(p);
  const detail::DiscoveryPlan plan = discovery::plan(p, layout.max_rows);
  const discovery::Buffers buffers =
      discovery::carve(plan, detail::cached_workspace(p.device, p.stream, plan.bytes));
  auto* seq_row_offset = layout.seq_row_offset.ptr<int64_t>();
  discovery::fill_seq_row_offsets(p, seq_row_offset);
  FP_CUDA_CHECK(cudaMemsetAsync(buffers.counts, 0, size_t(layout.max_rows) * 8,
                                static_cast<cudaStream_t>(p.stream)));
  discovery::select_from_scores(p, seq_row_offset, scores, ld, buffers);
  discovery::compact(p, buffers, layout.max_rows, layout.row_ptr.ptr<int64_t>(),
                     layout.col_idx.ptr<int32_t>());
}

void discover_layout(const Problem& p, const BlockSparseLayout& layout,
                     const detail::DiscoveryPlan& plan, void* workspace) {
  check_block_size(p);
  const discovery::Buffers buffers = discovery::carve(plan, workspace);
  auto* seq_row_offset = layout.seq_row_offset.ptr<int64_t>();
  discovery::fill_seq_row_offsets(p, seq_row_offset);
  FP_CUDA_CHECK(cudaMemsetAsync(buffers.counts, 0, size_t(layout.max_rows) * 8,
                                static_cast<cudaStream_t>(p.stream)));
  discovery::pool_keys(p, buffers);
  discovery::score_rows(p, seq_row_offset, buffers, nullptr, 0);
  if (p.params.discovery == Discovery::robust) discovery::rescue_rows(p, seq_row_offset, buffers);
  discovery::compact(p, buffers, layout.max_rows, layout.row_ptr.ptr<int64_t>(),
                     layout.col_idx.ptr<int32_t>());
}

void block_sparse_attention(const Problem& p, const BlockSparseLayout& layout,
                            const detail::AttentionPlan& plan, void* workspace) {
  auto stream = static_cast<cudaStream_t>(p.stream);
  SparseAttentionParams params;
  params.problem = p;
  params.seq_row_offset = layout.seq_row_offset.ptr<const int64_t>();
  params.row_ptr = layout.row_ptr.ptr<const int64_t>();
  params.col_idx = layout.col_idx.ptr<const int32_t>();
  params.max_rows = layout.max_rows;
  params.stream = stream;
  params.work_counter = plan.work_counter.in<int>(workspace);
  if (plan.sorts_rows() && layout.max_rows > 0) {
    auto* keys_in = plan.sort_keys_in.in<int32_t>(workspace);
    auto* keys_out = plan.sort_keys_out.in<int32_t>(workspace);
    auto* rows_in = plan.sort_rows_in.in<int32_t>(workspace);
    auto* rows_out = plan.sort_rows_out.in<int32_t>(workspace);
    const unsigned blocks = unsigned(std::min<int64_t>((layout.max_rows + 255) / 256, 4096));
    schedule_keys_kernel<<<blocks, 256, 0, stream>>>(
        params.seq_row_offset, p.num_seqs, params.row_ptr, layout.max_rows, keys_in, rows_in);
    FP_CUDA_CHECK_LAUNCH();
    size_t sort_bytes = plan.sort_temp.bytes;
    FP_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(plan.sort_temp.in<void>(workspace), sort_bytes,
                                                  keys_in, keys_out, rows_in, rows_out,
                                                  int(layout.max_rows), 0, 32, stream));
    params.row_order = rows_out;
  }
  run_attention(params);
}

void dense_attention(const Problem& p) {
  SparseAttentionParams params;
  params.problem = p;
  params.dense = true;
  params.max_rows = max_rows_of(p);
  params.stream = static_cast<cudaStream_t>(p.stream);
  detail::RegionAllocator regions;
  const detail::Region counter = regions.take(sizeof(int));
  const detail::Region offsets = regions.take(size_t(p.num_seqs + 1) * 8);
  void* scratch = detail::cached_workspace(p.device, p.stream, regions.bytes());
  params.work_counter = counter.in<int>(scratch);
  auto* seq_row_offset = offsets.in<int64_t>(scratch);
  discovery::fill_seq_row_offsets(p, seq_row_offset);
  params.seq_row_offset = seq_row_offset;
  run_attention(params);
}

}  // namespace flashprefill::cuda
