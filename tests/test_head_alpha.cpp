// Params::head_alpha (one alpha per query head, params.hpp) on the CPU backend: one call with a
// per-head alpha chooses, head by head, the layout and output of a call with that head's scalar
// alpha (GQA, varlen with chunks, paged K/V, robust discovery, min_budget, the select_blocks
// stage), all-equal values are the scalar alpha, and every bad array gets an error naming
// head_alpha.
#include <limits>

#include "test_util.hpp"

namespace flashprefill::testing {
namespace {

using detail::make_problem;
using detail::Needs;

// Random alphas per head, with the ends of the range (0: dense rows; 1: only the best blocks).
std::vector<float> random_alphas(int64_t heads, std::mt19937_64& rng) {
  std::vector<float> alphas(static_cast<size_t>(heads));
  std::uniform_real_distribution<float> uniform(0.02f, 0.6f);
  for (float& a : alphas) a = uniform(rng);
  if (heads > 1) alphas[0] = 0.0f;
  if (heads > 2) alphas[heads - 1] = 1.0f;
  std::shuffle(alphas.begin(), alphas.end(), rng);
  return alphas;
}

TensorView host_view(std::vector<float>& alphas) {
  return TensorView::contiguous(alphas.data(), DType::fp32, Device::cpu(),
                                {int64_t(alphas.size())});
}

// Runs discover_layout and flash_prefill on host args; `out` is where the args write.
HeadAlphaCall run_cpu(AttentionArgs args, const Params& params, const std::vector<uint16_t>& out) {
  LayoutStorage layout = allocate_layout(args, params);
  discover_layout(args, params, layout.view);
  flash_prefill(args, params);
  return {rows_of(layout.view), out};
}

// Batch: HostBatch (contiguous K/V) or PagedBatch; both give args() and their out buffer.
template <typename Batch>
void check_batch(Batch& batch, const Params& params, std::vector<float> alphas) {
  AttentionArgs args = batch.args();
  const detail::Problem host = make_problem(args, params, Needs::attention);
  expect_head_alpha_equals_scalar_calls(
      host, params, alphas, host_view(alphas),
      [&](const Params& call) { return run_cpu(args, call, batch.out); });
}

TEST(HeadAlpha, GqaPaddedAndChunkedEqualsOneCallPerHead) {
  FP_SEEDED(seed);
  std::mt19937_64 rng(seed);
  for (DType dtype : {DType::bf16, DType::fp16}) {
    // GQA 6:2, a chunk (L_q < L_kv) starting mid-block, two sequences.
    HostBatch batch = padded_batch(Shape{2, 300, 700, 6, 2, 64}, dtype, seed);
    Params params;
    params.block_size = 32;
    params.sink_blocks = 1, params.window_blocks = 2;
    check_batch(batch, params, random_alphas(6, rng));
    if (HasFatalFailure()) return;
  }
}

TEST(HeadAlpha, VarlenWithAnEmptySequenceEqualsOneCallPerHead) {
  FP_SEEDED(seed);
  std::mt19937_64 rng(seed);
  Shape shape;
  shape.heads_q = 8, shape.heads_kv = 2, shape.head_dim = 128;
  HostBatch batch =
      varlen_batch({{400, 900}, {0, 0}, {130, 130}, {1, 333}}, shape, DType::bf16, seed);
  Params params;
  params.block_size = 64;
  check_batch(batch, params, random_alphas(8, rng));
}

TEST(HeadAlpha, RobustDiscoveryAndMinBudgetEqualOneCallPerHead) {
  FP_SEEDED(seed);
  std::mt19937_64 rng(seed);
  HostBatch batch = padded_batch(Shape{1, 800, 800, 4, 1, 64}, DType::bf16, seed);
  Params params;
  params.block_size = 32;
  params.discovery = Discovery::robust;
  check_batch(batch, params, random_alphas(4, rng));
  if (HasFatalFailure()) return;
  params.discovery = Discovery::exact;
  params.min_budget = 3;
  check_batch(batch, params, random_alphas(4, rng));
}

TEST(HeadAlpha, PagedEqualsOneCallPerHead) {
  FP_SEEDED(seed);
  std::mt19937_64 rng(seed);
  Shape shape;
  shape.heads_q = 4, shape.heads_kv = 2, shape.head_dim = 64;
  HostBatch host = varlen_batch({{300, 1000}, {37, 129}, {250, 250}}, shape, DType::bf16, seed);
  PagedBatch paged = make_paged(host, 32, PoolLayout::combined, seed);
  Params params;
  params.block_size = 64;
  check_batch(paged, params, random_alphas(4, rng));
}

// All heads at one alpha: the scalar call, bit for bit (layout, output and lse).
TEST(HeadAlpha, AllEqualIsTheScalarAlpha) {
  FP_SEEDED(seed);
  HostBatch batch = padded_batch(Shape{1, 512, 512, 4, 2, 64}, DType::bf16, seed);
  Params params;
  params.block_size = 32;
  params.alpha = 0.2f;
  AttentionArgs args = batch.args(true);
  LayoutStorage scalar_layout = allocate_layout(args, params);
  discover_layout(args, params, scalar_layout.view);
  flash_prefill(args, params);
  const std::vector<uint16_t> scalar_out = batch.out;
  const std::vector<float> scalar_lse = batch.lse;

  std::vector<float> alphas(4, 0.2f);
  Params per_head = params;
  per_head.alpha = 0.9f;  // ignored when head_alpha is given
  per_head.head_alpha = host_view(alphas);
  LayoutStorage layout = allocate_layout(args, per_head);
  discover_layout(args, per_head, layout.view);
  flash_prefill(args, per_head);
  EXPECT_EQ(rows_of(layout.view), rows_of(scalar_layout.view));
  EXPECT_EQ(batch.out, scalar_out);
  EXPECT_EQ(0, std::memcmp(batch.lse.data(), scalar_lse.data(), scalar_lse.size() * 4));
}

// The select_blocks stage (steps 3-4 from a score matrix) reads the row's head alpha too; the
// layout also matches the fp64 reference's selection from the same scores.
TEST(HeadAlpha, SelectBlocksStageUsesTheRowsHead) {
  FP_SEEDED(seed);
  std::mt19937_64 rng(seed);
  HostBatch batch = padded_batch(Shape{1, 640, 640, 3, 1, 64}, DType::bf16, seed);
  Params params;
  params.block_size = 64;
  std::vector<float> alphas = random_alphas(3, rng);
  AttentionArgs args = batch.args();
  const StageShapes shapes = stage_shapes(args, params);
  std::vector<float> scores(size_t(shapes.max_rows * shapes.max_key_blocks));
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  for (float& s : scores) s = uniform(rng) * uniform(rng);
  const TensorView score_view = TensorView::contiguous(scores.data(), DType::fp32, Device::cpu(),
                                                       {shapes.max_rows, shapes.max_key_blocks});

  Params per_head = params;
  per_head.head_alpha = host_view(alphas);
  LayoutStorage layout = allocate_layout(args, per_head);
  select_blocks(args, per_head, score_view, layout.view);
  const auto rows = rows_of(layout.view);

  // The reference selection from the same scores, with the same per-head alphas.
  const detail::Problem problem = make_problem(args, per_head, Needs::discovery);
  const auto expected = reference::select_blocks(
      problem, std::vector<double>(scores.begin(), scores.end()), shapes.max_key_blocks);
  EXPECT_EQ(rows, expected);

  // And head by head, the scalar call.
  LayoutStorage scalar_layout = allocate_layout(args, params);
  int64_t row = 0;
  for (int64_t h = 0; h < 3; ++h) {
    params.alpha = alphas[h];
    select_blocks(args, params, score_view, scalar_layout.view);
    const auto scalar_rows = rows_of(scalar_layout.view);
    for (int64_t i = 0; i < 10; ++i, ++row)
      EXPECT_EQ(rows[row], scalar_rows[row]) << "head " << h << " block " << i;
  }
}

TEST(HeadAlpha, BadArraysAreNamed) {
  HostBatch batch = padded_batch(Shape{1, 64, 64, 4, 2, 64}, DType::bf16, 11);
  AttentionArgs args = batch.args();
  Params params;
  std::vector<float> alphas = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f};
  params.head_alpha = TensorView::contiguous(alphas.data(), DType::fp32, Device::cpu(), {3});
  expect_error([&] { flash_prefill(args, params); },
               {"head_alpha", "[3]", "expected contiguous fp32 [H_q] = [4]"});
  params.head_alpha = TensorView::contiguous(alphas.data(), DType::fp32, Device::cpu(), {5});
  expect_error([&] { select_blocks(args, params, TensorView{}, BlockSparseLayout{}); },
               {"head_alpha", "[5]", "[4]"});
  params.head_alpha = TensorView::contiguous(alphas.data(), DType::fp32, Device::cpu(), {2, 2});
  expect_error([&] { flash_prefill(args, params); }, {"head_alpha", "[2, 2]"});
  params.head_alpha = TensorView::contiguous(alphas.data(), DType::bf16, Device::cpu(), {4});
  expect_error([&] { flash_prefill(args, params); }, {"head_alpha", "bf16", "fp32"});
  params.head_alpha = TensorView::contiguous(alphas.data(), DType::fp32, Device::cpu(), {4});
  params.head_alpha.stride[0] = 2;
  expect_error([&] { flash_prefill(args, params); }, {"head_alpha", "contiguous"});
  params.head_alpha = TensorView::contiguous(nullptr, DType::fp32, Device::cpu(), {4});
  expect_error([&] { flash_prefill(args, params); }, {"head_alpha", "null"});
  params.head_alpha = TensorView::contiguous(alphas.data(), DType::fp32, Device::cuda(0), {4});
  expect_error([&] { flash_prefill(args, params); }, {"head_alpha", "cuda:0", "q is on cpu"});
  params.head_alpha = TensorView::contiguous(alphas.data(), DType::fp32, Device::cpu(), {4});
  for (float bad : {-0.01f, 1.5f, std::numeric_limits<float>::quiet_NaN(),
                    std::numeric_limits<float>::infinity()}) {
    alphas[2] = bad;
    expect_error([&] { flash_prefill(args, params); },
                 {"head_alpha[2]", "expected a value in [0, 1]"});
    expect_error([&] { discover_layout(args, params, BlockSparseLayout{}); }, {"head_alpha[2]"});
  }
  alphas[2] = 1.0f;
  flash_prefill(args, params);  // the ends of the range are valid
  alphas[2] = 0.0f;
  flash_prefill(args, params);
}

}  // namespace
}  // namespace flashprefill::testing
