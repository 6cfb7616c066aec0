// The shared pieces every backend relies on: the layout-row geometry (common/row_geometry.hpp),
// step 3's forced-block rule as tools show it, and the workspace regions (workspace.hpp).
#include <algorithm>
#include <vector>

#include "common/row_geometry.hpp"
#include "test_util.hpp"
#include "workspace.hpp"

namespace flashprefill::testing {
namespace {

using detail::make_problem;
using detail::Needs;

// Every layout row in order: its index, its block, and its queries. Per (sequence, head), the
// rows' query positions tile [L_kv - L_q, L_kv) exactly once, each inside its own block.
void check_rows(HostBatch& batch, const Params& params) {
  const detail::Problem p = make_problem(batch.args(), params, Needs::discovery);
  const int64_t block = p.block();
  int64_t expected_index = 0, seq_first_row = 0;
  std::vector<int64_t> covered;  // per (seq, head): next position expected
  int64_t last_seq = -1;
  detail::for_each_layout_row(p, [&](const detail::LayoutRow& r, int64_t index) {
    ASSERT_EQ(index, expected_index++);
    const detail::SeqExtent s = p.seq(r.seq);
    const int64_t nqb = num_query_blocks(s.len_q, s.len_kv, block);
    if (r.seq != last_seq) {
      if (last_seq >= 0) seq_first_row += detail::layout_rows_of(p, p.seq(last_seq));
      last_seq = r.seq;
      covered.assign(size_t(p.heads_q), s.len_kv - s.len_q);
    }
    EXPECT_EQ(index, seq_first_row + r.head * nqb + r.block_local);
    EXPECT_EQ(r.block_abs, first_query_block(s.len_q, s.len_kv, block) + r.block_local);
    EXPECT_EQ(r.shift(), s.len_kv - s.len_q);
    EXPECT_EQ(r.num_causal_blocks(), r.block_abs + 1);
    EXPECT_EQ(r.key_blocks(block), num_key_blocks(s.len_kv, block));
    const detail::PositionRange pos = r.positions(block);
    ASSERT_FALSE(pos.empty()) << "row " << index << ": a layout row holds at least one query";
    EXPECT_GE(pos.begin, r.block_start(block));
    EXPECT_LE(pos.end, r.block_start(block) + block);
    EXPECT_EQ(pos.begin, covered[r.head]) << "row " << index << " leaves a gap or overlaps";
    covered[r.head] = pos.end;
    if (r.block_local == nqb - 1) {
      EXPECT_EQ(pos.end, s.len_kv);
    }
  });
  EXPECT_LE(expected_index, detail::stage_shapes_of(p).max_rows);
  if (!batch.varlen) {
    EXPECT_EQ(expected_index, detail::stage_shapes_of(p).max_rows);
  }
}

TEST(RowGeometry, RowsTileEveryQueryOnce) {
  FP_SEEDED(seed);
  std::mt19937_64 rng(seed);
  for (int trial = 0; trial < 20; ++trial) {
    Params params;
    params.block_size = std::vector<int>{16, 64, 128}[rng() % 3];
    const int32_t len_kv = int32_t(1 + rng() % 700), len_q = int32_t(1 + rng() % len_kv);
    SCOPED_TRACE("block " + std::to_string(params.block_size) + ", L_q " + std::to_string(len_q) +
                 ", L_kv " + std::to_string(len_kv));
    HostBatch padded = padded_batch(Shape{2, len_q, len_kv, 3, 1, 64}, DType::bf16, seed);
    check_rows(padded, params);
    HostBatch packed = varlen_batch({{len_q, len_kv}, {1, 1}, {int32_t(1 + rng() % len_q), len_kv}},
                                    Shape{0, 0, 0, 2, 2, 64}, DType::fp16, seed);
    check_rows(packed, params);
  }
}

// The rule a tool shows for a kept block is the first of ForcedBlocks' rules that keeps it, and a
// block is forced exactly when some rule names it.
TEST(RowGeometry, ForcedBlockRuleAgreesWithContains) {
  Params params;
  params.sink_blocks = 2;
  params.window_blocks = 3;
  params.last_full_blocks = 2;
  using Forced = detail::ForcedBlocks<int64_t>;
  const int64_t num_kv_blocks = 12;
  for (int64_t i = 0; i < num_kv_blocks; ++i) {
    const Forced forced(i, num_kv_blocks, params);
    for (int64_t j = 0; j <= i; ++j) {
      const Forced::Rule rule = forced.rule(j);
      EXPECT_EQ(forced.contains(j), rule != Forced::Rule::none) << "i " << i << ", j " << j;
      const Forced::Rule expected = i >= num_kv_blocks - 2 ? Forced::Rule::last_rows
                                    : j < 2                ? Forced::Rule::sink
                                    : i - j < 3            ? Forced::Rule::window
                                                           : Forced::Rule::none;
      EXPECT_EQ(int(rule), int(expected)) << "i " << i << ", j " << j;
    }
  }
}

TEST(WorkspacePlan, RegionsAreAlignedAndDisjoint) {
  detail::RegionAllocator regions;
  std::vector<detail::Region> taken;
  for (size_t bytes : {size_t(8), size_t(0), size_t(257), size_t(256), size_t(1)})
    taken.push_back(regions.take(bytes));
  size_t end = 0;
  for (const detail::Region& r : taken) {
    EXPECT_EQ(r.offset % detail::kWorkspaceAlign, 0u);
    EXPECT_EQ(r.bytes % detail::kWorkspaceAlign, 0u);
    EXPECT_EQ(r.offset, end);  // each starts where the previous ends: no overlap, no gap
    end = r.offset + r.bytes;
  }
  EXPECT_EQ(regions.bytes(), end);
  EXPECT_EQ(taken[0].bytes, 256u);
  EXPECT_EQ(taken[1].bytes, 0u);
  EXPECT_EQ(taken[2].bytes, 512u);
}

}  // namespace
}  // namespace flashprefill::testing
