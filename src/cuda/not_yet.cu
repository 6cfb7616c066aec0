// Placeholder stages until the CUDA kernels land (each throws "not implemented yet").
// The CUDA backend work (issue 3) replaces this file.
#include "backend.hpp"

namespace flashprefill::cuda {
namespace {
[[noreturn]] void not_yet(const char* stage) {
  throw Error(std::string("flashprefill: the CUDA backend does not implement ") + stage + " yet");
}
}  // namespace

size_t discover_workspace_size(const detail::Problem&) { return 0; }
size_t attention_workspace_size(const detail::Problem&, const BlockSparseLayout&) { return 0; }
void fill_seq_row_offsets(const detail::Problem&, const BlockSparseLayout&) { not_yet("fill_seq_row_offsets"); }
void pool_keys(const detail::Problem&, float*) { not_yet("pool_keys"); }
void block_scores(const detail::Problem&, const float*, float*, int64_t) { not_yet("block_scores"); }
void select_blocks(const detail::Problem&, const float*, int64_t, const BlockSparseLayout&) { not_yet("select_blocks"); }
void discover_layout(const detail::Problem&, const BlockSparseLayout&, void*) { not_yet("discover_layout"); }
void block_sparse_attention(const detail::Problem&, const BlockSparseLayout&, void*) { not_yet("block_sparse_attention"); }
void dense_attention(const detail::Problem&) { not_yet("dense_attention"); }

}  // namespace flashprefill::cuda
