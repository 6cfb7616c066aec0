// Every stage of the CPU backend against the fp64 reference and against hand-made cases at the
// boundaries of ALGORITHM.md.
#include <algorithm>
#include <numeric>

#include "test_util.hpp"

namespace flashprefill::testing {
namespace {

using detail::make_problem;
using detail::Needs;

// Pooled keys and scores of the CPU backend vs the fp64 reference.
void check_pool_and_scores(HostBatch& batch, const Params& params) {
  AttentionArgs args = batch.args();
  const detail::Problem problem = make_problem(args, params, Needs::discovery);
  const StageShapes shapes = stage_shapes(args, params);

  std::vector<float> pooled(
      static_cast<size_t>(shapes.pooled_key_slots * problem.heads_kv * problem.head_dim), NAN);
  const TensorView pooled_view =
      TensorView::contiguous(pooled.data(), DType::fp32, Device::cpu(),
                             {shapes.pooled_key_slots, problem.heads_kv, problem.head_dim});
  pool_keys(args, params, pooled_view);
  const std::vector<double> ref_pooled = reference::pool_keys(problem, shapes.pooled_key_slots);
  for (int64_t b = 0; b < problem.num_seqs; ++b) {
    const auto s = problem.seq(b);
    for (int64_t j = 0; j < num_key_blocks(s.len_kv, params.block_size); ++j)
      for (int64_t e = 0; e < problem.heads_kv * problem.head_dim; ++e) {
        const size_t n = static_cast<size_t>(
            (problem.pooled_slot0(b, s) + j) * problem.heads_kv * problem.head_dim + e);
        ASSERT_NEAR(pooled[n], ref_pooled[n], 1e-5 * (1 + std::abs(ref_pooled[n])))
            << "slot element " << n;
      }
  }

  std::vector<float> scores(static_cast<size_t>(shapes.max_rows * shapes.max_key_blocks), NAN);
  block_scores(args, params, pooled_view,
               TensorView::contiguous(scores.data(), DType::fp32, Device::cpu(),
                                      {shapes.max_rows, shapes.max_key_blocks}));
  // Step 2 on the backend's own pooled keys (step 1 is checked above): scoring rounds the means to
  // the input dtype, and a mean within an fp32 ulp of a rounding boundary may round either way.
  const std::vector<double> given_pooled(pooled.begin(), pooled.end());
  const std::vector<double> ref_scores =
      reference::block_scores(problem, given_pooled, shapes.max_key_blocks);
  for (size_t n = 0; n < ref_scores.size(); ++n)
    ASSERT_NEAR(scores[n], ref_scores[n], 1e-4 * (1 + ref_scores[n])) << "score element " << n;
}

void check_attention(HostBatch& batch, const Params& params) {
  std::vector<std::vector<int32_t>> rows;
  expect_layout_matches_reference(batch, params, &rows);
  expect_attention_matches_reference(batch, params, rows);
}

struct RandomCase {
  Shape shape;
  DType dtype;
  Params params;
};

RandomCase random_case(std::mt19937_64& rng) {
  auto pick = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  RandomCase c;
  c.params.block_size = pick(0, 1) ? 16 : 32;
  c.params.alpha = std::uniform_real_distribution<float>(0.02f, 0.6f)(rng);
  c.params.sink_blocks = int(pick(0, 2));
  c.params.window_blocks = int(pick(1, 3));
  c.params.last_full_blocks = int(pick(0, 2));
  c.params.min_budget = int(pick(0, 1) ? 0 : pick(1, 3));
  c.shape.heads_kv = pick(1, 2);
  c.shape.heads_q = c.shape.heads_kv * pick(1, 3);
  c.shape.head_dim = pick(0, 1) ? 64 : 128;
  c.shape.batch = pick(1, 2);
  c.shape.len_kv = pick(1, 9 * c.params.block_size);  // partial last blocks included
  c.shape.len_q =
      pick(0, 1) ? c.shape.len_kv : pick(1, c.shape.len_kv);  // chunked prefill half the time
  c.dtype = pick(0, 1) ? DType::bf16 : DType::fp16;
  return c;
}

TEST(CpuStages, RandomShapesMatchReference) {
  FP_SEEDED(seed);
  std::mt19937_64 rng(seed);
  for (int trial = 0; trial < 12; ++trial) {
    const RandomCase c = random_case(rng);
    SCOPED_TRACE(
        "trial " + std::to_string(trial) + ": B=" + std::to_string(c.shape.batch) +
        " Lq=" + std::to_string(c.shape.len_q) + " Lkv=" + std::to_string(c.shape.len_kv) +
        " Hq=" + std::to_string(c.shape.heads_q) + " Hkv=" + std::to_string(c.shape.heads_kv) +
        " D=" + std::to_string(c.shape.head_dim) + " block=" + std::to_string(c.params.block_size) +
        " alpha=" + std::to_string(c.params.alpha) + " dtype=" + dtype_name(c.dtype));
    HostBatch batch = padded_batch(c.shape, c.dtype, rng());
    check_pool_and_scores(batch, c.params);
    check_attention(batch, c.params);
  }
}

TEST(CpuStages, VarlenVeryDifferentLengthsWithAnEmptySequence) {
  FP_SEEDED(seed);
  Params params;
  params.block_size = 16;
  params.alpha = 0.3f;
  Shape shape;
  shape.heads_q = 4;
  shape.heads_kv = 2;
  HostBatch batch = varlen_batch({{200, 200}, {0, 0}, {3, 3}, {40, 170}, {1, 1}, {17, 33}}, shape,
                                 DType::bf16, seed);
  check_pool_and_scores(batch, params);
  check_attention(batch, params);
}

TEST(CpuStages, VarlenEqualsEachSequenceAlone) {
  FP_SEEDED(seed);
  Params params;
  params.block_size = 16;
  Shape shape;
  shape.heads_q = 2;
  shape.heads_kv = 1;
  const std::vector<std::pair<int32_t, int32_t>> lengths = {{90, 90}, {20, 75}, {5, 5}};
  HostBatch packed = varlen_batch(lengths, shape, DType::bf16, seed);
  flash_prefill(packed.args(), params);
  for (size_t b = 0; b < lengths.size(); ++b) {
    Shape one = shape;
    one.len_q = lengths[b].first;
    one.len_kv = lengths[b].second;
    HostBatch single = padded_batch(one, DType::bf16, 1);
    const int64_t D = shape.head_dim;
    std::copy(packed.q.begin() + packed.cu_q[b] * 2 * D,
              packed.q.begin() + packed.cu_q[b + 1] * 2 * D, single.q.begin());
    std::copy(packed.k.begin() + packed.cu_kv[b] * D, packed.k.begin() + packed.cu_kv[b + 1] * D,
              single.k.begin());
    std::copy(packed.v.begin() + packed.cu_kv[b] * D, packed.v.begin() + packed.cu_kv[b + 1] * D,
              single.v.begin());
    flash_prefill(single.args(), params);
    EXPECT_TRUE(std::equal(single.out.begin(), single.out.end(),
                           packed.out.begin() + packed.cu_q[b] * 2 * D))
        << "sequence " << b;
  }
}

TEST(CpuStages, AlphaZeroIsDenseAttention) {
  FP_SEEDED(seed);
  Params params;
  params.alpha = 0.0f;
  params.block_size = 32;
  Shape shape{2, 150, 200, 4, 2, 64};
  HostBatch batch = padded_batch(shape, DType::fp16, seed);
  AttentionArgs args = batch.args();
  LayoutStorage layout = allocate_layout(args, params);
  discover_layout(args, params, layout.view);
  const LayoutStats stats = layout_stats(args, params, layout.view);
  EXPECT_EQ(stats.kept_blocks, stats.causal_blocks);
  flash_prefill(args, params);
  const auto ref = reference::attention(make_problem(args, params, Needs::attention), {});
  EXPECT_LE(relative_error(batch.out, batch.dtype, ref.out), tolerance(batch.dtype));
  std::vector<uint16_t> sparse_out = batch.out;
  dense_attention(args, params);
  EXPECT_EQ(sparse_out, batch.out) << "alpha = 0 must reproduce our dense path bit for bit";
}

TEST(CpuStages, GivenLayoutIsDenseAttentionRestrictedToIt) {
  FP_SEEDED(seed);
  std::mt19937_64 rng(seed);
  Params params;
  params.block_size = 16;
  Shape shape{1, 100, 130, 3, 1, 64};
  HostBatch batch = padded_batch(shape, DType::bf16, rng());
  AttentionArgs args = batch.args(true);
  // A random layout of our own: any subset of each row's causal blocks, the diagonal always in
  // (so no row is empty), plus one row left empty on purpose (its queries must output zeros).
  LayoutStorage layout = allocate_layout(args, params);
  const detail::Problem problem = make_problem(args, params, Needs::attention);
  std::vector<std::vector<int32_t>> rows;
  int64_t* row_ptr = layout.view.row_ptr.ptr<int64_t>();
  int32_t* col_idx = layout.view.col_idx.ptr<int32_t>();
  const int64_t nqb = num_query_blocks(shape.len_q, shape.len_kv, 16),
                first = first_query_block(shape.len_q, shape.len_kv, 16);
  row_ptr[0] = 0;
  for (int64_t h = 0; h < shape.heads_q; ++h)
    for (int64_t i = 0; i < nqb; ++i) {
      std::vector<int32_t> kept;
      const bool empty_row = (h == 1 && i == 2);
      for (int32_t j = 0; j <= first + i && !empty_row; ++j)
        if (j == first + i || std::bernoulli_distribution(0.4)(rng)) kept.push_back(j);
      const int64_t r = h * nqb + i;
      std::copy(kept.begin(), kept.end(), col_idx + row_ptr[r]);
      row_ptr[r + 1] = row_ptr[r] + int64_t(kept.size());
      rows.push_back(kept);
    }
  block_sparse_attention(args, params, layout.view);
  const auto ref = reference::attention(problem, rows);
  EXPECT_LE(relative_error(batch.out, batch.dtype, ref.out), tolerance(batch.dtype));
  // The empty row: zeros and lse = -inf.
  const int64_t shift = shape.len_kv - shape.len_q;
  for (int64_t pos = (first + 2) * 16; pos < (first + 3) * 16; ++pos) {
    const int64_t t = pos - shift;
    for (int64_t d = 0; d < shape.head_dim; ++d)
      ASSERT_EQ(from_half(batch.out[(t * 3 + 1) * 64 + d], batch.dtype), 0.0);
    ASSERT_TRUE(std::isinf(batch.lse[1 * shape.len_q + t]) && batch.lse[1 * shape.len_q + t] < 0);
  }
}

// Hand-made score rows through select_blocks: the threshold itself, sinks, window, last rows,
// min_budget.
TEST(CpuSelect, BoundariesOfTheKeepRule) {
  Params params;
  params.block_size = 16;
  params.alpha = 0.25f;  // exact in binary, so 0.25 * 4 == 1 exactly
  params.sink_blocks = 1;
  params.window_blocks = 2;
  params.last_full_blocks = 1;
  // One sequence of 8 blocks, one head: rows i = 0..7.
  Shape shape{1, 128, 128, 1, 1, 64};
  HostBatch batch = padded_batch(shape, DType::bf16, 7);
  AttentionArgs args = batch.args();
  const StageShapes shapes = stage_shapes(args, params);
  ASSERT_EQ(shapes.max_rows, 8);
  ASSERT_EQ(shapes.max_key_blocks, 8);
  std::vector<float> scores(64, 0.0f);
  auto S = [&](int i, int j) -> float& { return scores[i * 8 + j]; };
  // Row 6: max 4.0 at j=3; exactly alpha * max = 1.0 at j=1; just below at j=2.
  S(6, 0) = 0.0f;
  S(6, 1) = 1.0f;
  S(6, 2) = std::nextafter(1.0f, 0.0f);
  S(6, 3) = 4.0f;
  S(6, 4) = 0.5f;
  // Row 4: all scores equal (0 == 0.25 * 0 keeps everything: S >= alpha * max).
  // Row 7 is a last full block: everything kept whatever the scores.
  S(7, 3) = 100.0f;
  LayoutStorage layout = allocate_layout(args, params);
  select_blocks(args, params,
                TensorView::contiguous(scores.data(), DType::fp32, Device::cpu(), {8, 8}),
                layout.view);
  const auto rows = rows_of(layout.view);
  EXPECT_EQ(rows[6], (std::vector<int32_t>{0, 1, 3, 5, 6}))
      << "sink 0, threshold-equal 1, max 3, window 5-6; 2 and 4 dropped";
  EXPECT_EQ(rows[4], (std::vector<int32_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(rows[7], (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(rows[0], (std::vector<int32_t>{0}));

  // min_budget keeps the two best even when below the threshold; ties go to the smaller j.
  params.min_budget = 3;
  std::fill(scores.begin(), scores.end(), 0.0f);
  S(6, 3) = 4.0f;
  S(6, 2) = 0.5f;
  S(6, 4) = 0.5f;
  S(6, 1) = 0.25f;
  select_blocks(args, params,
                TensorView::contiguous(scores.data(), DType::fp32, Device::cpu(), {8, 8}),
                layout.view);
  EXPECT_EQ(rows_of(layout.view)[6], (std::vector<int32_t>{0, 2, 3, 4, 5, 6}));
  params.min_budget = 2;
  select_blocks(args, params,
                TensorView::contiguous(scores.data(), DType::fp32, Device::cpu(), {8, 8}),
                layout.view);
  EXPECT_EQ(rows_of(layout.view)[6], (std::vector<int32_t>{0, 2, 3, 5, 6}))
      << "tie between 2 and 4 goes to 2";
}

// Step 2's mask: the diagonal block only counts rows that see all of its keys.
TEST(CpuScores, DiagonalBlockCountsOnlyRowsThatSeeItWhole) {
  Params params;
  params.block_size = 16;
  Shape shape{1, 32, 32, 1, 1, 64};
  HostBatch batch = padded_batch(shape, DType::bf16, 3);
  AttentionArgs args = batch.args();
  const StageShapes shapes = stage_shapes(args, params);
  std::vector<float> pooled(static_cast<size_t>(2 * 64)),
      scores(static_cast<size_t>(shapes.max_rows * shapes.max_key_blocks));
  const TensorView pooled_view =
      TensorView::contiguous(pooled.data(), DType::fp32, Device::cpu(), {2, 1, 64});
  pool_keys(args, params, pooled_view);
  block_scores(args, params, pooled_view,
               TensorView::contiguous(scores.data(), DType::fp32, Device::cpu(), {2, 2}));
  // Row i = 1 (positions 16..31): block 0 is visible to all 16 rows, block 1 only to position 31.
  const double scale = 1.0 / 8.0;
  double x[16][2];
  double row_max = -INFINITY;
  for (int t = 16; t < 32; ++t)
    for (int j = 0; j < 2; ++j) {
      double dot = 0;
      for (int d = 0; d < 64; ++d)
        dot += from_half(batch.q[t * 64 + d], batch.dtype) * pooled[j * 64 + d];
      x[t - 16][j] = (j == 1 && t < 31) ? -INFINITY : scale * dot;
      row_max = std::max(row_max, x[t - 16][j]);
    }
  double s0 = 0, s1 = 0;
  for (int t = 0; t < 16; ++t) {
    s0 += std::exp(x[t][0] - row_max);
    s1 += std::exp(x[t][1] - row_max);
  }
  EXPECT_NEAR(scores[1 * 2 + 0], s0, 1e-4 * s0);
  EXPECT_NEAR(scores[1 * 2 + 1], s1, 1e-4 * (s1 + 1e-30));
  EXPECT_EQ(scores[0 * 2 + 1], 0.0f) << "j > i is not causal: 0";
}

// Chunked prefill: with the chunk starting on a block boundary, its layout rows and its output
// equal the corresponding rows of the full prefill.
TEST(CpuChunked, BlockAlignedChunkMatchesFullPrefill) {
  FP_SEEDED(seed);
  Params params;
  params.block_size = 16;
  params.alpha = 0.2f;
  Shape full_shape{1, 160, 160, 2, 1, 64};
  HostBatch full = padded_batch(full_shape, DType::bf16, seed);
  flash_prefill(full.args(), params);
  LayoutStorage full_layout = allocate_layout(full.args(), params);
  discover_layout(full.args(), params, full_layout.view);

  Shape chunk_shape = full_shape;
  chunk_shape.len_q = 64;  // the last 4 blocks
  HostBatch chunk = padded_batch(chunk_shape, DType::bf16, 1);
  chunk.k = full.k;
  chunk.v = full.v;
  std::copy(full.q.begin() + (160 - 64) * 2 * 64, full.q.end(), chunk.q.begin());
  flash_prefill(chunk.args(), params);
  LayoutStorage chunk_layout = allocate_layout(chunk.args(), params);
  discover_layout(chunk.args(), params, chunk_layout.view);

  const auto full_rows = rows_of(full_layout.view), chunk_rows = rows_of(chunk_layout.view);
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 4; ++i)
      EXPECT_EQ(chunk_rows[h * 4 + i], full_rows[h * 10 + 6 + i]) << "head " << h << " block " << i;
  EXPECT_TRUE(
      std::equal(chunk.out.begin(), chunk.out.end(), full.out.begin() + (160 - 64) * 2 * 64));
}

TEST(CpuEdgeCases, EmptyInputsAreANoOp) {
  Params params;
  // No sequences, or no query tokens: out and lse have no elements, and the call writes nothing.
  for (const Shape& shape : {Shape{0, 0, 0, 2, 1, 64}, Shape{1, 0, 50, 2, 1, 64}}) {
    HostBatch batch = padded_batch(shape, DType::bf16, 1);
    EXPECT_TRUE(batch.out.empty());
    EXPECT_NO_THROW(flash_prefill(batch.args(/*with_lse=*/true), params));
    EXPECT_TRUE(batch.out.empty() && batch.lse.empty());
  }
  // Packed tokens that no sequence covers (no sequences, or sequences without queries) are not
  // the call's to write: out and lse keep what they held.
  const int64_t heads_q = 2, heads_kv = 1, dim = 64, tokens_q = 3, tokens_kv = 80;
  constexpr uint16_t kSentinel = 0x1234;
  for (const auto& [cu_q, cu_kv] :
       {std::pair{std::vector<int32_t>{0}, std::vector<int32_t>{0}},
        std::pair{std::vector<int32_t>{0, 0, 0}, std::vector<int32_t>{0, 50, 80}}}) {
    std::vector<uint16_t> q(size_t(tokens_q * heads_q * dim), 0x3f80),
        k(size_t(tokens_kv * heads_kv * dim), 0x3f80), v = k;
    std::vector<uint16_t> out(q.size(), kSentinel);
    std::vector<float> lse(size_t(heads_q * tokens_q), 7.0f);
    AttentionArgs args;
    const Device cpu = Device::cpu();
    args.q = TensorView::contiguous(q.data(), DType::bf16, cpu, {tokens_q, heads_q, dim});
    args.k = TensorView::contiguous(k.data(), DType::bf16, cpu, {tokens_kv, heads_kv, dim});
    args.v = TensorView::contiguous(v.data(), DType::bf16, cpu, {tokens_kv, heads_kv, dim});
    args.out = TensorView::contiguous(out.data(), DType::bf16, cpu, {tokens_q, heads_q, dim});
    args.lse = TensorView::contiguous(lse.data(), DType::fp32, cpu, {heads_q, tokens_q});
    std::vector<int32_t> cu_q_copy = cu_q, cu_kv_copy = cu_kv;
    args.varlen.cu_seqlens_q =
        TensorView::contiguous(cu_q_copy.data(), DType::int32, cpu, {int64_t(cu_q.size())});
    args.varlen.cu_seqlens_kv =
        TensorView::contiguous(cu_kv_copy.data(), DType::int32, cpu, {int64_t(cu_kv.size())});
    args.varlen.max_seqlen_q = 0;
    args.varlen.max_seqlen_kv = 50;
    ASSERT_NO_THROW(flash_prefill(args, params)) << cu_q.size() - 1 << " sequences";
    EXPECT_TRUE(std::all_of(out.begin(), out.end(), [](uint16_t x) { return x == kSentinel; }))
        << cu_q.size() - 1 << " sequences";
    EXPECT_TRUE(std::all_of(lse.begin(), lse.end(), [](float x) { return x == 7.0f; }))
        << cu_q.size() - 1 << " sequences";
  }
}

TEST(CpuEdgeCases, SingleTokenAndHeadDim256) {
  FP_SEEDED(seed);
  Params params;
  Shape shape{1, 1, 1, 2, 2, 256};
  HostBatch batch = padded_batch(shape, DType::bf16, seed);
  check_attention(batch, params);
}

}  // namespace
}  // namespace flashprefill::testing
