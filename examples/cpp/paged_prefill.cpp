// A C++ inference engine's use of flashprefill on a paged KV cache in vLLM's layout: one prompt
// prefilled in two chunks, the second attending to the first through the block table, with one
// workspace sized once and reused, and one alpha per query head. It checks itself: with alpha 0
// (every block kept) each chunk's output must match dense attention on contiguous K/V.
//
// Build against an installed flashprefill (cmake --install):
//   cmake -S examples/cpp -B build-example -DCMAKE_PREFIX_PATH=<prefix> && cmake --build build-example
//   build-example/paged_prefill [cpu|cuda|all]     (all: the CPU, then CUDA where a device is visible)
#include <flashprefill/flashprefill.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace fp = flashprefill;

namespace {

constexpr int64_t kHeadsQ = 8, kHeadsKv = 2, kDim = 64, kPageSize = 16;
constexpr int64_t kPromptLen = 3000;
constexpr int64_t kChunkEnd = 1700;  // the second chunk starts mid-block (1700 = 13 * 128 + 36)

uint16_t to_bf16(float x) {  // round to nearest even (inputs here are finite)
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  return uint16_t((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}
float from_bf16(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float x;
  std::memcpy(&x, &bits, 4);
  return x;
}

// Host data and a device copy of it.
struct DeviceArray {
  fp::Buffer buffer;
  template <typename T>
  static DeviceArray of(const std::vector<T>& host, fp::Device device) {
    DeviceArray a{fp::Buffer::allocate(device, host.size() * sizeof(T))};
    fp::copy_bytes(a.buffer.data(), device, host.data(), fp::Device::cpu(), host.size() * sizeof(T));
    return a;
  }
  template <typename T>
  std::vector<T> to_host(size_t count) const {
    std::vector<T> host(count);
    fp::copy_bytes(host.data(), fp::Device::cpu(), buffer.data(), buffer.device(), count * sizeof(T));
    return host;
  }
};

fp::TensorView view(const DeviceArray& a, fp::DType dtype, std::initializer_list<int64_t> shape) {
  return fp::TensorView::contiguous(a.buffer.data(), dtype, a.buffer.device(), shape);
}

double relative_error(const std::vector<uint16_t>& got, const std::vector<uint16_t>& want) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = from_bf16(got[i]), w = from_bf16(want[i]);
    diff += (g - w) * (g - w);
    norm += w * w;
  }
  return std::sqrt(diff / std::max(norm, 1e-30));
}

bool run(fp::Device device) {
  std::printf("%s:\n", fp::device_name(device).c_str());
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  const auto random_bf16 = [&](int64_t count) {
    std::vector<uint16_t> x(static_cast<size_t>(count));
    for (auto& e : x) e = to_bf16(normal(rng));
    return x;
  };
  const std::vector<uint16_t> q = random_bf16(kPromptLen * kHeadsQ * kDim);
  std::vector<uint16_t> k = random_bf16(kPromptLen * kHeadsKv * kDim);
  const std::vector<uint16_t> v = random_bf16(kPromptLen * kHeadsKv * kDim);
  // Keys share a direction per 128-token block (as a trained model's keys cluster), so that block
  // scores differ and a threshold drops some blocks; independent random keys would score alike.
  const std::vector<uint16_t> block_direction = random_bf16((kPromptLen / 128 + 1) * kHeadsKv * kDim);
  for (int64_t t = 0; t < kPromptLen; ++t)
    for (int64_t e = 0; e < kHeadsKv * kDim; ++e) {
      uint16_t& x = k[size_t(t * kHeadsKv * kDim + e)];
      x = to_bf16(from_bf16(x) + 2.0f * from_bf16(block_direction[size_t(t / 128 * kHeadsKv * kDim + e)]));
    }

  // vLLM's FlashAttention cache: one tensor [2, num_pages, page_size, H_kv, D] (K pages, then V
  // pages), the prompt's pages in a shuffled order, and a block table naming them.
  const int64_t used_pages = (kPromptLen + kPageSize - 1) / kPageSize;
  const int64_t num_pages = used_pages + 5;
  std::vector<int32_t> order(static_cast<size_t>(num_pages));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  const int64_t page_elems = kPageSize * kHeadsKv * kDim;
  std::vector<uint16_t> cache(size_t(2 * num_pages * page_elems), to_bf16(0.0f));
  std::vector<int32_t> block_table(order.begin(), order.begin() + used_pages);
  for (int64_t t = 0; t < kPromptLen; ++t) {
    const int64_t page = block_table[size_t(t / kPageSize)], row = t % kPageSize;
    const int64_t token = (page * kPageSize + row) * kHeadsKv * kDim;
    std::copy_n(&k[size_t(t * kHeadsKv * kDim)], kHeadsKv * kDim, &cache[size_t(token)]);
    std::copy_n(&v[size_t(t * kHeadsKv * kDim)], kHeadsKv * kDim,
                &cache[size_t(num_pages * page_elems + token)]);
  }
  const DeviceArray d_cache = DeviceArray::of(cache, device);
  const DeviceArray d_table = DeviceArray::of(block_table, device);
  const DeviceArray d_q = DeviceArray::of(q, device), d_k = DeviceArray::of(k, device);
  const DeviceArray d_v = DeviceArray::of(v, device);
  fp::TensorView pool_k = view(d_cache, fp::DType::bf16, {num_pages, kPageSize, kHeadsKv, kDim});
  fp::TensorView pool_v = pool_k;
  pool_v.data = static_cast<uint16_t*>(d_cache.buffer.data()) + num_pages * page_elems;

  // One alpha per query head, on the tensors' device (read by the kernels, no upload per call).
  std::vector<float> head_alpha(static_cast<size_t>(kHeadsQ));
  for (int64_t h = 0; h < kHeadsQ; ++h) head_alpha[size_t(h)] = 0.02f + 0.02f * float(h);
  const DeviceArray d_head_alpha = DeviceArray::of(head_alpha, device);

  // The two chunks: queries [begin, end) against keys [0, end) of the cache.
  struct Chunk {
    int64_t begin, end;
  };
  const Chunk chunks[2] = {{0, kChunkEnd}, {kChunkEnd, kPromptLen}};
  const auto paged_args = [&](const Chunk& c, std::vector<DeviceArray>& keep, const DeviceArray& out) {
    keep.push_back(DeviceArray::of(std::vector<int32_t>{0, int32_t(c.end - c.begin)}, device));
    keep.push_back(DeviceArray::of(std::vector<int32_t>{int32_t(c.end)}, device));
    fp::AttentionArgs args;
    args.q = view(d_q, fp::DType::bf16, {kPromptLen, kHeadsQ, kDim});
    args.q.data = static_cast<uint16_t*>(d_q.buffer.data()) + c.begin * kHeadsQ * kDim;
    args.q.shape[0] = c.end - c.begin;
    args.k = pool_k;
    args.v = pool_v;
    args.out = view(out, fp::DType::bf16, {c.end - c.begin, kHeadsQ, kDim});
    args.varlen.cu_seqlens_q = view(keep[keep.size() - 2], fp::DType::int32, {2});
    args.varlen.max_seqlen_q = c.end - c.begin;
    args.varlen.max_seqlen_kv = c.end;
    args.paged.block_table = view(d_table, fp::DType::int32, {1, used_pages});
    args.paged.seq_lens_kv = view(keep.back(), fp::DType::int32, {1});
    return args;
  };

  // Each chunk's arguments are made once; the workspace is sized once for the larger call and
  // reused by every call (and every layer) of the step.
  std::vector<DeviceArray> metadata, outputs;
  std::vector<fp::AttentionArgs> chunk_args;
  for (const Chunk& c : chunks) {
    outputs.push_back(DeviceArray::of(std::vector<uint16_t>(size_t((c.end - c.begin) * kHeadsQ * kDim)), device));
    chunk_args.push_back(paged_args(c, metadata, outputs.back()));
  }
  fp::Params params;
  params.head_alpha = view(d_head_alpha, fp::DType::fp32, {kHeadsQ});
  size_t workspace_bytes = 0;
  for (const fp::AttentionArgs& args : chunk_args)
    workspace_bytes = std::max(workspace_bytes, fp::flash_prefill_workspace_size(args, params));
  const fp::Buffer workspace = fp::Buffer::allocate(device, std::max<size_t>(workspace_bytes, 1));
  std::printf("  workspace for both chunks: %zu bytes\n", workspace_bytes);

  bool ok = true;
  for (int i = 0; i < 2; ++i) {
    const Chunk& c = chunks[i];
    const int64_t len_q = c.end - c.begin;
    const fp::AttentionArgs& args = chunk_args[size_t(i)];

    // Alpha 0 keeps every causal block: the output must be dense attention's.
    fp::Params dense_params;
    dense_params.alpha = 0.0f;
    fp::flash_prefill(args, dense_params, {workspace.data(), workspace_bytes});
    const DeviceArray reference = DeviceArray::of(std::vector<uint16_t>(size_t(len_q * kHeadsQ * kDim)), device);
    fp::AttentionArgs contiguous;
    contiguous.q = args.q;
    contiguous.q.rank = 4;
    contiguous.q.shape = {1, len_q, kHeadsQ, kDim};
    contiguous.q.stride = {len_q * kHeadsQ * kDim, kHeadsQ * kDim, kDim, 1};
    contiguous.k = view(d_k, fp::DType::bf16, {1, c.end, kHeadsKv, kDim});
    contiguous.v = view(d_v, fp::DType::bf16, {1, c.end, kHeadsKv, kDim});
    contiguous.out = view(reference, fp::DType::bf16, {1, len_q, kHeadsQ, kDim});
    fp::dense_attention(contiguous);
    fp::synchronize(device);
    const size_t count = size_t(len_q * kHeadsQ * kDim);
    const double error = relative_error(outputs[i].to_host<uint16_t>(count), reference.to_host<uint16_t>(count));
    const bool chunk_ok = error < 1e-2;  // bf16 outputs: a rounding step is 2^-8 relative
    ok &= chunk_ok;

    // The per-head alphas, in stages so that the kept blocks can be counted: discovery, then
    // attention over the layout it found (what flash_prefill does in one call).
    fp::LayoutStorage layout = fp::allocate_layout(args, params);
    fp::discover_layout(args, params, layout.view, {workspace.data(), workspace_bytes});
    fp::block_sparse_attention(args, params, layout.view, {workspace.data(), workspace_bytes});
    const fp::LayoutStats stats = fp::layout_stats(args, params, layout.view);
    std::printf("  chunk %d (queries %lld..%lld over %lld cached keys): alpha 0 vs dense attention, relative "
                "error %.2e (%s); per-head alpha 0.02..0.16 keeps %lld of %lld blocks (density %.3f)\n",
                i + 1, (long long)c.begin, (long long)c.end, (long long)c.end, error, chunk_ok ? "ok" : "FAILED",
                (long long)stats.kept_blocks, (long long)stats.causal_blocks, stats.density());
  }
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string which = argc > 1 ? argv[1] : "all";
  if (which != "cpu" && which != "cuda" && which != "all") {
    std::fprintf(stderr, "usage: %s [cpu|cuda|all]\n", argv[0]);
    return 2;
  }
  try {
    bool ok = true;
    if (which != "cuda") ok &= run(fp::Device::cpu());
    if (which != "cpu") {
      if (fp::cuda_available())
        ok &= run(fp::Device::cuda());
      else if (which == "cuda")
        return std::fprintf(stderr, "cuda: fp::cuda_available() is false (no GPU, or a library built without CUDA)\n"), 1;
      else
        std::printf("cuda: skipped (fp::cuda_available() is false: no GPU, or a library built without CUDA)\n");
    }
    std::printf("%s\n", ok ? "paged_prefill: ok" : "paged_prefill: FAILED");
    return ok ? 0 : 1;
  } catch (const fp::Error& e) {
    std::fprintf(stderr, "flashprefill error: %s\n", e.what());
    return 1;
  }
}
