// flashprefill: command-line tool. `bench` times FlashPrefill against our dense attention on the
// structured synthetic input of BENCHMARK.md; `inspect` draws the kept blocks as a PNG.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <numeric>
#include <random>
#include <sstream>

#ifdef FLASHPREFILL_WITH_CUDA
#include <cuda_runtime.h>
#endif

#include "common/half.hpp"
#include "common/problem.hpp"
#include "common/row_geometry.hpp"
#include "common/validate.hpp"
#include "flashprefill/flashprefill.hpp"
#include "flashprefill/synthetic.hpp"
#include "options.hpp"
#include "png.hpp"

namespace flashprefill::tools {
namespace {

constexpr const char* kVersion = "flashprefill 0.1.0";

const std::set<std::string> kShapeOptions = {
    "shape",         "seq-len",          "batch",      "heads",    "kv-heads", "head-dim",
    "alpha",         "block-size",       "dtype",      "backend",  "seed",     "sink-blocks",
    "window-blocks", "last-full-blocks", "min-budget", "discovery"};

void print_shape_help(std::ostream& os, const char* default_len) {
  os << "  --shape NAME          llama3-8b (32 q heads, 8 kv, D 128; default), qwen2.5-7b (28, 4, "
        "128), small (9, 3, 64)\n"
        "  --seq-len N           tokens (accepts 4096, 4K, 32k, 1M; default "
     << default_len
     << ")\n"
        "  --batch B             sequences (default 1)\n"
        "  --heads H, --kv-heads H, --head-dim D   override the preset\n"
        "  --alpha A             threshold ratio in [0, 1] (default 0.12)\n"
        "  --block-size B        power of two >= 16 (default 128)\n"
        "  --sink-blocks N, --window-blocks N, --last-full-blocks N, --min-budget N   (defaults 2, "
        "4, 2, 0)\n"
        "  --discovery exact|robust   block scoring rule: ALGORITHM.md's (default) or "
        "docs/ROBUST.md's\n"
        "  --dtype bf16|fp16     (default bf16)\n"
        "  --backend cpu|cuda|auto   (default auto: cuda when a GPU is present)\n"
        "  --seed S              input seed (default 0)\n";
}

const char* discovery_name(Discovery discovery) {
  return discovery == Discovery::robust ? "robust" : "exact";
}

struct Setup {
  SyntheticShape shape;
  Params params;
  DType dtype = DType::bf16;
  Device device;
  uint64_t seed = 0;
};

Setup parse_setup(const Options& options, int64_t default_len) {
  Setup setup;
  const std::string preset = options.text("shape", "llama3-8b");
  if (preset == "llama3-8b")
    setup.shape = {1, default_len, 32, 8, 128};
  else if (preset == "qwen2.5-7b")
    setup.shape = {1, default_len, 28, 4, 128};
  else if (preset == "small")
    setup.shape = {1, default_len, 9, 3, 64};
  else
    throw UsageError("--shape '" + preset +
                     "' is unknown; expected llama3-8b, qwen2.5-7b or small");
  setup.shape.seq_len = options.integer("seq-len", default_len, 1);
  setup.shape.batch = options.integer("batch", 1, 1);
  setup.shape.heads_q = options.integer("heads", setup.shape.heads_q, 1);
  setup.shape.heads_kv = options.integer("kv-heads", setup.shape.heads_kv, 1);
  setup.shape.head_dim = options.integer("head-dim", setup.shape.head_dim, 1);
  setup.params.alpha = float(options.real("alpha", setup.params.alpha));
  setup.params.block_size = int(options.integer("block-size", setup.params.block_size, 1));
  setup.params.sink_blocks = int(options.integer("sink-blocks", setup.params.sink_blocks, 0));
  setup.params.window_blocks = int(options.integer("window-blocks", setup.params.window_blocks, 0));
  setup.params.last_full_blocks =
      int(options.integer("last-full-blocks", setup.params.last_full_blocks, 0));
  setup.params.min_budget = int(options.integer("min-budget", setup.params.min_budget, 0));
  const std::string discovery = options.text("discovery", "exact");
  if (discovery == "exact")
    setup.params.discovery = Discovery::exact;
  else if (discovery == "robust")
    setup.params.discovery = Discovery::robust;
  else
    throw UsageError("--discovery '" + discovery + "' is unknown; expected exact or robust");
  setup.params.validate();
  const std::string dtype = options.text("dtype", "bf16");
  if (dtype == "bf16")
    setup.dtype = DType::bf16;
  else if (dtype == "fp16")
    setup.dtype = DType::fp16;
  else
    throw UsageError("--dtype '" + dtype + "' is unknown; expected bf16 or fp16");
  const std::string backend = options.text("backend", "auto");
  if (backend == "cpu")
    setup.device = Device::cpu();
  else if (backend == "cuda")
    setup.device = Device::cuda(0);
  else if (backend == "auto")
    setup.device = cuda_available() ? Device::cuda(0) : Device::cpu();
  else
    throw UsageError("--backend '" + backend + "' is unknown; expected cpu, cuda or auto");
  if (setup.device.type == DeviceType::cuda && !cuda_available())
    throw UsageError(
        "--backend cuda: no CUDA device is available (or the library was built without CUDA)");
  setup.seed = uint64_t(options.integer("seed", 0, 0));
  return setup;
}

// The synthetic input on the chosen device, with an output buffer.
struct Inputs {
  SyntheticInput host;
  Buffer q, k, v, out;
  AttentionArgs args;
};

Inputs make_inputs(const Setup& setup) {
  Inputs in;
  in.host = make_structured_input(setup.shape, setup.seed);
  if (setup.dtype == DType::fp16)
    for (auto* tensor : {&in.host.q, &in.host.k, &in.host.v})
      for (uint16_t& bits : *tensor) bits = detail::float_to_fp16(detail::bf16_to_float(bits));
  const auto& s = setup.shape;
  auto upload = [&](const std::vector<uint16_t>& host) {
    Buffer buffer = Buffer::allocate(setup.device, host.size() * 2);
    copy_bytes(buffer.data(), setup.device, host.data(), Device::cpu(), host.size() * 2);
    return buffer;
  };
  in.q = upload(in.host.q);
  in.k = upload(in.host.k);
  in.v = upload(in.host.v);
  in.out = Buffer::allocate(setup.device, in.host.q.size() * 2);
  in.args.q = TensorView::contiguous(in.q.data(), setup.dtype, setup.device,
                                     {s.batch, s.seq_len, s.heads_q, s.head_dim});
  in.args.k = TensorView::contiguous(in.k.data(), setup.dtype, setup.device,
                                     {s.batch, s.seq_len, s.heads_kv, s.head_dim});
  in.args.v = TensorView::contiguous(in.v.data(), setup.dtype, setup.device,
                                     {s.batch, s.seq_len, s.heads_kv, s.head_dim});
  in.args.out = TensorView::contiguous(in.out.data(), setup.dtype, setup.device,
                                       {s.batch, s.seq_len, s.heads_q, s.head_dim});
  return in;
}

struct HostLayout {
  std::vector<int64_t> row_ptr;
  std::vector<int32_t> col_idx;
};

HostLayout download(const BlockSparseLayout& layout, Device device) {
  HostLayout host;
  int64_t rows = 0;
  copy_bytes(&rows, Device::cpu(), layout.seq_row_offset.ptr<int64_t>() + layout.num_seqs, device,
             8);
  host.row_ptr.resize(static_cast<size_t>(rows + 1));
  copy_bytes(host.row_ptr.data(), Device::cpu(), layout.row_ptr.data, device,
             host.row_ptr.size() * 8);
  host.col_idx.resize(static_cast<size_t>(host.row_ptr.back()));
  copy_bytes(host.col_idx.data(), Device::cpu(), layout.col_idx.data, device,
             host.col_idx.size() * 4);
  return host;
}

class Progress {
 public:
  Progress(int steps, bool enabled) : steps_(steps), enabled_(enabled) {}
  void step(const std::string& what) {
    if (!enabled_) return;
    ++done_;
    const int width = 24, filled = width * (done_ - 1) / steps_;
    std::fprintf(stderr, "\r[%s%s] %d/%d %-40s", std::string(size_t(filled), '#').c_str(),
                 std::string(size_t(width - filled), '.').c_str(), done_, steps_, what.c_str());
    std::fflush(stderr);
  }
  ~Progress() {
    if (enabled_) std::fprintf(stderr, "\r%-80s\r", "");
  }

 private:
  int steps_, done_ = 0;
  bool enabled_;
};

// Median time (ms) of `repeats` runs after two warm-ups: on a GPU, CUDA events recorded before and
// after each call (BENCHMARK.md; host work inside the call that leaves the GPU idle is counted);
// on the CPU, the wall clock around each call and a synchronisation.
double time_ms(const std::function<void()>& run, int repeats, Device device) {
  run();
  run();
  synchronize(device);
  std::vector<double> times;
#ifdef FLASHPREFILL_WITH_CUDA
  if (device.type == DeviceType::cuda) {
    cudaEvent_t start, stop;
    if (cudaEventCreate(&start) != cudaSuccess || cudaEventCreate(&stop) != cudaSuccess)
      throw Error("cudaEventCreate failed");
    for (int r = 0; r < repeats; ++r) {
      cudaEventRecord(start);  // the library runs on the default stream here (args.stream is null)
      run();
      cudaEventRecord(stop);
      if (cudaEventSynchronize(stop) != cudaSuccess) throw Error("cudaEventSynchronize failed");
      float ms = 0.0f;
      cudaEventElapsedTime(&ms, start, stop);
      times.push_back(ms);
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
#endif
  if (times.empty()) {
    for (int r = 0; r < repeats; ++r) {
      const auto start = std::chrono::steady_clock::now();
      run();
      synchronize(device);
      times.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
              .count());
    }
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

double relative_error(const std::vector<uint16_t>& got, const std::vector<uint16_t>& want,
                      DType dtype) {
  auto value = [&](uint16_t bits) { return double(detail::half_bits_to_float(bits, dtype)); };
  double err = 0, norm = 0;
  for (size_t n = 0; n < want.size(); ++n) {
    const double d = value(got[n]) - value(want[n]);
    err += d * d;
    norm += value(want[n]) * value(want[n]);
  }
  return std::sqrt(err / std::max(norm, 1e-300));
}

// Attention recall: the share of each sampled row's dense softmax mass inside its kept blocks
// (sequence 0; computed in double on the host from the same 16-bit inputs).
double attention_recall(const Setup& setup, const Inputs& in, const HostLayout& layout,
                        int samples) {
  const auto& s = setup.shape;
  const int64_t B = setup.params.block_size, D = s.head_dim, group = s.heads_q / s.heads_kv;
  const int64_t nqb = num_query_blocks(s.seq_len, s.seq_len, B);
  const double scale = setup.params.scale > 0 ? setup.params.scale : 1.0 / std::sqrt(double(D));
  auto value = [&](uint16_t bits) { return double(detail::half_bits_to_float(bits, setup.dtype)); };
  std::mt19937_64 rng(setup.seed + 1);
  double total = 0;
  std::vector<double> logits;
  for (int n = 0; n < samples; ++n) {
    const int64_t h = std::uniform_int_distribution<int64_t>(0, s.heads_q - 1)(rng);
    const int64_t t = std::uniform_int_distribution<int64_t>(0, s.seq_len - 1)(rng);
    const int64_t row = h * nqb + t / B;
    std::vector<char> kept(static_cast<size_t>(t / B + 1), 0);
    for (int64_t e = layout.row_ptr[row]; e < layout.row_ptr[row + 1]; ++e)
      kept[layout.col_idx[e]] = 1;
    logits.assign(static_cast<size_t>(t + 1), 0.0);
    const uint16_t* q = &in.host.q[(t * s.heads_q + h) * D];
    for (int64_t key = 0; key <= t; ++key) {
      const uint16_t* k = &in.host.k[(key * s.heads_kv + h / group) * D];
      double dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += value(q[d]) * value(k[d]);
      logits[key] = scale * dot;
    }
    const double row_max = *std::max_element(logits.begin(), logits.end());
    double mass = 0, inside = 0;
    for (int64_t key = 0; key <= t; ++key) {
      const double p = std::exp(logits[key] - row_max);
      mass += p;
      if (kept[key / B]) inside += p;
    }
    total += inside / mass;
  }
  return total / samples;
}

std::vector<uint16_t> download_output(const Inputs& in, Device device) {
  std::vector<uint16_t> host(in.host.q.size());
  copy_bytes(host.data(), Device::cpu(), in.out.data(), device, host.size() * 2);
  return host;
}

// --page-size: the same inputs twice more, queries packed (varlen) in both: K/V contiguous
// ([B * L, H_kv, D] with cu_seqlens_kv) and K/V in page pools of page_size tokens, one
// [2, num_pages, page_size, H_kv, D] allocation as vLLM's cache, pages in a random order (seeded)
// or, with in_order, in sequence order (as a fresh cache hands them out), so the two calls differ
// only in how K and V are addressed.
struct PagedInputs {
  Buffer cu_q, cu_kv, pool, block_table, seq_lens;
  AttentionArgs contiguous, paged;
};

PagedInputs make_paged_inputs(const Setup& setup, const Inputs& in, int64_t page_size,
                              bool in_order) {
  const auto& s = setup.shape;
  const Device device = setup.device;
  const int64_t B = s.batch, L = s.seq_len, row = s.heads_kv * s.head_dim;
  const int64_t pages_per_seq = (L + page_size - 1) / page_size, num_pages = B * pages_per_seq;
  auto upload = [&](const auto& host) {
    const size_t bytes = host.size() * sizeof(host[0]);
    Buffer buffer = Buffer::allocate(device, std::max<size_t>(bytes, 4));
    copy_bytes(buffer.data(), device, host.data(), Device::cpu(), bytes);
    return buffer;
  };
  std::vector<int32_t> cu(static_cast<size_t>(B + 1)), lens(static_cast<size_t>(B), int32_t(L));
  for (int64_t b = 0; b <= B; ++b) cu[size_t(b)] = int32_t(b * L);
  std::vector<int32_t> order(static_cast<size_t>(num_pages));
  std::iota(order.begin(), order.end(), 0);
  if (!in_order) std::shuffle(order.begin(), order.end(), std::mt19937_64(setup.seed + 7));
  const int64_t page_elems = page_size * row;
  std::vector<uint16_t> pool(size_t(2 * num_pages * page_elems), 0);
  std::vector<int32_t> table(static_cast<size_t>(num_pages));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t page = 0; page < pages_per_seq; ++page) {
      const int32_t id = order[size_t(b * pages_per_seq + page)];
      table[size_t(b * pages_per_seq + page)] = id;
      const int64_t keys = std::min(page_size, L - page * page_size);
      const size_t from = size_t((b * L + page * page_size) * row), count = size_t(keys * row);
      std::copy_n(&in.host.k[from], count, &pool[size_t(id * page_elems)]);
      std::copy_n(&in.host.v[from], count, &pool[size_t((num_pages + id) * page_elems)]);
    }
  PagedInputs p;
  p.cu_q = upload(cu);
  p.cu_kv = upload(cu);
  p.pool = upload(pool);
  p.block_table = upload(table);
  p.seq_lens = upload(lens);
  const int64_t T = B * L;
  AttentionArgs a;
  a.q = TensorView::contiguous(in.q.data(), setup.dtype, device, {T, s.heads_q, s.head_dim});
  a.out = TensorView::contiguous(in.out.data(), setup.dtype, device, {T, s.heads_q, s.head_dim});
  a.varlen.cu_seqlens_q = TensorView::contiguous(p.cu_q.data(), DType::int32, device, {B + 1});
  a.varlen.max_seqlen_q = a.varlen.max_seqlen_kv = L;
  p.contiguous = a;
  p.contiguous.k =
      TensorView::contiguous(in.k.data(), setup.dtype, device, {T, s.heads_kv, s.head_dim});
  p.contiguous.v =
      TensorView::contiguous(in.v.data(), setup.dtype, device, {T, s.heads_kv, s.head_dim});
  p.contiguous.varlen.cu_seqlens_kv =
      TensorView::contiguous(p.cu_kv.data(), DType::int32, device, {B + 1});
  p.paged = a;
  auto* base = static_cast<uint16_t*>(p.pool.data());
  p.paged.k = TensorView::contiguous(base, setup.dtype, device,
                                     {num_pages, page_size, s.heads_kv, s.head_dim});
  p.paged.v = TensorView::contiguous(base + num_pages * page_elems, setup.dtype, device,
                                     {num_pages, page_size, s.heads_kv, s.head_dim});
  p.paged.paged.block_table =
      TensorView::contiguous(p.block_table.data(), DType::int32, device, {B, pages_per_seq});
  p.paged.paged.seq_lens_kv = TensorView::contiguous(p.seq_lens.data(), DType::int32, device, {B});
  return p;
}

struct PagedTimes {
  double discovery_ms = 0, attention_ms = 0, total_ms = 0;
};

PagedTimes time_stages(const AttentionArgs& args, const Setup& setup, int repeats) {
  LayoutStorage layout = allocate_layout(args, setup.params);
  PagedTimes t;
  t.discovery_ms =
      time_ms([&] { discover_layout(args, setup.params, layout.view); }, repeats, setup.device);
  t.attention_ms = time_ms([&] { block_sparse_attention(args, setup.params, layout.view); },
                           repeats, setup.device);
  t.total_ms = time_ms([&] { flash_prefill(args, setup.params); }, repeats, setup.device);
  return t;
}

int run_bench(int argc, char** argv) {
  std::set<std::string> valued = kShapeOptions;
  valued.insert({"repeats", "recall-samples", "page-size"});
  const Options options(argc, argv, 2, valued,
                        {"json", "no-dense", "progress", "pages-in-order", "help"});
  if (options.has("help")) {
    std::cout << "usage: flashprefill bench [options]\n\nTimes FlashPrefill (discovery + "
                 "block-sparse attention) against our dense\n"
                 "causal attention on the structured synthetic input of BENCHMARK.md.\n\n";
    print_shape_help(std::cout, "8K");
    std::cout
        << "  --repeats N           timed runs per measurement, median reported (default 20 "
           "on GPU, 1 on CPU)\n"
           "  --recall-samples N    rows sampled for attention recall (default 128)\n"
           "  --no-dense            skip the dense baseline (for very long CPU runs)\n"
           "  --page-size N         also time K/V in a paged cache of N-token pages (vLLM's\n"
           "                        layout, pages shuffled) against the same K/V contiguous,\n"
           "                        queries packed in both (0: not, the default)\n"
           "  --pages-in-order      with --page-size: pages in sequence order, not shuffled\n"
           "  --json                print one JSON object instead of the table\n"
           "  --progress            progress on stderr even when it is not a terminal\n";
    return 0;
  }
  const Setup setup = parse_setup(options, 8192);
  const bool on_gpu = setup.device.type == DeviceType::cuda;
  const int repeats = int(options.integer("repeats", on_gpu ? 20 : 1, 1));
  const bool dense = !options.has("no-dense");
  const int64_t page_size = options.integer("page-size", 0, 0);
  const bool pages_in_order = options.has("pages-in-order");
  Progress progress((dense ? 6 : 5) + (page_size ? 1 : 0), options.has("progress") || isatty(2));

  progress.step("generating the structured input");
  Inputs in = make_inputs(setup);
  LayoutStorage layout = allocate_layout(in.args, setup.params);

  double dense_ms = 0;
  std::vector<uint16_t> dense_out;
  if (dense) {
    progress.step("dense attention");
    dense_ms = time_ms([&] { dense_attention(in.args, setup.params); }, repeats, setup.device);
    dense_out = download_output(in, setup.device);
  }
  progress.step("discovery (steps 1-4)");
  const double discovery_ms =
      time_ms([&] { discover_layout(in.args, setup.params, layout.view); }, repeats, setup.device);
  progress.step("block-sparse attention (step 5)");
  const double attention_ms = time_ms(
      [&] { block_sparse_attention(in.args, setup.params, layout.view); }, repeats, setup.device);
  progress.step("flash_prefill (steps 1-5)");
  const double total_ms =
      time_ms([&] { flash_prefill(in.args, setup.params); }, repeats, setup.device);
  const std::vector<uint16_t> sparse_out = download_output(in, setup.device);
  progress.step("density, error and recall");
  const LayoutStats stats = layout_stats(in.args, setup.params, layout.view);
  const HostLayout host_layout = download(layout.view, setup.device);
  const double recall =
      attention_recall(setup, in, host_layout, int(options.integer("recall-samples", 128, 1)));
  const double error = dense ? relative_error(sparse_out, dense_out, setup.dtype) : NAN;

  PagedTimes varlen_times, paged_times;
  bool paged_identical = false;
  if (page_size) {
    progress.step("paged vs contiguous K/V (varlen)");
    const PagedInputs paged = make_paged_inputs(setup, in, page_size, pages_in_order);
    // Interleaved runs of the two, so that clock drift hits both alike.
    varlen_times = time_stages(paged.contiguous, setup, repeats);
    const std::vector<uint16_t> varlen_out = download_output(in, setup.device);
    paged_times = time_stages(paged.paged, setup, repeats);
    paged_identical = download_output(in, setup.device) == varlen_out;
  }
  auto paged_json = [&]() -> std::string {
    if (!page_size) return "";
    char text[512];
    std::snprintf(text, sizeof text,
                  ", \"page_size\": %ld, \"varlen_discovery_ms\": %.4f, \"varlen_attention_ms\": "
                  "%.4f, \"varlen_total_ms\": %.4f, \"paged_discovery_ms\": %.4f, "
                  "\"paged_attention_ms\": %.4f, \"paged_total_ms\": %.4f, "
                  "\"paged_over_contiguous\": %.4f, \"paged_output_identical\": %s, "
                  "\"pages_in_order\": %s",
                  long(page_size), varlen_times.discovery_ms, varlen_times.attention_ms,
                  varlen_times.total_ms, paged_times.discovery_ms, paged_times.attention_ms,
                  paged_times.total_ms, paged_times.total_ms / varlen_times.total_ms,
                  paged_identical ? "true" : "false", pages_in_order ? "true" : "false");
    return text;
  };

  const auto& s = setup.shape;
  const double causal_flops = 2.0 * double(s.seq_len) * double(s.seq_len) * double(s.head_dim) *
                              double(s.heads_q) * double(s.batch);
  auto tflops = [&](double ms) { return causal_flops / (ms * 1e-3) / 1e12; };
  const std::string device = device_name(setup.device);
  // Which CPU kernels ran (amx, avx512bf16, avx512, avx2, generic); none on a GPU.
  const std::string cpu_kernel = on_gpu ? "" : cpu_kernel_variant(setup.dtype);
  if (options.has("json")) {
    std::printf(
        "{\"device\": \"%s\", \"dtype\": \"%s\", \"batch\": %ld, \"seq_len\": %ld, \"heads_q\": "
        "%ld, \"heads_kv\": %ld, "
        "\"head_dim\": %ld, \"alpha\": %g, \"block_size\": %d, \"discovery\": \"%s\", "
        "\"repeats\": %d, \"dense_ms\": %s, "
        "\"discovery_ms\": %.4f, \"attention_ms\": %.4f, \"total_ms\": %.4f, \"speedup_vs_dense\": "
        "%s, "
        "\"dense_tflops\": %s, \"sparse_equiv_tflops\": %.4f, \"density\": %.6f, "
        "\"rel_error_vs_dense\": %s, "
        "\"attention_recall\": %.6f, \"cpu_kernel\": %s%s}\n",
        device.c_str(), dtype_name(setup.dtype), long(s.batch), long(s.seq_len), long(s.heads_q),
        long(s.heads_kv), long(s.head_dim), double(setup.params.alpha), setup.params.block_size,
        discovery_name(setup.params.discovery), repeats,
        dense ? std::to_string(dense_ms).c_str() : "null", discovery_ms, attention_ms, total_ms,
        dense ? std::to_string(dense_ms / total_ms).c_str() : "null",
        dense ? std::to_string(tflops(dense_ms)).c_str() : "null", tflops(total_ms),
        stats.density(), dense ? std::to_string(error).c_str() : "null", recall,
        on_gpu ? "null" : ("\"" + cpu_kernel + "\"").c_str(), paged_json().c_str());
    return 0;
  }
  std::printf(
      "flashprefill bench: %s%s, %s, B=%ld L=%ld H_q=%ld H_kv=%ld D=%ld, alpha=%g, block=%d, %s "
      "discovery, median of %d\n",
      device.c_str(), on_gpu ? "" : (" (kernels: " + cpu_kernel + ")").c_str(),
      dtype_name(setup.dtype), long(s.batch), long(s.seq_len), long(s.heads_q), long(s.heads_kv),
      long(s.head_dim), double(setup.params.alpha), setup.params.block_size,
      discovery_name(setup.params.discovery), repeats);
  std::printf("  %-34s %12s %14s\n", "", "time (ms)", "TFLOP/s equiv");
  if (dense)
    std::printf("  %-34s %12.3f %14.3f\n", "dense causal attention (ours)", dense_ms,
                tflops(dense_ms));
  std::printf("  %-34s %12.3f\n", "discovery (steps 1-4)", discovery_ms);
  std::printf("  %-34s %12.3f\n", "block-sparse attention (step 5)", attention_ms);
  std::printf("  %-34s %12.3f %14.3f\n", "flash_prefill (one call)", total_ms, tflops(total_ms));
  if (dense) std::printf("  speedup over dense: %.2fx\n", dense_ms / total_ms);
  std::printf("  density: %.2f%% of causal blocks (%ld of %ld)\n", 100 * stats.density(),
              long(stats.kept_blocks), long(stats.causal_blocks));
  if (dense) std::printf("  relative error vs dense: %.3e\n", error);
  std::printf("  attention recall: %.4f\n", recall);
  if (page_size) {
    std::printf("  K/V layout, queries packed (varlen): %13s %12s %8s\n", "contiguous", "paged",
                "ratio");
    const auto line = [](const char* what, double a, double b) {
      std::printf("  %-34s %12.3f %12.3f %8.3f\n", what, a, b, b / a);
    };
    line("discovery (steps 1-4)", varlen_times.discovery_ms, paged_times.discovery_ms);
    line("block-sparse attention (step 5)", varlen_times.attention_ms, paged_times.attention_ms);
    line("flash_prefill (one call)", varlen_times.total_ms, paged_times.total_ms);
    std::printf("  page size %ld; paged output %s the contiguous one\n", long(page_size),
                paged_identical ? "bit-identical to" : "DIFFERS from");
  }
  return 0;
}

// --- inspect ----------------------------------------------------------------------------------

enum class Cell { not_causal, dropped, kept_by_score, sink, window, last_full };

Rgb colour_of(Cell cell) {
  switch (cell) {
    case Cell::not_causal:
      return {255, 255, 255};
    case Cell::dropped:
      return {225, 225, 225};
    case Cell::kept_by_score:
      return {31, 119, 180};
    case Cell::sink:
      return {255, 127, 14};
    case Cell::window:
      return {44, 160, 44};
    case Cell::last_full:
      return {148, 103, 189};
  }
  return {};
}

int run_inspect(int argc, char** argv) {
  std::set<std::string> valued = kShapeOptions;
  valued.insert({"out", "heads-to-show"});
  const Options options(argc, argv, 2, valued, {"all", "help"});
  if (options.has("help")) {
    std::cout << "usage: flashprefill inspect [options] --out FILE.png\n\nRuns pattern discovery "
                 "on the structured synthetic input and draws\n"
                 "the kept blocks per head (query block down, key block across): blue kept by "
                 "score, orange sink,\n"
                 "green local window, purple last full rows, grey dropped, white not causal. "
                 "Prints per-head density.\n\n";
    print_shape_help(std::cout, "16K");
    std::cout
        << "  --out FILE            PNG to write (default layout.png)\n"
           "  --heads-to-show LIST  comma-separated query heads (default: first, middle, last)\n"
           "  --all                 every head (at most 64 panels)\n";
    return 0;
  }
  const Setup setup = parse_setup(options, 16384);
  Inputs in = make_inputs(setup);
  LayoutStorage layout = allocate_layout(in.args, setup.params);
  discover_layout(in.args, setup.params, layout.view);
  const HostLayout host = download(layout.view, setup.device);
  const auto& s = setup.shape;
  const int64_t B = setup.params.block_size, nqb = num_query_blocks(s.seq_len, s.seq_len, B),
                nkb = num_key_blocks(s.seq_len, B);
  // The synthetic batch is padded, so its rows' geometry reads nothing from the device.
  const detail::Problem problem =
      detail::make_problem(in.args, setup.params, detail::Needs::discovery);
  // Sequence 0's rows, by head: where each starts in the layout.
  std::vector<std::vector<detail::LayoutRow>> rows_of_head(static_cast<size_t>(s.heads_q));
  std::vector<std::vector<int64_t>> index_of_head(static_cast<size_t>(s.heads_q));
  detail::for_each_layout_row(problem, [&](const detail::LayoutRow& r, int64_t index) {
    if (r.seq != 0) return;
    rows_of_head[r.head].push_back(r);
    index_of_head[r.head].push_back(index);
  });
  const auto kept_in = [&](int64_t index) {
    return double(host.row_ptr[index + 1] - host.row_ptr[index]);
  };

  // Sequence 0 only: density per head.
  std::printf("per-head density (sequence 0, %ld x %ld blocks):\n", long(nqb), long(nkb));
  double kept_all = 0, causal_all = 0;
  std::vector<double> density(static_cast<size_t>(s.heads_q));
  for (int64_t h = 0; h < s.heads_q; ++h) {
    double kept = 0, causal = 0;
    for (size_t n = 0; n < rows_of_head[h].size(); ++n) {
      kept += kept_in(index_of_head[h][n]);
      causal += double(rows_of_head[h][n].num_causal_blocks());
    }
    kept_all += kept;
    causal_all += causal;
    density[h] = 100 * kept / causal;
    std::printf("  head %3ld: %6.2f%%\n", long(h), density[h]);
  }
  std::printf("  all heads: %6.2f%%\n", 100 * kept_all / causal_all);

  std::vector<int64_t> heads = options.integer_list("heads-to-show");
  if (options.has("all")) {
    heads.clear();
    for (int64_t h = 0; h < std::min<int64_t>(s.heads_q, 64); ++h) heads.push_back(h);
  } else if (heads.empty()) {
    heads = {0, s.heads_q / 2, s.heads_q - 1};
    heads.erase(std::unique(heads.begin(), heads.end()), heads.end());
  }
  for (int64_t h : heads)
    if (h < 0 || h >= s.heads_q)
      throw UsageError("--heads-to-show: head " + std::to_string(h) + " is outside 0.." +
                       std::to_string(s.heads_q - 1));

  const int cell = int(std::clamp<int64_t>(512 / nkb, 1, 16));
  const int panel = int(nkb) * cell, margin = 12, title = 20;
  const int columns = int(std::min<size_t>(heads.size(), 4));
  const int rows = int((heads.size() + columns - 1) / columns);
  const int legend = 30;
  Image image(margin + columns * (panel + margin),
              margin + rows * (panel + title + margin) + legend, {255, 255, 255});
  for (size_t n = 0; n < heads.size(); ++n) {
    const int64_t h = heads[n];
    const int x0 = margin + int(n % columns) * (panel + margin),
              y0 = margin + int(n / columns) * (panel + title + margin);
    std::ostringstream label;
    label.precision(3);
    label << "HEAD " << h << "  " << density[h] << "%";
    image.draw_text(x0, y0, label.str(), {0, 0, 0});
    for (size_t k = 0; k < rows_of_head[h].size(); ++k) {
      const detail::LayoutRow& r = rows_of_head[h][k];
      const int64_t row = index_of_head[h][k], i = r.block_abs;
      std::vector<char> is_kept(static_cast<size_t>(nkb), 0);
      for (int64_t e = host.row_ptr[row]; e < host.row_ptr[row + 1]; ++e)
        is_kept[host.col_idx[e]] = 1;
      // Why a kept block is kept: step 3's forced blocks, as the selection applies them.
      const detail::ForcedBlocks<int64_t> forced(i, r.key_blocks(B), setup.params);
      using Rule = detail::ForcedBlocks<int64_t>::Rule;
      for (int64_t j = 0; j < nkb; ++j) {
        Cell c = Cell::not_causal;
        if (j < r.num_causal_blocks()) {
          const Rule rule = forced.rule(j);
          c = !is_kept[j]               ? Cell::dropped
              : rule == Rule::last_rows ? Cell::last_full
              : rule == Rule::sink      ? Cell::sink
              : rule == Rule::window    ? Cell::window
                                        : Cell::kept_by_score;
        }
        image.fill_rect(x0 + int(j) * cell, y0 + title + int(r.block_local) * cell, cell, cell,
                        colour_of(c));
      }
    }
  }
  int x = margin;
  const int y = image.height() - legend + 8;
  for (auto [cell_kind, name] :
       {std::pair{Cell::kept_by_score, "KEPT BY SCORE"}, std::pair{Cell::sink, "SINK"},
        std::pair{Cell::window, "WINDOW"}, std::pair{Cell::last_full, "LAST ROWS"},
        std::pair{Cell::dropped, "DROPPED"}}) {
    image.fill_rect(x, y, 10, 10, colour_of(cell_kind));
    x += 14 + image.draw_text(x + 14, y + 2, name, {0, 0, 0}) + 10;
  }
  const std::string out = options.text("out", "layout.png");
  image.write_png(out);
  std::printf("wrote %s (%dx%d, %zu heads)\n", out.c_str(), image.width(), image.height(),
              heads.size());
  return 0;
}

void print_usage(std::ostream& os) {
  os << "usage: flashprefill <command> [options]\n\n"
        "commands:\n"
        "  bench     time FlashPrefill vs dense attention on the structured synthetic input\n"
        "  inspect   draw the kept blocks of chosen heads as a PNG and print per-head density\n\n"
        "`flashprefill <command> --help` lists a command's options; `flashprefill --version` "
        "prints the version.\n";
}

}  // namespace
}  // namespace flashprefill::tools

int main(int argc, char** argv) {
  using namespace flashprefill::tools;
  const std::string command = argc > 1 ? argv[1] : "";
  try {
    if (command == "bench") return run_bench(argc, argv);
    if (command == "inspect") return run_inspect(argc, argv);
    if (command == "--version") {
      std::cout << kVersion << "\n";
      return 0;
    }
    if (command == "--help" || command == "-h" || command == "help") {
      print_usage(std::cout);
      return 0;
    }
    print_usage(std::cerr);
    if (!command.empty()) std::cerr << "\nerror: unknown command '" << command << "'\n";
    return 2;
  } catch (const UsageError& error) {
    std::cerr << "flashprefill " << command << ": error: " << error.what() << "\n";
    return 2;
  } catch (const flashprefill::Error& error) {
    std::cerr << "flashprefill " << command << ": " << error.what() << "\n";
    return 1;
  }
}
