// fp64 reference of every step of ALGORITHM.md: plain loops, no shortcuts (the row geometry is the
// shared common/row_geometry.hpp, which every backend uses too). The tests of every
// backend compare against it. Inputs are read through a validated detail::Problem (host memory).
#pragma once

#include <cstdint>
#include <vector>

#include "common/problem.hpp"

namespace flashprefill::reference {

// Step 1: pooled keys, [slot][kv head][d] in the slot numbering of flashprefill.hpp.
std::vector<double> pool_keys(const detail::Problem& p, int64_t num_slots);

// Robust discovery's second representative (docs/ROBUST.md), in pooled's layout: the valid key of
// each block farthest from its mean rounded to the input dtype, the lowest index on ties.
std::vector<double> farthest_keys(const detail::Problem& p, const std::vector<double>& pooled);

// Step 2: S for every layout row, row-major [row][max_key_blocks] (0 where j > i), scoring
// against the pooled keys rounded to the input dtype, as every backend does. robust: S of
// x_eff = max(x, scale * q . far - ln n_j) instead (docs/ROBUST.md).
std::vector<double> block_scores(const detail::Problem& p, const std::vector<double>& pooled,
                                 int64_t max_key_blocks, bool robust = false);

// Steps 3-4: the kept key blocks of every layout row, ascending. robust_scores (robust discovery,
// block_scores(..., true)): the blocks that pass the same threshold on them are kept too.
std::vector<std::vector<int32_t>> select_blocks(const detail::Problem& p,
                                                const std::vector<double>& scores,
                                                int64_t max_key_blocks,
                                                const std::vector<double>& robust_scores = {});

// Step 5: attention of every query row restricted to the given per-row key blocks (dense when
// `rows` is empty). Output [token of q][head][d] as doubles in q's packed order, and lse
// [head][token].
struct AttentionResult {
  std::vector<double> out;  // index ((b * L_q + t) * H_q + h) * D + d (padded) or ((T + t) * H_q +
                            // h) * D + d (varlen)
  std::vector<double> lse;  // index (b * L_q + t) * H_q + h, same token numbering
};
AttentionResult attention(const detail::Problem& p, const std::vector<std::vector<int32_t>>& rows);

// The flat token index of chunk row t of sequence b (padded: b * L_q + t; varlen: cu_seqlens_q[b] +
// t).
int64_t token_index(const detail::Problem& p, int64_t b, int64_t t);

}  // namespace flashprefill::reference
