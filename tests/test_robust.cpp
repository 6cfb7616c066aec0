// Robust discovery (docs/ROBUST.md) on the CPU backend: layouts against the fp64 reference of the
// query-representatives rule on random inputs (partial blocks, GQA g = 1 and 4, chunked prefill,
// varlen, min_budget, per-head alpha), attention on those layouts, the exact layout contained in
// the robust one, alpha 0 as dense, a short dominant span and a minority of rows that the exact
// rule drops and the robust rule keeps, and the stage that cannot run the rule refusing it.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/e4m3.hpp"
#include "test_util.hpp"

namespace flashprefill::testing {
namespace {

using detail::make_problem;
using detail::Needs;

Params robust(Params params = {}) {
  params.discovery = Discovery::robust;
  return params;
}

// discover_layout vs the reference rule, the union's containment of the exact layout, then
// flash_prefill vs reference attention on that layout.
void check_robust(HostBatch& batch, const Params& params) {
  std::vector<std::vector<int32_t>> rows;
  expect_layout_matches_reference(batch, params, &rows);
  Params exact = params;
  exact.discovery = Discovery::exact;
  AttentionArgs args = batch.args();
  LayoutStorage exact_layout = allocate_layout(args, exact);
  discover_layout(args, exact, exact_layout.view);
  const auto exact_rows = rows_of(exact_layout.view);
  ASSERT_EQ(rows.size(), exact_rows.size());
  for (size_t r = 0; r < rows.size(); ++r)
    EXPECT_TRUE(
        std::includes(rows[r].begin(), rows[r].end(), exact_rows[r].begin(), exact_rows[r].end()))
        << "row " << r << " lost a block the exact rule keeps";
  expect_attention_matches_reference(batch, params, rows);
}

TEST(CpuRobust, RandomShapesMatchReference) {
  FP_SEEDED(seed);
  std::mt19937_64 rng(seed);
  auto pick = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  for (int trial = 0; trial < 10; ++trial) {
    Params params = robust();
    params.block_size = pick(0, 1) ? 16 : 32;
    params.alpha = std::uniform_real_distribution<float>(0.02f, 0.6f)(rng);
    params.sink_blocks = int(pick(0, 1));
    params.window_blocks = int(pick(1, 2));
    params.last_full_blocks = int(pick(0, 1));
    params.min_budget = int(pick(0, 1) ? 0 : pick(1, 3));
    Shape shape;
    shape.heads_kv = pick(1, 2);
    shape.heads_q = shape.heads_kv * pick(1, 3);
    shape.head_dim = pick(0, 1) ? 64 : 128;
    shape.batch = pick(1, 2);
    shape.len_kv = pick(1, 16 * params.block_size);  // partial last blocks included
    shape.len_q = pick(0, 1) ? shape.len_kv : pick(1, shape.len_kv);  // chunked half the time
    const DType dtype = pick(0, 1) ? DType::bf16 : DType::fp16;
    SCOPED_TRACE("trial " + std::to_string(trial) + ": B=" + std::to_string(shape.batch) +
                 " Lq=" + std::to_string(shape.len_q) + " Lkv=" + std::to_string(shape.len_kv) +
                 " Hq=" + std::to_string(shape.heads_q) + " Hkv=" + std::to_string(shape.heads_kv) +
                 " D=" + std::to_string(shape.head_dim) +
                 " block=" + std::to_string(params.block_size) + " dtype=" + dtype_name(dtype));
    HostBatch batch = padded_batch(shape, dtype, rng());
    plant_spans(batch, rng());
    check_robust(batch, params);
  }
}

TEST(CpuRobust, VarlenWithAnEmptySequenceMatchesReference) {
  FP_SEEDED(seed);
  Params params = robust();
  params.block_size = 16;
  params.alpha = 0.3f;
  Shape shape;
  shape.heads_q = 4;
  shape.heads_kv = 2;
  HostBatch batch = varlen_batch({{200, 200}, {0, 0}, {3, 3}, {40, 170}, {1, 1}, {17, 33}}, shape,
                                 DType::bf16, seed);
  check_robust(batch, params);
}

// A block-aligned chunk's layout rows equal the full prefill's: a query block's representatives
// depend on its own rows only, and its key scores on the keys.
TEST(CpuRobust, BlockAlignedChunkMatchesFullPrefill) {
  FP_SEEDED(seed);
  Params params = robust();
  params.block_size = 16;
  params.alpha = 0.2f;
  const Shape full_shape{1, 150, 150, 2, 1, 64};  // a partial last block
  HostBatch full = padded_batch(full_shape, DType::bf16, seed);
  LayoutStorage full_layout = allocate_layout(full.args(), params);
  discover_layout(full.args(), params, full_layout.view);
  Shape chunk_shape = full_shape;
  chunk_shape.len_q = 150 - 96;  // query blocks 6..9
  HostBatch chunk = padded_batch(chunk_shape, DType::bf16, 1);
  chunk.k = full.k;
  chunk.v = full.v;
  std::copy(full.q.begin() + 96 * 2 * 64, full.q.end(), chunk.q.begin());
  LayoutStorage chunk_layout = allocate_layout(chunk.args(), params);
  discover_layout(chunk.args(), params, chunk_layout.view);
  const auto full_rows = rows_of(full_layout.view), chunk_rows = rows_of(chunk_layout.view);
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 4; ++i)
      EXPECT_EQ(chunk_rows[h * 4 + i], full_rows[h * 10 + 6 + i]) << "head " << h << " block " << i;
}

// One key of block 4 (the "needle") is what query block 10 wants most after its local band: the
// block mean dilutes it 16-fold, so the exact rule drops block 4 from row 10; the robust rule
// scores that key alone against the block's core query (y = 12 against the band's 10) and keeps
// it.
TEST(CpuRobust, KeepsAShortSpanTheExactRuleDrops) {
  FP_SEEDED(seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> noise(0.0f, 0.05f);
  const Shape shape{1, 256, 256, 1, 1, 64};
  HostBatch batch = padded_batch(shape, DType::bf16, seed);
  for (auto* x : {&batch.q, &batch.k, &batch.v})
    for (auto& e : *x) e = to_half(noise(rng), DType::bf16);
  const float needle = std::sqrt(96.0f), band = std::sqrt(80.0f);  // scale 1/8: 12 and 10
  batch.k[(4 * 16 + 5) * 64 + 0] = to_half(needle, DType::bf16);
  for (int key = 7 * 16; key < 11 * 16; ++key) batch.k[key * 64 + 1] = to_half(band, DType::bf16);
  for (int t = 10 * 16; t < 11 * 16; ++t) {
    batch.q[t * 64 + 0] = to_half(needle, DType::bf16);
    batch.q[t * 64 + 1] = to_half(band, DType::bf16);
  }
  Params params;
  params.block_size = 16;
  const auto row_10 = [&](const Params& p) {
    LayoutStorage layout = allocate_layout(batch.args(), p);
    discover_layout(batch.args(), p, layout.view);
    return rows_of(layout.view)[10];
  };
  const auto exact = row_10(params), robust_row = row_10(robust(params));
  EXPECT_EQ(std::count(exact.begin(), exact.end(), 4), 0) << "the exact rule should drop it";
  EXPECT_EQ(std::count(robust_row.begin(), robust_row.end(), 4), 1);
  EXPECT_EQ(robust_row, (std::vector<int32_t>{0, 1, 4, 7, 8, 9, 10})) << "only the needle added";
  check_robust(batch, robust(params));
}

// KeepsAShortSpanTheExactRuleDrops' input with heads_q query heads (one kv head): the heads in
// needle_heads want the needle; with an outlier, row 170 of head 0 (query block 10) points only at
// a key of block 2 (q . k = 50), which makes it the group's far query there.
HostBatch short_span_case(int64_t heads_q, const std::vector<int64_t>& needle_heads, bool outlier,
                          uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> noise(0.0f, 0.05f);
  const int64_t D = 64, H = heads_q;
  HostBatch batch = padded_batch(Shape{1, 256, 256, H, 1, D}, DType::bf16, seed);
  for (auto* x : {&batch.q, &batch.k, &batch.v})
    for (auto& e : *x) e = to_half(noise(rng), DType::bf16);
  const auto half = [](float x) { return to_half(x, DType::bf16); };
  const float needle = std::sqrt(96.0f), band = std::sqrt(80.0f);  // scale 1/8: 12 and 10
  batch.k[(4 * 16 + 5) * D + 0] = half(needle);
  for (int64_t key = 7 * 16; key < 11 * 16; ++key) batch.k[key * D + 1] = half(band);
  for (int64_t t = 10 * 16; t < 11 * 16; ++t)
    for (int64_t h = 0; h < H; ++h) {
      batch.q[(t * H + h) * D + 1] = half(band);
      if (std::count(needle_heads.begin(), needle_heads.end(), h))
        batch.q[(t * H + h) * D + 0] = half(needle);
    }
  if (outlier) {
    batch.k[(2 * 16 + 3) * D + 2] = half(20.0f);
    uint16_t* row = &batch.q[(170 * H + 0) * D];
    std::fill(row, row + D, half(0.0f));
    row[2] = half(20.0f);
  }
  return batch;
}

// Layout row (head, query block 10) of the 16-block short-span input.
std::vector<int32_t> row_10(HostBatch& batch, const Params& params, int64_t head) {
  LayoutStorage layout = allocate_layout(batch.args(), params);
  discover_layout(batch.args(), params, layout.view);
  return rows_of(layout.view)[head * 16 + 10];
}

// The far query of block 10 is the outlier row (which wants block 2 only), so the needle of block 4
// is kept by the core query, and block 2 by the far query: each representative keeps what the
// other misses.
TEST(CpuRobust, CoreAndFarQueryEachKeepWhatTheOtherMisses) {
  FP_SEEDED(seed);
  HostBatch batch = short_span_case(1, {0}, /*outlier=*/true, seed);
  Params params;
  params.block_size = 16;
  EXPECT_EQ(row_10(batch, params, 0), (std::vector<int32_t>{0, 1, 7, 8, 9, 10}));
  EXPECT_EQ(row_10(batch, robust(params), 0), (std::vector<int32_t>{0, 1, 2, 4, 7, 8, 9, 10}));
  check_robust(batch, robust(params));
}

// g = 4: heads 1-3 want the needle, head 0 does not and holds the outlier (the far query). The core
// query pools all four heads' core rows (most of them want the needle), so every head's row keeps
// block 4: the representatives and their blocks are the group's, shared by its heads.
TEST(CpuRobust, CoreQueryPoolsTheGroupsHeads) {
  FP_SEEDED(seed);
  HostBatch batch = short_span_case(4, {1, 2, 3}, /*outlier=*/true, seed);
  Params params;
  params.block_size = 16;
  for (int64_t h = 0; h < 4; ++h) {
    EXPECT_EQ(row_10(batch, params, h), (std::vector<int32_t>{0, 1, 7, 8, 9, 10})) << "head " << h;
    EXPECT_EQ(row_10(batch, robust(params), h), (std::vector<int32_t>{0, 1, 2, 4, 7, 8, 9, 10}))
        << "head " << h;
  }
  check_robust(batch, robust(params));
}

TEST(CpuRobust, ChunkedPrefillMatchesReference) {
  FP_SEEDED(seed);
  std::mt19937_64 rng(seed);
  for (const int64_t len_q : {1, 37, 100, 129}) {  // L_q < L_kv, chunks not block-aligned
    SCOPED_TRACE("Lq=" + std::to_string(len_q));
    Params params = robust();
    params.block_size = 32;
    params.alpha = 0.15f;
    HostBatch batch = padded_batch(Shape{2, len_q, 300, 4, 2, 64}, DType::bf16, rng());
    plant_spans(batch, rng());
    check_robust(batch, params);
    if (HasFatalFailure()) return;
  }
}

// g = 1 (every head its own group) and g = 4 (the core query pools four heads, the far query is the
// farthest row of any of them).
TEST(CpuRobust, GqaGroupsOfOneAndFourMatchReference) {
  FP_SEEDED(seed);
  std::mt19937_64 rng(seed);
  for (const int64_t group : {1, 4}) {
    SCOPED_TRACE("g=" + std::to_string(group));
    Params params = robust();
    params.block_size = 16;
    params.alpha = 0.2f;
    HostBatch batch = padded_batch(Shape{1, 250, 250, 2 * group, 2, 64}, DType::fp16, rng());
    plant_spans(batch, rng());
    check_robust(batch, params);
    if (HasFatalFailure()) return;
  }
}

// Per-head alphas (Params::head_alpha, zeros included) against the reference, which reads the same
// array: a block may differ only within rounding of its own head's thresholds.
TEST(CpuRobust, PerHeadAlphaMatchesReference) {
  FP_SEEDED(seed);
  std::mt19937_64 rng(seed);
  HostBatch batch = padded_batch(Shape{1, 400, 400, 6, 2, 64}, DType::bf16, rng());
  plant_spans(batch, rng());
  std::vector<float> alphas = {0.0f, 0.05f, 0.12f, 0.3f, 0.6f, 1.0f};
  Params params = robust();
  params.block_size = 32;
  params.head_alpha =
      TensorView::contiguous(alphas.data(), DType::fp32, Device::cpu(), {int64_t(alphas.size())});
  AttentionArgs args = batch.args();
  LayoutStorage layout = allocate_layout(args, params);
  discover_layout(args, params, layout.view);
  const auto rows = rows_of(layout.view);
  const detail::Problem problem = make_problem(args, params, Needs::discovery);
  const StageShapes shapes = stage_shapes(args, params);
  const auto ref_scores = reference::block_scores(
      problem, reference::pool_keys(problem, shapes.pooled_key_slots), shapes.max_key_blocks);
  const auto margins = reference::robust_margins(problem, shapes.max_key_blocks);
  const auto expected =
      reference::select_blocks(problem, ref_scores, shapes.max_key_blocks, margins);
  ASSERT_EQ(rows.size(), expected.size());
  detail::for_each_layout_row(problem, [&](const detail::LayoutRow& r, int64_t row) {
    if (alphas[r.head] == 0.0f) {
      EXPECT_EQ(int64_t(rows[row].size()), r.block_abs + 1) << "alpha 0 keeps every block";
    }
    if (rows[row] == expected[row]) return;
    const double* S = &ref_scores[row * shapes.max_key_blocks];
    const double threshold = alphas[r.head] * *std::max_element(S, S + r.block_abs + 1);
    std::vector<int32_t> diff;
    std::set_symmetric_difference(rows[row].begin(), rows[row].end(), expected[row].begin(),
                                  expected[row].end(), std::back_inserter(diff));
    for (int32_t j : diff)
      EXPECT_TRUE(!(std::abs(margins[row * shapes.max_key_blocks + j]) > 1e-3) ||  // or NaN
                  std::abs(S[j] - threshold) <= 1e-3 * threshold)
          << "row " << row << " (head " << r.head << ") block " << j
          << " differs away from the thresholds";
  });
}

// The union never loses a block the exact rule keeps, whatever alpha, min_budget or forced blocks.
TEST(CpuRobust, RobustIsASupersetOfExact) {
  FP_SEEDED(seed);
  std::mt19937_64 rng(seed);
  HostBatch batch = padded_batch(Shape{2, 333, 333, 4, 2, 64}, DType::bf16, rng());
  plant_spans(batch, rng());
  for (const float alpha : {0.01f, 0.12f, 0.5f, 1.0f})
    for (const int min_budget : {0, 3}) {
      Params exact;
      exact.block_size = 16, exact.alpha = alpha, exact.min_budget = min_budget;
      exact.sink_blocks = 0, exact.window_blocks = 1, exact.last_full_blocks = 0;
      const auto layout_of = [&](const Params& params) {
        LayoutStorage layout = allocate_layout(batch.args(), params);
        discover_layout(batch.args(), params, layout.view);
        return rows_of(layout.view);
      };
      const auto exact_rows = layout_of(exact), robust_rows = layout_of(robust(exact));
      ASSERT_EQ(exact_rows.size(), robust_rows.size());
      for (size_t r = 0; r < exact_rows.size(); ++r)
        EXPECT_TRUE(std::includes(robust_rows[r].begin(), robust_rows[r].end(),
                                  exact_rows[r].begin(), exact_rows[r].end()))
            << "alpha " << alpha << " min_budget " << min_budget << " row " << r;
    }
}

// alpha 0: ln 0 = -inf, so every causal block passes, and the output is dense attention's, bit for
// bit.
TEST(CpuRobust, AlphaZeroIsDense) {
  FP_SEEDED(seed);
  Params params = robust();
  params.block_size = 16;
  params.alpha = 0.0f;
  params.sink_blocks = 0, params.window_blocks = 1, params.last_full_blocks = 0;
  HostBatch batch = padded_batch(Shape{1, 200, 260, 4, 1, 64}, DType::bf16, seed);
  LayoutStorage layout = allocate_layout(batch.args(), params);
  discover_layout(batch.args(), params, layout.view);
  const detail::Problem problem = make_problem(batch.args(), params, Needs::discovery);
  const auto rows = rows_of(layout.view);
  detail::for_each_layout_row(problem, [&](const detail::LayoutRow& r, int64_t row) {
    std::vector<int32_t> all(static_cast<size_t>(r.block_abs + 1));
    std::iota(all.begin(), all.end(), 0);
    EXPECT_EQ(rows[row], all) << "row " << row;
  });
  flash_prefill(batch.args(), params);
  const std::vector<uint16_t> robust_out = batch.out;
  Params exact = params;
  exact.discovery = Discovery::exact;
  flash_prefill(batch.args(), exact);  // exact at alpha 0 is dense (ALGORITHM.md)
  EXPECT_EQ(batch.out, robust_out);
}

// A needle key of block 5 that only 20 of query block 12's 128 rows attend (as much as their local
// band). Those rows lie far from the block's mean, so the core query is the other 108 rows' and
// misses it; the far query is one of those 20 rows and catches it.
TEST(CpuRobust, KeepsANeedleOfAMinorityOfRows) {
  FP_SEEDED(seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> noise(0.0f, 0.05f);
  const int64_t D = 64, block = 128;
  const Shape shape{1, 16 * block, 16 * block, 1, 1, D};
  HostBatch batch = padded_batch(shape, DType::bf16, seed);
  for (auto* x : {&batch.q, &batch.k, &batch.v})
    for (auto& e : *x) e = to_half(noise(rng), DType::bf16);
  const float strong = std::sqrt(80.0f);  // scale 1/8: q . k = 10 on the needle and on the band
  batch.k[(5 * block + 77) * D + 0] = to_half(strong, DType::bf16);
  for (int64_t key = 9 * block; key < 13 * block; ++key)
    batch.k[key * D + 1] = to_half(strong, DType::bf16);
  for (int64_t t = 12 * block; t < 13 * block; ++t) {
    batch.q[t * D + 1] = to_half(strong, DType::bf16);
    if (t >= 12 * block + 40 && t < 12 * block + 60)
      batch.q[t * D + 0] = to_half(strong, DType::bf16);
  }
  Params params;  // the defaults: block 128, alpha 0.12, sinks 0-1, window 9-12 for row 12
  const auto row_12 = [&](const Params& p) {
    LayoutStorage layout = allocate_layout(batch.args(), p);
    discover_layout(batch.args(), p, layout.view);
    return rows_of(layout.view)[12];
  };
  const auto exact = row_12(params), robust_row = row_12(robust(params));
  EXPECT_EQ(std::count(exact.begin(), exact.end(), 5), 0) << "the exact rule should drop it";
  EXPECT_EQ(robust_row, (std::vector<int32_t>{0, 1, 5, 9, 10, 11, 12})) << "only the needle added";
  // And it is the far query that keeps it: the core query's best key of block 5 is below its bar.
  const detail::Problem problem = make_problem(batch.args(), robust(params), Needs::discovery);
  detail::LayoutRow row;
  detail::for_each_layout_row(problem, [&](const detail::LayoutRow& r, int64_t n) {
    if (n == 12) row = r;
  });
  const auto reps = reference::query_representatives(problem, row);
  const auto best_key = [&](const std::vector<double>& rep, int64_t j) {
    double best = -INFINITY;
    for (int64_t key = j * block; key < (j + 1) * block; ++key) {
      double dot = 0.0;
      for (int64_t d = 0; d < D; ++d)
        dot += rep[d] * double(from_half(batch.k[key * D + d], DType::bf16));
      best = std::max(best, dot / 8.0);
    }
    return best;
  };
  EXPECT_LT(best_key(reps.core, 5), best_key(reps.core, 12) + 2 * std::log(0.12))
      << "core misses it";
  EXPECT_NEAR(reps.far[0], strong, 0.05) << "the far query is a needle row";
  check_robust(batch, robust(params));
}

TEST(CpuRobust, ExactIsTheDefault) { EXPECT_EQ(Params{}.discovery, Discovery::exact); }

TEST(CpuRobust, BlockScoresStageRefusesTheRobustRule) {
  HostBatch batch = padded_batch(Shape{}, DType::bf16, 1);
  const Params params = robust();
  const StageShapes s = stage_shapes(batch.args(), params);
  std::vector<float> pooled(static_cast<size_t>(s.pooled_key_slots * 64)),
      scores(static_cast<size_t>(s.max_rows * s.max_key_blocks));
  try {
    block_scores(batch.args(), params,
                 TensorView::contiguous(pooled.data(), DType::fp32, Device::cpu(),
                                        {s.pooled_key_slots, 1, 64}),
                 TensorView::contiguous(scores.data(), DType::fp32, Device::cpu(),
                                        {s.max_rows, s.max_key_blocks}));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("params.discovery"), std::string::npos) << e.what();
  }
}

TEST(CpuRobust, UnknownDiscoveryValueIsRejected) {
  Params params;
  params.discovery = static_cast<Discovery>(7);
  try {
    params.validate();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("params.discovery is 7"), std::string::npos) << e.what();
  }
}

// The e4m3 rounding of the best keys' products (src/common/e4m3.hpp), against the format decoded
// from its bits: every finite value is kept, every midpoint goes to the neighbour with an even
// mantissa, values just off a midpoint to the nearer one, magnitudes past 448 to +-448.
TEST(E4m3, RoundsToTheNearestValueTiesToEven) {
  std::vector<float> values;  // the non-negative finite e4m3 values, ascending
  for (int exponent = 0; exponent < 16; ++exponent)
    for (int mantissa = 0; mantissa < 8; ++mantissa) {
      if (exponent == 15 && mantissa == 7) continue;  // NaN
      values.push_back(exponent == 0 ? std::ldexp(float(mantissa), -9)
                                     : std::ldexp(1.0f + mantissa / 8.0f, exponent - 7));
    }
  ASSERT_EQ(values.back(), detail::kE4m3Max);
  for (size_t n = 0; n < values.size(); ++n) {
    EXPECT_EQ(detail::round_to_e4m3(values[n]), values[n]);
    EXPECT_EQ(detail::round_to_e4m3(-values[n]), -values[n]);
    if (n + 1 == values.size()) break;
    const float low = values[n], high = values[n + 1], middle = (low + high) / 2;
    const float even = n % 2 == 0 ? low : high;  // consecutive values alternate mantissa parity
    EXPECT_EQ(detail::round_to_e4m3(middle), even) << "between " << low << " and " << high;
    EXPECT_EQ(detail::round_to_e4m3(-middle), -even);
    EXPECT_EQ(detail::round_to_e4m3(std::nextafter(middle, 0.0f)), low);
    EXPECT_EQ(detail::round_to_e4m3(std::nextafter(middle, 1000.0f)), high);
  }
  EXPECT_EQ(detail::round_to_e4m3(500.0f), 448.0f);
  EXPECT_EQ(detail::round_to_e4m3(-1e30f), -448.0f);
  EXPECT_TRUE(std::isnan(detail::round_to_e4m3(NAN)));
}

TEST(E4m3, ScalePutsTheLargestMagnitudeIn128To256) {
  for (const float top :
       {1e-30f, 3e-7f, 0.011f, 0.5f, 1.0f, 1.5f, 127.9f, 128.0f, 255.9f, 256.0f, 4096.5f, 3e38f}) {
    const float scale = detail::e4m3_scale_of(top);
    int exponent = 0;
    EXPECT_EQ(std::frexp(scale, &exponent), 0.5f) << "a power of two for " << top;
    EXPECT_GE(top * scale, 128.0f) << top;
    EXPECT_LT(top * scale, 256.0f) << top;
  }
  EXPECT_EQ(detail::e4m3_scale_of(0.0f), 1.0f);
}

}  // namespace
}  // namespace flashprefill::testing
