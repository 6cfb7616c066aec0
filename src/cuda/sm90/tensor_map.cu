// TMA tensor maps for the Hopper kernels; see tensor_map.hpp.
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled

#include <string>

#include "cuda/check.cuh"
#include "cuda/sm90/tensor_map.hpp"

namespace flashprefill::cuda::sm90 {
namespace {

constexpr int64_t kElementBytes = 2;

PFN_cuTensorMapEncodeTiled_v12000 encode_function() {
  static const PFN_cuTensorMapEncodeTiled_v12000 function = [] {
    void* entry = nullptr;
    cudaDriverEntryPointQueryResult status{};
    FP_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &entry, 12000,
                                                   cudaEnableDefault, &status));
    if (status != cudaDriverEntryPointSuccess || entry == nullptr)
      throw Error(
          "flashprefill: the CUDA driver has no cuTensorMapEncodeTiled (needed by the Hopper "
          "kernels)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(entry);
  }();
  return function;
}

// A tensor of `rank` dims (innermost first) and 128-byte boxed rows, 128B swizzle.
CUtensorMap encode_typed(CUtensorMapDataType type, const void* base, int rank,
                         const cuuint64_t* dims, const cuuint64_t* byte_strides,
                         const cuuint32_t* box, const char* name) {
  const cuuint32_t element_strides[5] = {1, 1, 1, 1, 1};
  CUtensorMap map;
  const CUresult result = encode_function()(
      &map, type, cuuint32_t(rank), const_cast<void*>(base), dims, byte_strides, box,
      element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (result != CUDA_SUCCESS)
    throw Error(std::string("flashprefill: cuTensorMapEncodeTiled failed for ") + name +
                " (CUresult " + std::to_string(int(result)) + ")");
  return map;
}

// A 16-bit tensor of the problem's dtype, boxes of 64 x 1 x ... x rows x 1.
CUtensorMap encode(const detail::Problem& p, const void* base, int rank, const cuuint64_t* dims,
                   const cuuint64_t* byte_strides, const cuuint32_t* box, const char* name) {
  return encode_typed(
      p.dtype == DType::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
      base, rank, dims, byte_strides, box, name);
}

}  // namespace

bool tma_addressable(const void* base, const detail::Strides& s) {
  const auto aligned = [](int64_t bytes) { return bytes % 16 == 0; };
  return reinterpret_cast<uintptr_t>(base) % 16 == 0 && aligned(s.head * kElementBytes) &&
         aligned(s.token * kElementBytes) && aligned(s.batch * kElementBytes);
}

CUtensorMap make_tensor_map(const detail::Problem& p, const void* base,
                            const detail::Strides& strides, int64_t heads, int64_t tokens, int rows,
                            const char* name) {
  const int64_t batches = p.varlen ? 1 : p.num_seqs;
  // A dimension of extent 1 is never stepped over; give it any legal stride.
  const int64_t token_bytes = strides.token * kElementBytes;
  const int64_t batch_bytes =
      batches > 1 ? strides.batch * kElementBytes : token_bytes * (tokens > 0 ? tokens : 1);
  const cuuint64_t dims[4] = {cuuint64_t(p.head_dim), cuuint64_t(heads), cuuint64_t(tokens),
                              cuuint64_t(batches)};
  const cuuint64_t byte_strides[3] = {cuuint64_t(heads > 1 ? strides.head * kElementBytes : 16),
                                      cuuint64_t(token_bytes), cuuint64_t(batch_bytes)};
  const cuuint32_t box[4] = {64, 1, cuuint32_t(rows), 1};
  return encode(p, base, 4, dims, byte_strides, box, name);
}

CUtensorMap make_page_pool_map(const detail::Problem& p, const void* base,
                               const detail::Strides& strides, int rows, const char* name) {
  const int64_t pages = p.pages.num_pages > 0 ? p.pages.num_pages : 1;
  const int64_t token_bytes = strides.token * kElementBytes;
  const cuuint64_t dims[4] = {cuuint64_t(p.head_dim), cuuint64_t(p.heads_kv),
                              cuuint64_t(p.pages.page_size), cuuint64_t(pages)};
  const cuuint64_t byte_strides[3] = {
      cuuint64_t(p.heads_kv > 1 ? strides.head * kElementBytes : 16), cuuint64_t(token_bytes),
      cuuint64_t(pages > 1 ? strides.batch * kElementBytes : token_bytes * p.pages.page_size)};
  const cuuint32_t box[4] = {64, 1, cuuint32_t(rows), 1};
  return encode(p, base, 4, dims, byte_strides, box, name);
}

CUtensorMap make_pooled_map(const detail::Problem& p, const void* base, int64_t slots, int rows,
                            const char* name) {
  const cuuint64_t dims[3] = {cuuint64_t(p.head_dim), cuuint64_t(p.heads_kv),
                              cuuint64_t(slots > 0 ? slots : 1)};
  const cuuint64_t byte_strides[2] = {cuuint64_t(p.head_dim * kElementBytes),
                                      cuuint64_t(p.heads_kv * p.head_dim * kElementBytes)};
  const cuuint32_t box[3] = {64, 1, cuuint32_t(rows)};
  return encode(p, base, 3, dims, byte_strides, box, name);
}

CUtensorMap make_e4m3_rows_map(const void* base, int64_t rows_total, int64_t row_bytes, int rows,
                               const char* name) {
  const cuuint64_t dims[2] = {cuuint64_t(row_bytes), cuuint64_t(rows_total > 0 ? rows_total : 1)};
  const cuuint64_t byte_strides[1] = {cuuint64_t(row_bytes)};
  const cuuint32_t box[2] = {128, cuuint32_t(rows)};
  return encode_typed(CU_TENSOR_MAP_DATA_TYPE_UINT8, base, 2, dims, byte_strides, box, name);
}

}  // namespace flashprefill::cuda::sm90
