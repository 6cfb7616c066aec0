// Robust discovery (docs/ROBUST.md) on the CPU backend: layouts against the fp64 reference of the
// rule on random inputs (partial blocks, GQA, chunked prefill, varlen, min_budget), attention on
// those layouts, a short dominant span that the exact rule drops and the robust rule keeps, and the
// stage that cannot run the rule refusing it.
#include <algorithm>

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
    params.sink_blocks = int(pick(0, 2));
    params.window_blocks = int(pick(1, 3));
    params.last_full_blocks = int(pick(0, 2));
    params.min_budget = int(pick(0, 1) ? 0 : pick(1, 3));
    Shape shape;
    shape.heads_kv = pick(1, 2);
    shape.heads_q = shape.heads_kv * pick(1, 3);
    shape.head_dim = pick(0, 1) ? 64 : 128;
    shape.batch = pick(1, 2);
    shape.len_kv = pick(1, 9 * params.block_size);  // partial last blocks included
    shape.len_q = pick(0, 1) ? shape.len_kv : pick(1, shape.len_kv);  // chunked half the time
    const DType dtype = pick(0, 1) ? DType::bf16 : DType::fp16;
    SCOPED_TRACE("trial " + std::to_string(trial) + ": B=" + std::to_string(shape.batch) +
                 " Lq=" + std::to_string(shape.len_q) + " Lkv=" + std::to_string(shape.len_kv) +
                 " Hq=" + std::to_string(shape.heads_q) + " Hkv=" + std::to_string(shape.heads_kv) +
                 " D=" + std::to_string(shape.head_dim) +
                 " block=" + std::to_string(params.block_size) + " dtype=" + dtype_name(dtype));
    HostBatch batch = padded_batch(shape, dtype, rng());
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

// A block-aligned chunk's layout rows equal the full prefill's: the far keys and the penalty depend
// on the keys only.
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
// scores it by the far key (x = 12 - ln 16 against the band's 10) and keeps it.
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

}  // namespace
}  // namespace flashprefill::testing
