// How the CUDA kernels find the keys and values of one (sequence, kv head): through a view, so that
// each K/V layout is one view type with the same members and the kernels are templates over it.
//  - ContiguousKV: every sequence's tokens contiguous along one token axis ([B, L_kv, H_kv, D]
//    padded or [T_kv, H_kv, D] packed);
//  - PagedKV: page pools [num_pages, page_size, H_kv, D] and a block table (detail::PageTable).
#pragma once

#include <cstdint>

#include "common/problem.hpp"

namespace flashprefill::cuda {

// The TMA coordinates (token, batch) of a piece of a key tile, in the maps of tensor_map.hpp.
struct TmaCoord {
  int32_t token, batch;
};
// Element offsets of one key's row in k and in v.
struct KVOffsets {
  int64_t k, v;
};

struct ContiguousKV {
  static constexpr bool kPaged = false;
  const detail::Problem& p;
  int64_t seq;
  const detail::SeqExtent& extent;
  int64_t kv_head;

  // Element offsets of key `key`'s row (key < len_kv) in k and v.
  __device__ __forceinline__ int64_t k_offset(int64_t key) const {
    return p.contiguous_k_offset(seq, extent, key, kv_head);
  }
  __device__ __forceinline__ int64_t v_offset(int64_t key) const {
    return p.contiguous_v_offset(seq, extent, key, kv_head);
  }
  __device__ __forceinline__ KVOffsets offsets(int64_t key) const {
    return {k_offset(key), v_offset(key)};
  }
  // sm_90 (TMA): the token and batch coordinates of the tile starting at key `key0` (32-bit:
  // tokens fit, see make_problem); a tile is one piece.
  __device__ __forceinline__ int32_t tma_token(int64_t key0) const {
    return int32_t(extent.kv_token0 + key0);
  }
  __device__ __forceinline__ int32_t tma_batch() const { return p.varlen ? 0 : int32_t(seq); }
};

struct PagedKV {
  static constexpr bool kPaged = true;
  const detail::Problem& p;
  int64_t seq;
  const detail::SeqExtent& extent;
  int64_t kv_head;

  __device__ __forceinline__ int64_t k_offset(int64_t key) const {
    return p.paged_offset(p.k_stride, seq, key, kv_head);
  }
  __device__ __forceinline__ int64_t v_offset(int64_t key) const {
    return p.paged_offset(p.v_stride, seq, key, kv_head);
  }
  __device__ __forceinline__ KVOffsets offsets(int64_t key) const {  // one block-table read
    const int64_t page = p.page_of(seq, key), row = key & (p.pages.page_size - 1);
    return {page * p.k_stride.batch + row * p.k_stride.token + kv_head * p.k_stride.head,
            page * p.v_stride.batch + row * p.v_stride.token + kv_head * p.v_stride.head};
  }
  // sm_90 (TMA over the page pools seen as (dim, head, row in page, page)): a tile of kTileRows
  // keys is loaded in pieces of tma_rows() keys, one page each (the whole tile when a page holds
  // it). A piece past the sequence's last page reads page num_pages, out of the map: TMA fills it
  // with zeros (and counts its bytes), and the block table is never read past its row.
  template <int kTileRows>
  __device__ __forceinline__ int tma_rows() const {
    return p.pages.page_size < kTileRows ? p.pages.page_size : kTileRows;
  }
  __device__ __forceinline__ TmaCoord tma_piece(int64_t key) const {
    const int32_t row = int32_t(key & (p.pages.page_size - 1));
    return {row, key < extent.len_kv ? int32_t(p.page_of(seq, key)) : int32_t(p.pages.num_pages)};
  }
};

}  // namespace flashprefill::cuda
