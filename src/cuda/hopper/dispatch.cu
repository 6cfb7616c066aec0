// Host side of the Hopper attention kernel: which problems it serves, their TMA tensor maps, and
// the instantiation for the head dim and dtype (one .cu file each).
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled

#include <string>

#include "cuda/check.cuh"
#include "cuda/hopper/attention_kernel.cuh"

namespace flashprefill::cuda::hopper {

template <int kHeadDim, bool kIsBf16>
void launch_sparse_attention(const SparseAttentionParams& params, const TensorMaps& maps);

namespace {

constexpr int64_t kElementBytes = 2;

// TMA's rules for a global tensor: a 16-byte aligned base and byte strides that are multiples of 16.
bool tma_addressable(const void* base, const detail::Strides& s) {
  const auto aligned = [](int64_t bytes) { return bytes % 16 == 0; };
  return reinterpret_cast<uintptr_t>(base) % 16 == 0 && aligned(s.head * kElementBytes) && aligned(s.token * kElementBytes) &&
         aligned(s.batch * kElementBytes);
}

PFN_cuTensorMapEncodeTiled_v12000 encode_function() {
  static const PFN_cuTensorMapEncodeTiled_v12000 function = [] {
    void* entry = nullptr;
    cudaDriverEntryPointQueryResult status{};
    FP_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &entry, 12000, cudaEnableDefault, &status));
    if (status != cudaDriverEntryPointSuccess || entry == nullptr)
      throw Error("flashprefill: the CUDA driver has no cuTensorMapEncodeTiled (needed by the Hopper kernel)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(entry);
  }();
  return function;
}

// (dim, head, token, batch) view of a [batch, token, head, dim] tensor; boxes of 64 dims x `rows`
// tokens of one head, 128-byte swizzled as sm90::SwizzledPanels expects. Out-of-range boxes read zeros.
CUtensorMap make_tensor_map(const detail::Problem& p, const void* base, const detail::Strides& strides, int64_t heads,
                            int64_t tokens, int rows, const char* name) {
  const int64_t batches = p.varlen ? 1 : p.num_seqs;
  // A dimension of extent 1 is never stepped over; give it any legal stride.
  const int64_t token_bytes = strides.token * kElementBytes;
  const int64_t batch_bytes = batches > 1 ? strides.batch * kElementBytes : token_bytes * (tokens > 0 ? tokens : 1);
  const cuuint64_t dims[4] = {cuuint64_t(p.head_dim), cuuint64_t(heads), cuuint64_t(tokens), cuuint64_t(batches)};
  const cuuint64_t byte_strides[3] = {cuuint64_t(heads > 1 ? strides.head * kElementBytes : 16), cuuint64_t(token_bytes),
                                      cuuint64_t(batch_bytes)};
  const cuuint32_t box[4] = {64, 1, cuuint32_t(rows), 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  CUtensorMap map;
  const CUresult result = encode_function()(
      &map, p.dtype == DType::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
      const_cast<void*>(base), dims, byte_strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
      CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (result != CUDA_SUCCESS)
    throw Error(std::string("flashprefill: cuTensorMapEncodeTiled failed for ") + name + " (CUresult " + std::to_string(int(result)) + ")");
  return map;
}

}  // namespace

bool supports(const detail::Problem& p, int device_major, int device_minor) {
  // sm_90a code runs on compute capability 9.0 only. The kernel's tile is one 128-token block.
  return device_major == 9 && device_minor == 0 && (p.head_dim == 64 || p.head_dim == 128) && p.params.block_size == 128 &&
         tma_addressable(p.q, p.q_stride) && tma_addressable(p.k, p.k_stride) && tma_addressable(p.v, p.v_stride);
}

void run(const SparseAttentionParams& params) {
  const detail::Problem& p = params.problem;
  const int64_t tokens_q = p.varlen ? p.total_q : p.len_q;
  const int64_t tokens_kv = p.varlen ? p.total_kv : p.len_kv;
  using Traits = AttentionTraits<128, true>;  // tile shapes are the same for every instantiation
  TensorMaps maps;
  maps.q = make_tensor_map(p, p.q, p.q_stride, p.heads_q, tokens_q, Traits::kBlockM, "q");
  maps.k = make_tensor_map(p, p.k, p.k_stride, p.heads_kv, tokens_kv, Traits::kBlockN, "k");
  maps.v = make_tensor_map(p, p.v, p.v_stride, p.heads_kv, tokens_kv, Traits::kBlockN, "v");
  const bool bf16 = p.dtype == DType::bf16;
  if (p.head_dim == 64) return bf16 ? launch_sparse_attention<64, true>(params, maps) : launch_sparse_attention<64, false>(params, maps);
  if (p.head_dim == 128) return bf16 ? launch_sparse_attention<128, true>(params, maps) : launch_sparse_attention<128, false>(params, maps);
  throw Error("flashprefill: the Hopper attention kernel supports head dim 64 and 128; got " + std::to_string(p.head_dim));
}

}  // namespace flashprefill::cuda::hopper
