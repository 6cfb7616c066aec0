// Host side of the Hopper attention kernel: which problems it serves, their TMA tensor maps, and
// the launch of the instantiation for the head dim and dtype (one .cu file each).
#include <string>

#include "cuda/check.cuh"
#include "cuda/dispatch.hpp"
#include "cuda/sm90/attention_kernel.cuh"
#include "cuda/sm90/tensor_map.hpp"

namespace flashprefill::cuda::sm90 {

template <int kHeadDim, bool kIsBf16>
void launch_sparse_attention(const SparseAttentionParams& params, const TensorMaps& maps);

bool supports_attention(const detail::Problem& p, int device_major, int device_minor) {
  // sm_90a code runs on compute capability 9.0 only. The kernel's tile is one 128-token block.
  return device_major == 9 && device_minor == 0 && (p.head_dim == 64 || p.head_dim == 128) &&
         p.params.block_size == 128 && tma_addressable(p.q, p.q_stride) &&
         tma_addressable(p.k, p.k_stride) && tma_addressable(p.v, p.v_stride);
}

void run_attention(const SparseAttentionParams& params) {
  const detail::Problem& p = params.problem;
  const int64_t tokens_q = p.varlen ? p.total_q : p.len_q;
  const int64_t tokens_kv = p.varlen ? p.total_kv : p.len_kv;
  using Traits = AttentionTraits<128, true>;  // tile shapes are the same for every instantiation
  TensorMaps maps;
  maps.q = make_tensor_map(p, p.q, p.q_stride, p.heads_q, tokens_q, Traits::kBlockM, "q");
  if (p.paged()) {  // one box per page when a page holds fewer keys than a tile
    const int rows = p.pages.page_size < Traits::kBlockN ? p.pages.page_size : Traits::kBlockN;
    maps.k = make_page_pool_map(p, p.k, p.k_stride, rows, "k");
    maps.v = make_page_pool_map(p, p.v, p.v_stride, rows, "v");
  } else {
    maps.k = make_tensor_map(p, p.k, p.k_stride, p.heads_kv, tokens_kv, Traits::kBlockN, "k");
    maps.v = make_tensor_map(p, p.v, p.v_stride, p.heads_kv, tokens_kv, Traits::kBlockN, "v");
  }
  dispatch_head_dim_and_dtype<64, 128>(
      p, "the sm_90 attention kernel", [&](auto head_dim, auto is_bf16) {
        launch_sparse_attention<decltype(head_dim)::value, decltype(is_bf16)::value>(params, maps);
      });
}

}  // namespace flashprefill::cuda::sm90
