// The CPU kernel variants (amx, avx512bf16, avx512, avx2, generic: every one this CPU runs) and
// fp32 inputs, against the fp64 reference: partial blocks and slabs, GQA, chunked prefill, varlen,
// head dims 64/128/256, block sizes 16-256, empty inputs.
#include <algorithm>
#include <cmath>
#include <string>

#include "cpu/isa.hpp"
#include "test_util.hpp"

namespace flashprefill::cpu {
void PrintTo(Isa isa, std::ostream* os) { *os << isa_name(isa); }  // gtest names the variant
}  // namespace flashprefill::cpu

namespace flashprefill::testing {
namespace {

using cpu::Isa;
using detail::make_problem;
using detail::Needs;

// Relative Frobenius error bounds of ALGORITHM.md for bf16 and fp16; fp32 inputs are computed in
// fp32 throughout (scores, exp2 with a relative error ~1e-7, P, sums), so 1e-5 leaves a margin of
// ~10x over what fp32 rounding over a few thousand keys gives.
double output_tolerance(DType dtype) { return dtype == DType::fp32 ? 1e-5 : tolerance(dtype); }
double lse_tolerance(DType dtype) { return dtype == DType::fp32 ? 1e-5 : 1e-3; }

// Inputs of any supported dtype: every element lives in a 4-byte slot's worth of storage, written
// and read through load_element / store_element.
struct Inputs {
  DType dtype;
  Shape shape;
  bool varlen = false;
  std::vector<int32_t> cu_q, cu_kv;
  std::vector<float> q, k, v, out;  // storage; 16-bit dtypes use the first half
  std::vector<float> lse;

  int64_t total_q() const { return varlen ? cu_q.back() : shape.batch * shape.len_q; }
  int64_t total_kv() const { return varlen ? cu_kv.back() : shape.batch * shape.len_kv; }

  AttentionArgs args() {
    return host_args(dtype, shape, varlen, cu_q, cu_kv, q.data(), k.data(), v.data(), out.data(),
                     lse.data());
  }

  double output(int64_t n) const { return detail::load_element(out.data(), n, dtype); }
};

// Gaussian q, k, v with a shared direction in q and a few standout keys (as test_util's
// fill_random), so that attention is far from uniform and the threshold drops blocks.
Inputs make_inputs(const Shape& shape, DType dtype, uint64_t seed,
                   const std::vector<std::pair<int32_t, int32_t>>* lengths = nullptr) {
  Inputs in;
  in.dtype = dtype;
  in.shape = shape;
  if (lengths) {
    in.varlen = true;
    in.cu_q = {0};
    in.cu_kv = {0};
    for (auto [len_q, len_kv] : *lengths) {
      in.cu_q.push_back(in.cu_q.back() + len_q);
      in.cu_kv.push_back(in.cu_kv.back() + len_kv);
    }
    in.shape.batch = int64_t(lengths->size());
  }
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  const int64_t D = shape.head_dim;
  std::vector<float> direction(static_cast<size_t>(D));
  for (float& x : direction) x = normal(rng);
  auto fill = [&](std::vector<float>& data, int64_t count, float bias) {
    data.assign(static_cast<size_t>(std::max<int64_t>(count, 1)), 0.0f);
    for (int64_t n = 0; n < count; ++n)
      detail::store_element(data.data(), n, normal(rng) + bias * direction[n % D], dtype);
  };
  fill(in.q, in.total_q() * shape.heads_q * D, 0.5f);
  fill(in.k, in.total_kv() * shape.heads_kv * D, 0.0f);
  std::uniform_int_distribution<int64_t> pick(0, std::max<int64_t>(0, in.total_kv() - 1));
  for (int n = 0; n < 4 && in.total_kv() > 0; ++n) {
    const int64_t key = pick(rng);
    for (int64_t e = key * shape.heads_kv * D; e < (key + 1) * shape.heads_kv * D; ++e)
      detail::store_element(in.k.data(), e,
                            detail::load_element(in.k.data(), e, dtype) + 3.0f * direction[e % D],
                            dtype);
  }
  fill(in.v, in.total_kv() * shape.heads_kv * D, 0.0f);
  in.out.assign(in.q.size(), NAN);  // poison: every element must be written
  in.lse.assign(static_cast<size_t>(std::max<int64_t>(in.total_q() * shape.heads_q, 1)), NAN);
  return in;
}

// Steps 1-4: block scores (on the backend's own pooled keys) within 1e-4 of the reference's, and
// the layout the reference selects, up to blocks whose score lies within rounding of the threshold.
void check_discovery(Inputs& in, const Params& params,
                     const std::vector<std::vector<int32_t>>& rows) {
  AttentionArgs args = in.args();
  const detail::Problem problem = make_problem(args, params, Needs::discovery);
  const StageShapes shapes = stage_shapes(args, params);
  const int64_t pooled_count = shapes.pooled_key_slots * problem.heads_kv * problem.head_dim;
  std::vector<float> pooled(static_cast<size_t>(std::max<int64_t>(1, pooled_count)));
  const TensorView pooled_view =
      TensorView::contiguous(pooled.data(), DType::fp32, Device::cpu(),
                             {shapes.pooled_key_slots, problem.heads_kv, problem.head_dim});
  pool_keys(args, params, pooled_view);
  std::vector<float> scores(
      static_cast<size_t>(std::max<int64_t>(1, shapes.max_rows * shapes.max_key_blocks)), NAN);
  block_scores(args, params, pooled_view,
               TensorView::contiguous(scores.data(), DType::fp32, Device::cpu(),
                                      {shapes.max_rows, shapes.max_key_blocks}));
  const std::vector<double> given_pooled(pooled.begin(), pooled.begin() + pooled_count);
  const std::vector<double> ref_scores =
      reference::block_scores(problem, given_pooled, shapes.max_key_blocks);
  for (size_t n = 0; n < ref_scores.size(); ++n)
    ASSERT_NEAR(scores[n], ref_scores[n], 1e-4 * (1 + ref_scores[n])) << "score element " << n;
  const auto ref_pooled = reference::pool_keys(problem, shapes.pooled_key_slots);
  const auto ref_layout_scores =
      reference::block_scores(problem, ref_pooled, shapes.max_key_blocks);
  const auto ref_rows = reference::select_blocks(problem, ref_layout_scores, shapes.max_key_blocks);
  ASSERT_EQ(rows.size(), ref_rows.size());
  expect_rows_differ_only_at_threshold(rows, ref_rows, ref_layout_scores, shapes.max_key_blocks,
                                       params.alpha, 1e-3);
}

// Discovery against the reference, then flash_prefill (and dense_attention) against the reference
// on the layout discover_layout chose.
void check_against_reference(Inputs& in, const Params& params) {
  AttentionArgs args = in.args();
  LayoutStorage layout = allocate_layout(args, params);
  discover_layout(args, params, layout.view);
  const auto rows = rows_of(layout.view);
  check_discovery(in, params, rows);
  flash_prefill(args, params);
  const detail::Problem problem = make_problem(args, params, Needs::attention);
  const auto ref = reference::attention(problem, rows);
  double err = 0, norm = 0;
  for (size_t n = 0; n < ref.out.size(); ++n) {
    const double diff = in.output(int64_t(n)) - ref.out[n];
    err += diff * diff;
    norm += ref.out[n] * ref.out[n];
  }
  const double relative = std::isnan(err) ? INFINITY
                          : norm > 0      ? std::sqrt(err / norm)
                                          : std::sqrt(err);
  EXPECT_LE(relative, output_tolerance(in.dtype))
      << "flash_prefill vs the reference on its own layout";
  expect_lse_near(problem, ref.lse, in.lse, lse_tolerance(in.dtype));

  std::fill(in.out.begin(), in.out.end(), NAN);
  dense_attention(args, params);
  const auto dense_ref = reference::attention(problem, {});
  err = norm = 0;
  for (size_t n = 0; n < dense_ref.out.size(); ++n) {
    const double diff = in.output(int64_t(n)) - dense_ref.out[n];
    err += diff * diff;
    norm += dense_ref.out[n] * dense_ref.out[n];
  }
  EXPECT_LE(std::isnan(err) ? INFINITY
            : norm > 0      ? std::sqrt(err / norm)
                            : std::sqrt(err),
            output_tolerance(in.dtype))
      << "dense_attention vs the reference";
}

std::string describe(const Shape& s, const Params& p, DType dtype) {
  return "B=" + std::to_string(s.batch) + " Lq=" + std::to_string(s.len_q) +
         " Lkv=" + std::to_string(s.len_kv) + " Hq=" + std::to_string(s.heads_q) +
         " Hkv=" + std::to_string(s.heads_kv) + " D=" + std::to_string(s.head_dim) +
         " block=" + std::to_string(p.block_size) + " alpha=" + std::to_string(p.alpha) +
         " dtype=" + dtype_name(dtype);
}

// Runs the test body once per variant this CPU supports, with the variant as the ceiling.
class CpuKernels : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    if (!cpu::isa_supported(GetParam()))
      GTEST_SKIP() << "this CPU cannot run the " << cpu::isa_name(GetParam()) << " kernels";
    const Isa isa = GetParam();
    cpu::set_isa_ceiling(&isa);
  }
  void TearDown() override { cpu::set_isa_ceiling(nullptr); }
};

TEST_P(CpuKernels, VariantRunsWhatItNames) {
  const Isa isa = GetParam();
  EXPECT_EQ(cpu::isa_for(DType::bf16), isa)
      << "bf16 runs the ceiling itself when the CPU supports it";
  const Isa fp32 = cpu::isa_for(DType::fp32);
  EXPECT_TRUE(fp32 == Isa::avx512 || fp32 == Isa::avx2 || fp32 == Isa::generic)
      << "fp32 products only for fp32 inputs";
  EXPECT_GE(fp32, isa) << "never wider than the ceiling";
  EXPECT_EQ(cpu::isa_for(DType::fp16), fp32);
  EXPECT_EQ(std::string(cpu_kernel_variant(DType::bf16)), cpu::isa_name(isa));
}

TEST_P(CpuKernels, RandomShapesEveryDtypeMatchReference) {
  FP_SEEDED(seed);
  std::mt19937_64 rng(seed);
  auto pick = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  const DType dtypes[] = {DType::bf16, DType::fp16, DType::fp32};
  for (int trial = 0; trial < 9; ++trial) {
    Params params;
    params.block_size =
        int(16 << pick(
                0, 3));  // 16 .. 128: partial key chunks (16) and several slabs per block (64, 128)
    params.alpha = trial % 3 == 0 ? 0.0f : std::uniform_real_distribution<float>(0.05f, 0.5f)(rng);
    params.window_blocks = int(pick(1, 3));
    Shape shape;
    shape.heads_kv = pick(1, 2);
    shape.heads_q = shape.heads_kv * pick(1, 4);
    shape.head_dim = int64_t(64) << pick(0, 2);
    shape.batch = pick(1, 2);
    shape.len_kv = pick(1, 5 * params.block_size);                    // partial last blocks
    shape.len_q = pick(0, 1) ? shape.len_kv : pick(1, shape.len_kv);  // chunked prefill, unaligned
    const DType dtype = dtypes[trial % 3];
    SCOPED_TRACE("trial " + std::to_string(trial) + ": " + describe(shape, params, dtype));
    Inputs in = make_inputs(shape, dtype, rng());
    check_against_reference(in, params);
  }
}

TEST_P(CpuKernels, HeadDims64To256GqaChunkedAndPartialBlocks) {
  FP_SEEDED(seed);
  Params params;
  params.alpha = 0.1f;
  for (int64_t D : {64, 128, 256})
    for (DType dtype : {DType::bf16, DType::fp16, DType::fp32}) {
      // 4 query heads on 2 kv heads; a chunk of 237 queries (not a multiple of the 32-row slab,
      // starting mid-block) against 460 keys (a partial last block of 76 keys).
      const Shape shape{1, 237, 460, 4, 2, D};
      SCOPED_TRACE(describe(shape, params, dtype));
      Inputs in = make_inputs(shape, dtype, seed + uint64_t(D));
      check_against_reference(in, params);
    }
}

// Step 5 attends up to four heads of a GQA group in one task, walking the union of their kept
// blocks: groups of 7 (tasks of 4 + 3) and 1, heads keeping different blocks.
TEST_P(CpuKernels, GqaGroupsSplitIntoTasks) {
  FP_SEEDED(seed);
  Params params;
  params.block_size = 32;
  params.alpha = 0.3f;
  params.sink_blocks = 1;
  params.window_blocks = 1;
  for (const Shape& shape : {Shape{1, 200, 200, 14, 2, 64}, Shape{2, 150, 170, 3, 3, 128}})
    for (DType dtype : {DType::bf16, DType::fp32}) {
      SCOPED_TRACE(describe(shape, params, dtype));
      Inputs in = make_inputs(shape, dtype, seed + uint64_t(shape.heads_q));
      check_against_reference(in, params);
    }
}

// The same with a layout of our own in which every head keeps its own random blocks, so that the
// union the task walks differs from each head's list.
TEST_P(CpuKernels, GqaHeadsWithDifferentLayouts) {
  FP_SEEDED(seed);
  std::mt19937_64 rng(seed);
  Params params;
  params.block_size = 16;
  const Shape shape{1, 90, 130, 7, 1, 64};
  for (DType dtype : {DType::bf16, DType::fp32}) {
    Inputs in = make_inputs(shape, dtype, rng());
    AttentionArgs args = in.args();
    LayoutStorage layout = allocate_layout(args, params);
    const int64_t nqb = num_query_blocks(shape.len_q, shape.len_kv, 16),
                  first = first_query_block(shape.len_q, shape.len_kv, 16);
    int64_t* row_ptr = layout.view.row_ptr.ptr<int64_t>();
    int32_t* col_idx = layout.view.col_idx.ptr<int32_t>();
    std::vector<std::vector<int32_t>> rows;
    row_ptr[0] = 0;
    for (int64_t h = 0; h < shape.heads_q; ++h)
      for (int64_t i = 0; i < nqb; ++i) {
        std::vector<int32_t> kept;
        for (int32_t j = 0; j <= first + i; ++j)
          if (j == first + i || std::bernoulli_distribution(0.35)(rng)) kept.push_back(j);
        const int64_t r = h * nqb + i;
        std::copy(kept.begin(), kept.end(), col_idx + row_ptr[r]);
        row_ptr[r + 1] = row_ptr[r] + int64_t(kept.size());
        rows.push_back(kept);
      }
    block_sparse_attention(args, params, layout.view);
    const detail::Problem problem = make_problem(args, params, Needs::attention);
    const auto ref = reference::attention(problem, rows);
    double err = 0, norm = 0;
    for (size_t n = 0; n < ref.out.size(); ++n) {
      err += (in.output(int64_t(n)) - ref.out[n]) * (in.output(int64_t(n)) - ref.out[n]);
      norm += ref.out[n] * ref.out[n];
    }
    EXPECT_LE(std::sqrt(err / norm), output_tolerance(dtype)) << dtype_name(dtype);
    expect_lse_near(problem, ref.lse, in.lse, lse_tolerance(dtype));
  }
}

TEST_P(CpuKernels, VarlenWithEmptyAndTinySequences) {
  FP_SEEDED(seed);
  Params params;
  params.block_size = 32;
  params.alpha = 0.2f;
  const std::vector<std::pair<int32_t, int32_t>> lengths = {{100, 100}, {0, 0},   {1, 1},
                                                            {0, 40},    {33, 97}, {64, 64}};
  for (DType dtype : {DType::bf16, DType::fp32}) {
    SCOPED_TRACE(dtype_name(dtype));
    Inputs in = make_inputs(Shape{1, 0, 0, 3, 1, 128}, dtype, seed, &lengths);
    check_against_reference(in, params);
  }
}

TEST_P(CpuKernels, LargeBlockSize) {
  FP_SEEDED(seed);
  Params params;
  params.block_size = 256;  // several key chunks and eight slabs per block
  params.alpha = 0.05f;
  const Shape shape{1, 700, 700, 2, 1, 64};
  Inputs in = make_inputs(shape, DType::bf16, seed);
  check_against_reference(in, params);
}

TEST_P(CpuKernels, EmptyInputsAreANoOp) {
  Params params;
  for (DType dtype : {DType::bf16, DType::fp16, DType::fp32}) {
    Inputs empty = make_inputs(Shape{0, 0, 0, 2, 1, 64}, dtype, 1);
    EXPECT_NO_THROW(flash_prefill(empty.args(), params));
    Inputs no_queries = make_inputs(Shape{1, 0, 50, 2, 1, 64}, dtype, 1);
    EXPECT_NO_THROW(flash_prefill(no_queries.args(), params));
    EXPECT_NO_THROW(dense_attention(no_queries.args(), params));
  }
}

// A layout row that keeps no block outputs zeros (lse -inf) while the next row, in the same first
// slab of a chunk that starts mid-block, attends normally.
TEST_P(CpuKernels, EmptyRowOutputsZeros) {
  Params params;
  params.block_size = 32;
  const Shape shape{1, 40, 64, 1, 1, 64};  // query rows at positions 24..63
  for (DType dtype : {DType::bf16, DType::fp32}) {
    Inputs in = make_inputs(shape, dtype, 5);
    AttentionArgs args = in.args();
    LayoutStorage layout = allocate_layout(args, params);
    // Rows: query block 0 (positions 24..31) keeps nothing; block 1 (32..63) keeps only block 1.
    int64_t* row_ptr = layout.view.row_ptr.ptr<int64_t>();
    int32_t* col_idx = layout.view.col_idx.ptr<int32_t>();
    row_ptr[0] = 0;
    row_ptr[1] = 0;
    col_idx[0] = 1;
    row_ptr[2] = 1;
    block_sparse_attention(args, params, layout.view);
    const detail::Problem problem = make_problem(args, params, Needs::attention);
    const auto ref = reference::attention(problem, {{}, {1}});
    for (int64_t t = 0; t < 8; ++t) {
      for (int64_t d = 0; d < 64; ++d) ASSERT_EQ(in.output(t * 64 + d), 0.0) << "t=" << t;
      ASSERT_TRUE(std::isinf(in.lse[t]) && in.lse[t] < 0);
    }
    double err = 0, norm = 0;
    for (size_t n = 8 * 64; n < ref.out.size(); ++n) {
      err += (in.output(int64_t(n)) - ref.out[n]) * (in.output(int64_t(n)) - ref.out[n]);
      norm += ref.out[n] * ref.out[n];
    }
    EXPECT_LE(std::sqrt(err / norm), output_tolerance(dtype));
  }
}

INSTANTIATE_TEST_SUITE_P(EveryVariant, CpuKernels,
                         ::testing::Values(Isa::amx, Isa::avx512bf16, Isa::avx512, Isa::avx2,
                                           Isa::generic),
                         [](const ::testing::TestParamInfo<Isa>& param_info) {
                           return std::string(cpu::isa_name(param_info.param));
                         });

TEST(CpuKernelChoice, UnsupportedCeilingIsAnError) {
  for (Isa isa : {Isa::amx, Isa::avx512bf16, Isa::avx512, Isa::avx2}) {
    if (cpu::isa_supported(isa)) continue;
    EXPECT_THROW(cpu::set_isa_ceiling(&isa), Error) << cpu::isa_name(isa);
  }
  EXPECT_TRUE(cpu::isa_supported(Isa::generic));
  EXPECT_THROW(cpu_kernel_variant(DType::int32), Error);
}

// fp32 gives what the same inputs rounded to bf16 give, up to bf16's precision: one algorithm.
TEST(CpuFp32, AgreesWithBf16OnTheSameValues) {
  FP_SEEDED(seed);
  Params params;
  params.alpha = 0.0f;
  const Shape shape{1, 333, 333, 2, 1, 128};
  Inputs bf16 = make_inputs(shape, DType::bf16, seed);
  Inputs fp32 = make_inputs(shape, DType::fp32, seed);
  const int64_t nq = bf16.total_q() * shape.heads_q * shape.head_dim,
                nkv = bf16.total_kv() * shape.heads_kv * shape.head_dim;
  for (int64_t n = 0; n < nq; ++n)
    fp32.q[n] = float(detail::load_element(bf16.q.data(), n, DType::bf16));
  for (int64_t n = 0; n < nkv; ++n) {
    fp32.k[n] = float(detail::load_element(bf16.k.data(), n, DType::bf16));
    fp32.v[n] = float(detail::load_element(bf16.v.data(), n, DType::bf16));
  }
  flash_prefill(bf16.args(), params);
  flash_prefill(fp32.args(), params);
  double err = 0, norm = 0;
  for (int64_t n = 0; n < nq; ++n) {
    err += (bf16.output(n) - fp32.output(n)) * (bf16.output(n) - fp32.output(n));
    norm += fp32.output(n) * fp32.output(n);
  }
  EXPECT_LE(std::sqrt(err / norm), tolerance(DType::bf16));
  EXPECT_GT(err, 0.0) << "the bf16 output is rounded to bf16; fp32's is not";
}

}  // namespace
}  // namespace flashprefill::testing
