// Paged K/V (vLLM's page pools and block table) against the same inputs packed contiguously: the
// same pooled keys, layouts, outputs and lse, bit for bit (the CPU backend reads the same values in
// the same order), for every supported page size and pool layout; and every bad paged argument
// gets an error naming it.
#include <cstring>

#include "cpu/isa.hpp"
#include "test_util.hpp"

namespace flashprefill::testing {
namespace {

using detail::make_problem;
using detail::Needs;

// Chunks that start mid-block, a sequence shorter than one page, an empty one (its block-table
// row is all -1, never read), partial last pages, GQA.
const std::vector<std::pair<int32_t, int32_t>> kLengths = {{300, 1000}, {64, 64},   {1, 517},
                                                           {0, 0},      {250, 250}, {37, 129}};

void expect_same_bits(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b,
                      const char* what) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t n = 0; n < a.size(); ++n) ASSERT_EQ(a[n], b[n]) << what << " element " << n;
}

// `against_reference`: also the fp64 reference (once per test: equality covers the rest).
void check_paged_equals_contiguous(HostBatch& host, PagedBatch& paged, const Params& params,
                                   bool against_reference) {
  SCOPED_TRACE(std::string("page_size=") + std::to_string(paged.page_size) +
               " layout=" + pool_layout_name(paged.layout));
  AttentionArgs contiguous = host.args(true), pages = paged.args(true);

  // Step 1: the same means per (sequence, key block), in each layout's slot numbering.
  const detail::Problem pc = make_problem(contiguous, params, Needs::discovery);
  const detail::Problem pp = make_problem(pages, params, Needs::discovery);
  const StageShapes sc = stage_shapes(contiguous, params), sp = stage_shapes(pages, params);
  const int64_t row = pc.heads_kv * pc.head_dim;
  std::vector<float> pooled_c(size_t(sc.pooled_key_slots * row)),
      pooled_p(size_t(sp.pooled_key_slots * row));
  pool_keys(contiguous, params,
            TensorView::contiguous(pooled_c.data(), DType::fp32, Device::cpu(),
                                   {sc.pooled_key_slots, pc.heads_kv, pc.head_dim}));
  pool_keys(pages, params,
            TensorView::contiguous(pooled_p.data(), DType::fp32, Device::cpu(),
                                   {sp.pooled_key_slots, pp.heads_kv, pp.head_dim}));
  for (int64_t b = 0; b < pc.num_seqs; ++b) {
    const auto s = pc.seq(b), t = pp.seq(b);
    ASSERT_EQ(s.len_kv, t.len_kv);
    ASSERT_EQ(s.len_q, t.len_q);
    for (int64_t j = 0; j < num_key_blocks(s.len_kv, params.block_size); ++j)
      ASSERT_EQ(0, std::memcmp(&pooled_c[size_t((pc.pooled_slot0(b, s) + j) * row)],
                               &pooled_p[size_t((pp.pooled_slot0(b, t) + j) * row)],
                               size_t(row) * sizeof(float)))
          << "pooled keys of sequence " << b << " block " << j;
  }

  // Steps 1-4: the same layout.
  LayoutStorage layout_c = allocate_layout(contiguous, params);
  LayoutStorage layout_p = allocate_layout(pages, params);
  discover_layout(contiguous, params, layout_c.view);
  discover_layout(pages, params, layout_p.view);
  const auto rows = rows_of(layout_c.view);
  ASSERT_EQ(rows, rows_of(layout_p.view));

  // Steps 1-5 and dense attention: the same bits.
  flash_prefill(contiguous, params);
  flash_prefill(pages, params);
  expect_same_bits(host.out, paged.out, "flash_prefill out");
  ASSERT_EQ(0, std::memcmp(host.lse.data(), paged.lse.data(), host.lse.size() * sizeof(float)))
      << "flash_prefill lse";
  dense_attention(contiguous, params);
  dense_attention(pages, params);
  expect_same_bits(host.out, paged.out, "dense_attention out");

  // And right, not only equal: against the fp64 reference on the paged Problem.
  if (!against_reference) return;
  const detail::Problem attention = make_problem(pages, params, Needs::attention);
  const auto ref = reference::attention(attention, {});
  EXPECT_LT(relative_error(paged.out, host.dtype, ref.out), tolerance(host.dtype));
}

TEST(Paged, EveryPageSizeAndPoolLayoutEqualsContiguous) {
  FP_SEEDED(seed);
  Shape shape;
  shape.heads_q = 4, shape.heads_kv = 2, shape.head_dim = 64;
  HostBatch host = varlen_batch(kLengths, shape, DType::bf16, seed);
  Params params;
  params.block_size = 64;
  params.alpha = 0.3f;
  for (int64_t page_size : {16, 32, 64, 128, 256})
    for (PoolLayout layout : {PoolLayout::separate, PoolLayout::combined, PoolLayout::interleaved,
                              PoolLayout::head_major}) {
      PagedBatch paged = make_paged(host, page_size, layout, seed + uint64_t(page_size));
      check_paged_equals_contiguous(host, paged, params, page_size == 16);
      if (HasFatalFailure()) return;
    }
}

TEST(Paged, BlockSizesAroundThePageSizeAndFp16) {
  FP_SEEDED(seed);
  Shape shape;
  shape.heads_q = 6, shape.heads_kv = 2, shape.head_dim = 128;
  HostBatch host = varlen_batch({{200, 700}, {90, 90}, {5, 300}}, shape, DType::fp16, seed);
  for (int block : {16, 32, 128}) {
    Params params;
    params.block_size = block;
    params.alpha = 0.2f;
    for (int64_t page_size : {16, 64, 512}) {
      SCOPED_TRACE("block_size=" + std::to_string(block));
      PagedBatch paged = make_paged(host, page_size, PoolLayout::combined, seed + uint64_t(block));
      check_paged_equals_contiguous(host, paged, params, block == 16 && page_size == 16);
      if (HasFatalFailure()) return;
    }
  }
}

// Every CPU kernel variant this CPU runs (AMX, AVX-512, AVX2, generic) reads pages through the
// same addressing: bf16 and fp16, two page sizes.
TEST(Paged, EveryCpuKernelVariantEqualsContiguous) {
  FP_SEEDED(seed);
  Shape shape;
  shape.heads_q = 4, shape.heads_kv = 1, shape.head_dim = 128;
  for (cpu::Isa isa :
       {cpu::Isa::amx, cpu::Isa::avx512bf16, cpu::Isa::avx512, cpu::Isa::avx2, cpu::Isa::generic}) {
    if (!cpu::isa_supported(isa)) continue;
    SCOPED_TRACE(std::string("variant ") + cpu::isa_name(isa));
    cpu::set_isa_ceiling(&isa);
    for (DType dtype : {DType::bf16, DType::fp16}) {
      HostBatch host = varlen_batch({{150, 400}, {3, 77}}, shape, dtype, seed);
      Params params;
      params.block_size = 32;
      params.alpha = 0.3f;
      for (int64_t page_size : {16, 128}) {
        PagedBatch paged = make_paged(host, page_size, PoolLayout::interleaved, seed);
        check_paged_equals_contiguous(host, paged, params, false);
      }
    }
    cpu::set_isa_ceiling(nullptr);
    if (HasFatalFailure()) return;
  }
}

// The paged layout_stats read seq_lens_kv: the same counts as the contiguous call.
TEST(Paged, LayoutStatsMatchContiguous) {
  FP_SEEDED(seed);
  HostBatch host = varlen_batch(kLengths, Shape{}, DType::bf16, seed);
  PagedBatch paged = make_paged(host, 32, PoolLayout::separate, seed);
  Params params;
  params.block_size = 32;
  AttentionArgs contiguous = host.args(), pages = paged.args();
  LayoutStorage layout = allocate_layout(pages, params);
  discover_layout(pages, params, layout.view);
  const LayoutStats a = layout_stats(pages, params, layout.view);
  LayoutStorage layout_c = allocate_layout(contiguous, params);
  discover_layout(contiguous, params, layout_c.view);
  const LayoutStats b = layout_stats(contiguous, params, layout_c.view);
  EXPECT_EQ(a.kept_blocks, b.kept_blocks);
  EXPECT_EQ(a.causal_blocks, b.causal_blocks);
  EXPECT_GT(a.causal_blocks, 0);
}

struct PagedErrors : ::testing::Test {
  HostBatch host = varlen_batch({{40, 100}, {10, 30}}, Shape{}, DType::bf16, 5);
  PagedBatch paged = make_paged(host, 16, PoolLayout::separate, 5);
  AttentionArgs args = paged.args();
  Params params;
};

TEST_F(PagedErrors, PageSizeMustBeAPowerOfTwoAtLeast16) {
  for (int64_t bad : {8, 24}) {
    AttentionArgs a = args;
    a.k.shape[1] = a.v.shape[1] = bad;
    expect_error([&] { flash_prefill(a, params); }, {"page_size", std::to_string(bad).c_str()});
  }
}

TEST_F(PagedErrors, PoolShapesDtypesAndRanks) {
  AttentionArgs a = args;
  a.v.shape[0] -= 1;
  expect_error([&] { flash_prefill(a, params); }, {"k", "v", "differ in shape"});
  a = args;
  a.k.rank = 3;
  expect_error([&] { flash_prefill(a, params); }, {"k", "[num_pages, page_size, H_kv, D]"});
  a = args;
  a.v.dtype = DType::fp16;
  expect_error([&] { flash_prefill(a, params); }, {"v has dtype fp16"});
  a = args;
  a.k.stride[3] = 2;
  expect_error([&] { flash_prefill(a, params); }, {"k", "last dimension"});
}

TEST_F(PagedErrors, BlockTableAndSeqLens) {
  AttentionArgs a = args;
  a.paged.block_table.dtype = DType::int64;
  expect_error([&] { flash_prefill(a, params); }, {"block_table", "int32"});
  a = args;
  a.paged.block_table.rank = 1;
  expect_error([&] { flash_prefill(a, params); }, {"block_table", "[num_seqs, max_pages_per_seq]"});
  a = args;
  a.paged.block_table.shape[0] = 3;
  expect_error([&] { flash_prefill(a, params); }, {"block_table", "[2, max_pages_per_seq]"});
  a = args;
  a.paged.seq_lens_kv.dtype = DType::fp32;
  expect_error([&] { flash_prefill(a, params); }, {"seq_lens_kv", "int32"});
  a = args;
  a.paged.seq_lens_kv = TensorView{};
  expect_error([&] { flash_prefill(a, params); }, {"seq_lens_kv", "not given"});
  a = args;
  a.varlen.cu_seqlens_q = TensorView{};
  expect_error([&] { flash_prefill(a, params); }, {"cu_seqlens_q", "paged"});
  a = args;
  a.varlen.cu_seqlens_kv = host.args().varlen.cu_seqlens_kv;
  expect_error([&] { flash_prefill(a, params); }, {"cu_seqlens_kv", "paged"});
}

TEST_F(PagedErrors, LengthsAgainstCapacityAndQueries) {
  // max_seqlen_kv beyond what a block table row addresses (8 pages of 16 = 128 keys).
  AttentionArgs a = args;
  a.varlen.max_seqlen_kv = paged.max_pages * 16 + 1;
  expect_error([&] { flash_prefill(a, params); }, {"max_seqlen_kv", "block_table", "page_size"});
  a = args;
  paged.seq_lens_kv[1] = int32_t(args.varlen.max_seqlen_kv + 1);
  expect_error([&] { flash_prefill(a, params); }, {"seq_lens_kv[1]", "max_seqlen_kv"});
  paged.seq_lens_kv[1] = 5;  // shorter than its 10 queries
  expect_error([&] { flash_prefill(a, params); }, {"sequence 1", "L_q = 10 > L_kv = 5"});
  paged.seq_lens_kv[1] = 30;
}

TEST_F(PagedErrors, BlockTableEntriesInRange) {
  paged.block_table[1] = int32_t(paged.num_pages);  // sequence 0's second page
  expect_error([&] { flash_prefill(args, params); },
               {"block_table[0, 1]", std::to_string(paged.num_pages).c_str(), "[0, "});
  paged.block_table[1] = -2;
  expect_error([&] { flash_prefill(args, params); }, {"block_table[0, 1]", "-2"});
}

// check_inputs scans the pages in use (whole: the sm_90 kernel reads a partial last page to its
// end), not the spare pages, which hold NaN here.
TEST_F(PagedErrors, CheckInputsScansThePagesInUse) {
  params.check_inputs = true;
  EXPECT_NO_THROW(flash_prefill(args, params));
  const int32_t page = paged.block_table[0];
  paged.pool[size_t(paged.v_begin + page * paged.stride[0] + 5)] = to_half(NAN, DType::bf16);
  const std::string name = "v page " + std::to_string(page);
  expect_error([&] { flash_prefill(args, params); }, {name.c_str(), "NaN"});
}

}  // namespace
}  // namespace flashprefill::testing
