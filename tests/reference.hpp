// fp64 reference of every step of ALGORITHM.md: plain loops, no shortcuts (the row geometry is the
// shared common/row_geometry.hpp, which every backend uses too). The tests of every
// backend compare against it. Inputs are read through a validated detail::Problem (host memory).
#pragma once

#include <cstdint>
#include <vector>

#include "common/problem.hpp"
#include "common/row_geometry.hpp"

namespace flashprefill::reference {

// Step 1: pooled keys, [slot][kv head][d] in the slot numbering of flashprefill.hpp.
std::vector<double> pool_keys(const detail::Problem& p, int64_t num_slots);

// Step 2: S for every layout row, row-major [row][max_key_blocks] (0 where j > i), scoring
// against the pooled keys rounded to the input dtype, as every backend does.
std::vector<double> block_scores(const detail::Problem& p, const std::vector<double>& pooled,
                                 int64_t max_key_blocks);

// Robust discovery's second test (docs/ROBUST.md): the two query representatives of a (sequence,
// kv head, query block), the group's core query rounded to the input dtype and its far query.
// ambiguous: a row's distance lies so close to its head's midrange, or the two largest distances so
// close to each other, that fp32 rounding may choose the other way (within 1e-5 of the largest
// squared norm of the rows compared).
struct QueryRepresentatives {
  std::vector<double> core, far;  // [D] each
  bool ambiguous = false;
};
QueryRepresentatives query_representatives(const detail::Problem& p, const detail::LayoutRow& r);

// Robust discovery's second test for every layout row, row-major [row][max_key_blocks]: the margin
// max over rep in {core, far} of y_rep[j] - max_{j' <= i} y_rep[j'] - ln(alpha_h^2), where y_rep[j]
// = max over block j's keys of scale * rep . k; block j passes iff margin >= 0 (+inf at alpha 0,
// -inf where j > i). A margin is in natural-log units, so |margin| <= 1e-3 is the robust
// counterpart of a score within 1e-3 relative of the exact rule's threshold. NaN for every block of
// a row whose representatives are ambiguous (QueryRepresentatives): a backend may pick either.
// e4m3_sum_precision > 0: for a backend that sums the e4m3 products less precisely than fp32
// (Hopper's fp8 tensor cores), each margin moved toward 0 by twice that fraction of the largest
// scale * sum_d |rep_d k_d| of the row, so |margin| <= 1e-3 still means "within that rounding".
std::vector<double> robust_margins(const detail::Problem& p, int64_t max_key_blocks,
                                   double e4m3_sum_precision = 0.0);

// Steps 3-4: the kept key blocks of every layout row, ascending. robust_margins (robust discovery,
// robust_margins(...)): the blocks whose margin is >= 0 are kept too (none where it is NaN).
std::vector<std::vector<int32_t>> select_blocks(const detail::Problem& p,
                                                const std::vector<double>& scores,
                                                int64_t max_key_blocks,
                                                const std::vector<double>& robust_margins = {});

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
