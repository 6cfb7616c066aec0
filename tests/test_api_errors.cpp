// Every bad input gets a clear error naming the argument and what was expected.
#include <limits>
#include <locale>

#include "test_util.hpp"

namespace flashprefill::testing {
namespace {

struct ErrorsTest : ::testing::Test {
  HostBatch batch = padded_batch(Shape{1, 64, 64, 4, 2, 64}, DType::bf16, 11);
  Params params;
  AttentionArgs args = batch.args();
};

TEST_F(ErrorsTest, Params) {
  params.block_size = 48;
  expect_error([&] { flash_prefill(args, params); }, {"block_size", "48", "power of two >= 16"});
  params.block_size = 8;
  expect_error([&] { flash_prefill(args, params); }, {"block_size", "8"});
  params = Params{};
  params.alpha = 1.5f;
  expect_error([&] { flash_prefill(args, params); }, {"alpha", "[0, 1]"});
  params.alpha = -0.1f;
  expect_error([&] { flash_prefill(args, params); }, {"alpha"});
  params.alpha = std::numeric_limits<float>::quiet_NaN();
  expect_error([&] { flash_prefill(args, params); }, {"alpha"});
  params = Params{};
  params.sink_blocks = -1;
  expect_error([&] { flash_prefill(args, params); }, {"sink_blocks", "-1"});
  params = Params{};
  params.window_blocks = -2;
  expect_error([&] { flash_prefill(args, params); }, {"window_blocks"});
  params = Params{};
  params.min_budget = -1;
  expect_error([&] { flash_prefill(args, params); }, {"min_budget"});
  params = Params{};
  params.scale = -1.0f;
  expect_error([&] { flash_prefill(args, params); }, {"scale"});
}

TEST_F(ErrorsTest, Shapes) {
  AttentionArgs bad = args;
  bad.q.rank = 3;
  expect_error([&] { flash_prefill(bad, params); }, {"q", "rank 4", "[B, L_q, H_q, D]"});
  bad = args;
  bad.k.shape[2] = 3;  // H_q = 4 is not a multiple of 3
  bad.v.shape[2] = 3;
  expect_error([&] { flash_prefill(bad, params); }, {"GQA", "4", "3"});
  bad = args;
  bad.v.shape[2] = 1;
  expect_error([&] { flash_prefill(bad, params); }, {"v has 1 heads"});
  bad = args;
  bad.q.shape[3] = bad.k.shape[3] = bad.v.shape[3] = bad.out.shape[3] = 96;
  expect_error([&] { flash_prefill(bad, params); }, {"head dim", "96", "64, 128 or 256"});
  bad = args;
  bad.k.shape[3] = 128;
  expect_error([&] { flash_prefill(bad, params); }, {"head dims differ"});
  bad = args;
  bad.q.shape[1] = 65;
  bad.out.shape[1] = 65;
  expect_error([&] { flash_prefill(bad, params); }, {"L_q = 65 > L_kv = 64"});
  bad = args;
  bad.k.shape[0] = 2;
  bad.v.shape[0] = 2;
  expect_error([&] { flash_prefill(bad, params); }, {"batch"});
  bad = args;
  bad.out.shape[1] = 32;
  expect_error([&] { flash_prefill(bad, params); }, {"out has shape", "expected the same"});
  bad = args;
  bad.q.stride[3] = 2;
  expect_error([&] { flash_prefill(bad, params); }, {"q has stride 2", "last dimension"});
  bad = args;
  bad.out = TensorView{};
  expect_error([&] { flash_prefill(bad, params); }, {"out was not given"});
}

// A host application may install a global C++ locale (some libraries do): messages stay the same.
struct ThousandsGrouping : std::numpunct<char> {
  char do_thousands_sep() const override { return ','; }
  std::string do_grouping() const override { return "\3"; }
};

TEST_F(ErrorsTest, MessagesIgnoreTheGlobalLocale) {
  const std::locale saved =
      std::locale::global(std::locale(std::locale::classic(), new ThousandsGrouping));
  HostBatch wide = padded_batch(Shape{1, 1024, 1024, 2, 1, 64}, DType::bf16, 5);
  AttentionArgs bad = wide.args();
  bad.k.shape[3] = 128;  // k's head dim differs from q's: the message prints the shapes
  expect_error([&] { flash_prefill(bad, params); }, {"[1, 1024, 1, 128]"});
  std::locale::global(saved);
}

TEST_F(ErrorsTest, DtypesAndDevices) {
  AttentionArgs bad = args;
  bad.q.dtype = bad.out.dtype = DType::int32;
  expect_error([&] { flash_prefill(bad, params); }, {"q has dtype int32", "bf16, fp16 or fp32"});
  bad = args;  // fp32 is a CPU dtype: on CUDA the error names the supported ones (checked before
               // the device)
  bad.q.dtype = bad.k.dtype = bad.v.dtype = bad.out.dtype = DType::fp32;
  bad.q.device = bad.k.device = bad.v.device = bad.out.device = Device::cuda(0);
  expect_error([&] { flash_prefill(bad, params); }, {"q has dtype fp32", "bf16 or fp16 on CUDA"});
  bad = args;
  bad.k.dtype = DType::fp16;
  expect_error([&] { flash_prefill(bad, params); }, {"k has dtype fp16", "bf16"});
  bad = args;
  bad.out.dtype = DType::fp16;
  expect_error([&] { flash_prefill(bad, params); }, {"out has dtype fp16"});
  bad = args;
  std::vector<float> lse(10);
  bad.lse = TensorView::contiguous(lse.data(), DType::fp32, Device::cpu(), {1, 4, 10});
  expect_error([&] { flash_prefill(bad, params); },
               {"lse has shape", "[B, H_q, L_q] = [1, 4, 64]"});
  bad = args;
  bad.k.device = Device::cuda(0);
  bad.v.device = Device::cuda(0);
  expect_error([&] { flash_prefill(bad, params); }, {"k is on cuda:0", "q is on cpu"});
}

TEST_F(ErrorsTest, NonFiniteInputsWhenChecked) {
  batch.k[5 * 128 + 7] = 0x7fc0;  // a bf16 NaN
  params.check_inputs = true;
  expect_error([&] { flash_prefill(args, params); }, {"k holds a NaN or Inf", "[0, 5, 0, 7]"});
  batch.k[5 * 128 + 7] = 0;
  batch.q[3] = 0x7f80;  // +Inf
  expect_error([&] { flash_prefill(args, params); }, {"q holds a NaN or Inf"});
}

TEST_F(ErrorsTest, Varlen) {
  HostBatch packed = varlen_batch({{10, 20}, {30, 30}}, Shape{1, 0, 0, 4, 2, 64}, DType::bf16, 5);
  AttentionArgs good = packed.args();
  EXPECT_NO_THROW(flash_prefill(good, params));
  AttentionArgs bad = good;
  packed.cu_q = {0, 25, 40};  // sequence 0: L_q 25 > L_kv 20
  bad = packed.args();
  bad.varlen.max_seqlen_q = 30;
  expect_error([&] { flash_prefill(bad, params); }, {"sequence 0", "L_q = 25 > L_kv = 20"});
  packed.cu_q = {0, 30, 10};
  bad = packed.args();
  bad.varlen.max_seqlen_q = 30;
  expect_error([&] { flash_prefill(bad, params); }, {"cu_seqlens_q decreases"});
  packed.cu_q = {0, 10, 40};
  bad = packed.args();
  bad.varlen.max_seqlen_q = 5;
  expect_error([&] { flash_prefill(bad, params); }, {"max_seqlen"});
  bad = packed.args();
  bad.q.shape[0] = 30;
  bad.out.shape[0] = 30;
  expect_error([&] { flash_prefill(bad, params); }, {"cu_seqlens_q ends at 40", "30 tokens"});
  bad = packed.args();
  bad.varlen.cu_seqlens_kv.dtype = DType::int64;
  expect_error([&] { flash_prefill(bad, params); }, {"cu_seqlens_kv has dtype int64", "int32"});
}

TEST_F(ErrorsTest, LayoutAndWorkspace) {
  LayoutStorage layout = allocate_layout(args, params);
  BlockSparseLayout small = layout.view;
  small.max_cols = 1;
  small.col_idx.shape[0] = 1;
  expect_error([&] { block_sparse_attention(args, params, small); },
               {"layout has capacity", "stage_shapes"});
  Params other = params;
  other.block_size = 64;
  expect_error([&] { block_sparse_attention(args, other, layout.view); },
               {"layout.block_size is 128", "64"});
  std::vector<char> tiny(8);
  const size_t needed = flash_prefill_workspace_size(args, params);
  ASSERT_GT(needed, tiny.size());
  expect_error(
      [&] {
        flash_prefill(args, params, Workspace{tiny.data(), tiny.size()});
      },
      {"workspace has 8 bytes"});
  std::vector<char> enough(needed);
  EXPECT_NO_THROW(flash_prefill(args, params, Workspace{enough.data(), enough.size()}));
}

}  // namespace
}  // namespace flashprefill::testing
