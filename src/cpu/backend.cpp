// CPU backend: every stage of ALGORITHM.md, straightforward and exact (fp32 arithmetic on
// bf16/fp16 inputs), one (sequence, head, query block) row per task.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "backend.hpp"
#include "common/half.hpp"
#include "cpu/parallel.hpp"

namespace flashprefill::cpu {
namespace {

using detail::Problem;
using detail::SeqExtent;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

float load(const Problem& p, const void* base, int64_t offset) {
  const uint16_t bits = static_cast<const uint16_t*>(base)[offset];
  return p.dtype == DType::bf16 ? detail::bf16_to_float(bits) : detail::fp16_to_float(bits);
}
void store(const Problem& p, void* base, int64_t offset, float value) {
  static_cast<uint16_t*>(base)[offset] = p.dtype == DType::bf16 ? detail::float_to_bf16(value) : detail::float_to_fp16(value);
}

// One layout row: which sequence, head and query block, and the query rows it holds.
struct Row {
  int64_t seq = 0, head = 0, block_abs = 0;
  SeqExtent extent;
  int64_t t_begin = 0, t_end = 0;  // chunk rows t of this block
  int64_t num_kv_blocks = 0;
};

std::vector<int64_t> seq_row_offsets(const Problem& p) {
  std::vector<int64_t> offsets(static_cast<size_t>(p.num_seqs + 1), 0);
  for (int64_t b = 0; b < p.num_seqs; ++b) {
    const SeqExtent s = p.seq(b);
    offsets[b + 1] = offsets[b] + p.heads_q * num_query_blocks(s.len_q, s.len_kv, p.block());
  }
  return offsets;
}

// All rows in layout order.
std::vector<Row> enumerate_rows(const Problem& p) {
  std::vector<Row> rows;
  const int64_t block = p.block();
  for (int64_t b = 0; b < p.num_seqs; ++b) {
    const SeqExtent s = p.seq(b);
    const int64_t nqb = num_query_blocks(s.len_q, s.len_kv, block);
    const int64_t first = first_query_block(s.len_q, s.len_kv, block);
    const int64_t shift = s.len_kv - s.len_q;  // absolute position of chunk row 0
    for (int64_t h = 0; h < p.heads_q; ++h)
      for (int64_t i = 0; i < nqb; ++i) {
        Row r;
        r.seq = b;
        r.head = h;
        r.block_abs = first + i;
        r.extent = s;
        r.t_begin = std::max(r.block_abs * block, shift) - shift;
        r.t_end = std::min((r.block_abs + 1) * block, s.len_kv) - shift;
        r.num_kv_blocks = num_key_blocks(s.len_kv, block);
        rows.push_back(r);
      }
  }
  return rows;
}

// Step 2 for one row: S[j] for j <= i (written to scores[0 .. i]).
void score_row(const Problem& p, const Row& r, const float* pooled_keys, float* scores) {
  const int64_t D = p.head_dim, block = p.block(), kv_head = r.head / p.group;
  const int64_t slot0 = p.pooled_slot0(r.seq, r.extent);
  const int64_t num_j = r.block_abs + 1;
  const int64_t shift = r.extent.len_kv - r.extent.len_q;
  std::vector<float> x(static_cast<size_t>((r.t_end - r.t_begin) * num_j));
  std::vector<float> q(static_cast<size_t>(D));
  float row_max = kNegInf;
  for (int64_t t = r.t_begin; t < r.t_end; ++t) {
    for (int64_t d = 0; d < D; ++d) q[d] = load(p, p.q, p.q_offset(r.seq, r.extent, t, r.head) + d);
    for (int64_t j = 0; j < num_j; ++j) {
      float value = kNegInf;
      if (detail::key_block_visible(j, shift + t, r.extent.len_kv, block)) {
        const float* kbar = pooled_keys + ((slot0 + j) * p.heads_kv + kv_head) * D;
        float dot = 0.0f;
        for (int64_t d = 0; d < D; ++d) dot += q[d] * kbar[d];
        value = p.params.scale * dot;
      }
      x[(t - r.t_begin) * num_j + j] = value;
      row_max = std::max(row_max, value);
    }
  }
  for (int64_t j = 0; j < num_j; ++j) {
    float sum = 0.0f;
    if (row_max != kNegInf)
      for (int64_t t = r.t_begin; t < r.t_end; ++t) {
        const float value = x[(t - r.t_begin) * num_j + j];
        if (value != kNegInf) sum += std::exp(value - row_max);
      }
    scores[j] = sum;
  }
}

// Steps 3-4 for one row: the kept key blocks in ascending order. min_budget ties go to the smaller j.
int64_t select_row(const Problem& p, const Row& r, const float* scores, int32_t* kept) {
  const Params& params = p.params;
  const int64_t num_j = r.block_abs + 1;
  float max_score = 0.0f;
  for (int64_t j = 0; j < num_j; ++j) max_score = std::max(max_score, scores[j]);
  const float threshold = params.alpha * max_score;
  std::vector<char> keep(static_cast<size_t>(num_j), 0);
  for (int64_t j = 0; j < num_j; ++j)
    keep[j] = scores[j] >= threshold || detail::always_kept(r.block_abs, j, r.num_kv_blocks, params);
  if (params.min_budget > 0) {
    std::vector<int32_t> order(static_cast<size_t>(num_j));
    std::iota(order.begin(), order.end(), 0);
    const int64_t budget = std::min<int64_t>(params.min_budget, num_j);
    std::partial_sort(order.begin(), order.begin() + budget, order.end(),
                      [&](int32_t a, int32_t b) { return scores[a] > scores[b] || (scores[a] == scores[b] && a < b); });
    for (int64_t n = 0; n < budget; ++n) keep[order[n]] = 1;
  }
  int64_t count = 0;
  for (int64_t j = 0; j < num_j; ++j)
    if (keep[j]) kept[count++] = static_cast<int32_t>(j);
  return count;
}

// Writes per-row kept lists into the CSR layout; rows are processed in parallel, then packed.
template <typename SelectRow>
void build_layout(const Problem& p, const BlockSparseLayout& layout, SelectRow&& select) {
  const std::vector<Row> rows = enumerate_rows(p);
  const std::vector<int64_t> offsets = seq_row_offsets(p);
  std::copy(offsets.begin(), offsets.end(), layout.seq_row_offset.ptr<int64_t>());
  std::vector<std::vector<int32_t>> kept(rows.size());
  parallel_for(static_cast<int64_t>(rows.size()), [&](int64_t n) {
    kept[n].resize(size_t(rows[n].block_abs + 1));
    kept[n].resize(size_t(select(n, rows[n], kept[n].data())));
  });
  int64_t* row_ptr = layout.row_ptr.ptr<int64_t>();
  int32_t* col_idx = layout.col_idx.ptr<int32_t>();
  row_ptr[0] = 0;
  for (size_t n = 0; n < rows.size(); ++n) {
    std::copy(kept[n].begin(), kept[n].end(), col_idx + row_ptr[n]);
    row_ptr[n + 1] = row_ptr[n] + static_cast<int64_t>(kept[n].size());
  }
}

// Step 5 for one row over the given key blocks (ascending), online softmax per query row.
void attend_row(const Problem& p, const Row& r, const int32_t* blocks, int64_t num_blocks) {
  const int64_t D = p.head_dim, block = p.block(), kv_head = r.head / p.group;
  const int64_t shift = r.extent.len_kv - r.extent.len_q;
  std::vector<float> q(static_cast<size_t>(D)), acc(static_cast<size_t>(D));
  for (int64_t t = r.t_begin; t < r.t_end; ++t) {
    const int64_t pos = shift + t;
    for (int64_t d = 0; d < D; ++d) q[d] = load(p, p.q, p.q_offset(r.seq, r.extent, t, r.head) + d);
    std::fill(acc.begin(), acc.end(), 0.0f);
    float running_max = kNegInf, running_sum = 0.0f;
    for (int64_t n = 0; n < num_blocks; ++n) {
      const int64_t key_end = std::min({(blocks[n] + 1) * block, r.extent.len_kv, pos + 1});
      for (int64_t s = blocks[n] * block; s < key_end; ++s) {
        const int64_t k_offset = p.k_offset(r.seq, r.extent, s, kv_head);
        float dot = 0.0f;
        for (int64_t d = 0; d < D; ++d) dot += q[d] * load(p, p.k, k_offset + d);
        const float score = p.params.scale * dot;
        const float new_max = std::max(running_max, score);
        const float correction = std::exp(running_max - new_max);
        const float weight = std::exp(score - new_max);
        running_sum = running_sum * correction + weight;
        const int64_t v_offset = p.v_offset(r.seq, r.extent, s, kv_head);
        for (int64_t d = 0; d < D; ++d) acc[d] = acc[d] * correction + weight * load(p, p.v, v_offset + d);
        running_max = new_max;
      }
    }
    const float inverse = running_sum > 0.0f ? 1.0f / running_sum : 0.0f;
    const int64_t out_offset = p.out_offset(r.seq, r.extent, t, r.head);
    for (int64_t d = 0; d < D; ++d) store(p, p.out, out_offset + d, acc[d] * inverse);
    if (p.lse) p.lse[p.lse_offset(r.seq, r.extent, t, r.head)] = running_sum > 0.0f ? running_max + std::log(running_sum) : kNegInf;
  }
}

}  // namespace

size_t discover_workspace_size(const Problem& p) { return 0; }
size_t attention_workspace_size(const Problem& p, const BlockSparseLayout& layout) { return 0; }

void fill_seq_row_offsets(const Problem& p, const BlockSparseLayout& layout) {
  const std::vector<int64_t> offsets = seq_row_offsets(p);
  std::copy(offsets.begin(), offsets.end(), layout.seq_row_offset.ptr<int64_t>());
}

void pool_keys(const Problem& p, float* pooled_keys) {
  const int64_t D = p.head_dim, block = p.block();
  for (int64_t b = 0; b < p.num_seqs; ++b) {
    const SeqExtent s = p.seq(b);
    const int64_t slot0 = p.pooled_slot0(b, s), nkb = num_key_blocks(s.len_kv, block);
    parallel_for(nkb * p.heads_kv, [&](int64_t n) {
      const int64_t j = n / p.heads_kv, kv_head = n % p.heads_kv;
      float* mean = pooled_keys + ((slot0 + j) * p.heads_kv + kv_head) * D;
      std::fill(mean, mean + D, 0.0f);
      const int64_t key_end = std::min((j + 1) * block, s.len_kv);
      for (int64_t key = j * block; key < key_end; ++key) {
        const int64_t offset = p.k_offset(b, s, key, kv_head);
        for (int64_t d = 0; d < D; ++d) mean[d] += load(p, p.k, offset + d);
      }
      const float inverse = 1.0f / float(key_end - j * block);
      for (int64_t d = 0; d < D; ++d) mean[d] *= inverse;
    });
  }
}

void block_scores(const Problem& p, const float* pooled_keys, float* scores, int64_t ld) {
  const std::vector<Row> rows = enumerate_rows(p);
  parallel_for(static_cast<int64_t>(rows.size()), [&](int64_t n) {
    float* out = scores + n * ld;
    std::fill(out, out + ld, 0.0f);
    score_row(p, rows[n], pooled_keys, out);
  });
}

void select_blocks(const Problem& p, const float* scores, int64_t ld, const BlockSparseLayout& layout) {
  build_layout(p, layout, [&](int64_t n, const Row& r, int32_t* kept) { return select_row(p, r, scores + n * ld, kept); });
}

void discover_layout(const Problem& p, const BlockSparseLayout& layout, void* workspace) {
  int64_t slots = 0;
  for (int64_t b = 0; b < p.num_seqs; ++b) {
    const SeqExtent s = p.seq(b);
    slots = std::max(slots, p.pooled_slot0(b, s) + num_key_blocks(s.len_kv, p.block()));
  }
  std::vector<float> pooled(static_cast<size_t>(slots * p.heads_kv * p.head_dim));
  pool_keys(p, pooled.data());
  build_layout(p, layout, [&](int64_t, const Row& r, int32_t* kept) {
    std::vector<float> scores(static_cast<size_t>(r.block_abs + 1));
    score_row(p, r, pooled.data(), scores.data());
    return select_row(p, r, scores.data(), kept);
  });
}

void block_sparse_attention(const Problem& p, const BlockSparseLayout& layout, void* workspace) {
  const std::vector<Row> rows = enumerate_rows(p);
  const int64_t* row_ptr = layout.row_ptr.ptr<const int64_t>();
  const int32_t* col_idx = layout.col_idx.ptr<const int32_t>();
  // enumerate_rows() yields rows in layout order, so task n is layout row n.
  parallel_for(static_cast<int64_t>(rows.size()), [&](int64_t n) {
    attend_row(p, rows[n], col_idx + row_ptr[n], row_ptr[n + 1] - row_ptr[n]);
  });
}

void dense_attention(const Problem& p) {
  const std::vector<Row> rows = enumerate_rows(p);
  parallel_for(static_cast<int64_t>(rows.size()), [&](int64_t n) {
    std::vector<int32_t> all(static_cast<size_t>(rows[n].block_abs + 1));
    std::iota(all.begin(), all.end(), 0);
    attend_row(p, rows[n], all.data(), static_cast<int64_t>(all.size()));
  });
}

}  // namespace flashprefill::cpu
