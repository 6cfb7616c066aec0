"""PyTorch operators ``torch.ops.flashprefill.*``: registered with torch.library so they trace under
torch.compile (fake implementations give shapes without running) and replay in CUDA graphs (outputs,
and the workspace under capture, come from PyTorch's allocator). Eager calls use the library's
workspace cache of their device and stream: it allocates only when a call needs more than any before
(freeing the smaller buffer then waits for the device); other calls neither allocate nor wait."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import _C

_PARAM_NAMES = ("alpha", "block_size", "sink_blocks", "window_blocks", "last_full_blocks", "min_budget", "softmax_scale",
                "check_inputs", "discovery", "head_alpha")

# Workspace bytes per call signature, for calls under CUDA-graph capture. The size depends only on
# shapes, dtype, device and params (never on data: varlen bounds come from max_seqlen), so one C++
# query per signature suffices.
_workspace_sizes: dict = {}

try:  # the raw current stream without building a torch.cuda.Stream object (~0.3 us instead of ~5 us)
    _raw_stream = torch._C._cuda_getCurrentRawStream
except AttributeError:  # pragma: no cover - older or CPU-only PyTorch builds
    def _raw_stream(index):
        return torch.cuda.current_stream(index).cuda_stream

# flashprefill::DType codes (include/flashprefill/tensor.hpp).
_DTYPE_CODES = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2, torch.int32: 3, torch.int64: 4}
_EXPECTED_DTYPE = {"q": "bfloat16, float16 or float32 (float32 on the CPU)", "k": "the dtype of q", "v": "the dtype of q",
                   "alpha": "float32", "cu_seqlens_q": "int32", "cu_seqlens_k": "int32", "block_table": "int32", "seq_lens_kv": "int32"}


def _describe(t, name):
    """(data_ptr, shape, stride, dtype code, device ordinal or -1): what the C++ call reads of a tensor. A few
    attribute reads, where DLPack export costs several microseconds per tensor in PyTorch's __dlpack__."""
    if t is None:
        return None
    code = _DTYPE_CODES.get(t.dtype)
    if code is None:
        raise _C.FlashPrefillError(f"{name} has dtype {t.dtype}; expected {_EXPECTED_DTYPE.get(name, 'a supported dtype')}")
    return (t.data_ptr(), t.shape, t.stride(), code, t.get_device())


def _check_no_grad(q, k, v):
    # Without a backward, a silent detach would break training: say so (DLPack export used to refuse too).
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise _C.FlashPrefillError("q, k or v requires grad; flashprefill has no backward: call it under torch.no_grad() "
                                   "or pass detached tensors")


try:
    _is_capturing = torch._C._cuda_isCurrentStreamCapturing
except AttributeError:  # pragma: no cover - CPU-only PyTorch builds
    def _is_capturing():
        return False


def _run(q, k, v, out, lse, cu_q, cu_k, max_q, max_k, params, block_table=None, seq_lens_kv=None):
    """One C++ call with positional arguments (in the binding's order); `params` is a tuple in _PARAM_NAMES order.
    With block_table and seq_lens_kv, k and v are page pools (paged K/V)."""
    _check_no_grad(q, k, v)
    head_alpha = params[-1]  # None, or float32 [H_q] on q's device (_api._split_alpha)
    described = (_describe(q, "q"), _describe(k, "k"), _describe(v, "v"), _describe(out, "out"), _describe(lse, "lse"),
                 _describe(cu_q, "cu_seqlens_q"), _describe(cu_k, "cu_seqlens_k"), max_q, max_k, *params[:-1],
                 _describe(head_alpha, "alpha"))
    paged = (_describe(block_table, "block_table"), _describe(seq_lens_kv, "seq_lens_kv"))
    if not q.is_cuda:
        _C.flash_prefill_described(*described, 0, 0, 0, *paged)
        return
    device = q.get_device()
    stream = _raw_stream(device)
    if not _is_capturing():
        # Eager: the library's workspace cache for this device and stream (stream-ordered calls
        # reuse it; it grows and is kept), so no allocation per call.
        _C.flash_prefill_described(*described, stream, 0, 0, *paged)
        return
    # Under CUDA-graph capture the workspace comes from PyTorch's allocator (graph-private pool), so
    # the captured graph owns it; the size depends only on shapes, dtype and params.
    key = (q.shape, k.shape, v.shape, q.dtype, device, None if cu_q is None else cu_q.shape[0], max_q, max_k, params[:-1],
           None if head_alpha is None else head_alpha.shape,
           lse is not None, None if block_table is None else block_table.shape)
    size = _workspace_sizes.get(key)
    if size is None:
        size = _C.workspace_size_described(*described, stream, *paged)
        if len(_workspace_sizes) > 4096:  # many distinct shapes (varlen serving): start over
            _workspace_sizes.clear()
        _workspace_sizes[key] = size
    workspace = torch.empty(size, dtype=torch.uint8, device=q.device)
    _C.flash_prefill_described(*described, stream, workspace.data_ptr(), size, *paged)


def _flash_prefill_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, alpha: float, block_size: int, sink_blocks: int,
                      window_blocks: int, last_full_blocks: int, min_budget: int, softmax_scale: float, check_inputs: bool,
                      discovery: int, head_alpha: Optional[torch.Tensor],
                      return_lse: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    out = torch.empty_like(q)
    lse = torch.empty((q.shape[0], q.shape[2], q.shape[1]) if return_lse else (0,), dtype=torch.float32, device=q.device)
    _run(q, k, v, out, lse if return_lse else None, None, None, 0, 0,
         (alpha, block_size, sink_blocks, window_blocks, last_full_blocks, min_budget, softmax_scale, check_inputs, discovery,
          head_alpha))
    return out, lse


_flash_prefill_op = torch.library.custom_op("flashprefill::flash_prefill", mutates_args=())(_flash_prefill_impl)


@_flash_prefill_op.register_fake
def _(q, k, v, alpha, block_size, sink_blocks, window_blocks, last_full_blocks, min_budget, softmax_scale, check_inputs,
      discovery, head_alpha, return_lse):
    lse_shape = (q.shape[0], q.shape[2], q.shape[1]) if return_lse else (0,)
    return torch.empty_like(q), q.new_empty(lse_shape, dtype=torch.float32)


def _flash_prefill_varlen_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                             cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, alpha: float, block_size: int,
                             sink_blocks: int, window_blocks: int, last_full_blocks: int, min_budget: int, softmax_scale: float,
                             check_inputs: bool, discovery: int, head_alpha: Optional[torch.Tensor],
                             return_lse: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    out = torch.empty_like(q)
    lse = torch.empty((q.shape[1], q.shape[0]) if return_lse else (0,), dtype=torch.float32, device=q.device)
    _run(q, k, v, out, lse if return_lse else None, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
         (alpha, block_size, sink_blocks, window_blocks, last_full_blocks, min_budget, softmax_scale, check_inputs, discovery,
          head_alpha))
    return out, lse


_flash_prefill_varlen_op = torch.library.custom_op("flashprefill::flash_prefill_varlen", mutates_args=())(
    _flash_prefill_varlen_impl)


@_flash_prefill_varlen_op.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, alpha, block_size, sink_blocks, window_blocks,
      last_full_blocks, min_budget, softmax_scale, check_inputs, discovery, head_alpha, return_lse):
    return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]) if return_lse else (0,), dtype=torch.float32)


def _flash_prefill_paged_impl(q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor, block_table: torch.Tensor,
                              seq_lens_kv: torch.Tensor, cu_seqlens_q: torch.Tensor, max_seqlen_q: int, max_seqlen_kv: int,
                              alpha: float, block_size: int, sink_blocks: int, window_blocks: int, last_full_blocks: int,
                              min_budget: int, softmax_scale: float, check_inputs: bool, discovery: int,
                              head_alpha: Optional[torch.Tensor], return_lse: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    out = torch.empty_like(q)
    lse = torch.empty((q.shape[1], q.shape[0]) if return_lse else (0,), dtype=torch.float32, device=q.device)
    _run(q, k_pages, v_pages, out, lse if return_lse else None, cu_seqlens_q, None, max_seqlen_q, max_seqlen_kv,
         (alpha, block_size, sink_blocks, window_blocks, last_full_blocks, min_budget, softmax_scale, check_inputs,
          discovery, head_alpha), block_table, seq_lens_kv)
    return out, lse


_flash_prefill_paged_op = torch.library.custom_op("flashprefill::flash_prefill_paged", mutates_args=())(
    _flash_prefill_paged_impl)


@_flash_prefill_paged_op.register_fake
def _(q, k_pages, v_pages, block_table, seq_lens_kv, cu_seqlens_q, max_seqlen_q, max_seqlen_kv, alpha, block_size,
      sink_blocks, window_blocks, last_full_blocks, min_budget, softmax_scale, check_inputs, discovery, head_alpha,
      return_lse):
    return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]) if return_lse else (0,), dtype=torch.float32)


def _eager() -> bool:
    # Outside torch.compile the operator's dispatch (~100 us) buys nothing: run its body directly.
    # CUDA-graph capture is fine either way (outputs and workspace come from PyTorch's allocator).
    return not torch.compiler.is_compiling()


def flash_prefill(q, k, v, params: tuple, return_lse: bool):
    """``params`` in _PARAM_NAMES order. Eagerly: allocate and call; under torch.compile: the operator."""
    if _eager():
        out = torch.empty_like(q)
        lse = torch.empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32, device=q.device) if return_lse else None
        _run(q, k, v, out, lse, None, None, 0, 0, params)
        return (out, lse) if return_lse else out
    out, lse = _flash_prefill_op(q, k, v, *params, return_lse)
    return (out, lse) if return_lse else out


def flash_prefill_varlen(q, k, v, cu_q, cu_k, max_q: int, max_k: int, params: tuple, return_lse: bool):
    if _eager():
        out = torch.empty_like(q)
        lse = torch.empty((q.shape[1], q.shape[0]), dtype=torch.float32, device=q.device) if return_lse else None
        _run(q, k, v, out, lse, cu_q, cu_k, max_q, max_k, params)
        return (out, lse) if return_lse else out
    out, lse = _flash_prefill_varlen_op(q, k, v, cu_q, cu_k, max_q, max_k, *params, return_lse)
    return (out, lse) if return_lse else out


def flash_prefill_paged(q, k_pages, v_pages, block_table, seq_lens_kv, cu_q, max_q: int, max_kv: int, params: tuple,
                        return_lse: bool, out=None):
    if out is not None and not _eager():
        raise _C.FlashPrefillError("out= is for eager calls (a serving engine's buffer); under torch.compile use the "
                                   "returned tensor")
    if _eager():
        out = torch.empty_like(q) if out is None else out
        lse = torch.empty((q.shape[1], q.shape[0]), dtype=torch.float32, device=q.device) if return_lse else None
        _run(q, k_pages, v_pages, out, lse, cu_q, None, max_q, max_kv, params, block_table, seq_lens_kv)
        return (out, lse) if return_lse else out
    out, lse = _flash_prefill_paged_op(q, k_pages, v_pages, block_table, seq_lens_kv, cu_q, max_q, max_kv, *params,
                                       return_lse)
    return (out, lse) if return_lse else out
