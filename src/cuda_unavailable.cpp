// Built instead of src/cuda/ when no CUDA compiler was found: every CUDA entry point says so.
#include "backend.hpp"
#include "device_memory.hpp"

namespace flashprefill::cuda {
namespace {
[[noreturn]] void unavailable() {
  throw Error(
      "flashprefill was built without its CUDA backend (no CUDA compiler at configure time); "
      "tensors must be on the CPU");
}
}  // namespace

void* device_malloc(int, size_t) { unavailable(); }
void device_free(int, void*) noexcept {}
void memcpy_any(void*, const void*, size_t) { unavailable(); }
int device_count() noexcept { return 0; }
void set_device(int) { unavailable(); }
void synchronize(int) { unavailable(); }

detail::DiscoveryPlan plan_discovery(const detail::Problem&, int64_t) { unavailable(); }
detail::AttentionPlan plan_attention(const detail::Problem&, int64_t) { unavailable(); }
void fill_seq_row_offsets(const detail::Problem&, const BlockSparseLayout&) { unavailable(); }
void pool_keys(const detail::Problem&, float*) { unavailable(); }
void block_scores(const detail::Problem&, const float*, float*, int64_t) { unavailable(); }
void select_blocks(const detail::Problem&, const float*, int64_t, const BlockSparseLayout&) {
  unavailable();
}
void discover_layout(const detail::Problem&, const BlockSparseLayout&, const detail::DiscoveryPlan&,
                     void*) {
  unavailable();
}
void block_sparse_attention(const detail::Problem&, const BlockSparseLayout&,
                            const detail::AttentionPlan&, void*) {
  unavailable();
}
void dense_attention(const detail::Problem&) { unavailable(); }

}  // namespace flashprefill::cuda
