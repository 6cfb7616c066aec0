#include "reference.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "common/e4m3.hpp"
#include "common/half.hpp"
#include "common/row_geometry.hpp"

namespace flashprefill::reference {
namespace {

using detail::Problem;
using detail::SeqExtent;
constexpr double kNegInf = -std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double load(const Problem& p, const void* base, int64_t offset) {
  return detail::load_element(base, offset, p.dtype);
}

}  // namespace

int64_t token_index(const Problem& p, int64_t b, int64_t t) {
  return p.varlen ? p.cu_seqlens_q[b] + t : b * p.len_q + t;
}

std::vector<double> pool_keys(const Problem& p, int64_t num_slots) {
  const int64_t D = p.head_dim, B = p.block();
  std::vector<double> pooled(static_cast<size_t>(num_slots * p.heads_kv * D), 0.0);
  for (int64_t b = 0; b < p.num_seqs; ++b) {
    const SeqExtent s = p.seq(b);
    for (int64_t j = 0; j < num_key_blocks(s.len_kv, B); ++j)
      for (int64_t hk = 0; hk < p.heads_kv; ++hk) {
        double* mean = &pooled[((p.pooled_slot0(b, s) + j) * p.heads_kv + hk) * D];
        const int64_t end = std::min((j + 1) * B, s.len_kv);
        for (int64_t key = j * B; key < end; ++key)
          for (int64_t d = 0; d < D; ++d) mean[d] += load(p, p.k, p.k_offset(b, s, key, hk) + d);
        for (int64_t d = 0; d < D; ++d) mean[d] /= double(end - j * B);
      }
  }
  return pooled;
}

QueryRepresentatives query_representatives(const Problem& p, const detail::LayoutRow& r) {
  const int64_t D = p.head_dim, g = p.group, hk = r.head / g, shift = r.shift();
  const int64_t t0 = r.positions(p.block()).begin - shift, t1 = r.positions(p.block()).end - shift;
  const double n = double(t1 - t0);
  // A choice closer to its tie than this, relative to the largest squared norm of the rows it
  // compares, may go either way in fp32: the GPU's distances are ||q||^2 - 2 q . mean + ||mean||^2,
  // fp32 sums of D products whose rounding is a small multiple of 2^-24 of the squared norms they
  // cancel.
  constexpr double kAmbiguous = 1e-5;
  double group_norm = 0.0;  // the largest ||q||^2 of the group's rows (the far rows compete in it)
  QueryRepresentatives reps;
  reps.core.assign(static_cast<size_t>(D), 0.0);
  double far_distance = -1.0, runner_up = -1.0, core_count = 0.0;
  int64_t far_head = hk * g, far_t = t0;
  const auto q_at = [&](int64_t t, int64_t h, int64_t d) {
    return double(load(p, p.q, p.q_offset(r.seq, r.extent, t, h) + d));
  };
  for (int64_t h = hk * g; h < (hk + 1) * g; ++h) {
    std::vector<double> mean(static_cast<size_t>(D), 0.0);
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t d = 0; d < D; ++d) mean[d] += q_at(t, h, d);
    // The distances are to the head's mean rounded to the input dtype.
    for (int64_t d = 0; d < D; ++d) mean[d] = detail::rounded_to(float(mean[d] / n), p.dtype);
    std::vector<double> distance;
    double head_norm = 0.0;  // the largest ||q||^2 of the head's rows (its core rows compete in it)
    for (int64_t t = t0; t < t1; ++t) {
      double sum = 0.0, norm = 0.0;
      for (int64_t d = 0; d < D; ++d) {
        const double x = q_at(t, h, d);
        sum += (x - mean[d]) * (x - mean[d]);
        norm += x * x;
      }
      distance.push_back(sum);
      head_norm = std::max(head_norm, norm);
      if (sum > far_distance) {
        runner_up = far_distance, far_distance = sum, far_head = h, far_t = t;
      } else {
        runner_up = std::max(runner_up, sum);
      }
    }
    group_norm = std::max(group_norm, head_norm);
    // The head's core rows: distance at most the midrange.
    const auto [lowest, highest] = std::minmax_element(distance.begin(), distance.end());
    const double midrange = 0.5 * (*lowest + *highest);
    for (int64_t t = t0; t < t1; ++t) {
      const double dist = distance[t - t0];
      // The nearest and the farthest row are never in doubt (lowest <= midrange <= highest in
      // any rounding); one in between may be.
      if (dist > *lowest && dist < *highest && std::abs(dist - midrange) <= kAmbiguous * head_norm)
        reps.ambiguous = true;
      if (dist > midrange) continue;
      core_count += 1.0;
      for (int64_t d = 0; d < D; ++d) reps.core[d] += q_at(t, h, d);
    }
  }
  if (far_distance - runner_up <= kAmbiguous * group_norm) reps.ambiguous = true;
  for (double& x : reps.core) x = detail::rounded_to(float(x / core_count), p.dtype);
  for (int64_t d = 0; d < D; ++d) reps.far.push_back(q_at(far_t, far_head, d));
  return reps;
}

std::vector<double> robust_margins(const Problem& p, int64_t max_key_blocks,
                                   double e4m3_sum_precision) {
  const int64_t D = p.head_dim, B = p.block();
  std::vector<double> margins;
  detail::for_each_layout_row(p, [&](const detail::LayoutRow& r, int64_t row) {
    const int64_t i = r.block_abs, hk = r.head / p.group;
    margins.resize(static_cast<size_t>((row + 1) * max_key_blocks), kNegInf);
    const QueryRepresentatives reps = query_representatives(p, r);
    const double log_ratio = 2.0 * std::log(double(p.alpha_of_head(r.head)));  // alpha^2
    // Products of e4m3 values: each representative and each key block scaled and rounded on its
    // own (docs/ROBUST.md), the scale divided out again (a power of two: exact).
    const auto scaled_e4m3 = [](std::vector<float> x) {
      detail::round_to_scaled_e4m3(x.data(), int64_t(x.size()));
      return std::vector<double>(x.begin(), x.end());
    };
    std::vector<std::vector<double>> key_blocks(static_cast<size_t>(i + 1));
    for (int64_t j = 0; j <= i; ++j) {
      std::vector<float> keys;
      for (int64_t key = j * B; key < std::min((j + 1) * B, r.extent.len_kv); ++key)
        for (int64_t d = 0; d < D; ++d)
          keys.push_back(float(load(p, p.k, p.k_offset(r.seq, r.extent, key, hk) + d)));
      key_blocks[j] = scaled_e4m3(std::move(keys));
    }
    if (reps.ambiguous) {  // which rows the representatives are is a matter of fp32 rounding
      for (int64_t j = 0; j <= i; ++j) margins[row * max_key_blocks + j] = kNaN;
      return;
    }
    for (const std::vector<double>* given : {&reps.core, &reps.far}) {
      const std::vector<double> rep = scaled_e4m3(std::vector<float>(given->begin(), given->end()));
      std::vector<double> y(static_cast<size_t>(i + 1), kNegInf);
      double magnitude = 0.0;           // the largest scale * sum_d |rep_d k_d|
      for (int64_t j = 0; j <= i; ++j)  // every key of the block counts, the diagonal's too
        for (size_t key = 0; key < key_blocks[j].size() / size_t(D); ++key) {
          double dot = 0.0, l1 = 0.0;
          for (int64_t d = 0; d < D; ++d) {
            dot += rep[d] * key_blocks[j][key * D + d];
            l1 += std::abs(rep[d] * key_blocks[j][key * D + d]);
          }
          y[j] = std::max(y[j], p.params.scale * dot);
          magnitude = std::max(magnitude, p.params.scale * l1);
        }
      const double best = *std::max_element(y.begin(), y.end());
      // A margin is two best keys apart: each may move by e4m3_sum_precision of its magnitude.
      const double allowance = 2.0 * e4m3_sum_precision * magnitude;
      for (int64_t j = 0; j <= i; ++j) {
        double& margin = margins[row * max_key_blocks + j];
        const double m = y[j] - best - log_ratio;
        const double shrunk = std::copysign(std::max(std::abs(m) - allowance, 0.0), m);
        margin = std::max(margin, log_ratio == kNegInf ? -kNegInf : shrunk);
      }
    }
  });
  return margins;
}

std::vector<double> block_scores(const Problem& p, const std::vector<double>& pooled,
                                 int64_t max_key_blocks) {
  const int64_t D = p.head_dim, B = p.block();
  std::vector<double> scores;
  detail::for_each_layout_row(p, [&](const detail::LayoutRow& r, int64_t row) {
    const int64_t b = r.seq, h = r.head, i = r.block_abs, shift = r.shift();
    const SeqExtent& s = r.extent;
    scores.resize(static_cast<size_t>((row + 1) * max_key_blocks), 0.0);
    const int64_t t0 = r.positions(B).begin - shift, t1 = r.positions(B).end - shift;
    std::vector<double> x(static_cast<size_t>((t1 - t0) * (i + 1)), kNegInf);
    double row_max = kNegInf;
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t j = 0; j <= i; ++j) {
        if (!detail::key_block_visible(j, shift + t, s.len_kv, B)) continue;
        // Scoring reads the pooled keys rounded to the input dtype (ALGORITHM.md step 1 accumulates
        // in fp32; the paper's reference stores its pooled keys in k's dtype, and so do our
        // backends).
        const double* kbar = &pooled[((p.pooled_slot0(b, s) + j) * p.heads_kv + h / p.group) * D];
        double dot = 0.0;
        for (int64_t d = 0; d < D; ++d)
          dot += load(p, p.q, p.q_offset(b, s, t, h) + d) *
                 detail::rounded_to(float(kbar[d]), p.dtype);
        x[(t - t0) * (i + 1) + j] = p.params.scale * dot;
        row_max = std::max(row_max, x[(t - t0) * (i + 1) + j]);
      }
    for (int64_t j = 0; j <= i; ++j) {
      double sum = 0.0;
      for (int64_t t = t0; t < t1; ++t)
        if (x[(t - t0) * (i + 1) + j] != kNegInf)
          sum += std::exp(x[(t - t0) * (i + 1) + j] - row_max);
      scores[row * max_key_blocks + j] = sum;
    }
  });
  return scores;
}

std::vector<std::vector<int32_t>> select_blocks(const Problem& p, const std::vector<double>& scores,
                                                int64_t max_key_blocks,
                                                const std::vector<double>& robust_margins) {
  std::vector<std::vector<int32_t>> kept;
  detail::for_each_layout_row(p, [&](const detail::LayoutRow& r, int64_t row) {
    const int64_t i = r.block_abs;
    const double* S = &scores[row * max_key_blocks];
    const double row_max = *std::max_element(S, S + i + 1);
    const double alpha = p.alpha_of_head(r.head);
    std::vector<bool> keep(static_cast<size_t>(i + 1));
    for (int64_t j = 0; j <= i; ++j)
      keep[j] =
          S[j] >= alpha * row_max || detail::always_kept(i, j, r.key_blocks(p.block()), p.params);
    if (!robust_margins.empty())  // docs/ROBUST.md: also what the representatives' test keeps
      for (int64_t j = 0; j <= i; ++j)
        keep[j] = keep[j] || robust_margins[row * max_key_blocks + j] >= 0.0;
    std::vector<int32_t> order(static_cast<size_t>(i + 1));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t c) { return S[a] > S[c]; });
    for (int64_t n = 0; n < std::min<int64_t>(p.params.min_budget, i + 1); ++n)
      keep[order[n]] = true;
    kept.emplace_back();
    for (int64_t j = 0; j <= i; ++j)
      if (keep[j]) kept.back().push_back(static_cast<int32_t>(j));
  });
  return kept;
}

AttentionResult attention(const Problem& p, const std::vector<std::vector<int32_t>>& rows) {
  const int64_t D = p.head_dim, B = p.block(), H = p.heads_q;
  AttentionResult result;
  result.out.assign(static_cast<size_t>(p.total_q * H * D), 0.0);
  result.lse.assign(static_cast<size_t>(p.total_q * H), kNegInf);
  detail::for_each_layout_row(p, [&](const detail::LayoutRow& r, int64_t row) {
    const int64_t b = r.seq, h = r.head, i = r.block_abs, shift = r.shift();
    const SeqExtent& s = r.extent;
    std::vector<int32_t> blocks(static_cast<size_t>(i + 1));
    std::iota(blocks.begin(), blocks.end(), 0);
    if (!rows.empty()) blocks = rows[row];
    const int64_t t0 = r.positions(B).begin - shift, t1 = r.positions(B).end - shift;
    for (int64_t t = t0; t < t1; ++t) {
      std::vector<double> logits;
      std::vector<int64_t> keys;
      for (int32_t j : blocks)
        for (int64_t key = j * B; key < std::min<int64_t>((j + 1) * B, s.len_kv); ++key) {
          if (key > shift + t) continue;
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d)
            dot += load(p, p.q, p.q_offset(b, s, t, h) + d) *
                   load(p, p.k, p.k_offset(b, s, key, h / p.group) + d);
          logits.push_back(p.params.scale * dot);
          keys.push_back(key);
        }
      if (logits.empty()) continue;  // no visible key: zeros, lse -inf
      const double row_max = *std::max_element(logits.begin(), logits.end());
      double sum = 0.0;
      for (double& l : logits) sum += (l = std::exp(l - row_max));
      const int64_t token = token_index(p, b, t);
      double* out = &result.out[(token * H + h) * D];
      for (size_t n = 0; n < keys.size(); ++n)
        for (int64_t d = 0; d < D; ++d)
          out[d] += logits[n] / sum * load(p, p.v, p.v_offset(b, s, keys[n], h / p.group) + d);
      result.lse[token * H + h] = row_max + std::log(sum);
    }
  });
  return result;
}

}  // namespace flashprefill::reference
