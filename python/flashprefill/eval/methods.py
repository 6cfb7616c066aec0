"""The attention methods the harness compares, behind one transformers attention function.

A method name is ``kind[:value]``:

| name | what runs |
| --- | --- |
| ``sdpa`` | dense causal SDPA (the reference) |
| ``eager`` | transformers' eager attention (bf16 matmuls, fp32 softmax): with ``sdpa``, the noise floor |
| ``paper:A`` | the library's exact rule (ALGORITHM.md) at alpha A: ``select_blocks`` then ``block_sparse_attention`` |
| ``robust:A`` | the library's robust discovery (docs/ROBUST.md) at alpha A |
| ``coverage:C`` | the coverage rule prototyped in PyTorch (selection.keep_coverage on the pooled scores) |
| ``oracle:C`` | the coverage rule on the true attention mass (a bound; needs the full attention matrix) |
| ``paper-mean:A``, ``coverage-mean:C`` | those rules plus the mean correction of the dropped blocks (selection.add_dropped_mean) |
| ``profile:PATH`` | the paper's rule with the per-layer (per-head) alpha of a calibration profile |
| ``default`` | the transformers integration exactly as a user gets it (its default settings) |
| ``default-robust`` | the same with ``configure(discovery="robust")`` |

Every sparse method records, per layer, the kept fraction of each head's causal blocks.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from .. import _api
from ..integrations import transformers as fpt
from . import selection as sel

NAME = "flashprefill_eval"
SPARSE_PARAMS = dict(sink_blocks=2, window_blocks=4, last_full_blocks=2)
BLOCK = 128


@dataclass
class Method:
    kind: str
    value: Optional[float] = None
    profile: Optional[dict] = None
    label: str = ""

    @staticmethod
    def parse(text: str) -> "Method":
        kind, _, value = text.partition(":")
        if kind in ("sdpa", "eager", "default", "default-robust"):
            return Method(kind, label=text)
        if kind == "profile":
            with open(value) as f:
                return Method(kind, profile=json.load(f), label=text)
        if kind in ("paper", "robust", "coverage", "oracle", "paper-mean", "coverage-mean"):
            return Method(kind, float(value), label=text)
        raise SystemExit(f"unknown method '{text}'; expected sdpa, eager, default, default-robust, paper:A, robust:A, "
                         f"coverage:C, oracle:C, paper-mean:A, coverage-mean:C or profile:PATH")

    @property
    def sparse(self) -> bool:
        return self.kind not in ("sdpa", "eager")


@dataclass
class State:
    method: Method = field(default_factory=lambda: Method("sdpa", label="sdpa"))
    min_sparse_len: int = 1  # prefills shorter than this (and decoding) use SDPA
    density: Dict[int, List[np.ndarray]] = field(default_factory=dict)  # layer -> per-head kept fractions
    capture: Optional[Dict[int, tuple]] = None  # layer -> (q, k, v) [L, H, D] on the CPU


state = State()


def eager(query, key, value, scaling):
    """transformers' eager attention for a plain causal prefill (q_len == kv_len)."""
    group = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(group, 1), value.repeat_interleave(group, 1)
    length = query.shape[2]
    mask = torch.full((length, length), float("-inf"), device=query.device, dtype=query.dtype).triu(1)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling + mask
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value).transpose(1, 2).contiguous()


def _per_head_density(layout: _api.Layout, heads: int, geo: sel.Geometry) -> np.ndarray:
    row_ptr = layout.row_ptr.cpu().numpy()
    kept = row_ptr[1:] - row_ptr[:-1]
    return kept.reshape(-1, heads, geo.num_query_blocks).sum(axis=(0, 2)) / (geo.causal_blocks() * (len(kept) // (heads * geo.num_query_blocks)))


def _rule_keep(method: Method, layer: int, q, k, scale) -> torch.Tensor:
    """Keep mask of one sequence (q [L_q, H, D], k [L_kv, H_kv, D]) under a PyTorch-prototyped rule."""
    geo = sel.Geometry(q.shape[0], k.shape[0], BLOCK)
    forced = geo.forced(**SPARSE_PARAMS, device=q.device)
    if method.kind == "oracle":
        return sel.keep_coverage(sel.true_block_mass(q, k, BLOCK, scale), forced, method.value)
    scores = sel.block_scores(q, k, BLOCK, scale)
    if method.kind in ("coverage", "coverage-mean"):
        return sel.keep_coverage(scores, forced, method.value)
    if method.kind == "paper-mean":
        return sel.keep_threshold(scores, forced, method.value)
    rule = method.profile.get("rule", "threshold")
    value = profile_value(method.profile, layer, q.device)
    return sel.keep_coverage(scores, forced, value) if rule == "coverage" else sel.keep_threshold(scores, forced, value)


def profile_value(profile: dict, layer: int, device) -> torch.Tensor:
    """The profile's alpha (or coverage) of one layer: a float, or one per query head."""
    return torch.as_tensor(profile["values"][layer], dtype=torch.float32, device=device)


def attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The harness's transformers attention function: query [B, H_q, L_q, D], key/value [B, H_kv, L_kv, D]."""
    method, layer = state.method, int(getattr(module, "layer_idx", 0))
    q_len, kv_len = query.shape[2], key.shape[2]
    prefill = attention_mask is None and q_len == kv_len and q_len > 1
    if state.capture is not None and prefill:
        state.capture[layer] = tuple(x[0].transpose(0, 1).to("cpu", copy=True) for x in (query, key, value))
    if method.kind in ("default", "default-robust"):
        before, collecting, discovery = len(fpt.settings.densities), fpt.settings.collect_density, fpt.settings.discovery
        fpt.settings.collect_density = True
        fpt.settings.discovery = "robust" if method.kind == "default-robust" else discovery
        try:
            out = fpt.flashprefill_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                                     **kwargs)
        finally:
            fpt.settings.collect_density, fpt.settings.discovery = collecting, discovery
        for record in fpt.settings.densities[before:]:
            state.density.setdefault(layer, []).append(np.asarray(record["per_head"]))
        del fpt.settings.densities[before:]
        return out
    if not (prefill and method.sparse and q_len >= state.min_sparse_len):
        if method.kind == "eager" and prefill:
            return eager(query, key, value, scaling), None
        return fpt._sdpa_fallback(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    if query.shape[0] != 1:
        raise ValueError("the harness runs one sequence at a time")
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # [1, L, H, D]
    geo = sel.Geometry(q_len, kv_len, BLOCK)
    if method.kind in ("paper", "robust"):
        layout = _api.select_blocks(q, k, alpha=method.value, block_size=BLOCK, softmax_scale=scaling,
                                    discovery="robust" if method.kind == "robust" else "exact", **SPARSE_PARAMS)
    else:
        keep = _rule_keep(method, layer, q[0], k[0], scaling)
        layout = sel.layout_from_mask(keep, geo, scaling, SPARSE_PARAMS)
    state.density.setdefault(layer, []).append(_per_head_density(layout, q.shape[2], geo))
    if method.kind.endswith("-mean"):
        out, lse = _api.block_sparse_attention(q, k, v, layout, softmax_scale=scaling, return_lse=True)
        return sel.add_dropped_mean(q[0], k[0], v[0], keep, out[0], lse[0], BLOCK, scaling)[None], None
    return _api.block_sparse_attention(q, k, v, layout, softmax_scale=scaling), None


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask
    AttentionInterface.register(NAME, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, flash_attention_mask)
    fpt._skip_flash_kernel_preload(NAME)
