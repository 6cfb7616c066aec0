// Micro-benchmark of discovery (steps 1-4) on the GPU: the score kernel's int8 pre-filter off, on
// long rows (the default) and on every row it can take, in one process on the same structured input
// (BENCHMARK.md). Checks that the three layouts are identical (the filter only skips work whose
// result cannot matter) and reports, for each, discovery, attention, the one-call total and
// discovery's share of that total.
//
//   discovery_bench [--lengths 4K,32K,128K] [--shape llama3-8b|qwen2.5-7b] [--repeats 10]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "flashprefill/flashprefill.hpp"
#include "flashprefill/synthetic.hpp"

namespace {

using namespace flashprefill;

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    std::fprintf(stderr, "discovery_bench: %s: %s\n", what, cudaGetErrorString(status));
    std::exit(1);
  }
}

// Median of CUDA-event timings after two warm-ups (the library runs on the default stream here).
double time_ms(const std::function<void()>& run, int repeats) {
  run();
  run();
  check(cudaDeviceSynchronize(), "warm-up");
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  std::vector<double> times;
  for (int r = 0; r < repeats; ++r) {
    cudaEventRecord(start);
    run();
    cudaEventRecord(stop);
    check(cudaEventSynchronize(stop), "timed run");
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    times.push_back(ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

struct HostLayout {
  std::vector<int64_t> row_ptr;
  std::vector<int32_t> col_idx;
  bool operator==(const HostLayout&) const = default;
};
HostLayout download(const BlockSparseLayout& layout) {
  HostLayout host;
  int64_t rows = 0;
  check(cudaMemcpy(&rows, layout.seq_row_offset.ptr<int64_t>() + layout.num_seqs, 8, cudaMemcpyDeviceToHost), "copy");
  host.row_ptr.resize(size_t(rows + 1));
  check(cudaMemcpy(host.row_ptr.data(), layout.row_ptr.data, host.row_ptr.size() * 8, cudaMemcpyDeviceToHost), "copy");
  host.col_idx.resize(size_t(host.row_ptr.back()));
  check(cudaMemcpy(host.col_idx.data(), layout.col_idx.data, host.col_idx.size() * 4, cudaMemcpyDeviceToHost), "copy");
  return host;
}
int64_t rows_differing(const HostLayout& a, const HostLayout& b) {
  if (a.row_ptr.size() != b.row_ptr.size()) return -1;
  int64_t differing = 0;
  for (size_t r = 0; r + 1 < a.row_ptr.size(); ++r)
    differing += !std::equal(a.col_idx.begin() + a.row_ptr[r], a.col_idx.begin() + a.row_ptr[r + 1], b.col_idx.begin() + b.row_ptr[r],
                             b.col_idx.begin() + b.row_ptr[r + 1]);
  return differing;
}

int64_t parse_length(std::string text) {
  const bool kilo = !text.empty() && (text.back() == 'K' || text.back() == 'k');
  if (kilo) text.pop_back();
  return std::stoll(text) * (kilo ? 1024 : 1);
}

}  // namespace

int main(int argc, char** argv) {
  std::string lengths = "4K,32K,128K", shape_name = "llama3-8b";
  int repeats = 10;
  for (int n = 1; n + 1 < argc; n += 2) {
    const std::string option = argv[n], value = argv[n + 1];
    if (option == "--lengths") lengths = value;
    else if (option == "--shape") shape_name = value;
    else if (option == "--repeats") repeats = std::max(1, std::atoi(value.c_str()));
    else {
      std::fprintf(stderr, "usage: discovery_bench [--lengths 4K,32K,128K] [--shape llama3-8b|qwen2.5-7b] [--repeats 10]\n");
      return 2;
    }
  }
  if (!cuda_available()) {
    std::fprintf(stderr, "discovery_bench: no CUDA device\n");
    return 1;
  }
  SyntheticShape shape{1, 0, 32, 8, 128};
  if (shape_name == "qwen2.5-7b") shape = {1, 0, 28, 4, 128};
  const Params params;  // the paper's defaults: block 128, alpha 0.12
  const char* modes[] = {"off", "default", "always"};
  std::printf("%8s %8s %14s %14s %14s %10s %8s\n", "L", "filter", "discovery ms", "attention ms", "total ms", "disc/total", "rows!=off");
  for (size_t begin = 0; begin < lengths.size();) {
    size_t end = lengths.find(',', begin);
    if (end == std::string::npos) end = lengths.size();
    shape.seq_len = parse_length(lengths.substr(begin, end - begin));
    begin = end + 1;

    const SyntheticInput input = make_structured_input(shape, 0);
    const Device gpu = Device::cuda(0);
    std::vector<void*> buffers;
    auto upload = [&](const std::vector<uint16_t>& host) {
      void* device = nullptr;
      check(cudaMalloc(&device, host.size() * 2), "cudaMalloc");
      check(cudaMemcpy(device, host.data(), host.size() * 2, cudaMemcpyHostToDevice), "copy");
      buffers.push_back(device);
      return device;
    };
    const int64_t L = shape.seq_len;
    AttentionArgs args;
    args.q = TensorView::contiguous(upload(input.q), DType::bf16, gpu, {1, L, shape.heads_q, shape.head_dim});
    args.k = TensorView::contiguous(upload(input.k), DType::bf16, gpu, {1, L, shape.heads_kv, shape.head_dim});
    args.v = TensorView::contiguous(upload(input.v), DType::bf16, gpu, {1, L, shape.heads_kv, shape.head_dim});
    args.out = TensorView::contiguous(upload(input.q), DType::bf16, gpu, {1, L, shape.heads_q, shape.head_dim});
    LayoutStorage layout = allocate_layout(args, params);

    HostLayout unfiltered;
    for (const char* mode : modes) {
      setenv("FLASHPREFILL_SCORE_FILTER", mode, 1);
      const double discovery = time_ms([&] { discover_layout(args, params, layout.view); }, repeats);
      const HostLayout kept = download(layout.view);
      if (mode == modes[0]) unfiltered = kept;
      const double attention = time_ms([&] { block_sparse_attention(args, params, layout.view); }, repeats);
      const double total = time_ms([&] { flash_prefill(args, params); }, repeats);
      std::printf("%8lld %8s %14.4f %14.4f %14.4f %9.1f%% %8lld\n", (long long)L, mode, discovery, attention, total,
                  100.0 * discovery / total, (long long)rows_differing(kept, unfiltered));
      std::fflush(stdout);
    }
    unsetenv("FLASHPREFILL_SCORE_FILTER");
    for (void* b : buffers) cudaFree(b);
  }
  return 0;
}
