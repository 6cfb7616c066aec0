// flashprefill: the structured synthetic input of BENCHMARK.md (seeded, reproducible), used by the
// CLI, the benchmarks and the Python binding, so that every tool times the same inputs.
#pragma once

#include <cstdint>
#include <vector>

namespace flashprefill {

struct SyntheticShape {
  int64_t batch = 1, seq_len = 4096, heads_q = 32, heads_kv = 8, head_dim = 128;
};

// Host tensors [B, L, H, D] of raw 16-bit bf16 values.
struct SyntheticInput {
  SyntheticShape shape;
  std::vector<uint16_t> q, k, v;
};

// Steps 1-5 of BENCHMARK.md "Inputs": Gaussian q, k, v; per-kv-head direction u added to queries
// (+2u), sink keys (+8u) and vertical-stripe keys (+5u); a shared vector c; RoPE; cast to bf16.
SyntheticInput make_structured_input(const SyntheticShape& shape, uint64_t seed);

}  // namespace flashprefill
