"""The public functions: allocate outputs, pass the caller's stream, call the C++ library."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np

from . import _C

FlashPrefillError = _C.FlashPrefillError
cuda_available = _C.cuda_available


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


_torch_ops_module = None


def _torch_ops():
    """flashprefill._torch_ops, imported on first use (NumPy users need no PyTorch)."""
    global _torch_ops_module
    if _torch_ops_module is None:
        from . import _torch_ops as module
        _torch_ops_module = module
    return _torch_ops_module


# flashprefill::Discovery codes (include/flashprefill/params.hpp); the rules are docs/ROBUST.md.
_DISCOVERY_CODES = {"exact": 0, "robust": 1}


def _discovery_code(discovery) -> int:
    code = _DISCOVERY_CODES.get(discovery)
    if code is None:
        raise FlashPrefillError(f"discovery is {discovery!r}; expected 'exact' or 'robust'")
    return code


def _params(alpha, block_size, sink_blocks, window_blocks, last_full_blocks, min_budget, softmax_scale, check_inputs,
            discovery="exact", head_alpha=None):
    return dict(alpha=float(alpha), block_size=int(block_size), sink_blocks=int(sink_blocks), window_blocks=int(window_blocks),
                last_full_blocks=int(last_full_blocks), min_budget=int(min_budget),
                softmax_scale=0.0 if softmax_scale is None else float(softmax_scale), check_inputs=bool(check_inputs),
                discovery=_discovery_code(discovery), head_alpha=head_alpha)


def _param_tuple(alpha, block_size, sink_blocks, window_blocks, last_full_blocks, min_budget, softmax_scale, check_inputs,
                 discovery="exact", head_alpha=None):
    return (float(alpha), int(block_size), int(sink_blocks), int(window_blocks), int(last_full_blocks), int(min_budget),
            0.0 if softmax_scale is None else float(softmax_scale), bool(check_inputs), _discovery_code(discovery),
            head_alpha)


def _check_alpha_values(values) -> None:
    for h, a in enumerate(values):
        if not 0.0 <= a <= 1.0:  # NaN fails too
            raise FlashPrefillError(f"alpha[{h}] is {a}; expected a value in [0, 1]")


def _split_alpha(alpha, q):
    """``alpha`` as (scalar, per-head array or None). A float is one alpha for every head; a sequence, NumPy array or
    1-D tensor of H_q values is one per query head (Params::head_alpha): float32 on q's device (a torch tensor already
    there is passed as is, so a CUDA call neither copies nor synchronises and may be captured in a graph)."""
    if isinstance(alpha, (int, float, np.floating, np.integer)):
        return float(alpha), None
    heads = int(q.shape[-2])
    if isinstance(alpha, (str, bytes)):
        raise FlashPrefillError(f"alpha is {alpha!r}; expected a float or one float per query head (H_q = {heads})")
    if _is_torch(alpha):
        import torch
        if alpha.dim() == 0:
            return float(alpha), None
        if alpha.dim() != 1 or not alpha.is_floating_point():
            raise FlashPrefillError(f"alpha is a {alpha.dtype} tensor of shape {tuple(alpha.shape)}; expected a float or a "
                                    f"1-D float tensor with one alpha per query head (H_q = {heads})")
        if alpha.shape[0] != heads:
            raise FlashPrefillError(f"alpha has {alpha.shape[0]} values; expected a float or one per query head "
                                    f"(H_q = {heads})")
        device = q.device if _is_torch(q) else torch.device("cpu")
        head_alpha = alpha.detach().to(device=device, dtype=torch.float32).contiguous()
        if head_alpha.device.type == "cpu" and not torch.compiler.is_compiling():
            _check_alpha_values(head_alpha.tolist())  # GPU values: checked by the library with check_inputs
        return 0.0, head_alpha if _is_torch(q) else head_alpha.numpy()
    try:
        values = np.asarray(alpha, dtype=np.float64)
    except (TypeError, ValueError):
        raise FlashPrefillError(f"alpha is {alpha!r}; expected a float or one float per query head (H_q = {heads})")
    if values.ndim == 0:
        return float(values), None
    if values.ndim != 1:
        raise FlashPrefillError(f"alpha has shape {values.shape}; expected a float or one per query head (H_q = {heads})")
    if values.shape[0] != heads:
        raise FlashPrefillError(f"alpha has {values.shape[0]} values; expected a float or one per query head (H_q = {heads})")
    _check_alpha_values(values.tolist())
    if _is_torch(q):
        import torch
        return 0.0, torch.tensor(values, dtype=torch.float32, device=q.device)
    return 0.0, values.astype(np.float32)


def _stream_of(x) -> int:
    if _is_torch(x) and x.is_cuda:
        import torch
        return torch.cuda.current_stream(x.device).cuda_stream
    return 0


def _call(fn, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, params, **extra):
    return fn(q=q, k=k, v=v, out=out, lse=lse, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=int(max_q),
              max_seqlen_k=int(max_k), stream=_stream_of(q), **params, **extra)


def _empty_lse(q, shape):
    if _is_torch(q):
        import torch
        return torch.empty(shape, dtype=torch.float32, device=q.device)
    return np.empty(shape, dtype=np.float32)


def _empty_like(x):
    if _is_torch(x):
        import torch
        return torch.empty_like(x)
    return np.empty_like(x)


def flash_prefill(q, k, v, *, alpha: Union[float, Sequence[float]] = 0.12, block_size: int = 128, sink_blocks: int = 2,
                  window_blocks: int = 4, last_full_blocks: int = 2, min_budget: int = 0, softmax_scale: Optional[float] = None,
                  return_lse: bool = False, check_inputs: bool = False, discovery: str = "exact"):
    """FlashPrefill attention (ALGORITHM.md steps 1-5) on a padded batch.

    Args:
        q: ``[B, L_q, H_q, D]``, bf16 or fp16, or fp32 on the CPU (NumPy: float16 or float32), head dim 64, 128 or 256 (CUDA: 256 runs on the sm_80 kernels, also on Hopper).
        k, v: ``[B, L_kv, H_kv, D]``, same dtype and device, ``L_q <= L_kv``.
        alpha: keep key blocks whose score is at least ``alpha`` times the row's maximum, in [0, 1];
            0 keeps every causal block (dense attention). A float, or one value per query head (a sequence or
            1-D tensor of H_q values; head h's rows use ``alpha[h]``): a float32 torch tensor on q's device is
            used in place (no copy, no synchronisation: CUDA-graph safe; its values are checked on a GPU only
            with ``check_inputs``).
        softmax_scale: defaults to ``1 / sqrt(D)``.
        return_lse: also return the softmax log-sum-exp ``[B, H_q, L_q]`` (fp32, natural log).
        discovery: ``"exact"`` (ALGORITHM.md, the default) or ``"robust"`` (docs/ROBUST.md: also keeps the
            blocks whose best single key, against a pooled query of the block, nears that query's best key, so
            short dominant spans are kept).
    Returns:
        ``out`` like ``q``, or ``(out, lse)``.
    """
    alpha, head_alpha = _split_alpha(alpha, q)
    if _is_torch(q):  # the hot path: a params tuple in the binding's order, no dict
        return _torch_ops().flash_prefill(q, k, v, _param_tuple(alpha, block_size, sink_blocks, window_blocks, last_full_blocks,
                                                               min_budget, softmax_scale, check_inputs, discovery,
                                                               head_alpha), return_lse)
    params = _params(alpha, block_size, sink_blocks, window_blocks, last_full_blocks, min_budget, softmax_scale, check_inputs,
                     discovery, head_alpha)
    out = np.empty_like(q)
    lse = _empty_lse(q, (q.shape[0], q.shape[2], q.shape[1])) if return_lse else None
    _call(_C.flash_prefill, q, k, v, out, lse, None, None, 0, 0, params, workspace=None)
    return (out, lse) if return_lse else out


def flash_prefill_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int, *,
                         alpha: Union[float, Sequence[float]] = 0.12, block_size: int = 128, sink_blocks: int = 2,
                         window_blocks: int = 4, last_full_blocks: int = 2, min_budget: int = 0,
                         softmax_scale: Optional[float] = None, return_lse: bool = False, check_inputs: bool = False,
                         discovery: str = "exact"):
    """FlashPrefill on packed sequences (FlashAttention's varlen convention).

    Args:
        q: ``[total_q, H_q, D]``; k, v: ``[total_k, H_kv, D]``.
        cu_seqlens_q, cu_seqlens_k: int32 ``[num_seqs + 1]`` prefix sums of the lengths, on q's device.
        max_seqlen_q, max_seqlen_k: upper bounds of the lengths (host ints).
    Returns:
        ``out`` ``[total_q, H_q, D]``, or ``(out, lse)`` with lse ``[H_q, total_q]``.
    """
    alpha, head_alpha = _split_alpha(alpha, q)
    if _is_torch(q):
        return _torch_ops().flash_prefill_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
                                               _param_tuple(alpha, block_size, sink_blocks, window_blocks, last_full_blocks,
                                                            min_budget, softmax_scale, check_inputs, discovery, head_alpha),
                                               return_lse)
    params = _params(alpha, block_size, sink_blocks, window_blocks, last_full_blocks, min_budget, softmax_scale, check_inputs,
                     discovery, head_alpha)
    out = np.empty_like(q)
    lse = _empty_lse(q, (q.shape[1], q.shape[0])) if return_lse else None
    _call(_C.flash_prefill, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, params, workspace=None)
    return (out, lse) if return_lse else out


def flash_prefill_paged(q, k_pages, v_pages, block_table, seq_lens_kv, cu_seqlens_q, max_seqlen_q: int,
                        max_seqlen_kv: int, *, alpha: Union[float, Sequence[float]] = 0.12, block_size: int = 128,
                        sink_blocks: int = 2, window_blocks: int = 4, last_full_blocks: int = 2, min_budget: int = 0,
                        softmax_scale: Optional[float] = None, return_lse: bool = False, check_inputs: bool = False,
                        discovery: str = "exact", out=None):
    """FlashPrefill with K and V in a paged cache (vLLM's layout), read in place.

    Args:
        q: ``[total_q, H_q, D]``, packed by ``cu_seqlens_q`` (int32 ``[num_seqs + 1]``).
        k_pages, v_pages: ``[num_pages, page_size, H_kv, D]`` page pools, any strides with D contiguous
            (``kv_cache[0]`` and ``kv_cache[1]`` of vLLM's ``[2, num_pages, page_size, H_kv, D]`` cache).
            page_size is a power of two >= 16.
        block_table: int32 ``[num_seqs, max_pages_per_seq]``: sequence b's key t is row ``t % page_size``
            of page ``block_table[b, t // page_size]``.
        seq_lens_kv: int32 ``[num_seqs]``, the keys of each sequence (its cached prefix and this
            chunk); each sequence's queries are its last ``L_q <= L_kv`` positions (bottom-right causal).
        max_seqlen_q, max_seqlen_kv: host upper bounds of the query and key lengths.
        check_inputs: also check the data: NaN / Inf, cu_seqlens_q, seq_lens_kv and the block table's
            page ids (on CUDA this reads them back: a host synchronisation).
        discovery: ``"exact"`` or ``"robust"``, as :func:`flash_prefill`.
        out: optional ``[total_q, H_q, D]`` output to write (e.g. rows of a serving engine's buffer), with the
            dtype and device of q and D contiguous; not under torch.compile.
    Returns:
        ``out`` ``[total_q, H_q, D]``, or ``(out, lse)`` with lse ``[H_q, total_q]``.
    """
    alpha, head_alpha = _split_alpha(alpha, q)
    if _is_torch(q):
        return _torch_ops().flash_prefill_paged(q, k_pages, v_pages, block_table, seq_lens_kv, cu_seqlens_q,
                                                int(max_seqlen_q), int(max_seqlen_kv),
                                                _param_tuple(alpha, block_size, sink_blocks, window_blocks,
                                                             last_full_blocks, min_budget, softmax_scale, check_inputs,
                                                             discovery, head_alpha),
                                                return_lse, out)
    params = _params(alpha, block_size, sink_blocks, window_blocks, last_full_blocks, min_budget, softmax_scale, check_inputs,
                     discovery, head_alpha)
    out = np.empty_like(q) if out is None else out
    lse = _empty_lse(q, (q.shape[1], q.shape[0])) if return_lse else None
    _call(_C.flash_prefill, q, k_pages, v_pages, out, lse, cu_seqlens_q, None, max_seqlen_q, max_seqlen_kv, params,
          workspace=None, block_table=block_table, seq_lens_kv=seq_lens_kv)
    return (out, lse) if return_lse else out


def dense_attention(q, k, v, *, softmax_scale: Optional[float] = None, return_lse: bool = False):
    """Dense causal attention (bottom-right aligned), the baseline: same layouts as :func:`flash_prefill`."""
    params = _params(0.0, 128, 2, 4, 2, 0, softmax_scale, False)
    out = _empty_like(q)
    lse = _empty_lse(q, (q.shape[0], q.shape[2], q.shape[1])) if return_lse else None
    _call(_C.dense_attention, q, k, v, out, lse, None, None, 0, 0, params)
    return (out, lse) if return_lse else out


@dataclass
class Layout:
    """A block-sparse layout in CSR form (ALGORITHM.md step 4).

    Rows are ordered (sequence, query head, query block); row ``r``'s kept key blocks are
    ``col_idx[row_ptr[r]:row_ptr[r + 1]]``, ascending. ``seq_row_offset[b]`` is sequence b's first row.
    Arrays live on the inputs' device (NumPy or torch).
    """
    seq_row_offset: Any
    row_ptr: Any
    col_idx: Any
    block_size: int
    num_heads: int
    max_key_blocks: int
    params: dict

    def _host(self, a):
        return a.cpu().numpy() if _is_torch(a) else np.asarray(a)

    @property
    def num_rows(self) -> int:
        return int(self._host(self.seq_row_offset)[-1])

    def rows(self) -> list:
        """Kept key blocks of every row, as Python lists (copied to the host)."""
        row_ptr, col_idx = self._host(self.row_ptr), self._host(self.col_idx)
        return [col_idx[row_ptr[r]:row_ptr[r + 1]].tolist() for r in range(self.num_rows)]

    def to_dense(self) -> np.ndarray:
        """Boolean mask ``[num_rows, max_key_blocks]``: True where a block is kept (for pictures)."""
        mask = np.zeros((self.num_rows, self.max_key_blocks), dtype=bool)
        for r, kept in enumerate(self.rows()):
            mask[r, kept] = True
        return mask

    def density(self, causal_blocks: int) -> float:
        return float(self._host(self.row_ptr)[self.num_rows]) / max(causal_blocks, 1)


def _alloc_index(q, count, dtype_name):
    if _is_torch(q):
        import torch
        return torch.empty(int(count), dtype=getattr(torch, dtype_name), device=q.device)
    return np.empty(int(count), dtype=getattr(np, dtype_name))


def select_blocks(q, k, *, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q: int = 0, max_seqlen_k: int = 0,
                  alpha: Union[float, Sequence[float]] = 0.12, block_size: int = 128, sink_blocks: int = 2,
                  window_blocks: int = 4, last_full_blocks: int = 2, min_budget: int = 0, softmax_scale: Optional[float] = None,
                  discovery: str = "exact") -> Layout:
    """Pattern discovery alone (steps 1-4): the kept key blocks of every (sequence, head, query block).
    ``discovery``: ``"exact"`` (default) or ``"robust"`` (docs/ROBUST.md), as :func:`flash_prefill`."""
    alpha, head_alpha = _split_alpha(alpha, q)
    params = _params(alpha, block_size, sink_blocks, window_blocks, last_full_blocks, min_budget, softmax_scale, False,
                     discovery, head_alpha)
    num_seqs, _, max_rows, max_key_blocks, max_cols = _call(_C.stage_shapes, q, k, k, None, None, cu_seqlens_q, cu_seqlens_k,
                                                            max_seqlen_q, max_seqlen_k, params)
    layout = Layout(_alloc_index(q, num_seqs + 1, "int64"), _alloc_index(q, max_rows + 1, "int64"),
                    _alloc_index(q, max(max_cols, 1), "int32"), int(block_size), int(q.shape[-2]), int(max_key_blocks), params)
    _call(_C.discover_layout, q, k, k, None, None, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, params,
          seq_row_offset=layout.seq_row_offset, row_ptr=layout.row_ptr, col_idx=layout.col_idx)
    return layout


def block_sparse_attention(q, k, v, layout: Layout, *, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q: int = 0,
                           max_seqlen_k: int = 0, softmax_scale: Optional[float] = None, return_lse: bool = False):
    """Step 5 alone: exact attention restricted to ``layout``'s kept blocks (yours or :func:`select_blocks`')."""
    params = dict(layout.params)
    if softmax_scale is not None:
        params["softmax_scale"] = float(softmax_scale)
    out = _empty_like(q)
    varlen = cu_seqlens_q is not None
    lse_shape = (q.shape[1], q.shape[0]) if varlen else (q.shape[0], q.shape[2], q.shape[1])
    lse = _empty_lse(q, lse_shape) if return_lse else None
    _call(_C.block_sparse_attention, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, params,
          seq_row_offset=layout.seq_row_offset, row_ptr=layout.row_ptr, col_idx=layout.col_idx)
    return (out, lse) if return_lse else out


_DTYPE_SHORT = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "float32": "fp32", "fp32": "fp32"}


def cpu_kernel_variant(dtype) -> str:
    """The CPU kernel variant that runs inputs of ``dtype`` (torch or NumPy dtype, or "bf16"/"fp16"/"fp32"):
    "amx" or "avx512bf16" (bf16 products, bf16 inputs only), "avx512", "avx2" or "generic" (fp32 products).
    The widest the processor supports; the environment variable FLASHPREFILL_CPU_KERNELS caps it."""
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPE_SHORT:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            pass
    if name not in _DTYPE_SHORT:
        raise FlashPrefillError(f"cpu_kernel_variant: dtype {dtype}; expected bfloat16, float16 or float32")
    return _C.cpu_kernel_variant(_DTYPE_SHORT[name])


def make_structured_input(seq_len: int, heads_q: int = 32, heads_kv: int = 8, head_dim: int = 128, batch: int = 1, seed: int = 0):
    """BENCHMARK.md's structured synthetic input: (q, k, v) as uint16 NumPy arrays holding bf16 bits.

    With PyTorch: ``torch.from_numpy(q).view(torch.bfloat16)``.
    """
    return _C.make_structured_input(batch, seq_len, heads_q, heads_kv, head_dim, seed)
