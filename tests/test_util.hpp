// Shared helpers of the C++ tests: seeded random inputs (the seed is printed on failure), host
// tensors for padded and varlen batches, and error measures against the fp64 reference.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <iterator>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/half.hpp"
#include "common/row_geometry.hpp"
#include "common/validate.hpp"
#include "flashprefill/flashprefill.hpp"
#include "reference.hpp"

namespace flashprefill::testing {

// Runs `call` and checks that it throws flashprefill::Error whose message contains every fragment.
template <typename Call>
void expect_error(Call&& call, std::initializer_list<const char*> fragments) {
  try {
    call();
    ADD_FAILURE() << "expected flashprefill::Error mentioning '" << *fragments.begin() << "'";
  } catch (const Error& error) {
    const std::string message = error.what();
    for (const char* fragment : fragments)
      EXPECT_NE(message.find(fragment), std::string::npos)
          << "message: " << message << "\nmissing: " << fragment;
  }
}

// A fresh seed per call unless FLASHPREFILL_SEED is set; tests SCOPED_TRACE it so failures show it.
inline uint64_t fresh_seed() {
  if (const char* fixed = std::getenv("FLASHPREFILL_SEED"))
    return std::strtoull(fixed, nullptr, 10);
  return (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
}
#define FP_SEEDED(seed_var)                                        \
  const uint64_t seed_var = ::flashprefill::testing::fresh_seed(); \
  SCOPED_TRACE("seed=" + std::to_string(seed_var) +                \
               " (rerun with FLASHPREFILL_SEED=" + std::to_string(seed_var) + ")")

inline uint16_t to_half(float value, DType dtype) {
  return detail::float_to_half_bits(value, dtype);
}
inline double from_half(uint16_t bits, DType dtype) {
  return detail::half_bits_to_float(bits, dtype);
}

// Tolerance of ALGORITHM.md for the output of attention (relative Frobenius error).
inline double tolerance(DType dtype) { return dtype == DType::bf16 ? 1e-2 : 2e-3; }

struct Shape {
  int64_t batch = 1, len_q = 64, len_kv = 64, heads_q = 2, heads_kv = 1, head_dim = 64;
};

// AttentionArgs over host buffers: padded [B, L, H, D], or varlen packed [T, H, D] by cu_q / cu_kv
// (then max_seqlen from them); lse ([B, H_q, L_q] or [H_q, T_q]) only if given.
inline AttentionArgs host_args(DType dtype, const Shape& s, bool varlen, std::vector<int32_t>& cu_q,
                               std::vector<int32_t>& cu_kv, void* q, void* k, void* v, void* out,
                               float* lse) {
  const Device cpu = Device::cpu();
  AttentionArgs a;
  if (varlen) {
    const int64_t total_q = cu_q.back(), total_kv = cu_kv.back();
    a.q = TensorView::contiguous(q, dtype, cpu, {total_q, s.heads_q, s.head_dim});
    a.k = TensorView::contiguous(k, dtype, cpu, {total_kv, s.heads_kv, s.head_dim});
    a.v = TensorView::contiguous(v, dtype, cpu, {total_kv, s.heads_kv, s.head_dim});
    a.out = TensorView::contiguous(out, dtype, cpu, {total_q, s.heads_q, s.head_dim});
    a.varlen.cu_seqlens_q =
        TensorView::contiguous(cu_q.data(), DType::int32, cpu, {int64_t(cu_q.size())});
    a.varlen.cu_seqlens_kv =
        TensorView::contiguous(cu_kv.data(), DType::int32, cpu, {int64_t(cu_kv.size())});
    for (size_t b = 0; b + 1 < cu_q.size(); ++b) {
      a.varlen.max_seqlen_q = std::max<int64_t>(a.varlen.max_seqlen_q, cu_q[b + 1] - cu_q[b]);
      a.varlen.max_seqlen_kv = std::max<int64_t>(a.varlen.max_seqlen_kv, cu_kv[b + 1] - cu_kv[b]);
    }
    if (lse) a.lse = TensorView::contiguous(lse, DType::fp32, cpu, {s.heads_q, total_q});
  } else {
    a.q = TensorView::contiguous(q, dtype, cpu, {s.batch, s.len_q, s.heads_q, s.head_dim});
    a.k = TensorView::contiguous(k, dtype, cpu, {s.batch, s.len_kv, s.heads_kv, s.head_dim});
    a.v = TensorView::contiguous(v, dtype, cpu, {s.batch, s.len_kv, s.heads_kv, s.head_dim});
    a.out = TensorView::contiguous(out, dtype, cpu, {s.batch, s.len_q, s.heads_q, s.head_dim});
    if (lse) a.lse = TensorView::contiguous(lse, DType::fp32, cpu, {s.batch, s.heads_q, s.len_q});
  }
  return a;
}

// Host inputs for one call. Padded: [B, L, H, D]. Varlen: lengths per sequence, packed [T, H, D].
struct HostBatch {
  DType dtype = DType::bf16;
  Shape shape;
  bool varlen = false;
  std::vector<int32_t> cu_q, cu_kv;
  std::vector<uint16_t> q, k, v, out;
  std::vector<float> lse;

  int64_t total_q() const { return varlen ? cu_q.back() : shape.batch * shape.len_q; }
  int64_t total_kv() const { return varlen ? cu_kv.back() : shape.batch * shape.len_kv; }

  AttentionArgs args(bool with_lse = false) {
    return host_args(dtype, shape, varlen, cu_q, cu_kv, q.data(), k.data(), v.data(), out.data(),
                     with_lse ? lse.data() : nullptr);
  }
};

// Gaussian inputs plus a shared direction in q and k, so that scores are far from uniform and
// the threshold really drops blocks.
inline void fill_random(HostBatch& batch, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  const int64_t D = batch.shape.head_dim;
  std::vector<float> direction(static_cast<size_t>(D));
  for (float& x : direction) x = normal(rng);
  auto fill = [&](std::vector<uint16_t>& data, int64_t count, float bias) {
    data.resize(static_cast<size_t>(count));
    for (int64_t n = 0; n < count; ++n)
      data[n] = to_half(normal(rng) + bias * direction[n % D], batch.dtype);
  };
  fill(batch.q, batch.total_q() * batch.shape.heads_q * D, 0.5f);
  fill(batch.k, batch.total_kv() * batch.shape.heads_kv * D, 0.0f);
  // Some keys stand out (vertical stripes) so that selection has something to find.
  std::uniform_int_distribution<int64_t> pick(0, std::max<int64_t>(0, batch.total_kv() - 1));
  for (int n = 0; n < 4 && batch.total_kv() > 0; ++n) {
    const int64_t key = pick(rng);
    for (int64_t h = 0; h < batch.shape.heads_kv; ++h)
      for (int64_t d = 0; d < D; ++d) {
        uint16_t& bits = batch.k[(key * batch.shape.heads_kv + h) * D + d];
        bits = to_half(float(from_half(bits, batch.dtype)) + 3.0f * direction[d], batch.dtype);
      }
  }
  fill(batch.v, batch.total_kv() * batch.shape.heads_kv * D, 0.0f);
  batch.out.assign(batch.q.size(),
                   to_half(NAN, batch.dtype));  // poison: every element must be written
  batch.lse.assign(static_cast<size_t>(batch.total_q() * batch.shape.heads_q), NAN);
}

inline HostBatch padded_batch(const Shape& shape, DType dtype, uint64_t seed) {
  HostBatch batch;
  batch.dtype = dtype;
  batch.shape = shape;
  fill_random(batch, seed);
  return batch;
}

inline HostBatch varlen_batch(const std::vector<std::pair<int32_t, int32_t>>& lengths, Shape shape,
                              DType dtype, uint64_t seed) {
  HostBatch batch;
  batch.dtype = dtype;
  batch.varlen = true;
  batch.cu_q = {0};
  batch.cu_kv = {0};
  for (auto [len_q, len_kv] : lengths) {
    batch.cu_q.push_back(batch.cu_q.back() + len_q);
    batch.cu_kv.push_back(batch.cu_kv.back() + len_kv);
  }
  shape.batch = static_cast<int64_t>(lengths.size());
  batch.shape = shape;
  fill_random(batch, seed);
  return batch;
}

// The same inputs as a varlen HostBatch, with K and V in page pools (vLLM's paged layout): pages
// of page_size tokens in a random order among spare pages, a block table with a spare column
// (-1, never read), and outputs of its own. Spare pages hold NaN (never read); the rows of a
// partial last page past the sequence hold finite noise (read and masked by the sm_90 kernel).
enum class PoolLayout {
  separate,     // k and v: two [num_pages, page_size, H_kv, D] pools
  combined,     // one [2, num_pages, page_size, H_kv, D] tensor, k = [0] and v = [1] (vLLM FA)
  interleaved,  // one [num_pages, 2, page_size, H_kv, D] tensor (pages hold K then V)
  head_major,   // [2, num_pages, H_kv, page_size, D] memory seen as [.., page_size, H_kv, D] (HND)
};
inline const char* pool_layout_name(PoolLayout layout) {
  return layout == PoolLayout::separate      ? "separate"
         : layout == PoolLayout::combined    ? "combined"
         : layout == PoolLayout::interleaved ? "interleaved"
                                             : "head_major";
}

struct PagedBatch {
  HostBatch* host = nullptr;  // q, cu_seqlens_q and the contiguous K/V it was made from
  int64_t page_size = 0, num_pages = 0, max_pages = 0;
  PoolLayout layout = PoolLayout::separate;
  std::vector<uint16_t> pool;        // K and V of every layout
  int64_t k_begin = 0, v_begin = 0;  // element offsets of k's and v's page 0 in `pool`
  std::array<int64_t, 4> stride{};   // of k and v: page, row, head, dim
  std::vector<int32_t> block_table;  // [num_seqs, max_pages]
  std::vector<int32_t> seq_lens_kv;
  std::vector<uint16_t> out;
  std::vector<float> lse;

  AttentionArgs args(bool with_lse = false) {
    AttentionArgs a = host->args(with_lse);
    const Device cpu = Device::cpu();
    const int64_t num_seqs = int64_t(seq_lens_kv.size());
    auto pool_view = [&](int64_t begin) {
      TensorView t = TensorView::contiguous(
          pool.data() + begin, host->dtype, cpu,
          {num_pages, page_size, host->shape.heads_kv, host->shape.head_dim});
      t.stride = stride;
      return t;
    };
    a.k = pool_view(k_begin);
    a.v = pool_view(v_begin);
    a.varlen.cu_seqlens_kv = TensorView{};
    a.paged.block_table =
        TensorView::contiguous(block_table.data(), DType::int32, cpu, {num_seqs, max_pages});
    a.paged.seq_lens_kv = TensorView::contiguous(seq_lens_kv.data(), DType::int32, cpu, {num_seqs});
    a.out.data = out.data();
    if (with_lse) a.lse.data = lse.data();
    return a;
  }
};

inline PagedBatch make_paged(HostBatch& host, int64_t page_size, PoolLayout layout, uint64_t seed) {
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
  std::normal_distribution<float> normal;
  PagedBatch paged;
  paged.host = &host;
  paged.page_size = page_size;
  paged.layout = layout;
  const int64_t num_seqs = int64_t(host.cu_kv.size()) - 1;
  const int64_t H = host.shape.heads_kv, D = host.shape.head_dim, row = H * D;
  int64_t used = 0;
  for (int64_t b = 0; b < num_seqs; ++b) {
    const int64_t len = host.cu_kv[b + 1] - host.cu_kv[b];
    paged.seq_lens_kv.push_back(int32_t(len));
    const int64_t pages = (len + page_size - 1) / page_size;
    used += pages;
    paged.max_pages = std::max(paged.max_pages, pages);
  }
  paged.max_pages += 1;  // a spare column, as a block table sized for growth has
  paged.num_pages = used + 3;
  std::vector<int32_t> order(static_cast<size_t>(paged.num_pages));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);

  const int64_t page_elems = page_size * row, N = paged.num_pages;
  paged.pool.assign(static_cast<size_t>(2 * N * page_elems), to_half(NAN, host.dtype));
  switch (layout) {
    case PoolLayout::separate:
    case PoolLayout::combined:  // one allocation either way; the views' strides are the same
      paged.k_begin = 0, paged.v_begin = N * page_elems;
      paged.stride = {page_elems, row, D, 1};
      break;
    case PoolLayout::head_major:
      paged.k_begin = 0, paged.v_begin = N * page_elems;
      paged.stride = {page_elems, D, page_size * D, 1};
      break;
    case PoolLayout::interleaved:
      paged.k_begin = 0, paged.v_begin = page_elems;
      paged.stride = {2 * page_elems, row, D, 1};
      break;
  }
  paged.block_table.assign(static_cast<size_t>(num_seqs * paged.max_pages), -1);
  int64_t next = 0;
  for (int64_t b = 0; b < num_seqs; ++b) {
    const int64_t len = paged.seq_lens_kv[b];
    for (int64_t page = 0; page * page_size < len; ++page) {
      const int32_t id = order[size_t(next++)];
      paged.block_table[size_t(b * paged.max_pages + page)] = id;
      for (int64_t r = 0; r < page_size; ++r) {
        const int64_t key = page * page_size + r;
        for (int64_t e = 0; e < row; ++e) {
          const int64_t at =
              id * paged.stride[0] + r * paged.stride[1] + (e / D) * paged.stride[2] + e % D;
          if (key < len) {
            const size_t from = size_t((host.cu_kv[b] + key) * row + e);
            paged.pool[size_t(paged.k_begin + at)] = host.k[from];
            paged.pool[size_t(paged.v_begin + at)] = host.v[from];
          } else {
            paged.pool[size_t(paged.k_begin + at)] = to_half(4.0f * normal(rng), host.dtype);
            paged.pool[size_t(paged.v_begin + at)] = to_half(4.0f * normal(rng), host.dtype);
          }
        }
      }
    }
  }
  paged.out.assign(host.out.size(), to_half(NAN, host.dtype));
  paged.lse.assign(host.lse.size(), NAN);
  return paged;
}

// Relative Frobenius error of a 16-bit output against the fp64 reference (both in q's token order).
inline double relative_error(const std::vector<uint16_t>& out, DType dtype,
                             const std::vector<double>& ref) {
  double err = 0.0, norm = 0.0;
  for (size_t n = 0; n < ref.size(); ++n) {
    const double diff = from_half(out[n], dtype) - ref[n];
    err += diff * diff;
    norm += ref[n] * ref[n];
  }
  if (std::isnan(err)) return INFINITY;
  return norm > 0 ? std::sqrt(err / norm) : std::sqrt(err);
}

// The layout as per-row vectors (host).
inline std::vector<std::vector<int32_t>> rows_of(const BlockSparseLayout& layout) {
  const int64_t* offsets = layout.seq_row_offset.ptr<const int64_t>();
  const int64_t* row_ptr = layout.row_ptr.ptr<const int64_t>();
  const int32_t* col_idx = layout.col_idx.ptr<const int32_t>();
  std::vector<std::vector<int32_t>> rows(static_cast<size_t>(offsets[layout.num_seqs]));
  for (size_t r = 0; r < rows.size(); ++r)
    rows[r].assign(col_idx + row_ptr[r], col_idx + row_ptr[r + 1]);
  return rows;
}

// Two layouts may differ only in blocks whose fp64 score (ref_scores, [row][max_key_blocks]) lies
// within rel_tol of the row's threshold alpha * max (or, robust discovery, whose margin in
// ref_robust = reference::robust_margins lies within rel_tol of 0: a margin is a log, so this is
// the same relative tolerance; or is NaN: the row's representatives are ambiguous). Returns how
// many blocks differ.
inline int64_t expect_rows_differ_only_at_threshold(
    const std::vector<std::vector<int32_t>>& rows,
    const std::vector<std::vector<int32_t>>& expected, const std::vector<double>& ref_scores,
    int64_t max_key_blocks, double alpha, double rel_tol,
    const std::vector<double>& ref_robust = {}) {
  int64_t differing = 0, ambiguous = 0;
  for (size_t r = 0; r < std::min(rows.size(), expected.size()); ++r) {
    if (!ref_robust.empty() && std::isnan(ref_robust[r * max_key_blocks])) ++ambiguous;
    if (rows[r] == expected[r]) continue;
    const double* S = &ref_scores[r * max_key_blocks];
    const double threshold = alpha * *std::max_element(S, S + expected[r].back() + 1);
    std::vector<int32_t> diff;
    std::set_symmetric_difference(rows[r].begin(), rows[r].end(), expected[r].begin(),
                                  expected[r].end(), std::back_inserter(diff));
    for (int32_t j : diff) {
      ++differing;
      if (!ref_robust.empty() && !(std::abs(ref_robust[r * max_key_blocks + j]) > rel_tol))
        continue;  // near 0 or NaN
      const std::string margin =
          ref_robust.empty()
              ? ""
              : " (robust margin " + std::to_string(ref_robust[r * max_key_blocks + j]) + ")";
      EXPECT_NEAR(S[j], threshold, rel_tol * threshold)
          << "row " << r << " block " << j << " differs away from the threshold" << margin;
    }
  }
  if (ambiguous > 0)  // a share the tests should keep small: these rows' robust test is unchecked
    std::printf("  [layout] %ld of %zu rows have ambiguous representatives\n", long(ambiguous),
                rows.size());
  return differing;
}

// discover_layout vs the reference rule of params.discovery (exact or robust) on reference scores;
// a row may differ only in blocks whose score lies within rounding of the threshold. The layout's
// rows go to *rows_out if given.
inline void expect_layout_matches_reference(HostBatch& batch, const Params& params,
                                            std::vector<std::vector<int32_t>>* rows_out = nullptr) {
  AttentionArgs args = batch.args();
  const detail::Problem problem = detail::make_problem(args, params, detail::Needs::discovery);
  const StageShapes shapes = stage_shapes(args, params);
  LayoutStorage layout = allocate_layout(args, params);
  discover_layout(args, params, layout.view);
  auto rows = rows_of(layout.view);
  const auto ref_pooled = reference::pool_keys(problem, shapes.pooled_key_slots);
  const auto ref_scores = reference::block_scores(problem, ref_pooled, shapes.max_key_blocks);
  const bool robust = params.discovery == Discovery::robust;
  const auto ref_robust =
      robust ? reference::robust_margins(problem, shapes.max_key_blocks) : std::vector<double>{};
  const auto ref_rows =
      reference::select_blocks(problem, ref_scores, shapes.max_key_blocks, ref_robust);
  ASSERT_EQ(rows.size(), ref_rows.size());
  // 1e-3: the fp64 reference's means can round to the other neighbour in the input dtype than the
  // backend's fp32 means, which moves S by up to ~1e-4 relative.
  expect_rows_differ_only_at_threshold(rows, ref_rows, ref_scores, shapes.max_key_blocks,
                                       params.alpha, 1e-3, ref_robust);
  if (rows_out) *rows_out = std::move(rows);
}

// flash_prefill vs reference attention restricted to `rows` (the layout it should choose).
inline void expect_attention_matches_reference(HostBatch& batch, const Params& params,
                                               const std::vector<std::vector<int32_t>>& rows) {
  AttentionArgs args = batch.args(/*with_lse=*/true);
  flash_prefill(args, params);
  const auto ref =
      reference::attention(detail::make_problem(args, params, detail::Needs::attention), rows);
  EXPECT_LE(relative_error(batch.out, batch.dtype, ref.out), tolerance(batch.dtype));
}

// Params::head_alpha against one call per query head with the scalar alpha of that head: the same
// layout rows and the same output bits, head by head. `run(params)` runs discover_layout and
// flash_prefill on the caller's device and returns {layout rows, out} on the host; `head_alpha` is
// a view of `alphas` on that device; `host` is the call's Problem on host memory (for the row and
// output geometry).
struct HeadAlphaCall {
  std::vector<std::vector<int32_t>> rows;
  std::vector<uint16_t> out;
};
template <typename Run>
void expect_head_alpha_equals_scalar_calls(const detail::Problem& host, Params params,
                                           const std::vector<float>& alphas,
                                           const TensorView& head_alpha, Run&& run) {
  ASSERT_EQ(int64_t(alphas.size()), host.heads_q);
  std::vector<int64_t> head_of_row;
  detail::for_each_layout_row(
      host, [&](const detail::LayoutRow& r, int64_t) { head_of_row.push_back(r.head); });
  params.head_alpha = head_alpha;
  const HeadAlphaCall per_head = run(params);
  ASSERT_EQ(per_head.rows.size(), head_of_row.size());
  params.head_alpha = TensorView{};
  for (int64_t h = 0; h < host.heads_q; ++h) {
    SCOPED_TRACE("head " + std::to_string(h) + " alpha " + std::to_string(alphas[h]));
    params.alpha = alphas[h];
    const HeadAlphaCall scalar = run(params);
    ASSERT_EQ(scalar.rows.size(), per_head.rows.size());
    for (size_t r = 0; r < head_of_row.size(); ++r) {
      if (head_of_row[r] == h) {
        ASSERT_EQ(per_head.rows[r], scalar.rows[r]) << "layout row " << r;
      }
    }
    ASSERT_EQ(scalar.out.size(), per_head.out.size());
    for (size_t n = 0; n < per_head.out.size(); ++n) {  // out is [.., H_q, D], contiguous
      if (int64_t(n) / host.head_dim % host.heads_q == h) {
        ASSERT_EQ(per_head.out[n], scalar.out[n]) << "out element " << n;
      }
    }
  }
}

// lse of a call ([B, H, L_q] padded, [H, T] varlen) against the reference's [token][head].
inline void expect_lse_near(const detail::Problem& problem, const std::vector<double>& ref_lse,
                            const std::vector<float>& lse, double rel_tol) {
  for (int64_t b = 0; b < problem.num_seqs; ++b) {
    const auto s = problem.seq(b);
    for (int64_t t = 0; t < s.len_q; ++t)
      for (int64_t h = 0; h < problem.heads_q; ++h) {
        const double expected =
            ref_lse[reference::token_index(problem, b, t) * problem.heads_q + h];
        ASSERT_NEAR(lse[problem.lse_offset(b, s, t, h)], expected,
                    rel_tol * (1 + std::abs(expected)))
            << "lse b=" << b << " t=" << t << " h=" << h;
      }
  }
}

// Structure the robust rule acts on, added to a padded batch's random inputs: per sequence, short
// spans of 1-4 keys along random directions, each wanted by a run of 1-48 consecutive query rows of
// one head with a random strength (q . k from 4 to 12 above the noise), so that some blocks' best
// keys stand out by about ln(1 / alpha) while their block means and the query blocks' means dilute
// them, and minorities of rows make the far query matter.
inline void plant_spans(HostBatch& batch, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  const auto pick = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  const Shape& s = batch.shape;
  const int64_t D = s.head_dim, group = s.heads_q / s.heads_kv;
  const auto add = [&](uint16_t& bits, float x) {
    bits = to_half(float(from_half(bits, batch.dtype)) + x, batch.dtype);
  };
  for (auto* x : {&batch.q, &batch.k})  // weak noise: fill_random's stripes would mask the spans
    for (auto& e : *x) e = to_half(0.5f * normal(rng), batch.dtype);
  // A smooth local band: q_t . k_s = 32 cos(pi (t - s) / L_kv) in dims 0-1 (4 at t = s after the
  // scale 1/8), so each row's best keys and blocks fall off with distance.
  const float pi = 3.14159265f, radius = std::sqrt(32.0f);
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t key = 0; key < s.len_kv; ++key)
      for (int64_t hk = 0; hk < s.heads_kv; ++hk) {
        uint16_t* k = &batch.k[((b * s.len_kv + key) * s.heads_kv + hk) * D];
        add(k[0], radius * std::cos(pi * key / s.len_kv));
        add(k[1], radius * std::sin(pi * key / s.len_kv));
      }
    for (int64_t t = 0; t < s.len_q; ++t)
      for (int64_t h = 0; h < s.heads_q; ++h) {
        uint16_t* q = &batch.q[((b * s.len_q + t) * s.heads_q + h) * D];
        const int64_t position = s.len_kv - s.len_q + t;
        add(q[0], radius * std::cos(pi * position / s.len_kv));
        add(q[1], radius * std::sin(pi * position / s.len_kv));
      }
  }
  const int64_t spans = std::max<int64_t>(2, 2 * s.len_q / 32);
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t span = 0; span < spans; ++span) {
      std::vector<float> direction(static_cast<size_t>(D));
      for (float& x : direction) x = normal(rng);
      const float strength = std::uniform_real_distribution<float>(0.3f, 1.2f)(rng);
      const int64_t h = pick(0, s.heads_q - 1), t0 = pick(0, s.len_q - 1);
      const int64_t key0 = pick(0, s.len_kv - s.len_q + t0), keys = pick(1, 4);
      for (int64_t key = key0; key < std::min(key0 + keys, s.len_kv); ++key)
        for (int64_t d = 0; d < D; ++d)
          add(batch.k[((b * s.len_kv + key) * s.heads_kv + h / group) * D + d], direction[d]);
      for (int64_t t = t0; t < std::min(t0 + pick(1, 48), s.len_q); ++t)
        for (int64_t d = 0; d < D; ++d)
          add(batch.q[((b * s.len_q + t) * s.heads_q + h) * D + d], strength * direction[d]);
    }
}

}  // namespace flashprefill::testing
