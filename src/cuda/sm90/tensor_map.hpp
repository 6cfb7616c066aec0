// TMA tensor maps for the sm_90 kernels (host side; src/cuda/sm90/tensor_map.cu).
#pragma once

#include <cuda.h>

#include "common/problem.hpp"

namespace flashprefill::cuda::sm90 {

// TMA's rules for a global tensor: a 16-byte aligned base and byte strides that are multiples
// of 16.
bool tma_addressable(const void* base, const detail::Strides& strides);

// (dim, head, token, batch) view of a [batch, token, head, dim] tensor of q's dtype; boxes of 64
// dims x `rows` tokens of one head, 128-byte swizzled as sm90::SwizzledPanels expects. Out-of-range
// boxes read zeros. `tokens`: per sequence (padded) or packed (varlen).
CUtensorMap make_tensor_map(const detail::Problem& p, const void* base,
                            const detail::Strides& strides, int64_t heads, int64_t tokens, int rows,
                            const char* name);

// (dim, kv head, row in page, page) view of a page pool [num_pages, page_size, H_kv, D] (the paged
// K or V of p.pages); boxes of 64 dims x `rows` rows of one page and kv head, 128-byte swizzled.
// Pages >= num_pages read zeros.
CUtensorMap make_page_pool_map(const detail::Problem& p, const void* base,
                               const detail::Strides& strides, int rows, const char* name);

// (dim, kv head, slot) view of a pooled-key buffer [slots][H_kv][D] of q's dtype; boxes of 64 dims
// x `rows` slots of one kv head, 128-byte swizzled.
CUtensorMap make_pooled_map(const detail::Problem& p, const void* base, int64_t slots, int rows,
                            const char* name);

// (byte, row) view of a [rows_total][row_bytes] matrix of e4m3 bytes (robust discovery's
// representatives, row_bytes 128); boxes of 128 bytes x `rows` rows, 128-byte swizzled.
CUtensorMap make_e4m3_rows_map(const void* base, int64_t rows_total, int64_t row_bytes, int rows,
                               const char* name);

}  // namespace flashprefill::cuda::sm90
