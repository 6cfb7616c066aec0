// CPU backend: every stage of ALGORITHM.md, one (sequence, head, query block) row per task (step 5:
// the rows of up to four heads of a GQA group per task, which read the same K/V blocks). Scores,
// maxima and sums in fp32; step 5 multiplies bf16 inputs as bf16 with fp32 accumulation where the
// CPU can (attention_bf16.hpp), everything else in fp32 (kernels.hpp).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "backend.hpp"
#include "common/constants.hpp"
#include "common/e4m3.hpp"
#include "common/half.hpp"
#include "common/row_geometry.hpp"
#include "cpu/isa.hpp"
#include "cpu/kernels.hpp"
#include "cpu/packed_kv.hpp"
#include "cpu/parallel.hpp"

namespace flashprefill::cpu {
namespace {

using detail::Problem;
using detail::SeqExtent;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

float load(const Problem& p, const void* base, int64_t offset) {
  return detail::load_element(base, offset, p.dtype);
}
// n contiguous values -> fp32 (the dtype branch outside the loop, so it vectorises).
void load_row(const Problem& p, const void* base, int64_t offset, int64_t n, float* out) {
  if (p.dtype == DType::fp32) {
    std::copy_n(static_cast<const float*>(base) + offset, n, out);
    return;
  }
  const uint16_t* bits = static_cast<const uint16_t*>(base) + offset;
  if (p.dtype == DType::bf16)
    for (int64_t d = 0; d < n; ++d) out[d] = detail::bf16_to_float(bits[d]);
  else
    for (int64_t d = 0; d < n; ++d) out[d] = detail::fp16_to_float(bits[d]);
}

void store(const Problem& p, void* base, int64_t offset, float value) {
  detail::store_element(base, offset, value, p.dtype);
}

// One layout row (common/row_geometry.hpp) and the chunk rows t of its queries.
struct Row : detail::LayoutRow {
  int64_t t_begin = 0, t_end = 0;
  int64_t num_kv_blocks = 0;
};

std::vector<int64_t> seq_row_offsets(const Problem& p) {
  std::vector<int64_t> offsets(static_cast<size_t>(p.num_seqs + 1), 0);
  for (int64_t b = 0; b < p.num_seqs; ++b)
    offsets[b + 1] = offsets[b] + detail::layout_rows_of(p, p.seq(b));
  return offsets;
}

// All rows in layout order.
std::vector<Row> enumerate_rows(const Problem& p) {
  std::vector<Row> rows;
  const int64_t block = p.block();
  detail::for_each_layout_row(p, [&](const detail::LayoutRow& layout_row, int64_t) {
    Row r;
    static_cast<detail::LayoutRow&>(r) = layout_row;
    const detail::PositionRange positions = r.positions(block);
    r.t_begin = positions.begin - r.shift();
    r.t_end = positions.end - r.shift();
    r.num_kv_blocks = r.key_blocks(block);
    rows.push_back(r);
  });
  return rows;
}

int64_t round_up(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// Per-thread scratch for one row's tiles, reused across rows so the hot loop never allocates.
struct Scratch {
  std::vector<float> q, s, o, row_max, row_sum, bf16_row;
};

// Loads the row's queries as fp32, pre-multiplied by scale * log2(e) so that scores are in the
// exp2 domain; rows are padded with zeros to a multiple of the micro-kernel's row group.
int64_t load_queries(const Problem& p, const Row& r, Scratch& ws) {
  const int64_t D = p.head_dim, m = r.t_end - r.t_begin, m_pad = round_up(m, kernels::kRowGroup);
  const float factor = p.params.scale * detail::kLog2e;
  ws.q.assign(static_cast<size_t>(m_pad * D), 0.0f);
  for (int64_t t = r.t_begin; t < r.t_end; ++t) {
    float* q = &ws.q[(t - r.t_begin) * D];
    load_row(p, p.q, p.q_offset(r.seq, r.extent, t, r.head), D, q);
    for (int64_t d = 0; d < D; ++d) q[d] *= factor;
  }
  return m_pad;
}

// Step 2 for one row: S[j] for j <= i (written to scores[0 .. i]). pooled_t holds the sequence's
// pooled keys of this kv head transposed, [D][ld_pooled], so the score tile is one Q Kbar^T
// product.
void score_row(const Problem& p, const Row& r, const float* pooled_t, int64_t ld_pooled,
               float* scores, Scratch& ws) {
  const int64_t D = p.head_dim, block = p.block(), m = r.t_end - r.t_begin;
  const int64_t num_j = r.block_abs + 1, n_pad = round_up(num_j, kernels::kColumnTile);
  const int64_t shift = r.extent.len_kv - r.extent.len_q;
  const int64_t m_pad = load_queries(p, r, ws);
  ws.s.resize(static_cast<size_t>(m_pad * n_pad));
  kernels::qk(ws.q.data(), m_pad, D, pooled_t, ld_pooled, n_pad, ws.s.data(), n_pad);
  float row_max = kNegInf;  // M[i] = max over rows and visible blocks
  for (int64_t t = 0; t < m; ++t) {
    float* x = &ws.s[t * n_pad];
    // Only the diagonal block can be partly visible (ALGORITHM.md step 2).
    if (!detail::key_block_visible(r.block_abs, shift + r.t_begin + t, r.extent.len_kv, block))
      x[r.block_abs] = kNegInf;
    for (int64_t j = 0; j < num_j; ++j) row_max = std::max(row_max, x[j]);
  }
  std::fill(scores, scores + num_j, 0.0f);
  if (row_max == kNegInf) return;
  const std::vector<float> shifts(static_cast<size_t>(m), row_max);
  kernels::exp2_rows(ws.s.data(), m, num_j, n_pad, shifts.data());
  for (int64_t t = 0; t < m; ++t)
    for (int64_t j = 0; j < num_j; ++j) scores[j] += ws.s[t * n_pad + j];
}

// Pooled keys of (sequence, kv head), rounded to the input dtype, transposed to [D][ld],
// zero-padded columns.
std::vector<float> transpose_pooled(const Problem& p, const float* pooled_keys, int64_t seq,
                                    const SeqExtent& s, int64_t kv_head, int64_t& ld) {
  const int64_t D = p.head_dim, nkb = num_key_blocks(s.len_kv, p.block()),
                slot0 = p.pooled_slot0(seq, s);
  ld = round_up(std::max<int64_t>(nkb, 1), kernels::kColumnTile);
  std::vector<float> pooled_t(static_cast<size_t>(D * ld), 0.0f);
  for (int64_t j = 0; j < nkb; ++j)
    for (int64_t d = 0; d < D;
         ++d)  // scoring reads the means rounded to the input dtype (as the GPU's tensor cores do)
      pooled_t[d * ld + j] =
          detail::rounded_to(pooled_keys[((slot0 + j) * p.heads_kv + kv_head) * D + d], p.dtype);
  return pooled_t;
}

// Steps 3-4 for one row: the kept key blocks in ascending order. min_budget ties go to the smaller
// j. robust_y (robust discovery, docs/ROBUST.md; nullptr for exact): y[rep][j] for j <= i of the
// row's two query representatives, rep-major with stride i + 1 (RobustScores); the blocks whose y
// lies within ln(1 / alpha^2) of that representative's best block are kept too.
int64_t select_row(const Problem& p, const Row& r, const float* scores, int32_t* kept,
                   const float* robust_y = nullptr) {
  const Params& params = p.params;
  const int64_t num_j = r.block_abs + 1;
  float max_score = 0.0f;
  for (int64_t j = 0; j < num_j; ++j) max_score = std::max(max_score, scores[j]);
  const float alpha = p.alpha_of_head(r.head);
  const float threshold = alpha * max_score;
  std::vector<char> keep(static_cast<size_t>(num_j), 0);
  for (int64_t j = 0; j < num_j; ++j)
    keep[j] =
        scores[j] >= threshold || detail::always_kept(r.block_abs, j, r.num_kv_blocks, params);
  if (robust_y) {
    // The threshold is alpha^2 (docs/ROBUST.md); -inf at alpha 0: every causal block, as dense.
    const float log_ratio = 2.0f * std::log(alpha);
    for (int64_t rep = 0; rep < 2; ++rep) {
      const float* y = robust_y + rep * num_j;
      const float bar = *std::max_element(y, y + num_j) + log_ratio;
      for (int64_t j = 0; j < num_j; ++j) keep[j] |= y[j] >= bar;
    }
  }
  if (params.min_budget > 0) {
    std::vector<int32_t> order(static_cast<size_t>(num_j));
    std::iota(order.begin(), order.end(), 0);
    const int64_t budget = std::min<int64_t>(params.min_budget, num_j);
    std::partial_sort(order.begin(), order.begin() + budget, order.end(),
                      [&](int32_t a, int32_t b) {
                        return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
                      });
    for (int64_t n = 0; n < budget; ++n) keep[order[n]] = 1;
  }
  int64_t count = 0;
  for (int64_t j = 0; j < num_j; ++j)
    if (keep[j]) kept[count++] = static_cast<int32_t>(j);
  return count;
}

// K and V converted to fp32 once per call, per (key block slot, kv head): K transposed to
// [D][n_pad] and V as [n_pad][D], each block contiguous, so every query block that reads a key
// block (all heads of its group) reuses the conversion. Key blocks are numbered by the pooled-key
// slots of flashprefill.hpp. O(L * H_kv * D) memory.
struct ConvertedKV {
  int64_t n_pad = 0, block_elems = 0;
  std::vector<float> kt, v;

  const float* kt_block(const Problem& p, int64_t slot, int64_t kv_head) const {
    return &kt[(slot * p.heads_kv + kv_head) * block_elems];
  }
  const float* v_block(const Problem& p, int64_t slot, int64_t kv_head) const {
    return &v[(slot * p.heads_kv + kv_head) * block_elems];
  }
};

ConvertedKV convert_kv(const Problem& p) {
  ConvertedKV kv;
  const int64_t D = p.head_dim, block = p.block();
  kv.n_pad = round_up(block, kernels::kColumnTile);
  kv.block_elems = kv.n_pad * D;
  const int64_t slots = detail::stage_shapes_of(p).pooled_key_slots;
  kv.kt.assign(static_cast<size_t>(slots * p.heads_kv * kv.block_elems), 0.0f);
  kv.v.assign(kv.kt.size(), 0.0f);
  for (int64_t b = 0; b < p.num_seqs; ++b) {
    const SeqExtent s = p.seq(b);
    const int64_t slot0 = p.pooled_slot0(b, s);
    parallel_for(num_key_blocks(s.len_kv, block) * p.heads_kv, [&](int64_t n) {
      const int64_t j = n / p.heads_kv, kv_head = n % p.heads_kv;
      float* kt = &kv.kt[((slot0 + j) * p.heads_kv + kv_head) * kv.block_elems];
      float* v = &kv.v[((slot0 + j) * p.heads_kv + kv_head) * kv.block_elems];
      std::vector<float> key(static_cast<size_t>(D));
      for (int64_t c = 0; c < std::min(block, s.len_kv - j * block); ++c) {
        load_row(p, p.k, p.k_offset(b, s, j * block + c, kv_head), D, key.data());
        for (int64_t d = 0; d < D; ++d) kt[d * kv.n_pad + c] = key[d];
        load_row(p, p.v, p.v_offset(b, s, j * block + c, kv_head), D, v + c * D);
      }
    });
  }
  return kv;
}

// K and V as the chosen kernels read them: packed bf16 for the bf16 products, else fp32.
struct AttentionKV {
  Isa isa;
  bool bf16_products;
  ConvertedKV fp32;
  PackedBf16KV bf16;
};

AttentionKV prepare_kv(const Problem& p) {
  AttentionKV kv;
  kv.isa = isa_for(p.dtype);
  kv.bf16_products = kv.isa == Isa::amx || kv.isa == Isa::avx512bf16;
  if (kv.bf16_products)
    kv.bf16 = pack_bf16_kv(p);
  else
    kv.fp32 = convert_kv(p);
  return kv;
}

// Step 5 for one row over the given key blocks (ascending): FlashAttention's tiling on the CPU.
// Per key block: S = Q K^T (exp2 domain), causal mask where the block reaches past a row's
// position, online softmax (running max and sum per row), O += P V. fp32 throughout.
void attend_row(const Problem& p, const ConvertedKV& kv, const Row& r, const int32_t* blocks,
                int64_t num_blocks, Scratch& ws) {
  const int64_t D = p.head_dim, block = p.block(), kv_head = r.head / p.group,
                m = r.t_end - r.t_begin;
  const int64_t shift = r.extent.len_kv - r.extent.len_q, first_pos = shift + r.t_begin;
  const int64_t n_pad = kv.n_pad, slot0 = p.pooled_slot0(r.seq, r.extent);
  const int64_t m_pad = load_queries(p, r, ws);
  ws.s.resize(static_cast<size_t>(m_pad * n_pad));
  ws.o.assign(static_cast<size_t>(m_pad * D), 0.0f);
  ws.row_max.assign(static_cast<size_t>(m_pad), kNegInf);
  ws.row_sum.assign(static_cast<size_t>(m_pad), 0.0f);
  for (int64_t n = 0; n < num_blocks; ++n) {
    const int64_t key0 = int64_t(blocks[n]) * block;
    const int64_t keys = std::min(std::min(key0 + block, r.extent.len_kv), first_pos + m) -
                         key0;  // no row sees past this
    if (keys <= 0) continue;
    kernels::qk(ws.q.data(), m_pad, D, kv.kt_block(p, slot0 + blocks[n], kv_head), n_pad, n_pad,
                ws.s.data(), n_pad);
    // Keys past a row's position (diagonal block) or past the block's end are masked.
    kernels::online_softmax_block(ws.s.data(), m, m_pad, n_pad, keys, first_pos - key0,
                                  ws.row_max.data(), ws.row_sum.data(), ws.o.data(), D);
    kernels::pv(ws.s.data(), n_pad, m_pad, keys, kv.v_block(p, slot0 + blocks[n], kv_head), D,
                ws.o.data());
  }
  for (int64_t t = r.t_begin; t < r.t_end; ++t) {
    const int64_t row = t - r.t_begin;
    const float inverse = ws.row_sum[row] > 0.0f ? 1.0f / ws.row_sum[row] : 0.0f;
    const int64_t out_offset = p.out_offset(r.seq, r.extent, t, r.head);
    for (int64_t d = 0; d < D; ++d) store(p, p.out, out_offset + d, ws.o[row * D + d] * inverse);
    if (p.lse)
      p.lse[p.lse_offset(r.seq, r.extent, t, r.head)] =
          ws.row_sum[row] > 0.0f ? (ws.row_max[row] + std::log2(ws.row_sum[row])) * detail::kLn2
                                 : kNegInf;
  }
}

// A task of step 5: query block i of up to kernels::kMaxGroupHeads query heads of one GQA group,
// layout rows first_row + k * rows_per_head for k < heads. They read the same kv head, so the bf16
// kernels load each key block once for all of them.
struct GroupTask {
  int64_t first_row, heads, rows_per_head;
};

std::vector<GroupTask> group_tasks(const Problem& p) {
  std::vector<GroupTask> tasks;
  int64_t row0 = 0;  // layout rows: sequence, then head, then query block (enumerate_rows' order)
  for (int64_t b = 0; b < p.num_seqs; ++b) {
    const SeqExtent s = p.seq(b);
    const int64_t nqb = num_query_blocks(s.len_q, s.len_kv, p.block());
    for (int64_t h0 = 0; h0 < p.heads_q;) {
      const int64_t heads = std::min<int64_t>(kernels::kMaxGroupHeads,
                                              p.group - h0 % p.group);  // never across groups
      for (int64_t i = 0; i < nqb; ++i) tasks.push_back({row0 + h0 * nqb + i, heads, nqb});
      h0 += heads;
    }
    row0 += p.heads_q * nqb;
  }
  return tasks;
}

// Step 5 for one task; blocks_of(row) gives a layout row's kept blocks as (pointer, count).
template <typename BlocksOf>
void attend(const Problem& p, const AttentionKV& kv, const std::vector<Row>& rows,
            const GroupTask& task, BlocksOf&& blocks_of, Scratch& ws) {
  const Row& first = rows[task.first_row];
  if (kv.bf16_products) {
    HeadBlocks heads[kernels::kMaxGroupHeads];
    for (int64_t k = 0; k < task.heads; ++k) {
      const auto [blocks, count] = blocks_of(task.first_row + k * task.rows_per_head);
      heads[k] = {first.head + k, blocks, count};
    }
    attend_rows_bf16(kv.isa, p, kv.bf16, first.seq, first.extent, first.t_begin, first.t_end, heads,
                     task.heads, ws.bf16_row);
    return;
  }
  for (int64_t k = 0; k < task.heads; ++k) {
    const int64_t row = task.first_row + k * task.rows_per_head;
    const auto [blocks, count] = blocks_of(row);
    attend_row(p, kv.fp32, rows[row], blocks, count, ws);
  }
}

// Runs body(index, scratch) over tasks (layout rows, or step 5's GroupTasks) on all threads,
// costliest first (by `cost`), each thread taking the next from a shared counter: rows differ a lot
// in kept blocks.
template <typename Cost, typename Body>
void for_rows_costliest_first(int64_t count, Cost&& cost, Body&& body) {
  std::vector<int64_t> order(static_cast<size_t>(count));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return cost(a) > cost(b); });
  std::atomic<int64_t> next{0};
  parallel_for(std::min<int64_t>(worker_count(), count), [&](int64_t) {
    Scratch scratch;
    for (int64_t n = next++; n < count; n = next++) body(order[n], scratch);
  });
}

// Writes per-row kept lists into the CSR layout: rows are selected in parallel (costliest first),
// then packed in row order.
template <typename SelectRow>
void build_layout(const Problem& p, const BlockSparseLayout& layout, SelectRow&& select) {
  const std::vector<Row> rows = enumerate_rows(p);
  const std::vector<int64_t> offsets = seq_row_offsets(p);
  std::copy(offsets.begin(), offsets.end(), layout.seq_row_offset.ptr<int64_t>());
  std::vector<std::vector<int32_t>> kept(rows.size());
  for_rows_costliest_first(
      static_cast<int64_t>(rows.size()), [&](int64_t n) { return rows[n].block_abs; },
      [&](int64_t n, Scratch& scratch) {
        kept[n].resize(static_cast<size_t>(rows[n].block_abs + 1));
        kept[n].resize(static_cast<size_t>(select(n, rows[n], kept[n].data(), scratch)));
      });
  int64_t* row_ptr = layout.row_ptr.ptr<int64_t>();
  int32_t* col_idx = layout.col_idx.ptr<int32_t>();
  row_ptr[0] = 0;
  for (size_t n = 0; n < rows.size(); ++n) {
    std::copy(kept[n].begin(), kept[n].end(), col_idx + row_ptr[n]);
    row_ptr[n + 1] = row_ptr[n] + static_cast<int64_t>(kept[n].size());
  }
}

// Robust discovery's second test (docs/ROBUST.md). The exact rule scores each query against a key
// block's mean, which dilutes a short dominant span; this test scores every single key against two
// pooled queries per (sequence, kv head, query block): the group's core query (the mean of the
// rows near their head's mean: what most of the block's queries want) and its far query (the row
// farthest from its head's mean: a minority of rows that attend where the core query does not).
// y[rep][j] is the best key of block j for rep, scale * q_rep . k (fp32), with no visibility mask.
struct RobustScores {
  int64_t heads_kv = 0;
  std::vector<std::vector<float>> y;  // [sequence * H_kv + kv head][offset[b][q] + rep * (i+1) + j]
  std::vector<std::vector<int64_t>> offset;  // [sequence][local query block]: start of its y
  std::vector<int64_t> first_block;          // [sequence]: block_abs of its first query block

  const float* y_of(const Problem& p, const Row& r) const {
    return &y[r.seq * heads_kv + r.head / p.group][offset[r.seq][r.block_abs - first_block[r.seq]]];
  }
};

// The two representatives of one (sequence, query block) for every kv head hk, rows 2 hk (core)
// and 2 hk + 1 (far) of reps [D each], from chunk rows t_begin .. t_end - 1. Passes over the rows
// (sums, distances, core sums), each reading a row's heads together: q's token stride is usually
// H_q * D, so a pass per head would read one short piece per memory page.
void query_representatives(const Problem& p, const Row& r, float* reps) {
  const int64_t D = p.head_dim, H = p.heads_q, n = r.t_end - r.t_begin, g = p.group;
  std::vector<float> row(static_cast<size_t>(D)), mean(static_cast<size_t>(H * D), 0.0f);
  for (int64_t t = r.t_begin; t < r.t_end; ++t)
    for (int64_t h = 0; h < H; ++h) {
      load_row(p, p.q, p.q_offset(r.seq, r.extent, t, h), D, row.data());
      for (int64_t d = 0; d < D; ++d) mean[h * D + d] += row[d];  // sums, in row order
    }
  // Each head's mean, rounded to the input dtype (docs/ROBUST.md: the distances are to it).
  for (float& x : mean) x = detail::rounded_to(x / float(n), p.dtype);
  // Every row's distance to its head's mean; the far row of each group: the largest distance,
  // then the lowest head, then the lowest row.
  std::vector<float> distance(static_cast<size_t>(n * H));
  std::vector<float> far_distance(static_cast<size_t>(p.heads_kv), -1.0f);
  std::vector<int64_t> far_u(static_cast<size_t>(p.heads_kv), 0),
      far_t(static_cast<size_t>(p.heads_kv), r.t_begin);
  for (int64_t t = r.t_begin; t < r.t_end; ++t)
    for (int64_t h = 0; h < H; ++h) {
      load_row(p, p.q, p.q_offset(r.seq, r.extent, t, h), D, row.data());
      const float* m = &mean[h * D];
      // 16 partial sums (D is a multiple of 64) that the compiler keeps in vector registers: one
      // running sum would be a chain of D dependent adds per row.
      float partial[16] = {};
      for (int64_t d0 = 0; d0 < D; d0 += 16)
        for (int64_t e = 0; e < 16; ++e)
          partial[e] += (row[d0 + e] - m[d0 + e]) * (row[d0 + e] - m[d0 + e]);
      float dist = 0.0f;
      for (float x : partial) dist += x;
      distance[(t - r.t_begin) * H + h] = dist;
      const int64_t hk = h / g, u = h % g;
      if (dist > far_distance[hk] || (dist == far_distance[hk] && u < far_u[hk]))
        far_distance[hk] = dist, far_u[hk] = u, far_t[hk] = t;
    }
  // Each head's core rows: distance at most the midrange of its rows' distances.
  std::vector<float> midrange(static_cast<size_t>(H));
  for (int64_t h = 0; h < H; ++h) {
    float lowest = INFINITY, highest = -INFINITY;
    for (int64_t t = 0; t < n; ++t) {
      lowest = std::min(lowest, distance[t * H + h]);
      highest = std::max(highest, distance[t * H + h]);
    }
    midrange[h] = 0.5f * (lowest + highest);
  }
  std::vector<float> core_sum(static_cast<size_t>(H * D), 0.0f), core_count(static_cast<size_t>(H));
  for (int64_t t = r.t_begin; t < r.t_end; ++t)
    for (int64_t h = 0; h < H; ++h) {
      if (distance[(t - r.t_begin) * H + h] > midrange[h]) continue;
      load_row(p, p.q, p.q_offset(r.seq, r.extent, t, h), D, row.data());
      for (int64_t d = 0; d < D; ++d) core_sum[h * D + d] += row[d];
      core_count[h] += 1.0f;
    }
  for (int64_t hk = 0; hk < p.heads_kv; ++hk) {
    float count = 0.0f;  // in head order
    for (int64_t u = 0; u < g; ++u) count += core_count[hk * g + u];
    for (int64_t d = 0; d < D; ++d) {
      float group_sum = 0.0f;
      for (int64_t u = 0; u < g; ++u) group_sum += core_sum[(hk * g + u) * D + d];
      // pooled like the keys: rounded to the input dtype
      reps[2 * hk * D + d] = detail::rounded_to(group_sum / count, p.dtype);
    }
    load_row(p, p.q, p.q_offset(r.seq, r.extent, far_t[hk], hk * g + far_u[hk]), D,
             reps + (2 * hk + 1) * D);
  }
}

RobustScores robust_scores_of(const Problem& p) {
  const int64_t D = p.head_dim, block = p.block(), H_kv = p.heads_kv;
  const float scale = p.params.scale;
  RobustScores robust;
  robust.heads_kv = H_kv;
  robust.y.resize(static_cast<size_t>(p.num_seqs * H_kv));
  robust.offset.resize(static_cast<size_t>(p.num_seqs));
  robust.first_block.assign(static_cast<size_t>(p.num_seqs), 0);
  // The query blocks of each sequence: the layout rows of its head 0.
  std::vector<std::vector<Row>> blocks_of(static_cast<size_t>(p.num_seqs));
  for (const Row& r : enumerate_rows(p))
    if (r.head == 0) blocks_of[r.seq].push_back(r);
  for (int64_t b = 0; b < p.num_seqs; ++b) {
    int64_t size = 0;
    for (const Row& r : blocks_of[b])
      robust.offset[b].push_back(size), size += 2 * (r.block_abs + 1);
    if (!blocks_of[b].empty()) robust.first_block[b] = blocks_of[b].front().block_abs;
    for (int64_t hk = 0; hk < H_kv; ++hk) robust.y[b * H_kv + hk].assign(size, kNegInf);
  }
  // The representatives of every (sequence, kv head) transposed, [D][ld]: column 2 q + rep for
  // local query block q; zero columns past the last pad any suffix of them to the column tile.
  std::vector<std::vector<float>> reps_t(robust.y.size());
  std::vector<int64_t> ld(reps_t.size());
  for (int64_t pair = 0; pair < int64_t(reps_t.size()); ++pair)
    ld[pair] = round_up(2 * int64_t(blocks_of[pair / H_kv].size()), kernels::kColumnTile) +
               kernels::kColumnTile;
  parallel_for(static_cast<int64_t>(reps_t.size()),
               [&](int64_t pair) { reps_t[pair].assign(D * ld[pair], 0.0f); });
  struct Task {
    int64_t pair, index;  // representatives: query block `index`; products: key block `index`
  };
  std::vector<Task> rep_tasks, key_tasks;  // rep_tasks: `pair` is the sequence
  for (int64_t b = 0; b < p.num_seqs; ++b)
    for (int64_t n = 0; n < int64_t(blocks_of[b].size()); ++n) rep_tasks.push_back({b, n});
  for (int64_t pair = 0; pair < int64_t(reps_t.size()); ++pair) {
    const std::vector<Row>& rows = blocks_of[pair / H_kv];
    if (!rows.empty())
      for (int64_t j = 0; j <= rows.back().block_abs; ++j) key_tasks.push_back({pair, j});
  }
  parallel_for(static_cast<int64_t>(rep_tasks.size()), [&](int64_t n) {
    const Task task = rep_tasks[n];
    std::vector<float> reps(static_cast<size_t>(2 * H_kv * D));
    query_representatives(p, blocks_of[task.pair][task.index], reps.data());
    for (int64_t rep = 0; rep < 2 * H_kv; ++rep)  // docs/ROBUST.md: e4m3 products
      detail::round_to_scaled_e4m3(&reps[rep * D], D);
    for (int64_t hk = 0; hk < H_kv; ++hk) {
      const int64_t pair = task.pair * H_kv + hk;
      for (int64_t rep = 0; rep < 2; ++rep)
        for (int64_t d = 0; d < D; ++d)
          reps_t[pair][d * ld[pair] + 2 * task.index + rep] = reps[(2 * hk + rep) * D + d];
    }
  });
  // Per key block j, read from K once: its keys against the representatives of every query block
  // i >= j (a suffix of the sequence's query blocks) in one product, then each column's maximum.
  for_rows_costliest_first(
      static_cast<int64_t>(key_tasks.size()),
      [&](int64_t n) {
        const Task task = key_tasks[n];
        return blocks_of[task.pair / H_kv].back().block_abs - task.index;
      },
      [&](int64_t n, Scratch& ws) {
        const Task task = key_tasks[n];
        const int64_t b = task.pair / H_kv, hk = task.pair % H_kv, j = task.index;
        const std::vector<Row>& rows = blocks_of[b];
        const SeqExtent& s = rows.front().extent;
        const int64_t first = std::max<int64_t>(0, j - robust.first_block[b]);
        const int64_t columns = 2 * (int64_t(rows.size()) - first),
                      n_pad = round_up(columns, kernels::kColumnTile);
        const int64_t keys = std::min(block, s.len_kv - j * block),
                      m_pad = round_up(keys, kernels::kRowGroup);
        ws.q.assign(static_cast<size_t>(m_pad * D), 0.0f);
        for (int64_t c = 0; c < keys; ++c)
          load_row(p, p.k, p.k_offset(b, s, j * block + c, hk), D, &ws.q[c * D]);
        detail::round_to_scaled_e4m3(ws.q.data(), keys * D);
        ws.s.resize(static_cast<size_t>(m_pad * n_pad));
        kernels::qk(ws.q.data(), m_pad, D, &reps_t[task.pair][2 * first], ld[task.pair], n_pad,
                    ws.s.data(), n_pad);
        ws.row_max.assign(static_cast<size_t>(columns), kNegInf);  // per column here
        for (int64_t c = 0; c < keys; ++c)
          for (int64_t col = 0; col < columns; ++col)
            ws.row_max[col] = std::max(ws.row_max[col], scale * ws.s[c * n_pad + col]);
        for (int64_t col = 0; col < columns; ++col) {
          const int64_t q = first + col / 2, i = rows[q].block_abs;
          robust.y[task.pair][robust.offset[b][q] + (col % 2) * (i + 1) + j] = ws.row_max[col];
        }
      });
  return robust;
}

}  // namespace

detail::DiscoveryPlan plan_discovery(const Problem& p, int64_t max_rows) {
  return {};
}  // no scratch
detail::AttentionPlan plan_attention(const Problem& p, int64_t max_rows) { return {}; }

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

// Pooled keys transposed per (sequence, kv head), shared by all rows of that pair.
std::vector<std::vector<float>> transposed_pooled_keys(const Problem& p, const float* pooled_keys,
                                                       std::vector<int64_t>& ld) {
  std::vector<std::vector<float>> transposed(static_cast<size_t>(p.num_seqs * p.heads_kv));
  ld.assign(transposed.size(), 0);
  parallel_for(static_cast<int64_t>(transposed.size()), [&](int64_t n) {
    const int64_t b = n / p.heads_kv;
    transposed[n] = transpose_pooled(p, pooled_keys, b, p.seq(b), n % p.heads_kv, ld[n]);
  });
  return transposed;
}

// The pooled keys as the chosen step-2 kernels read them: packed bf16 for the bf16 products, else
// transposed fp32.
struct ScoreKeys {
  Isa isa;
  bool bf16_products;
  std::vector<std::vector<float>> fp32;
  std::vector<int64_t> ld;
  PackedPooledKeys bf16;
};

ScoreKeys prepare_score_keys(const Problem& p, const float* pooled_keys) {
  ScoreKeys keys;
  keys.isa = isa_for(p.dtype);
  keys.bf16_products = keys.isa == Isa::amx || keys.isa == Isa::avx512bf16;
  if (keys.bf16_products)
    keys.bf16 = pack_pooled_keys_bf16(p, pooled_keys);
  else
    keys.fp32 = transposed_pooled_keys(p, pooled_keys, keys.ld);
  return keys;
}

void score(const Problem& p, const ScoreKeys& keys, const Row& r, float* scores, Scratch& ws) {
  if (keys.bf16_products) {
    score_row_bf16(keys.isa, p, keys.bf16, r.seq, r.extent, r.head, r.block_abs, r.t_begin, r.t_end,
                   scores, ws.bf16_row);
  } else {
    const int64_t pair = r.seq * p.heads_kv + r.head / p.group;
    score_row(p, r, keys.fp32[pair].data(), keys.ld[pair], scores, ws);
  }
}

void block_scores(const Problem& p, const float* pooled_keys, float* scores, int64_t ld) {
  const std::vector<Row> rows = enumerate_rows(p);
  const ScoreKeys keys = prepare_score_keys(p, pooled_keys);
  for_rows_costliest_first(
      static_cast<int64_t>(rows.size()), [&](int64_t n) { return rows[n].block_abs; },
      [&](int64_t n, Scratch& scratch) {
        float* out = scores + n * ld;
        std::fill(out, out + ld, 0.0f);
        score(p, keys, rows[n], out, scratch);
      });
}

void select_blocks(const Problem& p, const float* scores, int64_t ld,
                   const BlockSparseLayout& layout) {
  build_layout(p, layout, [&](int64_t n, const Row& r, int32_t* kept, Scratch&) {
    return select_row(p, r, scores + n * ld, kept);
  });
}

void discover_layout(const Problem& p, const BlockSparseLayout& layout,
                     const detail::DiscoveryPlan&, void*) {
  const int64_t slots = detail::stage_shapes_of(p).pooled_key_slots;
  std::vector<float> pooled(static_cast<size_t>(slots * p.heads_kv * p.head_dim));
  pool_keys(p, pooled.data());
  const ScoreKeys keys = prepare_score_keys(p, pooled.data());
  // Robust discovery (docs/ROBUST.md) keeps what the exact rule keeps, scored exactly as in exact
  // mode, plus what the query representatives' test keeps.
  const bool robust = p.params.discovery == Discovery::robust;
  const RobustScores robust_scores = robust ? robust_scores_of(p) : RobustScores{};
  // One row's scores at a time per thread: the score matrix is never materialised.
  build_layout(p, layout, [&](int64_t, const Row& r, int32_t* kept, Scratch& scratch) {
    std::vector<float> scores(static_cast<size_t>(r.block_abs + 1));
    score(p, keys, r, scores.data(), scratch);
    return select_row(p, r, scores.data(), kept, robust ? robust_scores.y_of(p, r) : nullptr);
  });
}

void block_sparse_attention(const Problem& p, const BlockSparseLayout& layout,
                            const detail::AttentionPlan&, void*) {
  const std::vector<Row> rows = enumerate_rows(p);  // in layout order: rows[n] is layout row n
  const std::vector<GroupTask> tasks = group_tasks(p);
  const int64_t* row_ptr = layout.row_ptr.ptr<const int64_t>();
  const int32_t* col_idx = layout.col_idx.ptr<const int32_t>();
  const AttentionKV kv = prepare_kv(p);
  const auto blocks_of = [&](int64_t row) {
    return std::pair{col_idx + row_ptr[row], row_ptr[row + 1] - row_ptr[row]};
  };
  const auto kept_blocks = [&](int64_t n) {
    int64_t count = 0;
    for (int64_t k = 0; k < tasks[n].heads; ++k)
      count += blocks_of(tasks[n].first_row + k * tasks[n].rows_per_head).second;
    return count;
  };
  for_rows_costliest_first(
      static_cast<int64_t>(tasks.size()), kept_blocks,
      [&](int64_t n, Scratch& scratch) { attend(p, kv, rows, tasks[n], blocks_of, scratch); });
}

void dense_attention(const Problem& p) {
  const std::vector<Row> rows = enumerate_rows(p);
  const std::vector<GroupTask> tasks = group_tasks(p);
  const AttentionKV kv = prepare_kv(p);
  int64_t max_blocks = 0;
  for (const Row& r : rows) max_blocks = std::max(max_blocks, r.block_abs + 1);
  std::vector<int32_t> all(static_cast<size_t>(max_blocks));
  std::iota(all.begin(), all.end(), 0);
  const auto blocks_of = [&](int64_t row) {
    return std::pair{static_cast<const int32_t*>(all.data()), rows[row].block_abs + 1};
  };
  for_rows_costliest_first(
      static_cast<int64_t>(tasks.size()),
      [&](int64_t n) { return tasks[n].heads * (rows[tasks[n].first_row].block_abs + 1); },
      [&](int64_t n, Scratch& scratch) { attend(p, kv, rows, tasks[n], blocks_of, scratch); });
}

}  // namespace flashprefill::cpu
