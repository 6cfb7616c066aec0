"""Needle inputs: short key spans that dominate some queries' attention (issue: robust discovery).

ALGORITHM.md scores a query against the *mean* of each key block, so a span of a few keys that draws
almost all of some queries' attention is diluted by the block's other keys and can fall under
``alpha * max``. These inputs plant such spans in BENCHMARK.md's structured synthetic input and measure
what a selection rule does to the queries that depend on them.

    case = make_needle_case(16384, span_len=8, dense_share=0.9, device="cuda")
    result = needle_metrics(case, fp.flash_prefill(case.q, case.k, case.v, alpha=0.12))
    result.kept_share   # share of affected rows whose output keeps cosine >= 0.9 with dense attention

Strength is set by what dense attention does, not by a raw vector length: the planted direction's size
is searched so that the affected queries give the span ``dense_share`` of their softmax mass (median).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from ._api import make_structured_input

COSINE_KEPT = 0.9  # an affected row counts as kept when its output has cosine >= this with dense attention


@dataclass
class NeedleCase:
    q: "torch.Tensor"  # [1, L, H_q, D] bf16
    k: "torch.Tensor"  # [1, L, H_kv, D]
    v: "torch.Tensor"
    span_start: int
    span_len: int
    query_start: int
    query_rows: int
    dense_share: float          # median dense softmax mass of the span over the affected rows, as built
    affected: "torch.Tensor"    # bool [H_q, query_rows]: rows whose dense mass on the span is >= 0.5
    dense_out: "torch.Tensor"   # fp32 [H_q, query_rows, D]: dense attention of the planted rows
    description: dict = field(default_factory=dict)


def _rows_attention(q_rows, k, v, positions, scale):
    """Dense causal attention of some query rows in fp32: q_rows [H_q, R, D], k/v [L, H_kv, D]."""
    import torch
    heads_q, heads_kv = q_rows.shape[0], k.shape[1]
    kk = k.float().permute(1, 0, 2).repeat_interleave(heads_q // heads_kv, dim=0)  # [H_q, L, D]
    vv = v.float().permute(1, 0, 2).repeat_interleave(heads_q // heads_kv, dim=0)
    logits = torch.einsum("hrd,hld->hrl", q_rows.float(), kk) * scale
    mask = torch.arange(k.shape[0], device=k.device)[None, :] > positions[:, None]
    logits.masked_fill_(mask[None], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.einsum("hrl,hld->hrd", probs, vv), probs


def make_needle_case(seq_len: int, *, heads_q: int = 9, heads_kv: int = 3, head_dim: int = 64, span_len: int = 8,
                     span_depth: float = 0.25, query_depth: float = 0.7, query_rows: int = 128, dense_share: float = 0.9,
                     hidden: bool = False, seed: int = 0, device: str = "cpu") -> NeedleCase:
    """Plants, per kv head, a span of ``span_len`` keys at ``span_depth`` of the sequence that the
    ``query_rows`` queries starting at ``query_depth`` attend to with ``dense_share`` of their mass
    (every query head of the group), with values unlike the rest so that missing it shows in the output.
    ``hidden``: the span's keys keep their norms (only their direction changes), so no statistic of a
    key's size finds them; otherwise the planted direction is added to keys and queries alike."""
    import torch
    q_np, k_np, v_np = make_structured_input(seq_len, heads_q, heads_kv, head_dim, seed=seed)
    as_float = lambda a: torch.from_numpy(a).view(torch.bfloat16).float()[0].to(device)
    q, k, v = as_float(q_np), as_float(k_np), as_float(v_np)
    gen = torch.Generator().manual_seed(seed + 7919)
    span_start = int(span_depth * seq_len)
    query_start = int(query_depth * seq_len)
    if not (span_start + span_len < query_start and query_start + query_rows <= seq_len):
        raise ValueError(f"needle: span [{span_start}, {span_start + span_len}) must end before the queries "
                         f"[{query_start}, {query_start + query_rows}) and those fit in {seq_len} tokens")
    direction = torch.randn(heads_kv, head_dim, generator=gen)
    direction = (direction / direction.norm(dim=-1, keepdim=True)).to(device)
    needle_values = (3.0 * torch.randn(span_len, heads_kv, head_dim, generator=gen)).to(device)
    group = heads_q // heads_kv
    scale = 1.0 / math.sqrt(head_dim)
    positions = torch.arange(query_start, query_start + query_rows, device=device)
    base_q = q[query_start:query_start + query_rows].permute(1, 0, 2)  # [H_q, R, D]
    dir_q = direction.repeat_interleave(group, dim=0)[:, None, :]       # [H_q, 1, D]
    span = slice(span_start, span_start + span_len)

    if hidden:
        # The span's keys keep their own norms and turn towards the planted direction: nothing about
        # them stands out of their block but their direction; the queries carry the whole strength.
        norms = k[span].norm(dim=-1, keepdim=True)
        along = (k[span] * direction[None]).sum(-1, keepdim=True) * direction[None]
        across = k[span] - along
        across = across / across.norm(dim=-1, keepdim=True)
        hidden_keys = norms * (0.6 * across + 0.8 * direction[None])

    def build(strength):
        kk = k.clone()
        if hidden:
            kk[span] = hidden_keys
            return kk, base_q + strength * strength * dir_q / 8.0
        kk[span] += strength * direction[None]
        return kk, base_q + strength * dir_q

    sample = slice(None, None, 4)  # the search looks at every fourth planted row

    def share(strength):
        kk, qq = build(strength)
        _, probs = _rows_attention(qq[:, sample], kk, v, positions[sample], scale)
        return probs[..., span].sum(-1)  # [H_q, R / 4]

    lo, hi = 0.0, 4.0
    while share(hi).median() < dense_share and hi < 1e3:
        lo, hi = hi, hi * 2
    for _ in range(14):  # bisection on the planted length (the dense share grows with it), to 1/16K of 4
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if share(mid).median() < dense_share else (lo, mid)
    strength = hi
    k_planted, q_rows = build(strength)
    v_planted = v.clone()
    v_planted[span] = needle_values
    q_planted = q.clone()
    q_planted[query_start:query_start + query_rows] = q_rows.permute(1, 0, 2)
    to_bf16 = lambda x: x.to(torch.bfloat16)[None].contiguous()
    q_b, k_b, v_b = to_bf16(q_planted), to_bf16(k_planted), to_bf16(v_planted)
    # The reference sees the rounded inputs, as the kernels do.
    dense_out, probs = _rows_attention(q_b[0, query_start:query_start + query_rows].permute(1, 0, 2), k_b[0], v_b[0],
                                       positions, scale)
    span_mass = probs[..., span].sum(-1)
    return NeedleCase(q_b, k_b, v_b, span_start, span_len, query_start, query_rows, float(span_mass.median()),
                      span_mass >= 0.5, dense_out,
                      dict(seq_len=seq_len, heads_q=heads_q, heads_kv=heads_kv, head_dim=head_dim, span_len=span_len,
                           span_depth=span_depth, query_depth=query_depth, query_rows=query_rows,
                           target_share=dense_share, strength=strength, hidden=hidden, seed=seed))


@dataclass
class NeedleResult:
    affected_rows: int
    kept_share: float      # share of affected rows with cosine >= COSINE_KEPT against dense attention
    mean_cosine: float
    median_rel_error: float
    max_rel_error: float


def needle_metrics(case: NeedleCase, out) -> NeedleResult:
    """Compares the planted rows of ``out`` ([1, L, H_q, D]) with dense attention."""
    import torch
    rows = out[0, case.query_start:case.query_start + case.query_rows].permute(1, 0, 2).float()  # [H_q, R, D]
    dense = case.dense_out
    cosine = torch.nn.functional.cosine_similarity(rows, dense, dim=-1)
    rel = (rows - dense).norm(dim=-1) / dense.norm(dim=-1).clamp_min(1e-30)
    cos_a, rel_a = cosine[case.affected], rel[case.affected]
    n = int(case.affected.sum())
    if n == 0:
        return NeedleResult(0, float("nan"), float("nan"), float("nan"), float("nan"))
    return NeedleResult(n, float((cos_a >= COSINE_KEPT).float().mean()), float(cos_a.mean()),
                        float(rel_a.median()), float(rel_a.max()))


def suite(seq_lens: Sequence[int], *, span_lens: Sequence[int] = (4, 16, 48), dense_shares: Sequence[float] = (0.6, 0.9),
          placements: Sequence[tuple] = ((0.1, 0.5), (0.3, 0.75), (0.55, 0.85)), heads=(9, 3, 64), query_rows: int = 128,
          seed: int = 0, device: str = "cpu"):
    """The needle suite: every (length, span length, dense share, (span depth, query depth)) case, yielded
    one at a time (each holds its inputs on ``device``). Query starts are not block-aligned."""
    heads_q, heads_kv, head_dim = heads
    case_seed = seed
    for seq_len in seq_lens:
        for span_len in span_lens:
            for share in dense_shares:
                for span_depth, query_depth in placements:
                    case_seed += 1
                    yield make_needle_case(seq_len, heads_q=heads_q, heads_kv=heads_kv, head_dim=head_dim,
                                           span_len=span_len, span_depth=span_depth, query_depth=query_depth,
                                           query_rows=query_rows, dense_share=share, seed=case_seed, device=device)


def pack_varlen(cases: Sequence[NeedleCase]):
    """Packs cases of one shape into a varlen batch: (q, k, v [T, H, D], cu_seqlens, max_seqlen, offsets)."""
    import torch
    q = torch.cat([c.q[0] for c in cases])
    k = torch.cat([c.k[0] for c in cases])
    v = torch.cat([c.v[0] for c in cases])
    lengths = [c.q.shape[1] for c in cases]
    offsets = np.cumsum([0] + lengths)
    cu = torch.tensor(offsets, dtype=torch.int32, device=q.device)
    return q, k, v, cu, max(lengths), offsets[:-1].tolist()
