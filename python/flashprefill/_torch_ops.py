"""PyTorch operators ``torch.ops.flashprefill.*``: registered with torch.library so they trace under
torch.compile (fake implementations give shapes without running) and replay in CUDA graphs (outputs
and workspace come from PyTorch's allocator; the C++ call never synchronises or allocates)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import _C

_PARAM_NAMES = ("alpha", "block_size", "sink_blocks", "window_blocks", "last_full_blocks", "min_budget", "softmax_scale",
                "check_inputs")


def _run(q, k, v, out, lse, cu_q, cu_k, max_q, max_k, params):
    stream = torch.cuda.current_stream(q.device).cuda_stream if q.is_cuda else 0
    common = dict(q=q, k=k, v=v, out=out, lse=lse, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q,
                  max_seqlen_k=max_k, stream=stream, **params)
    workspace = None
    if q.is_cuda:  # from PyTorch's caching allocator: graph-safe, and freed with the call
        workspace = torch.empty(_C.workspace_size(**common), dtype=torch.uint8, device=q.device)
    _C.flash_prefill(workspace=workspace, **common)


def _params(alpha, block_size, sink_blocks, window_blocks, last_full_blocks, min_budget, softmax_scale, check_inputs):
    return dict(zip(_PARAM_NAMES, (alpha, block_size, sink_blocks, window_blocks, last_full_blocks, min_budget, softmax_scale,
                                   check_inputs)))


def _flash_prefill_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, alpha: float, block_size: int, sink_blocks: int,
                      window_blocks: int, last_full_blocks: int, min_budget: int, softmax_scale: float, check_inputs: bool,
                      return_lse: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    out = torch.empty_like(q)
    lse = torch.empty((q.shape[0], q.shape[2], q.shape[1]) if return_lse else (0,), dtype=torch.float32, device=q.device)
    _run(q, k, v, out, lse if return_lse else None, None, None, 0, 0,
         _params(alpha, block_size, sink_blocks, window_blocks, last_full_blocks, min_budget, softmax_scale, check_inputs))
    return out, lse


_flash_prefill_op = torch.library.custom_op("flashprefill::flash_prefill", mutates_args=())(_flash_prefill_impl)


@_flash_prefill_op.register_fake
def _(q, k, v, alpha, block_size, sink_blocks, window_blocks, last_full_blocks, min_budget, softmax_scale, check_inputs,
      return_lse):
    lse_shape = (q.shape[0], q.shape[2], q.shape[1]) if return_lse else (0,)
    return torch.empty_like(q), q.new_empty(lse_shape, dtype=torch.float32)


def _flash_prefill_varlen_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                             cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, alpha: float, block_size: int,
                             sink_blocks: int, window_blocks: int, last_full_blocks: int, min_budget: int, softmax_scale: float,
                             check_inputs: bool, return_lse: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    out = torch.empty_like(q)
    lse = torch.empty((q.shape[1], q.shape[0]) if return_lse else (0,), dtype=torch.float32, device=q.device)
    _run(q, k, v, out, lse if return_lse else None, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
         _params(alpha, block_size, sink_blocks, window_blocks, last_full_blocks, min_budget, softmax_scale, check_inputs))
    return out, lse


_flash_prefill_varlen_op = torch.library.custom_op("flashprefill::flash_prefill_varlen", mutates_args=())(
    _flash_prefill_varlen_impl)


@_flash_prefill_varlen_op.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, alpha, block_size, sink_blocks, window_blocks,
      last_full_blocks, min_budget, softmax_scale, check_inputs, return_lse):
    return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]) if return_lse else (0,), dtype=torch.float32)


def _eager() -> bool:
    # Outside torch.compile the operator's dispatch (~100 us) buys nothing: call its body directly.
    # CUDA-graph capture is fine either way (outputs and workspace come from PyTorch's allocator).
    return not torch.compiler.is_compiling()


def flash_prefill(q, k, v, params: dict, return_lse: bool):
    op = _flash_prefill_impl if _eager() else _flash_prefill_op
    out, lse = op(q, k, v, *(params[name] for name in _PARAM_NAMES), return_lse)
    return (out, lse) if return_lse else out


def flash_prefill_varlen(q, k, v, cu_q, cu_k, max_q: int, max_k: int, params: dict, return_lse: bool):
    op = _flash_prefill_varlen_impl if _eager() else _flash_prefill_varlen_op
    out, lse = op(q, k, v, cu_q, cu_k, max_q, max_k, *(params[name] for name in _PARAM_NAMES), return_lse)
    return (out, lse) if return_lse else out
