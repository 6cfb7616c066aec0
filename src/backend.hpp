// The backends behind the public API. src/api.cpp validates and builds a Problem, then calls one
// of these namespaces by the tensors' device. Each backend implements every stage.
#pragma once

#include <cstddef>

#include "common/problem.hpp"
#include "workspace.hpp"

#define FLASHPREFILL_DECLARE_BACKEND(ns)                                                          \
  namespace flashprefill::ns {                                                                    \
  /* The scratch discover_layout / block_sparse_attention need beyond the layout, planned once    \
     per call for a layout of max_rows rows: src/api.cpp sizes and carves the workspace by it. */ \
  detail::DiscoveryPlan plan_discovery(const detail::Problem& p, int64_t max_rows);               \
  detail::AttentionPlan plan_attention(const detail::Problem& p, int64_t max_rows);               \
  /* Writes layout.seq_row_offset (exclusive prefix of H_q * num_query_blocks per sequence). */   \
  void fill_seq_row_offsets(const detail::Problem& p, const BlockSparseLayout& layout);           \
  void pool_keys(const detail::Problem& p, float* pooled_keys);                                   \
  void block_scores(const detail::Problem& p, const float* pooled_keys, float* scores,            \
                    int64_t ld);                                                                  \
  void select_blocks(const detail::Problem& p, const float* scores, int64_t ld,                   \
                     const BlockSparseLayout& layout);                                            \
  void discover_layout(const detail::Problem& p, const BlockSparseLayout& layout,                 \
                       const detail::DiscoveryPlan& plan, void* workspace);                       \
  void block_sparse_attention(const detail::Problem& p, const BlockSparseLayout& layout,          \
                              const detail::AttentionPlan& plan, void* workspace);                \
  void dense_attention(const detail::Problem& p);                                                 \
  }

FLASHPREFILL_DECLARE_BACKEND(cpu)
FLASHPREFILL_DECLARE_BACKEND(cuda)

#undef FLASHPREFILL_DECLARE_BACKEND
