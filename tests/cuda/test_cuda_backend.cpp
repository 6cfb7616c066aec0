// The CUDA backend against the CPU backend and the fp64 reference: identical layouts (up to
// scores within rounding of the threshold, counted), outputs within the dtype's tolerance.
// Every test skips with a message when no GPU is present (CI has none).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "cuda/arch.hpp"
#include "flashprefill/synthetic.hpp"
#include "test_util.hpp"

namespace flashprefill::testing {
namespace {

using detail::make_problem;
using detail::Needs;

#define FP_REQUIRE_GPU() \
  if (!cuda_available()) \
  GTEST_SKIP() << "no CUDA device: the CUDA backend tests run only on a GPU machine"

// A host vector copied into a new allocation on GPU 0 (at least 4 bytes, so empty ones get one).
template <typename T>
Buffer upload(const std::vector<T>& vec) {
  const Device gpu = Device::cuda(0);
  const size_t bytes = vec.size() * sizeof(T);
  Buffer b = Buffer::allocate(gpu, std::max<size_t>(bytes, 4));
  if (bytes) copy_bytes(b.data(), gpu, vec.data(), Device::cpu(), bytes);
  return b;
}

// Captures flash_prefill(args, params, workspace) into a CUDA graph on args.stream, runs
// `before_replay` (to change what the graph reads), poisons args.out (`out_elements` 16-bit
// values), replays the graph and copies what it wrote into `replayed`. Void, so that its ASSERTs
// stop the caller: wrap it in ASSERT_NO_FATAL_FAILURE.
template <typename BeforeReplay>
void capture_and_replay(const AttentionArgs& args, const Params& params, Workspace workspace,
                        size_t out_elements, BeforeReplay&& before_replay,
                        std::vector<uint16_t>& replayed) {
  const auto stream = static_cast<cudaStream_t>(args.stream);
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  flash_prefill(args, params, workspace);  // no sync, no allocation, no upload: capturable
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  before_replay();
  ASSERT_EQ(cudaMemset(args.out.data, 0xff, out_elements * 2), cudaSuccess);  // poison
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  replayed.resize(out_elements);
  copy_bytes(replayed.data(), Device::cpu(), args.out.data, Device::cuda(0), out_elements * 2);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

// A host batch mirrored on the GPU.
struct DeviceBatch {
  HostBatch& host;
  Buffer q, k, v, out, lse, cu_q, cu_kv;

  explicit DeviceBatch(HostBatch& h) : host(h) {
    q = upload(h.q);
    k = upload(h.k);
    v = upload(h.v);
    out = upload(h.out);  // poisoned (NaN) like the host copy
    lse = upload(h.lse);
    if (h.varlen) {
      cu_q = upload(h.cu_q);
      cu_kv = upload(h.cu_kv);
    }
  }
  AttentionArgs args(bool with_lse = false) {
    AttentionArgs a = host.args(with_lse);
    const Device gpu = Device::cuda(0);
    for (auto [view, buffer] : {std::pair{&a.q, &q}, {&a.k, &k}, {&a.v, &v}, {&a.out, &out}}) {
      view->data = buffer->data();
      view->device = gpu;
    }
    if (with_lse) a.lse.data = lse.data(), a.lse.device = gpu;
    if (host.varlen) {
      a.varlen.cu_seqlens_q.data = cu_q.data();
      a.varlen.cu_seqlens_q.device = gpu;
      a.varlen.cu_seqlens_kv.data = cu_kv.data();
      a.varlen.cu_seqlens_kv.device = gpu;
    }
    return a;
  }
  void download_out() {
    copy_bytes(host.out.data(), Device::cpu(), out.data(), Device::cuda(0), host.out.size() * 2);
    copy_bytes(host.lse.data(), Device::cpu(), lse.data(), Device::cuda(0), host.lse.size() * 4);
  }
};

std::vector<std::vector<int32_t>> device_rows(const BlockSparseLayout& layout) {
  std::vector<int64_t> offsets(static_cast<size_t>(layout.num_seqs + 1));
  copy_bytes(offsets.data(), Device::cpu(), layout.seq_row_offset.data,
             layout.seq_row_offset.device, offsets.size() * 8);
  std::vector<int64_t> row_ptr(static_cast<size_t>(offsets.back() + 1));
  copy_bytes(row_ptr.data(), Device::cpu(), layout.row_ptr.data, layout.row_ptr.device,
             row_ptr.size() * 8);
  std::vector<int32_t> col_idx(static_cast<size_t>(row_ptr.back()));
  copy_bytes(col_idx.data(), Device::cpu(), layout.col_idx.data, layout.col_idx.device,
             col_idx.size() * 4);
  std::vector<std::vector<int32_t>> rows(static_cast<size_t>(offsets.back()));
  for (size_t r = 0; r < rows.size(); ++r)
    rows[r].assign(col_idx.begin() + row_ptr[r], col_idx.begin() + row_ptr[r + 1]);
  return rows;
}

// Whether robust discovery's best keys run as e4m3 wgmma (sm90/best_keys.cu): the library's own
// choice of the sm_90 kernels (cuda/arch.hpp), head dim 128, block 128, contiguous K.
bool best_keys_on_fp8_tensor_cores(const detail::Problem& gpu_problem) {
  return cuda::use_hopper_kernels(cuda::device_info(gpu_problem)) && gpu_problem.head_dim == 128 &&
         gpu_problem.params.block_size == 128 && !gpu_problem.paged();
}

// Hopper's fp8 tensor cores sum e4m3 products with fewer bits than fp32 (DeepSeek-V3's report,
// section 3.3.2, measured about 14 on the H800): a best key may move by this fraction of its
// products' magnitude (reference::robust_margins).
constexpr double kFp8TensorCoreSumPrecision = 1.0 / 2048;

// GPU layout == CPU layout except blocks whose fp64 score lies within 1e-3 of the threshold;
// returns the GPU rows.
std::vector<std::vector<int32_t>> check_layout_matches_cpu(HostBatch& host, DeviceBatch& device,
                                                           const Params& params) {
  AttentionArgs cpu_args = host.args();
  LayoutStorage cpu_layout = allocate_layout(cpu_args, params);
  discover_layout(cpu_args, params, cpu_layout.view);
  const auto cpu_rows = rows_of(cpu_layout.view);

  AttentionArgs gpu_args = device.args();
  LayoutStorage gpu_layout = allocate_layout(gpu_args, params);
  discover_layout(gpu_args, params, gpu_layout.view);
  const auto gpu_rows = device_rows(gpu_layout.view);
  EXPECT_EQ(gpu_rows.size(), cpu_rows.size());

  const detail::Problem problem = make_problem(cpu_args, params, Needs::discovery);
  const StageShapes shapes = stage_shapes(cpu_args, params);
  const auto ref_pooled = reference::pool_keys(problem, shapes.pooled_key_slots);
  const auto ref_scores = reference::block_scores(problem, ref_pooled, shapes.max_key_blocks);
  const double e4m3_sum_precision =
      best_keys_on_fp8_tensor_cores(make_problem(gpu_args, params, Needs::discovery))
          ? kFp8TensorCoreSumPrecision
          : 0.0;
  const auto ref_robust =
      params.discovery == Discovery::robust
          ? reference::robust_margins(problem, shapes.max_key_blocks, e4m3_sum_precision)
          : std::vector<double>();
  const int64_t near_threshold = expect_rows_differ_only_at_threshold(
      gpu_rows, cpu_rows, ref_scores, shapes.max_key_blocks, params.alpha, 1e-3, ref_robust);
  if (near_threshold)
    std::printf("  [layout] %ld block(s) differ, all within rounding of the threshold\n",
                long(near_threshold));
  return gpu_rows;
}

void check_gpu_attention(HostBatch& host, const Params& params) {
  DeviceBatch device(host);
  const auto gpu_rows = check_layout_matches_cpu(host, device, params);
  AttentionArgs gpu_args = device.args(/*with_lse=*/true);
  flash_prefill(gpu_args, params);
  synchronize(Device::cuda(0));
  device.download_out();
  const detail::Problem problem = make_problem(host.args(true), params, Needs::attention);
  const auto ref = reference::attention(problem, gpu_rows);
  EXPECT_LE(relative_error(host.out, host.dtype, ref.out), tolerance(host.dtype));
  expect_lse_near(problem, ref.lse, host.lse, 2e-3);
}

void check_random_shapes(uint64_t seed, int trials, Discovery discovery = Discovery::exact) {
  std::mt19937_64 rng(seed);
  auto pick = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  for (int trial = 0; trial < trials; ++trial) {
    Params params;
    params.discovery = discovery;
    params.block_size = pick(0, 3) ? 128 : 64;
    params.alpha = std::uniform_real_distribution<float>(0.05f, 0.5f)(rng);
    params.min_budget = pick(0, 2) == 0 ? int(pick(1, 3)) : 0;
    Shape shape;
    shape.heads_kv = pick(1, 2);
    shape.heads_q = shape.heads_kv * pick(1, 4);
    shape.head_dim = pick(0, 1) ? 64 : 128;
    shape.batch = pick(1, 2);
    shape.len_kv = pick(1, 6 * params.block_size);
    shape.len_q = pick(0, 1) ? shape.len_kv : pick(1, shape.len_kv);
    const DType dtype = pick(0, 1) ? DType::bf16 : DType::fp16;
    SCOPED_TRACE("trial " + std::to_string(trial) + ": B=" + std::to_string(shape.batch) +
                 " Lq=" + std::to_string(shape.len_q) + " Lkv=" + std::to_string(shape.len_kv) +
                 " Hq=" + std::to_string(shape.heads_q) + " Hkv=" + std::to_string(shape.heads_kv) +
                 " D=" + std::to_string(shape.head_dim) +
                 " block=" + std::to_string(params.block_size) + " " + dtype_name(dtype));
    HostBatch host = padded_batch(shape, dtype, rng());
    // Robust: spans its second test finds (random keys alone give it nothing to add).
    if (discovery == Discovery::robust) plant_spans(host, rng());
    check_gpu_attention(host, params);
  }
}

// Sets FLASHPREFILL_CUDA_KERNELS for one scope (the backend reads it on every call).
struct ScopedKernelChoice {
  explicit ScopedKernelChoice(const char* kernel) {
    setenv("FLASHPREFILL_CUDA_KERNELS", kernel, 1);
  }
  ~ScopedKernelChoice() { unsetenv("FLASHPREFILL_CUDA_KERNELS"); }
};

// A PagedBatch mirrored on the GPU: the pool (k and v views into one allocation), block table,
// seq_lens_kv, q and cu_seqlens_q, and outputs of its own.
struct DevicePagedBatch {
  PagedBatch& paged;
  Buffer pool, block_table, seq_lens, q, cu_q, out, lse;

  explicit DevicePagedBatch(PagedBatch& p) : paged(p) {
    pool = upload(p.pool);
    block_table = upload(p.block_table);
    seq_lens = upload(p.seq_lens_kv);
    q = upload(p.host->q);
    cu_q = upload(p.host->cu_q);
    out = upload(p.out);
    lse = upload(p.lse);
  }
  AttentionArgs args(bool with_lse = false) {
    AttentionArgs a = paged.args(with_lse);
    const Device gpu = Device::cuda(0);
    auto* base = static_cast<uint16_t*>(pool.data());
    a.k.data = base + paged.k_begin;
    a.v.data = base + paged.v_begin;
    for (auto [view, buffer] : {std::pair{&a.q, &q},
                                {&a.out, &out},
                                {&a.varlen.cu_seqlens_q, &cu_q},
                                {&a.paged.block_table, &block_table},
                                {&a.paged.seq_lens_kv, &seq_lens}}) {
      view->data = buffer->data();
      view->device = gpu;
    }
    a.k.device = a.v.device = gpu;
    if (with_lse) a.lse.data = lse.data(), a.lse.device = gpu;
    return a;
  }
  void download_out() {
    copy_bytes(paged.out.data(), Device::cpu(), out.data(), Device::cuda(0), paged.out.size() * 2);
    copy_bytes(paged.lse.data(), Device::cpu(), lse.data(), Device::cuda(0), paged.lse.size() * 4);
  }
};

// Paged K/V on the GPU against the same inputs packed contiguously on the GPU: the same layout and
// the same output and lse bits (the kernels read the same values; rows past a sequence are masked
// either way), and within tolerance of the fp64 reference once per call of this function.
void check_paged_equals_contiguous_on_gpu(uint64_t seed, const Params& params, int64_t head_dim,
                                          DType dtype) {
  Shape shape;
  shape.heads_q = 4, shape.heads_kv = 2, shape.head_dim = head_dim;
  HostBatch host =
      varlen_batch({{300, 1000}, {64, 64}, {1, 517}, {0, 0}, {250, 250}, {37, 129}, {700, 2100}},
                   shape, dtype, seed);
  DeviceBatch contiguous(host);
  AttentionArgs contiguous_args = contiguous.args(true);
  LayoutStorage layout_c = allocate_layout(contiguous_args, params);
  discover_layout(contiguous_args, params, layout_c.view);
  const auto rows = device_rows(layout_c.view);
  flash_prefill(contiguous_args, params);
  synchronize(Device::cuda(0));
  contiguous.download_out();
  bool reference_checked = false;
  for (int64_t page_size : {16, 32, 64, 128, 256})
    for (PoolLayout pool_layout : {PoolLayout::separate, PoolLayout::combined,
                                   PoolLayout::interleaved, PoolLayout::head_major}) {
      SCOPED_TRACE(std::string("page_size=") + std::to_string(page_size) +
                   " layout=" + pool_layout_name(pool_layout));
      PagedBatch paged = make_paged(host, page_size, pool_layout, seed + uint64_t(page_size));
      DevicePagedBatch device(paged);
      AttentionArgs args = device.args(true);
      LayoutStorage layout = allocate_layout(args, params);
      discover_layout(args, params, layout.view);
      ASSERT_EQ(device_rows(layout.view), rows);
      flash_prefill(args, params);
      synchronize(Device::cuda(0));
      device.download_out();
      for (size_t n = 0; n < host.out.size(); ++n)
        ASSERT_EQ(paged.out[n], host.out[n]) << "out element " << n;
      ASSERT_EQ(0, std::memcmp(paged.lse.data(), host.lse.data(), host.lse.size() * 4));
      if (!reference_checked) {
        reference_checked = true;
        const detail::Problem problem =
            make_problem(paged.args(true), params, Needs::attention);  // host view, paged
        const auto ref = reference::attention(problem, rows);
        EXPECT_LE(relative_error(paged.out, dtype, ref.out), tolerance(dtype));
        expect_lse_near(problem, ref.lse, paged.lse, 2e-3);
      }
    }
}

// The default kernels (on an H100/H200 at block 128: TMA of one page per piece when pages are
// smaller than the 128-key tile, issued by four warps for pages of 16 and 32 and by one for 64; of
// part of a page otherwise) and the sm_80 ones (cp.async through the block table), every page size
// and pool layout.
TEST(Cuda, PagedEqualsContiguousDefaultKernels) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  Params params;
  params.alpha = 0.2f;
  for (int64_t head_dim : {64, 128}) {
    SCOPED_TRACE("D=" + std::to_string(head_dim));
    check_paged_equals_contiguous_on_gpu(seed + uint64_t(head_dim), params, head_dim, DType::bf16);
  }
}

TEST(Cuda, PagedEqualsContiguousAmpereKernels) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  ScopedKernelChoice choice("ampere");
  for (int block : {64, 128}) {
    Params params;
    params.block_size = block;
    params.alpha = 0.2f;
    SCOPED_TRACE("block_size=" + std::to_string(block));
    check_paged_equals_contiguous_on_gpu(seed + uint64_t(block), params, 128, DType::fp16);
  }
  Params params;
  params.block_size = 64;
  check_paged_equals_contiguous_on_gpu(seed, params, 256, DType::bf16);
}

// With check_inputs the GPU call reads the block table back and names a page out of the pools.
TEST(Cuda, PagedBlockTableCheckedOnRequest) {
  FP_REQUIRE_GPU();
  HostBatch host = varlen_batch({{40, 100}, {10, 30}}, Shape{}, DType::bf16, 3);
  PagedBatch paged = make_paged(host, 16, PoolLayout::separate, 3);
  paged.block_table[1] = int32_t(paged.num_pages + 7);
  DevicePagedBatch device(paged);
  Params params;
  params.check_inputs = true;
  try {
    flash_prefill(device.args(), params);
    ADD_FAILURE() << "expected an error naming block_table[0, 1]";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("block_table[0, 1]"), std::string::npos)
        << error.what();
  }
}

// The default kernels of this GPU (on an H100 the wgmma ones for block 128, the sm_80 ones
// otherwise).
TEST(Cuda, RandomShapesMatchCpuAndReference) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  check_random_shapes(seed, 12);
}

// The sm_80 kernels (mma.sync scoring and attention) on every GPU, Hopper included (there they are
// the fallback).
TEST(Cuda, RandomShapesMatchCpuAndReferenceAmpereKernel) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  ScopedKernelChoice choice("ampere");
  check_random_shapes(seed, 6);
}

// Rows of many blocks: the K/V stage ring wraps several times (phases flip), GQA, both head dims.
TEST(Cuda, LongRowsWrapThePipeline) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  for (int64_t head_dim : {64, 128}) {
    SCOPED_TRACE("D=" + std::to_string(head_dim));
    Params params;
    params.alpha = 0.0f;
    HostBatch host =
        padded_batch(Shape{1, 1500, 2100, 4, 1, head_dim}, DType::bf16, seed + uint64_t(head_dim));
    check_gpu_attention(host, params);
  }
}

// More layout rows than SMs, several per persistent CTA: the stage ring and the two Q buffers carry
// their phases from row to row; chunked (L_q < L_kv, unaligned) with GQA and a threshold; padded
// batches take rows in their natural order from the scheduler's counter.
TEST(Cuda, ManyRowsPerPersistentCta) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  Params params;
  params.alpha = 0.1f;
  // 512 and 1296 rows, of few blocks each: the fp64 reference stays quick.
  for (const Shape& shape : {Shape{2, 900, 1000, 32, 4, 64}, Shape{3, 1000, 1100, 48, 4, 64}}) {
    SCOPED_TRACE("Lq=" + std::to_string(shape.len_q) + " Hq=" + std::to_string(shape.heads_q));
    HostBatch host = padded_batch(shape, DType::bf16, seed + uint64_t(shape.len_q));
    check_gpu_attention(host, params);
  }
}

// The kernels move rows in 16-byte pieces: a misaligned view is refused by name, not read.
TEST(Cuda, MisalignedRowsAreRefused) {
  FP_REQUIRE_GPU();
  HostBatch host = padded_batch(Shape{1, 128, 128, 2, 1, 64}, DType::bf16, 5);
  DeviceBatch device(host);
  AttentionArgs args = device.args();
  Buffer shifted = Buffer::allocate(Device::cuda(0), host.q.size() * 2 + 16);
  args.q.data = static_cast<char*>(shifted.data()) + 2;  // one bf16 element off
  try {
    flash_prefill(args, Params{});
    ADD_FAILURE() << "a misaligned q was accepted";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("q is not 16-byte aligned"), std::string::npos)
        << error.what();
  }
}

TEST(Cuda, VarlenVeryDifferentLengths) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  Params params;
  params.alpha = 0.2f;
  Shape shape;
  shape.heads_q = 4;
  shape.heads_kv = 2;
  shape.head_dim = 128;
  HostBatch host = varlen_batch({{700, 700}, {0, 0}, {5, 5}, {130, 600}, {1, 1}, {257, 300}}, shape,
                                DType::bf16, seed);
  check_gpu_attention(host, params);
}

// Over 2000 score rows of a varlen batch: rows of zero (kept whole), one and two key tiles, grid
// gaps (sequences shorter than the longest), chunked sequences, and the selection's warps leaving
// a row without a full barrier (select_row); the layouts must match the CPU's.
TEST(Cuda, ScoreRowsOfAVarlenBatch) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  Params params;
  params.alpha = 0.1f;
  Shape shape;
  shape.heads_q = 16;
  shape.heads_kv = 4;
  shape.head_dim = 128;
  HostBatch host = varlen_batch({{9000, 9000},
                                 {130, 130},
                                 {1, 1},
                                 {3000, 5000},
                                 {700, 700},
                                 {0, 0},
                                 {2900, 2900},
                                 {64, 8300}},
                                shape, DType::bf16, seed);
  DeviceBatch device(host);
  check_layout_matches_cpu(host, device, params);
}

TEST(Cuda, AlphaZeroAndDenseMatchReference) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  Params params;
  params.alpha = 0.0f;
  HostBatch host = padded_batch(Shape{1, 300, 520, 4, 1, 64}, DType::fp16, seed);
  check_gpu_attention(host, params);
  DeviceBatch device(host);
  dense_attention(device.args(), params);
  synchronize(Device::cuda(0));
  device.download_out();
  const auto ref = reference::attention(make_problem(host.args(), params, Needs::attention), {});
  EXPECT_LE(relative_error(host.out, host.dtype, ref.out), tolerance(host.dtype));
}

TEST(Cuda, ScoreAndSelectStagesMatchCpu) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  Params params;
  params.alpha = 0.15f;
  HostBatch host = padded_batch(Shape{1, 1000, 1000, 2, 1, 128}, DType::bf16, seed);
  DeviceBatch device(host);
  AttentionArgs cpu_args = host.args(), gpu_args = device.args();
  const StageShapes shapes = stage_shapes(cpu_args, params);
  const int64_t pooled_count = shapes.pooled_key_slots * 1 * 128,
                score_count = shapes.max_rows * shapes.max_key_blocks;
  std::vector<float> cpu_pooled(static_cast<size_t>(pooled_count)),
      cpu_scores(static_cast<size_t>(score_count)), gpu_pooled(cpu_pooled.size()),
      gpu_scores(cpu_scores.size());
  auto pooled_view = [&](void* data, Device d) {
    return TensorView::contiguous(data, DType::fp32, d, {shapes.pooled_key_slots, 1, 128});
  };
  auto scores_view = [&](void* data, Device d) {
    return TensorView::contiguous(data, DType::fp32, d, {shapes.max_rows, shapes.max_key_blocks});
  };
  pool_keys(cpu_args, params, pooled_view(cpu_pooled.data(), Device::cpu()));
  block_scores(cpu_args, params, pooled_view(cpu_pooled.data(), Device::cpu()),
               scores_view(cpu_scores.data(), Device::cpu()));
  Buffer pooled = Buffer::allocate(Device::cuda(0), cpu_pooled.size() * 4),
         scores = Buffer::allocate(Device::cuda(0), cpu_scores.size() * 4);
  pool_keys(gpu_args, params, pooled_view(pooled.data(), Device::cuda(0)));
  block_scores(gpu_args, params, pooled_view(pooled.data(), Device::cuda(0)),
               scores_view(scores.data(), Device::cuda(0)));
  copy_bytes(gpu_pooled.data(), Device::cpu(), pooled.data(), Device::cuda(0),
             gpu_pooled.size() * 4);
  copy_bytes(gpu_scores.data(), Device::cpu(), scores.data(), Device::cuda(0),
             gpu_scores.size() * 4);
  for (size_t n = 0; n < cpu_pooled.size(); ++n)
    ASSERT_NEAR(gpu_pooled[n], cpu_pooled[n], 1e-5 * (1 + std::abs(cpu_pooled[n])));
  for (size_t n = 0; n < cpu_scores.size(); ++n)
    ASSERT_NEAR(gpu_scores[n], cpu_scores[n], 1e-3 * (1 + cpu_scores[n])) << n;
  // Selecting from the same (CPU) score matrix must give the same layout on both backends.
  copy_bytes(scores.data(), Device::cuda(0), cpu_scores.data(), Device::cpu(),
             cpu_scores.size() * 4);
  LayoutStorage cpu_layout = allocate_layout(cpu_args, params),
                gpu_layout = allocate_layout(gpu_args, params);
  select_blocks(cpu_args, params, scores_view(cpu_scores.data(), Device::cpu()), cpu_layout.view);
  select_blocks(gpu_args, params, scores_view(scores.data(), Device::cuda(0)), gpu_layout.view);
  EXPECT_EQ(device_rows(gpu_layout.view), rows_of(cpu_layout.view));
}

TEST(Cuda, GraphCaptureWithCallerWorkspace) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  Params params;
  HostBatch host = padded_batch(Shape{2, 1024, 1024, 4, 2, 128}, DType::bf16, seed);
  DeviceBatch device(host);
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  AttentionArgs args = device.args();
  args.stream = stream;
  const size_t bytes = flash_prefill_workspace_size(args, params);
  Buffer workspace = Buffer::allocate(Device::cuda(0), bytes);
  flash_prefill(args, params, Workspace{workspace.data(), bytes});  // eager result
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  std::vector<uint16_t> eager(host.out.size());
  copy_bytes(eager.data(), Device::cpu(), device.out.data(), Device::cuda(0), eager.size() * 2);
  std::vector<uint16_t> replayed;
  ASSERT_NO_FATAL_FAILURE(capture_and_replay(
      args, params, Workspace{workspace.data(), bytes}, eager.size(), [] {}, replayed));
  EXPECT_EQ(replayed, eager);
  cudaStreamDestroy(stream);
}

// The structured input of BENCHMARK.md (strong sinks): most blocks are hopeless, so the fused score
// kernel skips their exponentials. The layout must still equal the CPU's (which computes every S),
// and equal the GPU's own score-matrix path (block_scores + select_blocks, which never skips);
// min_budget > 0 turns skipping off and must agree too.
// BENCHMARK.md's structured input (bf16, padded, L_q == L_kv) as a HostBatch with poisoned outputs.
HostBatch structured_batch(const SyntheticShape& shape, uint64_t seed) {
  const SyntheticInput input = make_structured_input(shape, seed);
  HostBatch host;
  host.shape = Shape{shape.batch,   shape.seq_len,  shape.seq_len,
                     shape.heads_q, shape.heads_kv, shape.head_dim};
  host.q = input.q, host.k = input.k, host.v = input.v;
  host.out.assign(host.q.size(), to_half(NAN, DType::bf16));
  host.lse.assign(size_t(shape.batch * shape.seq_len * shape.heads_q), NAN);
  return host;
}

TEST(Cuda, SkippedExponentialsKeepTheLayout) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  HostBatch host = structured_batch(SyntheticShape{1, 6000, 8, 2, 128}, seed);
  DeviceBatch device(host);
  for (int min_budget : {0, 3}) {
    SCOPED_TRACE("min_budget=" + std::to_string(min_budget));
    Params params;
    params.min_budget = min_budget;
    const auto fused_rows = check_layout_matches_cpu(host, device, params);
    AttentionArgs args = device.args();
    const StageShapes shapes = stage_shapes(args, params);
    Buffer pooled =
        Buffer::allocate(Device::cuda(0), size_t(shapes.pooled_key_slots * 2 * 128) * 4);
    Buffer scores =
        Buffer::allocate(Device::cuda(0), size_t(shapes.max_rows * shapes.max_key_blocks) * 4);
    const TensorView pooled_view = TensorView::contiguous(
        pooled.data(), DType::fp32, Device::cuda(0), {shapes.pooled_key_slots, 2, 128});
    const TensorView scores_view = TensorView::contiguous(
        scores.data(), DType::fp32, Device::cuda(0), {shapes.max_rows, shapes.max_key_blocks});
    pool_keys(args, params, pooled_view);
    block_scores(args, params, pooled_view, scores_view);
    LayoutStorage staged = allocate_layout(args, params);
    select_blocks(args, params, scores_view, staged.view);
    const auto staged_rows = device_rows(staged.view);
    int64_t kept = 0, differing = 0;
    for (size_t r = 0; r < fused_rows.size(); ++r) {
      kept += int64_t(fused_rows[r].size());
      differing += fused_rows[r] != staged_rows[r];
    }
    // Rounding of the threshold may flip a block between the two GPU paths (S is computed in two
    // ways); anything more is a wrong skip.
    EXPECT_LE(differing, int64_t(fused_rows.size()) / 200)
        << differing << " of " << fused_rows.size() << " rows differ";
    const int64_t causal = 8 * 47 * 48 / 2;
    EXPECT_LT(kept, causal / 2)
        << "the structured input should be sparse: the test would not exercise skipping";
  }
}

// Rows of one to five key tiles (up to 282 key blocks): the score kernel's tile order (diagonal,
// sinks, then descending), its tiles in pairs on two accumulators with an odd last tile, and its
// stage ring wrapping within a row, against the CPU backend.
// Structured input (most exponentials skipped) with and without min_budget, then random chunked
// fp16 input (few skipped).
TEST(Cuda, ScoreRowsOfManyTiles) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  HostBatch host = structured_batch(SyntheticShape{1, 36000, 4, 2, 64}, seed);
  DeviceBatch device(host);
  for (int min_budget : {0, 2}) {
    SCOPED_TRACE("structured, min_budget=" + std::to_string(min_budget));
    Params params;
    params.min_budget = min_budget;
    check_layout_matches_cpu(host, device, params);
  }
  SCOPED_TRACE("random, chunked");
  HostBatch random =
      padded_batch(Shape{2, 9000, 30000, 4, 2, 64}, DType::fp16, seed + 1);  // rows of 3-4 tiles
  DeviceBatch random_device(random);
  Params params;
  params.alpha = 0.3f;
  check_layout_matches_cpu(random, random_device, params);
}

// Head dim 256 (the sm_80 kernels, also on Hopper): partial blocks, GQA, chunked, both dtypes.
TEST(Cuda, HeadDim256MatchesReference) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  Params params;
  params.alpha = 0.1f;
  for (const DType dtype : {DType::bf16, DType::fp16}) {
    SCOPED_TRACE(dtype_name(dtype));
    HostBatch host = padded_batch(Shape{2, 500, 700, 4, 2, 256}, dtype, seed + uint64_t(dtype));
    check_gpu_attention(host, params);
  }
}

// A caller's layout with each row's blocks in descending order: the diagonal block comes first, and
// the kernel must still mask it (it finds the diagonal by its index, not its position).
TEST(Cuda, UnsortedCallerLayoutIsMasked) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  for (const char* kernels : {"default", "ampere"}) {
    SCOPED_TRACE(kernels);
    ScopedKernelChoice choice(kernels);
    Params params;
    params.alpha = 0.0f;
    HostBatch host = padded_batch(Shape{1, 700, 700, 4, 2, 128}, DType::bf16, seed);
    DeviceBatch device(host);
    AttentionArgs args = device.args();
    LayoutStorage layout = allocate_layout(args, params);
    discover_layout(args, params, layout.view);
    auto rows = device_rows(layout.view);
    std::vector<int64_t> row_ptr{0};
    std::vector<int32_t> col_idx;
    for (auto& row : rows) {
      std::reverse(row.begin(), row.end());
      col_idx.insert(col_idx.end(), row.begin(), row.end());
      row_ptr.push_back(int64_t(col_idx.size()));
    }
    copy_bytes(layout.view.row_ptr.data, Device::cuda(0), row_ptr.data(), Device::cpu(),
               row_ptr.size() * 8);
    copy_bytes(layout.view.col_idx.data, Device::cuda(0), col_idx.data(), Device::cpu(),
               col_idx.size() * 4);
    block_sparse_attention(args, params, layout.view);
    synchronize(Device::cuda(0));
    device.download_out();
    const auto ref = reference::attention(make_problem(host.args(), params, Needs::attention), {});
    EXPECT_LE(relative_error(host.out, host.dtype, ref.out), tolerance(host.dtype));
  }
}

// Robust discovery (docs/ROBUST.md): both score kernels' core sums and far rows, the
// representatives, their best keys and the rescue, against the CPU backend and the fp64 reference
// of the rule (check_layout_matches_cpu checks with the rule of params.discovery). Random shapes:
// partial blocks, GQA, chunked, min_budget, both dtypes and head dims; the sm_90a score kernel by
// default on Hopper (block 128), the sm_80 one forced.
TEST(Cuda, RobustRandomShapesMatchCpuAndReference) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  check_random_shapes(seed, 12, Discovery::robust);
}

TEST(Cuda, RobustRandomShapesMatchCpuAndReferenceAmpereKernel) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  ScopedKernelChoice choice("ampere");
  check_random_shapes(seed, 6, Discovery::robust);
}

// Varlen (an empty sequence, chunked sequences, partial last blocks), and head dim 256 (the sm_80
// score kernel; the best-key kernel's largest tiles), at block 64 and 128.
TEST(Cuda, RobustVarlenAndHeadDim256) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  Params params;
  params.discovery = Discovery::robust;
  params.alpha = 0.2f;
  Shape shape;
  shape.heads_q = 4;
  shape.heads_kv = 2;
  shape.head_dim = 128;
  HostBatch varlen = varlen_batch({{700, 700}, {0, 0}, {5, 5}, {130, 600}, {1, 1}, {257, 300}},
                                  shape, DType::bf16, seed);
  check_gpu_attention(varlen, params);
  SCOPED_TRACE("planted spans, padded, chunked");
  HostBatch planted = padded_batch(Shape{2, 900, 1500, 8, 2, 128}, DType::bf16, seed + 1);
  plant_spans(planted, seed + 2);
  check_gpu_attention(planted, params);
  for (const int block : {64, 128}) {
    SCOPED_TRACE("D=256, block " + std::to_string(block));
    params.block_size = block;
    HostBatch host = padded_batch(Shape{2, 500, 700, 4, 2, 256}, DType::fp16, seed + block);
    check_gpu_attention(host, params);
  }
}

// Rows of up to 282 key blocks on the structured input, where most score tiles skip their
// exponentials (the best-key kernel, mma.sync at head dim 64, streams up to nine tiles of 32 query
// blocks' representatives past a key block, its double buffer wrapping), with and without
// min_budget; then random chunked input. Against the CPU backend.
TEST(Cuda, RobustScoreRowsOfManyTiles) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  HostBatch host = structured_batch(SyntheticShape{1, 36000, 4, 2, 64}, seed);
  DeviceBatch device(host);
  Params params;
  params.discovery = Discovery::robust;
  for (int min_budget : {0, 2}) {
    SCOPED_TRACE("structured, min_budget=" + std::to_string(min_budget));
    params.min_budget = min_budget;
    check_layout_matches_cpu(host, device, params);
  }
  SCOPED_TRACE("planted spans, chunked");
  HostBatch random = padded_batch(Shape{2, 9000, 30000, 4, 2, 64}, DType::fp16, seed + 1);
  plant_spans(random, seed + 2);
  DeviceBatch random_device(random);
  params.min_budget = 0;
  params.alpha = 0.3f;
  check_layout_matches_cpu(random, random_device, params);
}

// The sm_90a best-key kernel (head dim 128, block 128, e4m3 wgmma) over key blocks that meet up to
// five tiles of 32 query blocks' representatives (a chunk of 20000 queries after 10000 keys): tiles
// in pairs, an odd last tile, the stage ring wrapping and refilled; both dtypes, a partial last key
// block. Against the CPU backend (on other GPUs the mma.sync kernel runs the same rule).
TEST(Cuda, RobustE4m3BestKeysOfManyTiles) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  Params params;
  params.discovery = Discovery::robust;
  params.alpha = 0.3f;
  for (const DType dtype : {DType::bf16, DType::fp16}) {
    SCOPED_TRACE(dtype_name(dtype));
    HostBatch host = padded_batch(Shape{1, 20000, 30000, 4, 2, 128}, dtype, seed);
    plant_spans(host, seed + 1);
    DeviceBatch device(host);
    check_layout_matches_cpu(host, device, params);
  }
}

// Rows of more than 1024 causal blocks: the rescue kernel takes a row's bitmask 32 words at a time
// and adds each chunk's kept blocks to the count.
TEST(Cuda, RobustRowsOfMoreThan1024Blocks) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  HostBatch host = padded_batch(Shape{1, 3000, 70000, 4, 2, 64}, DType::bf16, seed);
  plant_spans(host, seed + 1);
  DeviceBatch device(host);
  Params params;
  params.discovery = Discovery::robust;
  params.block_size = 64;  // 1094 key blocks
  params.alpha = 0.3f;
  check_layout_matches_cpu(host, device, params);
}

// The exact rule's layout does not depend on the robust code paths: the same call with the default
// Params and with discovery = exact spelled out gives the same layout; the robust one contains it
// and, on planted spans, adds to it.
TEST(Cuda, ExactModeIsTheDefaultAndRobustDiffers) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  HostBatch host = padded_batch(Shape{1, 8000, 8000, 4, 2, 128}, DType::bf16, seed);
  plant_spans(host, seed + 1);
  DeviceBatch device(host);
  Params exact, robust;
  exact.discovery = Discovery::exact;
  robust.discovery = Discovery::robust;
  const auto layout_of = [&](const Params& params) {
    LayoutStorage layout = allocate_layout(device.args(), params);
    discover_layout(device.args(), params, layout.view);
    return device_rows(layout.view);
  };
  const auto by_default = layout_of(Params{});
  EXPECT_EQ(by_default, layout_of(exact));
  const auto robust_rows = layout_of(robust);
  EXPECT_NE(by_default, robust_rows);
  for (size_t r = 0; r < robust_rows.size(); ++r)  // the robust rule adds to the exact layout
    EXPECT_TRUE(std::includes(robust_rows[r].begin(), robust_rows[r].end(), by_default[r].begin(),
                              by_default[r].end()))
        << "row " << r;
}

TEST(Cuda, UnsupportedConfigurationsAreNamed) {
  FP_REQUIRE_GPU();
  HostBatch small = padded_batch(Shape{1, 256, 256, 2, 1, 64}, DType::bf16, 1);
  DeviceBatch small_device(small);
  Params params;
  params.block_size = 32;
  try {
    flash_prefill(small_device.args(), params);
    ADD_FAILURE() << "block_size 32 should be refused by the CUDA backend";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("block_size"), std::string::npos) << e.what();
  }
}

// Params::head_alpha on the GPU (device memory): one call with a per-head alpha gives, head by
// head, the layout and output bits of the scalar call with that head's alpha; the sm_90 kernel's
// skipped exponentials use the row's alpha. `run_args` makes the call's device args.
template <typename Args, typename Download>
void check_head_alpha_on_gpu(const detail::Problem& host_problem, const Params& params,
                             const std::vector<float>& alphas, Args&& run_args, Download&& download,
                             const std::vector<uint16_t>& host_out) {
  Buffer device_alphas = upload(alphas);
  const TensorView head_alpha = TensorView::contiguous(device_alphas.data(), DType::fp32,
                                                       Device::cuda(0), {int64_t(alphas.size())});
  expect_head_alpha_equals_scalar_calls(host_problem, params, alphas, head_alpha,
                                        [&](const Params& call) {
                                          AttentionArgs args = run_args();
                                          LayoutStorage layout = allocate_layout(args, call);
                                          discover_layout(args, call, layout.view);
                                          flash_prefill(args, call);
                                          synchronize(Device::cuda(0));
                                          download();
                                          return HeadAlphaCall{device_rows(layout.view), host_out};
                                        });
}

std::vector<float> gpu_test_alphas(int64_t heads, std::mt19937_64& rng) {
  std::vector<float> alphas(static_cast<size_t>(heads));
  for (float& a : alphas) a = std::uniform_real_distribution<float>(0.02f, 0.5f)(rng);
  alphas[0] = 0.0f;  // dense rows beside sparse ones
  if (heads > 2) alphas[1] = 1.0f;
  return alphas;
}

void check_head_alpha_padded_and_varlen(uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (Discovery discovery : {Discovery::exact, Discovery::robust})
    for (int block : {64, 128}) {
      Params params;
      params.block_size = block;
      params.discovery = discovery;
      SCOPED_TRACE("block_size=" + std::to_string(block) +
                   (discovery == Discovery::robust ? " robust" : " exact"));
      HostBatch padded = padded_batch(Shape{2, 700, 1300, 6, 2, 128}, DType::bf16, rng());
      DeviceBatch device(padded);
      check_head_alpha_on_gpu(
          make_problem(padded.args(), params, Needs::attention), params, gpu_test_alphas(6, rng),
          [&] { return device.args(); }, [&] { device.download_out(); }, padded.out);
      if (::testing::Test::HasFatalFailure()) return;
      Shape shape;
      shape.heads_q = 4, shape.heads_kv = 1, shape.head_dim = 64;
      HostBatch varlen =
          varlen_batch({{300, 1000}, {0, 0}, {1, 517}, {250, 250}}, shape, DType::fp16, rng());
      DeviceBatch device_varlen(varlen);
      check_head_alpha_on_gpu(
          make_problem(varlen.args(), params, Needs::attention), params, gpu_test_alphas(4, rng),
          [&] { return device_varlen.args(); }, [&] { device_varlen.download_out(); }, varlen.out);
      if (::testing::Test::HasFatalFailure()) return;
    }
}

TEST(Cuda, HeadAlphaEqualsOneCallPerHead) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  check_head_alpha_padded_and_varlen(seed);
}

TEST(Cuda, HeadAlphaEqualsOneCallPerHeadAmpereKernel) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  ScopedKernelChoice choice("ampere");
  check_head_alpha_padded_and_varlen(seed);
}

// Robust rows of 1021 to 1026 causal blocks (block 64, 1028 key blocks, the last two query blocks
// kept whole): the rescue kernel stages rows of up to 32 bitmask words (1024 blocks) in shared
// memory and takes longer rows 32 words at a time, so rows of exactly 1024 and 1025 blocks sit on
// either side. A group of 12 query heads per kv head: the combine and rescue kernels take a group's
// heads 8 at a time. Against the CPU backend, then per-head alphas (staged per batch of heads)
// against one call per head.
TEST(Cuda, RobustGroupOfTwelveAndRowsAroundOneWarpOfWords) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  HostBatch host = padded_batch(Shape{1, 453, 65733, 12, 1, 64}, DType::bf16, seed);
  plant_spans(host, seed + 1);
  DeviceBatch device(host);
  Params params;
  params.discovery = Discovery::robust;
  params.block_size = 64;
  params.alpha = 0.3f;
  check_layout_matches_cpu(host, device, params);
  if (::testing::Test::HasFatalFailure()) return;
  SCOPED_TRACE("per-head alpha");
  std::mt19937_64 rng(seed + 2);
  check_head_alpha_on_gpu(
      make_problem(host.args(), params, Needs::attention), params, gpu_test_alphas(12, rng),
      [&] { return device.args(); }, [&] { device.download_out(); }, host.out);
}

TEST(Cuda, HeadAlphaPagedAndSkippedExponentials) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  std::mt19937_64 rng(seed);
  Params params;  // block 128: the sm_90 kernels on Hopper
  Shape shape;
  shape.heads_q = 4, shape.heads_kv = 2, shape.head_dim = 128;
  HostBatch host = varlen_batch({{300, 1000}, {37, 129}, {700, 2100}}, shape, DType::bf16, seed);
  PagedBatch paged = make_paged(host, 64, PoolLayout::combined, seed);
  DevicePagedBatch device(paged);
  check_head_alpha_on_gpu(
      make_problem(paged.args(), params, Needs::attention), params, gpu_test_alphas(4, rng),
      [&] { return device.args(); }, [&] { device.download_out(); }, paged.out);
  if (HasFatalFailure()) return;
  // The structured input: most far blocks are hopeless, so the fused kernel skips exponentials by
  // the row's alpha; every head's layout must still be its scalar call's.
  HostBatch structured = structured_batch(SyntheticShape{1, 4096, 8, 2, 128}, seed);
  DeviceBatch structured_device(structured);
  check_head_alpha_on_gpu(
      make_problem(structured.args(), params, Needs::attention), params,
      {0.3f, 0.0f, 0.05f, 0.12f, 0.12f, 1.0f, 0.5f, 0.01f},
      [&] { return structured_device.args(); }, [&] { structured_device.download_out(); },
      structured.out);
}

// Captured in a CUDA graph, the call reads head_alpha's device memory at replay: new values
// written there after capture give the eager result of those values.
TEST(Cuda, HeadAlphaGraphReplayReadsCurrentValues) {
  FP_REQUIRE_GPU();
  FP_SEEDED(seed);
  HostBatch host = padded_batch(Shape{1, 2048, 2048, 4, 2, 128}, DType::bf16, seed);
  DeviceBatch device(host);
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  AttentionArgs args = device.args();
  args.stream = stream;
  // Random inputs score blocks nearly alike, so only alpha 0 (every causal block) against alpha 1
  // (the row's best blocks and the forced ones) is sure to choose different layouts.
  const std::vector<float> first = {0.0f, 1.0f, 0.0f, 1.0f}, second = {1.0f, 0.0f, 1.0f, 0.0f};
  Buffer alphas = upload(first);
  Params params;
  params.head_alpha = TensorView::contiguous(alphas.data(), DType::fp32, Device::cuda(0), {4});
  const size_t bytes = flash_prefill_workspace_size(args, params);
  Buffer workspace = Buffer::allocate(Device::cuda(0), bytes);
  const auto eager_with = [&](const std::vector<float>& values) {
    copy_bytes(alphas.data(), Device::cuda(0), values.data(), Device::cpu(), values.size() * 4);
    flash_prefill(args, params, Workspace{workspace.data(), bytes});
    EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    std::vector<uint16_t> out(host.out.size());
    copy_bytes(out.data(), Device::cpu(), device.out.data(), Device::cuda(0), out.size() * 2);
    return out;
  };
  const std::vector<uint16_t> eager_second = eager_with(second);
  const std::vector<uint16_t> eager_first = eager_with(first);
  ASSERT_NE(eager_first, eager_second) << "the two alpha vectors should choose different layouts";
  // Captured with the first values in memory, replayed after the second were written there.
  std::vector<uint16_t> replayed;
  ASSERT_NO_FATAL_FAILURE(capture_and_replay(
      args, params, Workspace{workspace.data(), bytes}, host.out.size(),
      [&] {
        copy_bytes(alphas.data(), Device::cuda(0), second.data(), Device::cpu(), second.size() * 4);
      },
      replayed));
  EXPECT_EQ(replayed, eager_second);
  cudaStreamDestroy(stream);
}

// Host memory with GPU tensors is refused; values are checked with check_inputs.
TEST(Cuda, HeadAlphaErrorsAreNamed) {
  FP_REQUIRE_GPU();
  HostBatch host = padded_batch(Shape{1, 256, 256, 2, 1, 64}, DType::bf16, 3);
  DeviceBatch device(host);
  std::vector<float> values = {0.1f, 1.5f};
  Params params;
  params.head_alpha = TensorView::contiguous(values.data(), DType::fp32, Device::cpu(), {2});
  expect_error([&] { flash_prefill(device.args(), params); },
               {"head_alpha", "is on cpu", "cuda:0"});
  Buffer on_gpu = upload(values);
  params.head_alpha = TensorView::contiguous(on_gpu.data(), DType::fp32, Device::cuda(0), {2});
  params.check_inputs = true;
  expect_error([&] { flash_prefill(device.args(), params); },
               {"head_alpha[1]", "expected a value in [0, 1]"});
}

}  // namespace
}  // namespace flashprefill::testing
