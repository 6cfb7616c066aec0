// The public API: validate every argument, build a Problem, dispatch to the tensors' backend.
// Nothing here computes; every message names the argument, its value and what was expected.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "backend.hpp"
#include "common/half.hpp"
#include "common/problem.hpp"
#include "common/row_geometry.hpp"
#include "common/validate.hpp"
#include "device_memory.hpp"
#include "workspace.hpp"

namespace flashprefill {
namespace {

using detail::Problem;
using detail::Strides;

[[noreturn]] void fail(const std::string& message) { throw Error("flashprefill: " + message); }

std::string str(int64_t value) { return std::to_string(value); }

void check_given(const TensorView& t, const char* name) {
  if (t.empty_view()) fail(std::string(name) + " was not given (empty view); expected a tensor");
  if (t.numel() > 0 && t.data == nullptr)
    fail(std::string(name) + " has " + t.shape_string() + " elements but a null data pointer");
  for (int d = 0; d < t.rank; ++d)
    if (t.shape[d] < 0)
      fail(std::string(name) + " has a negative extent: shape " + t.shape_string());
}

void check_rank(const TensorView& t, const char* name, int rank, const char* expected_layout) {
  if (t.rank != rank)
    fail(std::string(name) + " has shape " + t.shape_string() + " (rank " + str(t.rank) +
         "); expected rank " + str(rank) + " " + expected_layout);
}

void check_same_device(const TensorView& t, const char* name, Device device) {
  if (!(t.device == device))
    fail(std::string(name) + " is on " + device_name(t.device) + " but q is on " +
         device_name(device) + "; all tensors must be on one device");
}

void check_last_dim_contiguous(const TensorView& t, const char* name) {
  if (t.shape[t.rank - 1] > 1 && t.stride[t.rank - 1] != 1)
    fail(std::string(name) + " has stride " + str(t.stride[t.rank - 1]) +
         " on its last dimension; expected 1 (contiguous)");
}

Strides strides_of(const TensorView& t, bool varlen) {
  return varlen ? Strides{0, t.stride[0], t.stride[1]}
                : Strides{t.stride[0], t.stride[1], t.stride[2]};
}

std::vector<int32_t> read_cu_seqlens(const TensorView& t) {
  std::vector<int32_t> host(static_cast<size_t>(t.shape[0]));
  if (t.stride[0] != 1 && t.shape[0] > 1) fail("cu_seqlens must be contiguous");
  copy_bytes(host.data(), Device::cpu(), t.data, t.device, host.size() * sizeof(int32_t));
  return host;
}

// Checks a cu_seqlens array against its packed tensor: starts at 0, never decreases, ends inside.
void check_cu_seqlens_values(const std::vector<int32_t>& cu, const char* name, int64_t total,
                             int64_t max_len) {
  if (cu.front() != 0) fail(std::string(name) + "[0] is " + str(cu.front()) + "; expected 0");
  for (size_t b = 0; b + 1 < cu.size(); ++b) {
    const int64_t len = int64_t(cu[b + 1]) - cu[b];
    if (len < 0)
      fail(std::string(name) + " decreases at index " + str(int64_t(b) + 1) + " (" + str(cu[b]) +
           " -> " + str(cu[b + 1]) + ")");
    if (len > max_len)
      fail(std::string(name) + ": sequence " + str(int64_t(b)) + " has length " + str(len) +
           " > the max_seqlen given (" + str(max_len) + ")");
  }
  if (cu.back() > total)
    fail(std::string(name) + " ends at " + str(cu.back()) + " but the packed tensor has only " +
         str(total) + " tokens");
}

// Scans a (strided; bf16, fp16 or fp32) tensor for NaN / Inf; copies it to the host first when it
// lives on a GPU.
void check_finite(const TensorView& t, const char* name) {
  if (t.numel() == 0) return;
  int64_t span = 1;  // elements from the first to the last, inclusive
  for (int d = 0; d < t.rank; ++d) span += (t.shape[d] - 1) * t.stride[d];
  std::vector<float> host(static_cast<size_t>(span));  // room for fp32; 16-bit data fills half
  copy_bytes(host.data(), Device::cpu(), t.data, t.device, size_t(span) * dtype_size(t.dtype));
  std::array<int64_t, 4> index{};
  for (int64_t n = 0; n < t.numel(); ++n) {
    int64_t offset = 0;
    for (int d = 0; d < t.rank; ++d) offset += index[d] * t.stride[d];
    if (!std::isfinite(detail::load_element(host.data(), offset, t.dtype))) {
      std::string where;
      for (int d = 0; d < t.rank; ++d) where += (d ? ", " : "") + str(index[d]);
      fail(std::string(name) + " holds a NaN or Inf at [" + where + "] (check_inputs is on)");
    }
    for (int d = t.rank - 1; d >= 0; --d) {
      if (++index[d] < t.shape[d]) break;
      index[d] = 0;
    }
  }
}

std::vector<int32_t> read_int32(const TensorView& t, const char* name) {
  std::vector<int32_t> host(static_cast<size_t>(t.numel()));
  if (!t.is_contiguous()) fail(std::string(name) + " must be contiguous to be checked");
  copy_bytes(host.data(), Device::cpu(), t.data, t.device, host.size() * sizeof(int32_t));
  return host;
}

// params.head_alpha (Params in params.hpp): fp32 [H_q], contiguous, on the tensors' device, values
// in [0, 1] (read and checked on the CPU always, on a GPU with check_inputs). Returns its data, or
// nullptr when not given.
const float* check_head_alpha(const TensorView& head_alpha, const Problem& p, bool check_values) {
  if (head_alpha.empty_view()) return nullptr;
  const char* name = "params.head_alpha";
  if (head_alpha.dtype != DType::fp32 || head_alpha.rank != 1 || head_alpha.shape[0] != p.heads_q ||
      (p.heads_q > 1 && head_alpha.stride[0] != 1))
    fail(std::string(name) + " is " + dtype_name(head_alpha.dtype) + " " +
         head_alpha.shape_string() + "; expected contiguous fp32 [H_q] = [" + str(p.heads_q) +
         "], one alpha per query head");
  if (head_alpha.data == nullptr) fail(std::string(name) + " has a null data pointer");
  if (!(head_alpha.device == p.device))
    fail(std::string(name) + " is on " + device_name(head_alpha.device) + " but q is on " +
         device_name(p.device) +
         "; expected the tensors' device (CUDA: device memory the kernels read)");
  if (p.device.type == DeviceType::cpu || check_values) {
    std::vector<float> values(static_cast<size_t>(p.heads_q));
    copy_bytes(values.data(), Device::cpu(), head_alpha.data, head_alpha.device,
               values.size() * sizeof(float));
    for (int64_t h = 0; h < p.heads_q; ++h)
      if (!(values[h] >= 0.0f && values[h] <= 1.0f))
        fail(std::string(name) + "[" + str(h) + "] is " + std::to_string(values[h]) +
             "; expected a value in [0, 1]");
  }
  return head_alpha.ptr<const float>();
}

// The paged half of make_problem: k and v are page pools (their ranks and head dims are checked
// already), queries are packed by varlen.cu_seqlens_q. Returns the pages the sequences use, when
// it read the block table (on the CPU, or with check_inputs).
std::vector<int32_t> make_paged(const AttentionArgs& args, const Params& params, Problem& p) {
  const TensorView& cq = args.varlen.cu_seqlens_q;
  const TensorView& table = args.paged.block_table;
  const TensorView& lens = args.paged.seq_lens_kv;
  if (!args.varlen.cu_seqlens_kv.empty_view())
    fail(
        "cu_seqlens_kv was given with paged K/V; expected it empty (seq_lens_kv and block_table "
        "say where each sequence's keys are)");
  check_given(table, "block_table");
  check_given(lens, "seq_lens_kv");
  check_rank(cq, "cu_seqlens_q", 1, "[num_seqs + 1]");
  check_rank(table, "block_table", 2, "[num_seqs, max_pages_per_seq]");
  check_rank(lens, "seq_lens_kv", 1, "[num_seqs]");
  for (const auto& [t, name] : {std::pair{&cq, "cu_seqlens_q"}, std::pair{&table, "block_table"},
                                std::pair{&lens, "seq_lens_kv"}}) {
    if (t->dtype != DType::int32)
      fail(std::string(name) + " has dtype " + dtype_name(t->dtype) + "; expected int32");
    check_same_device(*t, name, p.device);
  }
  if (cq.shape[0] < 1) fail("cu_seqlens_q has 0 entries; expected num_seqs + 1 >= 1");
  p.num_seqs = cq.shape[0] - 1;
  if (table.shape[0] != p.num_seqs || lens.shape[0] != p.num_seqs)
    fail("block_table has shape " + table.shape_string() + " and seq_lens_kv " +
         lens.shape_string() + " but cu_seqlens_q has " + str(cq.shape[0]) +
         " entries; expected [" + str(p.num_seqs) + ", max_pages_per_seq] and [" + str(p.num_seqs) +
         "]");
  if (cq.shape[0] > 1 && cq.stride[0] != 1) fail("cu_seqlens_q must be contiguous");
  if (lens.shape[0] > 1 && lens.stride[0] != 1) fail("seq_lens_kv must be contiguous");
  if (table.shape[1] > 1 && table.stride[1] != 1)
    fail("block_table has stride " + str(table.stride[1]) +
         " along its pages; expected 1 (rows contiguous)");

  const int64_t num_pages = args.k.shape[0], page_size = args.k.shape[1];
  if (page_size < 16 || (page_size & (page_size - 1)) != 0 || page_size > (int64_t(1) << 30))
    fail("page_size (dim 1 of k and v, " + args.k.shape_string() + ") is " + str(page_size) +
         "; expected a power of two >= 16");
  p.pages.num_pages = num_pages;
  p.pages.page_size = int32_t(page_size);
  while ((int64_t(1) << p.pages.page_shift) < page_size) ++p.pages.page_shift;
  p.pages.block_table = table.ptr<const int32_t>();
  p.pages.block_table_stride = table.stride[0];
  p.pages.seq_lens_kv = lens.ptr<const int32_t>();
  const int64_t capacity = table.shape[1] * page_size;  // keys a block_table row can address

  p.len_q = args.varlen.max_seqlen_q;
  p.len_kv = args.varlen.max_seqlen_kv;
  if (p.len_q < 0 || p.len_kv < 0)
    fail("max_seqlen_q / max_seqlen_kv are " + str(p.len_q) + " / " + str(p.len_kv) +
         "; expected >= 0");
  if (p.len_kv > capacity)
    fail("max_seqlen_kv is " + str(p.len_kv) + " but block_table " + table.shape_string() +
         " addresses at most " + str(capacity) + " keys per sequence (max_pages_per_seq * " +
         "page_size = " + str(table.shape[1]) + " * " + str(page_size) + ")");
  p.total_q = args.q.shape[0];
  p.total_kv = p.num_seqs * p.len_kv;  // keys read, at most (pages may be shared)
  p.cu_seqlens_q = cq.ptr<const int32_t>();

  // On the CPU the metadata is free to read, so it is always checked; on a GPU only on request.
  if (p.device.type != DeviceType::cpu && !params.check_inputs) return {};
  const auto cu_q = read_cu_seqlens(cq);
  check_cu_seqlens_values(cu_q, "cu_seqlens_q", p.total_q, p.len_q);
  const auto len_kv = read_int32(lens, "seq_lens_kv");
  std::vector<int32_t> pages(size_t(table.shape[0] * table.shape[1]));
  for (int64_t b = 0; b < p.num_seqs && table.shape[1] > 0; ++b)
    copy_bytes(pages.data() + b * table.shape[1], Device::cpu(),
               table.ptr<const int32_t>() + b * table.stride[0], table.device,
               size_t(table.shape[1]) * sizeof(int32_t));
  std::vector<int32_t> used;
  for (int64_t b = 0; b < p.num_seqs; ++b) {
    const int64_t lq = cu_q[b + 1] - cu_q[b], lkv = len_kv[b];
    if (lkv < 0 || lkv > p.len_kv)
      fail("seq_lens_kv[" + str(b) + "] is " + str(lkv) +
           "; expected 0 <= L_kv <= max_seqlen_kv (" + str(p.len_kv) + ")");
    if (lq > lkv)
      fail("sequence " + str(b) + " has L_q = " + str(lq) + " > L_kv = " + str(lkv) +
           "; expected L_q <= L_kv (causal, bottom-right aligned)");
    for (int64_t page = 0; page * page_size < lkv; ++page) {
      const int32_t id = pages[size_t(b * table.shape[1] + page)];
      if (id < 0 || id >= num_pages)
        fail("block_table[" + str(b) + ", " + str(page) + "] is " + str(id) +
             "; expected a page of " + "the pools, in [0, " + str(num_pages) + ")");
      used.push_back(id);
    }
  }
  std::sort(used.begin(), used.end());
  used.erase(std::unique(used.begin(), used.end()), used.end());
  return used;
}

// check_inputs on a paged K or V: the pages in use, whole (the sm_90 kernel reads a partial last
// page to its end), not the pool's other pages.
void check_pages_finite(const TensorView& pool, const std::vector<int32_t>& pages,
                        const char* name) {
  TensorView page = pool;
  page.rank = 3;
  for (int d = 0; d < 3; ++d)
    page.shape[d] = pool.shape[d + 1], page.stride[d] = pool.stride[d + 1];
  for (int32_t id : pages) {
    page.data =
        static_cast<char*>(pool.data) + id * pool.stride[0] * int64_t(dtype_size(pool.dtype));
    check_finite(page, (std::string(name) + " page " + str(id)).c_str());
  }
}

}  // namespace

// Validates args and params for one stage and returns the Problem every backend consumes.
Problem detail::make_problem(const AttentionArgs& args, const Params& params, Needs needs) {
  params.validate();
  check_given(args.q, "q");
  check_given(args.k, "k");
  check_given(args.v, "v");
  const bool varlen = args.varlen.enabled();
  const bool paged = args.paged.enabled();
  if (paged && !varlen)
    fail(
        "paged K/V needs packed queries: varlen.cu_seqlens_q was not given (expected int32 "
        "[num_seqs + 1])");
  const int rank = varlen ? 3 : 4;
  const int kv_rank = paged ? 4 : rank;
  const char* q_layout = varlen ? "[total_q, H_q, D] (varlen)" : "[B, L_q, H_q, D]";
  const char* kv_layout = paged    ? "[num_pages, page_size, H_kv, D] (paged)"
                          : varlen ? "[total_kv, H_kv, D] (varlen)"
                                   : "[B, L_kv, H_kv, D]";
  check_rank(args.q, "q", rank, q_layout);
  check_rank(args.k, "k", kv_rank, kv_layout);
  check_rank(args.v, "v", kv_rank, kv_layout);

  Problem p;
  p.device = args.q.device;
  // The dtype before the device's availability, so that the CUDA rule is checkable without a GPU.
  if (p.device.type == DeviceType::cuda && args.q.dtype != DType::bf16 &&
      args.q.dtype != DType::fp16)
    fail(std::string("q has dtype ") + dtype_name(args.q.dtype) +
         "; expected bf16 or fp16 on CUDA (fp32 runs on the CPU backend only)");
  if (args.q.dtype != DType::bf16 && args.q.dtype != DType::fp16 && args.q.dtype != DType::fp32)
    fail(std::string("q has dtype ") + dtype_name(args.q.dtype) +
         "; expected bf16, fp16 or fp32 (fp32 on the CPU only)");
  if (p.device.type == DeviceType::cuda && !cuda_available())
    fail("q is on " + device_name(p.device) + " but no CUDA device is available to flashprefill");
  check_same_device(args.k, "k", p.device);
  check_same_device(args.v, "v", p.device);

  p.dtype = args.q.dtype;
  if (args.k.dtype != p.dtype)
    fail(std::string("k has dtype ") + dtype_name(args.k.dtype) + " but q has " +
         dtype_name(p.dtype) + "; expected the same");
  if (args.v.dtype != p.dtype)
    fail(std::string("v has dtype ") + dtype_name(args.v.dtype) + " but q has " +
         dtype_name(p.dtype) + "; expected the same");

  const int hd = rank - 2, kv_hd = kv_rank - 2;  // index of the head dimension
  p.heads_q = args.q.shape[hd];
  p.heads_kv = args.k.shape[kv_hd];
  p.head_dim = args.q.shape[hd + 1];
  if (p.head_dim != 64 && p.head_dim != 128 && p.head_dim != 256)
    fail("head dim (last dimension of q) is " + str(p.head_dim) + "; expected 64, 128 or 256");
  if (args.k.shape[kv_hd + 1] != p.head_dim || args.v.shape[kv_hd + 1] != p.head_dim)
    fail("head dims differ: q " + args.q.shape_string() + ", k " + args.k.shape_string() + ", v " +
         args.v.shape_string() + "; expected the same D");
  if (args.v.shape[kv_hd] != p.heads_kv)
    fail("v has " + str(args.v.shape[hd]) + " heads but k has " + str(p.heads_kv) +
         "; expected the same");
  if (p.heads_kv == 0 || p.heads_q == 0)
    fail("q has " + str(p.heads_q) + " heads and k " + str(p.heads_kv) + "; expected at least 1");
  if (p.heads_q % p.heads_kv != 0)
    fail("GQA: q has " + str(p.heads_q) + " heads, not a multiple of k's " + str(p.heads_kv) +
         " heads");
  p.group = p.heads_q / p.heads_kv;
  if (args.k.shape[0] != args.v.shape[0] || args.k.shape[1] != args.v.shape[1])
    fail("k " + args.k.shape_string() + " and v " + args.v.shape_string() +
         " differ in shape; expected the same");
  check_last_dim_contiguous(args.q, "q");
  check_last_dim_contiguous(args.k, "k");
  check_last_dim_contiguous(args.v, "v");

  p.varlen = varlen;
  std::vector<int32_t> used_pages;  // paged, when the block table was read
  if (paged) {
    used_pages = make_paged(args, params, p);
  } else if (varlen) {
    const TensorView& cq = args.varlen.cu_seqlens_q;
    const TensorView& ck = args.varlen.cu_seqlens_kv;
    check_given(ck, "cu_seqlens_kv");
    check_rank(cq, "cu_seqlens_q", 1, "[num_seqs + 1]");
    check_rank(ck, "cu_seqlens_kv", 1, "[num_seqs + 1]");
    if (cq.dtype != DType::int32)
      fail(std::string("cu_seqlens_q has dtype ") + dtype_name(cq.dtype) + "; expected int32");
    if (ck.dtype != DType::int32)
      fail(std::string("cu_seqlens_kv has dtype ") + dtype_name(ck.dtype) + "; expected int32");
    check_same_device(cq, "cu_seqlens_q", p.device);
    check_same_device(ck, "cu_seqlens_kv", p.device);
    if (cq.shape[0] < 1) fail("cu_seqlens_q has 0 entries; expected num_seqs + 1 >= 1");
    if (cq.shape[0] != ck.shape[0])
      fail("cu_seqlens_q has " + str(cq.shape[0]) + " entries and cu_seqlens_kv " +
           str(ck.shape[0]) + "; expected the same (num_seqs + 1)");
    if (cq.shape[0] > 1 && (cq.stride[0] != 1 || ck.stride[0] != 1))
      fail("cu_seqlens_q and cu_seqlens_kv must be contiguous");
    p.num_seqs = cq.shape[0] - 1;
    p.len_q = args.varlen.max_seqlen_q;
    p.len_kv = args.varlen.max_seqlen_kv;
    if (p.len_q < 0 || p.len_kv < 0)
      fail("max_seqlen_q / max_seqlen_kv are " + str(p.len_q) + " / " + str(p.len_kv) +
           "; expected >= 0");
    p.total_q = args.q.shape[0];
    p.total_kv = args.k.shape[0];
    p.cu_seqlens_q = cq.ptr<const int32_t>();
    p.cu_seqlens_kv = ck.ptr<const int32_t>();
    // On the CPU the offsets are free to read, so they are always checked; on a GPU only on
    // request.
    if (p.device.type == DeviceType::cpu || params.check_inputs) {
      const auto cu_q = read_cu_seqlens(cq);
      const auto cu_kv = read_cu_seqlens(ck);
      check_cu_seqlens_values(cu_q, "cu_seqlens_q", p.total_q, p.len_q);
      check_cu_seqlens_values(cu_kv, "cu_seqlens_kv", p.total_kv, p.len_kv);
      for (int64_t b = 0; b < p.num_seqs; ++b) {
        const int64_t lq = cu_q[b + 1] - cu_q[b], lkv = cu_kv[b + 1] - cu_kv[b];
        if (lq > lkv)
          fail("sequence " + str(b) + " has L_q = " + str(lq) + " > L_kv = " + str(lkv) +
               "; expected L_q <= L_kv (causal, bottom-right aligned)");
      }
    }
  } else {
    if (args.k.shape[0] != args.q.shape[0])
      fail("q has batch " + str(args.q.shape[0]) + " but k has " + str(args.k.shape[0]) +
           "; expected the same B");
    p.num_seqs = args.q.shape[0];
    p.len_q = args.q.shape[1];
    p.len_kv = args.k.shape[1];
    if (p.len_q > p.len_kv)
      fail("L_q = " + str(p.len_q) + " > L_kv = " + str(p.len_kv) +
           "; expected L_q <= L_kv (causal, bottom-right aligned)");
    p.total_q = p.num_seqs * p.len_q;
    p.total_kv = p.num_seqs * p.len_kv;
  }
  p.q = args.q.data;
  p.k = args.k.data;
  p.v = args.v.data;
  p.q_stride = strides_of(args.q, varlen);
  p.k_stride = paged ? strides_of(args.k, false) : strides_of(args.k, varlen);
  p.v_stride = paged ? strides_of(args.v, false) : strides_of(args.v, varlen);

  if (needs == Needs::attention) {
    check_given(args.out, "out");
    if (args.out.rank != args.q.rank || args.out.shape != args.q.shape)
      fail("out has shape " + args.out.shape_string() + " but q has " + args.q.shape_string() +
           "; expected the same");
    if (args.out.dtype != p.dtype)
      fail(std::string("out has dtype ") + dtype_name(args.out.dtype) + "; expected q's " +
           dtype_name(p.dtype));
    check_same_device(args.out, "out", p.device);
    check_last_dim_contiguous(args.out, "out");
    p.out = args.out.data;
    p.out_stride = strides_of(args.out, varlen);
    if (!args.lse.empty_view()) {
      const TensorView& lse = args.lse;
      if (lse.dtype != DType::fp32)
        fail(std::string("lse has dtype ") + dtype_name(lse.dtype) + "; expected fp32");
      check_same_device(lse, "lse", p.device);
      const bool ok =
          varlen ? (lse.rank == 2 && lse.shape[0] == p.heads_q && lse.shape[1] == p.total_q)
                 : (lse.rank == 3 && lse.shape[0] == p.num_seqs && lse.shape[1] == p.heads_q &&
                    lse.shape[2] == p.len_q);
      if (!ok)
        fail("lse has shape " + lse.shape_string() + "; expected " +
             (varlen ? "[H_q, total_q] = [" + str(p.heads_q) + ", " + str(p.total_q) + "]"
                     : "[B, H_q, L_q] = [" + str(p.num_seqs) + ", " + str(p.heads_q) + ", " +
                           str(p.len_q) + "]"));
      check_last_dim_contiguous(lse, "lse");
      p.lse = lse.ptr<float>();
      p.lse_batch = varlen ? 0 : lse.stride[0];
      p.lse_head = varlen ? lse.stride[0] : lse.stride[1];
    }
  }

  if (p.device.type == DeviceType::cuda) {
    // The CUDA kernels move rows in 16-byte pieces (cp.async, TMA, vector loads).
    // A stride of an extent-1 dimension is never used (PyTorch may report anything there).
    const auto check_rows_16b = [&](const void* data, const Strides& s, int64_t heads,
                                    const char* name, int64_t batches) {
      const auto ok = [](int64_t stride, int64_t extent) { return extent <= 1 || stride % 8 == 0; };
      const bool aligned = reinterpret_cast<uintptr_t>(data) % 16 == 0 && ok(s.token, 2) &&
                           ok(s.head, heads) && ok(s.batch, batches);
      if (!aligned)
        fail(std::string(name) +
             " is not 16-byte aligned for the CUDA backend (data pointer % 16 = " +
             str(int64_t(reinterpret_cast<uintptr_t>(data) % 16)) +
             ", strides in elements: token " + str(s.token) + ", head " + str(s.head) +
             "); expected a 16-byte aligned pointer and strides that are multiples of 8 elements");
    };
    // Batches along dim 0 (stride unused when packed): sequences, or pages of a pool.
    const int64_t q_batches = varlen ? 1 : p.num_seqs;
    const int64_t kv_batches = paged ? p.pages.num_pages : q_batches;
    check_rows_16b(p.q, p.q_stride, p.heads_q, "q", q_batches);
    check_rows_16b(p.k, p.k_stride, p.heads_kv, "k", kv_batches);
    check_rows_16b(p.v, p.v_stride, p.heads_kv, "v", kv_batches);
    if (p.out) check_rows_16b(p.out, p.out_stride, p.heads_q, "out", q_batches);
  }

  if (params.check_inputs) {
    check_finite(args.q, "q");
    if (paged) {
      check_pages_finite(args.k, used_pages, "k");
      check_pages_finite(args.v, used_pages, "v");
    } else {
      check_finite(args.k, "k");
      check_finite(args.v, "v");
    }
  }
  p.head_alpha = check_head_alpha(params.head_alpha, p, params.check_inputs);
  p.params = params;
  if (p.params.scale == 0.0f) p.params.scale = 1.0f / std::sqrt(static_cast<float>(p.head_dim));
  p.stream = args.stream;
  if (p.device.type == DeviceType::cuda) {
    // The CUDA kernels index tokens (TMA coordinates) and layout rows in 32 bits, as col_idx does.
    const StageShapes s = detail::stage_shapes_of(p);
    constexpr int64_t kInt32Max = 2147483647;
    if (p.total_q > kInt32Max || p.total_kv > kInt32Max || s.max_rows > kInt32Max)
      fail("the problem has " + str(p.total_q) + " query tokens, " + str(p.total_kv) +
           " key tokens and " + str(s.max_rows) +
           " layout rows; the CUDA backend expects each below 2^31");
    if (p.pages.num_pages >= kInt32Max)  // a TMA coordinate, and one past it reads zeros
      fail("k and v have " + str(p.pages.num_pages) +
           " pages; the CUDA backend expects fewer than 2^31 - 1");
    cuda::set_device(p.device.index);
  }
  return p;
}

namespace {

using detail::make_problem;
using detail::Needs;

bool is_cpu(const Problem& p) { return p.device.type == DeviceType::cpu; }

void check_layout(const Problem& p, const BlockSparseLayout& layout, const char* stage) {
  const StageShapes s = detail::stage_shapes_of(p);
  const std::string where = std::string(stage) + ": layout";
  if (layout.block_size != p.block())
    fail(where + ".block_size is " + str(layout.block_size) + " but params.block_size is " +
         str(p.block()) + "; expected the same");
  if (layout.num_seqs != p.num_seqs || layout.num_heads != p.heads_q)
    fail(where + " is for " + str(layout.num_seqs) + " sequences x " + str(layout.num_heads) +
         " heads; expected " + str(p.num_seqs) + " x " + str(p.heads_q));
  if (layout.max_rows < s.max_rows || layout.max_cols < s.max_cols)
    fail(where + " has capacity " + str(layout.max_rows) + " rows / " + str(layout.max_cols) +
         " cols; expected at least " + str(s.max_rows) + " / " + str(s.max_cols) +
         " (see stage_shapes)");
  struct Part {
    const TensorView* view;
    const char* name;
    DType dtype;
    int64_t min_size;
  };
  for (const Part& part :
       {Part{&layout.seq_row_offset, "seq_row_offset", DType::int64, p.num_seqs + 1},
        Part{&layout.row_ptr, "row_ptr", DType::int64, layout.max_rows + 1},
        Part{&layout.col_idx, "col_idx", DType::int32, layout.max_cols}}) {
    const TensorView& t = *part.view;
    if (t.rank != 1 || t.dtype != part.dtype || t.shape[0] < part.min_size ||
        (t.shape[0] > 1 && t.stride[0] != 1))
      fail(where + "." + part.name + " is " + dtype_name(t.dtype) + " " + t.shape_string() +
           "; expected contiguous " + dtype_name(part.dtype) + " with at least " +
           str(part.min_size) + " entries");
    if (part.min_size > 0 && t.data == nullptr)
      fail(where + "." + part.name + " has a null data pointer");
    if (!(t.device == p.device))
      fail(where + "." + part.name + " is on " + device_name(t.device) + "; expected " +
           device_name(p.device));
  }
}

void check_fp32_matrix(const TensorView& t, const char* name, int64_t rows, int64_t cols,
                       Device device) {
  check_given(t, name);
  if (t.dtype != DType::fp32 || t.rank != 2 || t.shape[0] < rows || t.shape[1] != cols ||
      !t.is_contiguous())
    fail(std::string(name) + " is " + dtype_name(t.dtype) + " " + t.shape_string() +
         "; expected contiguous fp32 [" + str(rows) + ", " + str(cols) + "]");
  check_same_device(t, name, device);
}

void check_pooled(const Problem& p, const TensorView& pooled) {
  const StageShapes s = detail::stage_shapes_of(p);
  check_given(pooled, "pooled_keys");
  if (pooled.dtype != DType::fp32 || pooled.rank != 3 || pooled.shape[0] < s.pooled_key_slots ||
      pooled.shape[1] != p.heads_kv || pooled.shape[2] != p.head_dim || !pooled.is_contiguous())
    fail("pooled_keys is " + std::string(dtype_name(pooled.dtype)) + " " + pooled.shape_string() +
         "; expected contiguous fp32 [" + str(s.pooled_key_slots) + ", " + str(p.heads_kv) + ", " +
         str(p.head_dim) + "]");
  check_same_device(pooled, "pooled_keys", p.device);
}

BlockSparseLayout layout_view(const Problem& p, void* seq_row_offset, void* row_ptr,
                              void* col_idx) {
  const StageShapes s = detail::stage_shapes_of(p);
  BlockSparseLayout layout;
  layout.block_size = p.block();
  layout.num_seqs = p.num_seqs;
  layout.num_heads = p.heads_q;
  layout.max_rows = s.max_rows;
  layout.max_cols = s.max_cols;
  layout.seq_row_offset =
      TensorView::contiguous(seq_row_offset, DType::int64, p.device, {p.num_seqs + 1});
  layout.row_ptr = TensorView::contiguous(row_ptr, DType::int64, p.device, {s.max_rows + 1});
  layout.col_idx = TensorView::contiguous(col_idx, DType::int32, p.device, {s.max_cols});
  return layout;
}

detail::DiscoveryPlan plan_discovery(const Problem& p, int64_t max_rows) {
  return is_cpu(p) ? cpu::plan_discovery(p, max_rows) : cuda::plan_discovery(p, max_rows);
}
detail::AttentionPlan plan_attention(const Problem& p, int64_t max_rows) {
  return is_cpu(p) ? cpu::plan_attention(p, max_rows) : cuda::plan_attention(p, max_rows);
}

// flash_prefill's workspace: the layout, then discovery's scratch, then attention's.
struct FlashPrefillPlan {
  detail::Region seq_row_offset, row_ptr, col_idx, discovery, attention;
  detail::DiscoveryPlan discovery_plan;  // offsets from discovery.offset
  detail::AttentionPlan attention_plan;  // offsets from attention.offset
  size_t bytes = 0;
};

FlashPrefillPlan plan_flash_prefill(const Problem& p) {
  const StageShapes s = detail::stage_shapes_of(p);
  FlashPrefillPlan plan;
  detail::RegionAllocator regions;
  plan.seq_row_offset = regions.take(size_t(p.num_seqs + 1) * 8);
  plan.row_ptr = regions.take(size_t(s.max_rows + 1) * 8);
  plan.col_idx = regions.take(size_t(s.max_cols) * 4);
  plan.discovery_plan = plan_discovery(p, s.max_rows);
  plan.discovery = regions.take(plan.discovery_plan.bytes);
  plan.attention_plan = plan_attention(p, s.max_rows);
  plan.attention = regions.take(plan.attention_plan.bytes);
  plan.bytes = regions.bytes();
  return plan;
}

// The caller's workspace, or the cached one; checked for size either way.
char* take_workspace(const Problem& p, Workspace workspace, size_t needed, const char* stage) {
  if (needed == 0) return nullptr;
  if (workspace.data == nullptr)
    return static_cast<char*>(detail::cached_workspace(p.device, p.stream, needed));
  if (workspace.bytes < needed)
    fail(std::string(stage) + ": workspace has " + std::to_string(workspace.bytes) +
         " bytes; expected at least " + std::to_string(needed) +
         " (see the *_workspace_size functions)");
  return static_cast<char*>(workspace.data);
}

bool nothing_to_do(const Problem& p) { return p.num_seqs == 0 || p.total_q == 0; }

}  // namespace

void Params::validate() const {
  if (block_size < 16 || (block_size & (block_size - 1)) != 0)
    fail("params.block_size is " + str(block_size) + "; expected a power of two >= 16");
  if (!(alpha >= 0.0f && alpha <= 1.0f))
    fail("params.alpha is " + std::to_string(alpha) + "; expected a value in [0, 1]");
  if (sink_blocks < 0) fail("params.sink_blocks is " + str(sink_blocks) + "; expected >= 0");
  if (window_blocks < 0) fail("params.window_blocks is " + str(window_blocks) + "; expected >= 0");
  if (last_full_blocks < 0)
    fail("params.last_full_blocks is " + str(last_full_blocks) + "; expected >= 0");
  if (min_budget < 0) fail("params.min_budget is " + str(min_budget) + "; expected >= 0");
  if (discovery != Discovery::exact && discovery != Discovery::robust)
    fail("params.discovery is " + str(int(discovery)) +
         "; expected Discovery::exact (0) or Discovery::robust (1)");
  if (!(scale >= 0.0f) || !std::isfinite(scale))
    fail("params.scale is " + std::to_string(scale) +
         "; expected a finite value > 0, or 0 for 1/sqrt(head_dim)");
}

StageShapes stage_shapes(const AttentionArgs& args, const Params& params) {
  return detail::stage_shapes_of(make_problem(args, params, Needs::discovery));
}

LayoutStorage allocate_layout(const AttentionArgs& args, const Params& params) {
  const Problem p = make_problem(args, params, Needs::discovery);
  const StageShapes s = detail::stage_shapes_of(p);
  LayoutStorage storage;
  storage.seq_row_offset = Buffer::allocate(p.device, size_t(p.num_seqs + 1) * 8);
  storage.row_ptr = Buffer::allocate(p.device, size_t(s.max_rows + 1) * 8);
  storage.col_idx = Buffer::allocate(p.device, size_t(s.max_cols) * 4);
  storage.view =
      layout_view(p, storage.seq_row_offset.data(), storage.row_ptr.data(), storage.col_idx.data());
  if (is_cpu(p))
    cpu::fill_seq_row_offsets(p, storage.view);
  else
    cuda::fill_seq_row_offsets(p, storage.view);
  return storage;
}

void pool_keys(const AttentionArgs& args, const Params& params, const TensorView& pooled_keys) {
  const Problem p = make_problem(args, params, Needs::discovery);
  check_pooled(p, pooled_keys);
  if (p.num_seqs == 0 || p.total_kv == 0) return;
  if (is_cpu(p))
    cpu::pool_keys(p, pooled_keys.ptr<float>());
  else
    cuda::pool_keys(p, pooled_keys.ptr<float>());
}

void block_scores(const AttentionArgs& args, const Params& params, const TensorView& pooled_keys,
                  const TensorView& scores) {
  const Problem p = make_problem(args, params, Needs::discovery);
  // The robust rule scores every key against pooled queries, which given pooled keys cannot do.
  if (p.params.discovery != Discovery::exact)
    fail(
        "block_scores: params.discovery is robust; this stage takes given pooled keys and computes "
        "the exact rule's scores only (expected Discovery::exact; discover_layout runs the robust "
        "rule)");
  const StageShapes s = detail::stage_shapes_of(p);
  check_pooled(p, pooled_keys);
  check_fp32_matrix(scores, "scores", s.max_rows, s.max_key_blocks, p.device);
  if (nothing_to_do(p)) return;
  if (is_cpu(p))
    cpu::block_scores(p, pooled_keys.ptr<const float>(), scores.ptr<float>(), scores.stride[0]);
  else
    cuda::block_scores(p, pooled_keys.ptr<const float>(), scores.ptr<float>(), scores.stride[0]);
}

void select_blocks(const AttentionArgs& args, const Params& params, const TensorView& scores,
                   const BlockSparseLayout& layout) {
  const Problem p = make_problem(args, params, Needs::discovery);
  const StageShapes s = detail::stage_shapes_of(p);
  check_fp32_matrix(scores, "scores", s.max_rows, s.max_key_blocks, p.device);
  check_layout(p, layout, "select_blocks");
  if (is_cpu(p))
    cpu::select_blocks(p, scores.ptr<const float>(), scores.stride[0], layout);
  else
    cuda::select_blocks(p, scores.ptr<const float>(), scores.stride[0], layout);
}

void discover_layout(const AttentionArgs& args, const Params& params,
                     const BlockSparseLayout& layout, Workspace workspace) {
  const Problem p = make_problem(args, params, Needs::discovery);
  check_layout(p, layout, "discover_layout");
  const detail::DiscoveryPlan plan = plan_discovery(p, layout.max_rows);
  char* scratch = take_workspace(p, workspace, plan.bytes, "discover_layout");
  if (is_cpu(p))
    cpu::discover_layout(p, layout, plan, scratch);
  else
    cuda::discover_layout(p, layout, plan, scratch);
}

void block_sparse_attention(const AttentionArgs& args, const Params& params,
                            const BlockSparseLayout& layout, Workspace workspace) {
  const Problem p = make_problem(args, params, Needs::attention);
  check_layout(p, layout, "block_sparse_attention");
  if (nothing_to_do(p)) return;
  const detail::AttentionPlan plan = plan_attention(p, layout.max_rows);
  char* scratch = take_workspace(p, workspace, plan.bytes, "block_sparse_attention");
  if (is_cpu(p))
    cpu::block_sparse_attention(p, layout, plan, scratch);
  else
    cuda::block_sparse_attention(p, layout, plan, scratch);
}

void dense_attention(const AttentionArgs& args, const Params& params) {
  const Problem p = make_problem(args, params, Needs::attention);
  if (nothing_to_do(p)) return;
  if (is_cpu(p))
    cpu::dense_attention(p);
  else
    cuda::dense_attention(p);
}

size_t flash_prefill_workspace_size(const AttentionArgs& args, const Params& params) {
  return plan_flash_prefill(make_problem(args, params, Needs::attention)).bytes;
}

void flash_prefill(const AttentionArgs& args, const Params& params, Workspace workspace) {
  const Problem p = make_problem(args, params, Needs::attention);
  if (nothing_to_do(p)) return;
  const FlashPrefillPlan plan = plan_flash_prefill(p);
  char* base = take_workspace(p, workspace, plan.bytes, "flash_prefill");
  const BlockSparseLayout layout =
      layout_view(p, plan.seq_row_offset.in<void>(base), plan.row_ptr.in<void>(base),
                  plan.col_idx.in<void>(base));
  void* discovery_scratch = plan.discovery.in<void>(base);
  void* attention_scratch = plan.attention.in<void>(base);
  if (is_cpu(p)) {
    cpu::discover_layout(p, layout, plan.discovery_plan, discovery_scratch);
    cpu::block_sparse_attention(p, layout, plan.attention_plan, attention_scratch);
  } else {
    cuda::discover_layout(p, layout, plan.discovery_plan, discovery_scratch);
    cuda::block_sparse_attention(p, layout, plan.attention_plan, attention_scratch);
  }
}

LayoutStats layout_stats(const AttentionArgs& args, const Params& params,
                         const BlockSparseLayout& layout) {
  const Problem p = make_problem(args, params, Needs::discovery);
  check_layout(p, layout, "layout_stats");
  std::vector<int64_t> seq_row_offset(size_t(p.num_seqs + 1));
  copy_bytes(seq_row_offset.data(), Device::cpu(), layout.seq_row_offset.data, p.device,
             seq_row_offset.size() * 8);
  const int64_t rows = seq_row_offset.back();
  std::vector<int64_t> row_ptr(size_t(rows + 1));
  copy_bytes(row_ptr.data(), Device::cpu(), layout.row_ptr.data, p.device, row_ptr.size() * 8);
  // The row geometry reads cu_seqlens: give it host copies.
  Problem host = p;
  std::vector<int32_t> cu_q, cu_kv;
  if (p.varlen) {
    cu_q = read_cu_seqlens(args.varlen.cu_seqlens_q);
    host.cu_seqlens_q = cu_q.data();
    if (p.paged()) {
      cu_kv = read_int32(args.paged.seq_lens_kv, "seq_lens_kv");
      host.pages.seq_lens_kv = cu_kv.data();
    } else {
      cu_kv = read_cu_seqlens(args.varlen.cu_seqlens_kv);
      host.cu_seqlens_kv = cu_kv.data();
    }
  }
  LayoutStats stats;
  detail::for_each_layout_row(host, [&](const detail::LayoutRow& r, int64_t) {
    // Numbered by the layout's own seq_row_offset (the layout may be the caller's).
    const int64_t nqb = num_query_blocks(r.extent.len_q, r.extent.len_kv, p.block());
    const int64_t row = seq_row_offset[r.seq] + r.head * nqb + r.block_local;
    stats.kept_blocks += row_ptr[row + 1] - row_ptr[row];
    stats.causal_blocks += r.num_causal_blocks();
  });
  return stats;
}

}  // namespace flashprefill
