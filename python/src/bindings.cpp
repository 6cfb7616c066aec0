// flashprefill._C: the thin nanobind layer over the C++ API. Tensors cross through DLPack
// (NumPy arrays, PyTorch CPU or CUDA tensors) without copies; every check is the C++ library's
// own, and its errors surface as flashprefill.FlashPrefillError (a ValueError).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <string>

#include "flashprefill/flashprefill.hpp"
#include "flashprefill/synthetic.hpp"

namespace nb = nanobind;
using namespace flashprefill;

namespace {

using Array = nb::ndarray<>;
using OptionalArray = std::optional<Array>;

TensorView view_of(const Array& a, const char* name) {
  TensorView v;
  if (a.ndim() > size_t(TensorView::kMaxRank))
    throw Error(std::string(name) + " has " + std::to_string(a.ndim()) +
                " dimensions; expected at most 4");
  const nb::dlpack::dtype t = a.dtype();
  const auto code = static_cast<nb::dlpack::dtype_code>(t.code);
  if (code == nb::dlpack::dtype_code::Bfloat && t.bits == 16)
    v.dtype = DType::bf16;
  else if (code == nb::dlpack::dtype_code::Float && t.bits == 16)
    v.dtype = DType::fp16;
  else if (code == nb::dlpack::dtype_code::Float && t.bits == 32)
    v.dtype = DType::fp32;
  else if (code == nb::dlpack::dtype_code::Int && t.bits == 32)
    v.dtype = DType::int32;
  else if (code == nb::dlpack::dtype_code::Int && t.bits == 64)
    v.dtype = DType::int64;
  else
    throw Error(std::string(name) + " has an unsupported dtype (DLPack code " +
                std::to_string(int(t.code)) + ", " + std::to_string(int(t.bits)) +
                " bits); expected bfloat16 or float16 (float32/int32/int64 for aux arrays)");
  if (a.device_type() == nb::device::cpu::value)
    v.device = Device::cpu();
  else if (a.device_type() == nb::device::cuda::value)
    v.device = Device::cuda(a.device_id());
  else
    throw Error(std::string(name) + " lives on an unsupported device (DLPack type " +
                std::to_string(a.device_type()) + ")");
  v.data = a.data();
  v.rank = int(a.ndim());
  for (int d = 0; d < v.rank; ++d) {
    v.shape[d] = int64_t(a.shape(d));
    v.stride[d] = int64_t(a.stride(d));
  }
  return v;
}

TensorView optional_view(const OptionalArray& a, const char* name) {
  return a ? view_of(*a, name) : TensorView{};
}

// A tensor described by Python as (data_ptr, shape, stride, dtype code, device ordinal or -1 for
// the CPU): the PyTorch fast path. Building one costs a few attribute reads, where DLPack export
// runs PyTorch's Python-level __dlpack__ per tensor. The dtype code is DType's value (the caller
// maps unknown dtypes to an error first); None is "not given".
TensorView view_of_descriptor(nb::handle descriptor, const char* name) {
  if (descriptor.is_none()) return TensorView{};
  if (!nb::isinstance<nb::tuple>(descriptor))
    throw Error(std::string(name) + ": expected a tensor descriptor tuple");
  const nb::tuple d = nb::borrow<nb::tuple>(descriptor);
  if (d.size() != 5)
    throw Error(std::string(name) +
                ": expected a (data_ptr, shape, stride, dtype, device) descriptor");
  TensorView v;
  if (!nb::isinstance<nb::tuple>(d[1]) || !nb::isinstance<nb::tuple>(d[2]))
    throw Error(std::string(name) + ": the descriptor's shape and stride must be tuples");
  const nb::tuple shape = nb::borrow<nb::tuple>(d[1]), stride = nb::borrow<nb::tuple>(d[2]);
  if (shape.size() > size_t(TensorView::kMaxRank))
    throw Error(std::string(name) + " has " + std::to_string(shape.size()) +
                " dimensions; expected at most 4");
  if (stride.size() != shape.size())
    throw Error(std::string(name) + ": shape and stride of different ranks");
  const int code = nb::cast<int>(d[3]);
  if (code < int(DType::bf16) || code > int(DType::int64))
    throw Error(std::string(name) + " has an unsupported dtype");
  v.dtype = static_cast<DType>(code);
  const int device = nb::cast<int>(d[4]);
  v.device = device < 0 ? Device::cpu() : Device::cuda(device);
  v.data = reinterpret_cast<void*>(nb::cast<uintptr_t>(d[0]));
  v.rank = int(shape.size());
  for (int i = 0; i < v.rank; ++i) {
    v.shape[i] = nb::cast<int64_t>(shape[i]);
    v.stride[i] = nb::cast<int64_t>(stride[i]);
  }
  return v;
}

struct CallArgs {
  AttentionArgs args;
  Params params;
};

// A tensor argument as a view: a DLPack array, an optional one, or a descriptor.
TensorView to_view(const Array& a, const char* name) { return view_of(a, name); }
TensorView to_view(const OptionalArray& a, const char* name) { return optional_view(a, name); }
TensorView to_view(nb::handle descriptor, const char* name) {
  return view_of_descriptor(descriptor, name);
}

// The arguments every entry point shares, in FlashAttention's order and names.
template <typename Tensor, typename OptionalTensor>
CallArgs make_args(const Tensor& q, const Tensor& k, const Tensor& v, const OptionalTensor& out,
                   const OptionalTensor& lse, const OptionalTensor& cu_seqlens_q,
                   const OptionalTensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k,
                   float alpha, int block_size, int sink_blocks, int window_blocks,
                   int last_full_blocks, int min_budget, float softmax_scale, bool check_inputs,
                   int discovery, const OptionalTensor& head_alpha, uintptr_t stream) {
  CallArgs c;
  c.args.q = to_view(q, "q");
  c.args.k = to_view(k, "k");
  c.args.v = to_view(v, "v");
  c.args.out = to_view(out, "out");
  c.args.lse = to_view(lse, "lse");
  c.args.varlen.cu_seqlens_q = to_view(cu_seqlens_q, "cu_seqlens_q");
  c.args.varlen.cu_seqlens_kv = to_view(cu_seqlens_k, "cu_seqlens_k");
  c.args.varlen.max_seqlen_q = max_seqlen_q;
  c.args.varlen.max_seqlen_kv = max_seqlen_k;
  c.args.stream = reinterpret_cast<void*>(stream);
  c.params.alpha = alpha;
  c.params.block_size = block_size;
  c.params.sink_blocks = sink_blocks;
  c.params.window_blocks = window_blocks;
  c.params.last_full_blocks = last_full_blocks;
  c.params.min_budget = min_budget;
  c.params.scale = softmax_scale;
  c.params.check_inputs = check_inputs;
  c.params.discovery = static_cast<Discovery>(discovery);  // validated with the other params
  // Python's `alpha` when it is one per query head (the package checks it and names it `alpha`).
  c.params.head_alpha = to_view(head_alpha, "alpha");
  return c;
}

// Paged K/V (PagedKV in flashprefill.hpp): k and v are page pools; None leaves the call unpaged.
template <typename Tensor>
void set_paged(CallArgs& c, const Tensor& block_table, const Tensor& seq_lens_kv) {
  c.args.paged.block_table = to_view(block_table, "block_table");
  c.args.paged.seq_lens_kv = to_view(seq_lens_kv, "seq_lens_kv");
}

BlockSparseLayout layout_of(const CallArgs& c, const Array& seq_row_offset, const Array& row_ptr,
                            const Array& col_idx) {
  const StageShapes shapes = stage_shapes(c.args, c.params);
  BlockSparseLayout layout;
  layout.block_size = c.params.block_size;
  layout.num_seqs = shapes.num_seqs;
  layout.num_heads = c.args.q.shape[c.args.q.rank - 2];
  layout.seq_row_offset = view_of(seq_row_offset, "layout.seq_row_offset");
  layout.row_ptr = view_of(row_ptr, "layout.row_ptr");
  layout.col_idx = view_of(col_idx, "layout.col_idx");
  layout.max_rows = layout.row_ptr.rank == 1 ? layout.row_ptr.shape[0] - 1 : 0;
  layout.max_cols = layout.col_idx.rank == 1 ? layout.col_idx.shape[0] : 0;
  return layout;
}

nb::ndarray<nb::numpy, uint16_t> numpy_u16(std::vector<uint16_t>&& data, const SyntheticShape& s,
                                           int64_t heads) {
  auto* owned = new std::vector<uint16_t>(std::move(data));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<uint16_t>*>(p); });
  const size_t shape[4] = {size_t(s.batch), size_t(s.seq_len), size_t(heads), size_t(s.head_dim)};
  return nb::ndarray<nb::numpy, uint16_t>(owned->data(), 4, shape, owner);
}

}  // namespace

// The keyword names of both entry points (arrays and descriptors take the same arguments).
#define FP_COMMON_ARGS                                                                          \
  nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out").none(), nb::arg("lse").none(),       \
      nb::arg("cu_seqlens_q").none(), nb::arg("cu_seqlens_k").none(), nb::arg("max_seqlen_q"),  \
      nb::arg("max_seqlen_k"), nb::arg("alpha"), nb::arg("block_size"), nb::arg("sink_blocks"), \
      nb::arg("window_blocks"), nb::arg("last_full_blocks"), nb::arg("min_budget"),             \
      nb::arg("softmax_scale"), nb::arg("check_inputs"), nb::arg("discovery"),                  \
      nb::arg("head_alpha").none(), nb::arg("stream")
#define FP_COMMON_PARAMS                                                                       \
  const Array &q, const Array &k, const Array &v, const OptionalArray &out,                    \
      const OptionalArray &lse, const OptionalArray &cu_q, const OptionalArray &cu_k,          \
      int64_t max_q, int64_t max_k, float alpha, int block_size, int sink_blocks,              \
      int window_blocks, int last_full_blocks, int min_budget, float scale, bool check_inputs, \
      int discovery, const OptionalArray &head_alpha, uintptr_t stream
#define FP_DESCRIBED_PARAMS                                                                        \
  nb::handle q, nb::handle k, nb::handle v, nb::handle out, nb::handle lse, nb::handle cu_q,       \
      nb::handle cu_k, int64_t max_q, int64_t max_k, float alpha, int block_size, int sink_blocks, \
      int window_blocks, int last_full_blocks, int min_budget, float scale, bool check_inputs,     \
      int discovery, nb::handle head_alpha, uintptr_t stream
#define FP_MAKE_DESCRIBED_ARGS                                                           \
  make_args(q, k, v, out, lse, cu_q, cu_k, max_q, max_k, alpha, block_size, sink_blocks, \
            window_blocks, last_full_blocks, min_budget, scale, check_inputs, discovery, \
            head_alpha, stream)
#define FP_MAKE_ARGS                                                                     \
  make_args(q, k, v, out, lse, cu_q, cu_k, max_q, max_k, alpha, block_size, sink_blocks, \
            window_blocks, last_full_blocks, min_budget, scale, check_inputs, discovery, \
            head_alpha, stream)

NB_MODULE(_C, m) {
  m.doc() = "flashprefill C++ library binding (use the flashprefill package, not this module)";
  nb::exception<Error>(m, "FlashPrefillError", PyExc_ValueError);

  m.def("cuda_available", &cuda_available);

  m.def(
      "flash_prefill",
      [](FP_COMMON_PARAMS, const OptionalArray& workspace, const OptionalArray& block_table,
         const OptionalArray& seq_lens_kv) {
        CallArgs c = FP_MAKE_ARGS;
        set_paged(c, block_table, seq_lens_kv);
        Workspace ws;
        if (workspace) {  // raw bytes (any dtype) on q's device
          const bool on_gpu = workspace->device_type() == nb::device::cuda::value;
          if (on_gpu != (c.args.q.device.type == DeviceType::cuda))
            throw Error("workspace is on a different device than q; expected the same");
          ws = Workspace{workspace->data(), workspace->nbytes()};
        }
        nb::gil_scoped_release release;
        flash_prefill(c.args, c.params, ws);
      },
      FP_COMMON_ARGS, nb::arg("workspace").none(), nb::arg("block_table").none() = nb::none(),
      nb::arg("seq_lens_kv").none() = nb::none());

  // The PyTorch eager path: tensors as descriptors, the workspace as (pointer, bytes) on q's
  // device.
  m.def(
      "flash_prefill_described",
      [](FP_DESCRIBED_PARAMS, uintptr_t workspace, size_t workspace_bytes, nb::handle block_table,
         nb::handle seq_lens_kv) {
        CallArgs c = FP_MAKE_DESCRIBED_ARGS;
        set_paged(c, block_table, seq_lens_kv);
        nb::gil_scoped_release release;
        flash_prefill(c.args, c.params,
                      Workspace{reinterpret_cast<void*>(workspace), workspace_bytes});
      },
      FP_COMMON_ARGS, nb::arg("workspace"), nb::arg("workspace_bytes"),
      nb::arg("block_table").none() = nb::none(), nb::arg("seq_lens_kv").none() = nb::none());

  m.def(
      "workspace_size_described",
      [](FP_DESCRIBED_PARAMS, nb::handle block_table, nb::handle seq_lens_kv) {
        CallArgs c = FP_MAKE_DESCRIBED_ARGS;
        set_paged(c, block_table, seq_lens_kv);
        return flash_prefill_workspace_size(c.args, c.params);
      },
      FP_COMMON_ARGS, nb::arg("block_table").none() = nb::none(),
      nb::arg("seq_lens_kv").none() = nb::none());

  // For the overhead benchmark: the host time of `repeats` C++ flash_prefill calls, in microseconds
  // per call, with no Python between them. The device is synchronised every `batch` calls, outside
  // the timed span, so a queue of kernels never throttles the host and only host work is counted.
  m.def(
      "host_time_of_cpp_call",
      [](FP_DESCRIBED_PARAMS, uintptr_t workspace, size_t workspace_bytes, int repeats, int batch) {
        const CallArgs c = FP_MAKE_DESCRIBED_ARGS;
        const Workspace ws{reinterpret_cast<void*>(workspace), workspace_bytes};
        nb::gil_scoped_release release;
        double seconds = 0.0;
        if (repeats < 1 || batch < 1)
          throw Error("host_time_of_cpp_call: repeats and batch must be >= 1");
        for (int done = 0; done < repeats; done += batch) {
          synchronize(c.args.q.device);
          const auto start = std::chrono::steady_clock::now();
          for (int n = 0; n < batch && done + n < repeats; ++n) flash_prefill(c.args, c.params, ws);
          seconds +=
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        }
        synchronize(c.args.q.device);
        return seconds / double(repeats) * 1e6;
      },
      FP_COMMON_ARGS, nb::arg("workspace"), nb::arg("workspace_bytes"), nb::arg("repeats"),
      nb::arg("batch"));

  m.def(
      "workspace_size",
      [](FP_COMMON_PARAMS) {
        const CallArgs c = FP_MAKE_ARGS;
        return flash_prefill_workspace_size(c.args, c.params);
      },
      FP_COMMON_ARGS);

  m.def(
      "dense_attention",
      [](FP_COMMON_PARAMS, const OptionalArray& block_table, const OptionalArray& seq_lens_kv) {
        CallArgs c = FP_MAKE_ARGS;
        set_paged(c, block_table, seq_lens_kv);
        nb::gil_scoped_release release;
        dense_attention(c.args, c.params);
      },
      FP_COMMON_ARGS, nb::arg("block_table").none() = nb::none(),
      nb::arg("seq_lens_kv").none() = nb::none());

  m.def(
      "stage_shapes",
      [](FP_COMMON_PARAMS) {
        const CallArgs c = FP_MAKE_ARGS;
        const StageShapes s = stage_shapes(c.args, c.params);
        return nb::make_tuple(s.num_seqs, s.pooled_key_slots, s.max_rows, s.max_key_blocks,
                              s.max_cols);
      },
      FP_COMMON_ARGS);

  m.def(
      "discover_layout",
      [](FP_COMMON_PARAMS, const Array& seq_row_offset, const Array& row_ptr,
         const Array& col_idx) {
        const CallArgs c = FP_MAKE_ARGS;
        const BlockSparseLayout layout = layout_of(c, seq_row_offset, row_ptr, col_idx);
        nb::gil_scoped_release release;
        discover_layout(c.args, c.params, layout);
      },
      FP_COMMON_ARGS, nb::arg("seq_row_offset"), nb::arg("row_ptr"), nb::arg("col_idx"));

  m.def(
      "block_sparse_attention",
      [](FP_COMMON_PARAMS, const Array& seq_row_offset, const Array& row_ptr,
         const Array& col_idx) {
        const CallArgs c = FP_MAKE_ARGS;
        const BlockSparseLayout layout = layout_of(c, seq_row_offset, row_ptr, col_idx);
        nb::gil_scoped_release release;
        block_sparse_attention(c.args, c.params, layout);
      },
      FP_COMMON_ARGS, nb::arg("seq_row_offset"), nb::arg("row_ptr"), nb::arg("col_idx"));

  m.def(
      "cpu_kernel_variant",
      [](const std::string& dtype) {
        if (dtype == "bf16") return std::string(cpu_kernel_variant(DType::bf16));
        if (dtype == "fp16") return std::string(cpu_kernel_variant(DType::fp16));
        if (dtype == "fp32") return std::string(cpu_kernel_variant(DType::fp32));
        throw Error("cpu_kernel_variant: dtype '" + dtype + "'; expected bf16, fp16 or fp32");
      },
      nb::arg("dtype"),
      "The CPU kernel variant (amx, avx512bf16, avx512, avx2, generic) that runs inputs of this "
      "dtype.");

  m.def(
      "make_structured_input",
      [](int64_t batch, int64_t seq_len, int64_t heads_q, int64_t heads_kv, int64_t head_dim,
         uint64_t seed) {
        const SyntheticShape shape{batch, seq_len, heads_q, heads_kv, head_dim};
        SyntheticInput input;
        {
          nb::gil_scoped_release release;
          input = make_structured_input(shape, seed);
        }
        return nb::make_tuple(numpy_u16(std::move(input.q), shape, heads_q),
                              numpy_u16(std::move(input.k), shape, heads_kv),
                              numpy_u16(std::move(input.v), shape, heads_kv));
      },
      nb::arg("batch"), nb::arg("seq_len"), nb::arg("heads_q"), nb::arg("heads_kv"),
      nb::arg("head_dim"), nb::arg("seed") = 0,
      "BENCHMARK.md's structured synthetic input as raw bf16 bits (uint16 NumPy arrays [B, L, H, "
      "D]).");
}
