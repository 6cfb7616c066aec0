// Scratch memory: the plan of a call's workspace (offsets and sizes, made once per call by the
// backend, carved by src/api.cpp), and the per-(device, stream) cache used when a caller passes
// no Workspace.
#pragma once

#include <cstddef>
#include <cstdint>

#include "flashprefill/tensor.hpp"

namespace flashprefill::detail {

// Every region of a workspace starts on this boundary (CUB and vector loads want at least 16).
inline constexpr size_t kWorkspaceAlign = 256;
constexpr size_t align_up(size_t bytes) {
  return (bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
}

// One piece of a workspace: `bytes` (aligned) at `offset` from the workspace's base.
struct Region {
  size_t offset = 0, bytes = 0;
  template <typename T>
  T* in(void* base) const {
    return reinterpret_cast<T*>(static_cast<char*>(base) + offset);
  }
};

// Lays regions out one after another, each aligned.
class RegionAllocator {
 public:
  Region take(size_t bytes) {
    const Region region{end_, align_up(bytes)};
    end_ += region.bytes;
    return region;
  }
  size_t bytes() const { return end_; }

 private:
  size_t end_ = 0;
};

// Scratch of discover_layout (steps 1-4): the CUDA backend's; the CPU backend needs none (bytes 0).
struct DiscoveryPlan {
  Region
      pooled_half;   // [slots][H_kv][D] pooled keys rounded to the input dtype: what scoring reads
  Region counts;     // [max_rows] int64 kept blocks per row
  Region kept_bits;  // [max_rows][words] uint32 kept-block bitmask
  Region scan_temp;  // CUB's scan scratch (counts -> row_ptr)
  // Robust discovery (docs/ROBUST.md; bytes 0 in exact mode): per layout row, the sum of its core
  // queries ([max_rows][D] fp32) and their count ([max_rows] fp32), its query farthest from their
  // mean ([max_rows][D], input dtype) and that distance ([max_rows] fp32); per (kv head, query
  // block) row, the two query representatives ([kv_rows][2][D], scaled and rounded to e4m3: in the
  // input dtype, as e4m3 bytes, and the scales [kv_rows][2] fp32) and each one's best key score per
  // key block ([kv_rows][2][words * 32] fp32).
  Region query_sum, query_core_count, query_far, query_far_distance, representatives,
      representatives_e4m3, representative_scale, representative_best;
  int64_t slots = 0, max_rows = 0, words = 0;  // words: bitmask words per row
  int64_t kv_rows = 0;                         // max_rows / group
  size_t bytes = 0;
};

// Scratch of block_sparse_attention (step 5): the CUDA backend's row counter and, for varlen
// batches, the longest-first row sort; the CPU backend needs none (bytes 0).
struct AttentionPlan {
  Region work_counter;  // int, zeroed before a persistent kernel takes rows from it
  Region sort_keys_in, sort_keys_out, sort_rows_in,
      sort_rows_out;  // [max_rows] int32 each; bytes 0: no sort
  Region sort_temp;   // CUB's radix sort scratch
  int64_t max_rows = 0;
  size_t bytes = 0;
  bool sorts_rows() const { return sort_keys_in.bytes > 0; }
};

// Returns at least `bytes` of scratch on `device` for calls on `stream`, reused across those calls
// (they are stream-ordered, so one never overlaps the next); grows, never shrinks. One buffer per
// stream, so calls on two streams never share scratch. Growing a CUDA buffer frees the old one
// (cudaFree waits for the device), so no queued call still reads it. CPU calls ignore the stream.
void* cached_workspace(Device device, const void* stream, size_t bytes);

}  // namespace flashprefill::detail
