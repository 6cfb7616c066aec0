// How the attention mainloops find the keys and values of one (sequence, kv head): through a view,
// so that another K/V layout (a paged cache: page pools and a block table) is one more view type
// with the same members, not another kernel. Today's layout: every sequence's tokens contiguous
// along one token axis ([B, L_kv, H_kv, D] padded or [T_kv, H_kv, D] packed).
#pragma once

#include <cstdint>

#include "common/problem.hpp"

namespace flashprefill::cuda {

struct ContiguousKV {
  const detail::Problem& p;
  int64_t seq;
  const detail::SeqExtent& extent;
  int64_t kv_head;

  // sm_80 (cp.async): element offsets of key `key`'s row (key < len_kv) in k and v.
  __device__ __forceinline__ int64_t k_offset(int64_t key) const {
    return p.k_offset(seq, extent, key, kv_head);
  }
  __device__ __forceinline__ int64_t v_offset(int64_t key) const {
    return p.v_offset(seq, extent, key, kv_head);
  }
  // sm_90 (TMA, maps of tensor_map.hpp): the token and batch coordinates of the tile starting at
  // key `key0` (32-bit: tokens fit, see make_problem).
  __device__ __forceinline__ int32_t tma_token(int64_t key0) const {
    return int32_t(extent.kv_token0 + key0);
  }
  __device__ __forceinline__ int32_t tma_batch() const { return p.varlen ? 0 : int32_t(seq); }
};

}  // namespace flashprefill::cuda
