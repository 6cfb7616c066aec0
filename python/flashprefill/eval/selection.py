"""Block-selection rules written in PyTorch, for measuring them on a real model without C++.

Every rule here works on one sequence at a time and on ALGORITHM.md's geometry (absolute key blocks,
query block i = floor(P_t / B), bottom-right causal alignment) and returns a keep mask
``[H_q, num_query_blocks, num_key_blocks]`` that :func:`layout_from_mask` turns into the library's CSR
layout, so that step 5 (``flashprefill.block_sparse_attention``) runs exactly the blocks a rule chose.

- :func:`block_scores`: steps 1-2 (pooled keys rounded to the input dtype, max-shifted exp sums).
- :func:`keep_threshold`: step 3, the paper's ``S >= alpha * max S`` (plus the forced blocks).
- :func:`keep_coverage`: the coverage rule: the fewest highest-scoring blocks whose estimated mass,
  with the forced blocks', reaches ``coverage`` of the row's estimated total (docs/SELECTION.md).
- :func:`true_block_mass` / :func:`keep_oracle`: the same coverage rule on the true attention mass
  (a bound no cheap rule can beat at equal density; it needs the full attention matrix).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import _api


@dataclass
class Geometry:
    len_q: int
    len_kv: int
    block: int

    @property
    def num_key_blocks(self) -> int:
        return -(-self.len_kv // self.block)

    @property
    def first_query_block(self) -> int:
        return (self.len_kv - self.len_q) // self.block

    @property
    def num_query_blocks(self) -> int:
        return self.num_key_blocks - self.first_query_block

    def causal(self, device) -> torch.Tensor:
        """[nqb, nkb] bool: key block j <= query block i (absolute)."""
        i = torch.arange(self.first_query_block, self.num_key_blocks, device=device)
        j = torch.arange(self.num_key_blocks, device=device)
        return j[None, :] <= i[:, None]

    def forced(self, sink_blocks: int, window_blocks: int, last_full_blocks: int, device) -> torch.Tensor:
        """[nqb, nkb] bool: step 3's always-kept blocks (sinks, window, last full rows), causal."""
        i = torch.arange(self.first_query_block, self.num_key_blocks, device=device)[:, None]
        j = torch.arange(self.num_key_blocks, device=device)[None, :]
        forced = (j < sink_blocks) | (i - j < window_blocks) | (i >= self.num_key_blocks - last_full_blocks)
        return forced & (j <= i)

    def causal_blocks(self) -> int:
        first, n = self.first_query_block, self.num_query_blocks
        return n * (2 * first + n + 1) // 2


def _rows_by_query_block(x: torch.Tensor, geo: Geometry, fill: float) -> torch.Tensor:
    """[H, L_q, N] -> [H, nqb, B, N]: rows grouped by their query block, missing rows = fill."""
    heads, len_q, n = x.shape
    lead = (geo.len_kv - geo.len_q) - geo.first_query_block * geo.block
    tail = geo.num_query_blocks * geo.block - lead - len_q
    x = torch.cat([x.new_full((heads, lead, n), fill), x, x.new_full((heads, tail, n), fill)], dim=1)
    return x.view(heads, geo.num_query_blocks, geo.block, n)


def pooled_keys(k: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """Step 1: [nkb, H_kv, D] fp32 means of each key block, rounded to k's dtype as every backend scores."""
    len_kv, heads_kv, dim = k.shape
    nkb = geo.num_key_blocks
    padded = torch.zeros(nkb * geo.block, heads_kv, dim, dtype=torch.float32, device=k.device)
    padded[:len_kv] = k.float()
    counts = torch.clamp(len_kv - torch.arange(nkb, device=k.device) * geo.block, max=geo.block).float()
    means = padded.view(nkb, geo.block, heads_kv, dim).sum(1) / counts[:, None, None]
    return means.to(k.dtype).float()


def block_scores(q: torch.Tensor, k: torch.Tensor, block: int, scale: float) -> torch.Tensor:
    """Steps 1-2 for one sequence: q [L_q, H_q, D], k [L_kv, H_kv, D] -> S [H_q, nqb, nkb] fp32
    (0 on non-causal blocks)."""
    geo = Geometry(q.shape[0], k.shape[0], block)
    group = q.shape[1] // k.shape[1]
    kbar = pooled_keys(k, geo).repeat_interleave(group, dim=1)  # [nkb, H_q, D]
    x = scale * torch.einsum("thd,jhd->htj", q.float(), kbar)  # [H, L_q, nkb]
    pos = (geo.len_kv - geo.len_q) + torch.arange(geo.len_q, device=q.device)
    last_key = torch.clamp((torch.arange(geo.num_key_blocks, device=q.device) + 1) * block, max=geo.len_kv) - 1
    x = x.masked_fill(~(last_key[None, :] <= pos[:, None])[None], -math.inf)
    x = _rows_by_query_block(x, geo, -math.inf)  # [H, nqb, B, nkb]
    row_max = x.amax(dim=(2, 3), keepdim=True)
    scores = torch.exp(x - row_max).nan_to_num(0.0).sum(2)
    return scores * geo.causal(q.device)


def keep_threshold(scores: torch.Tensor, forced: torch.Tensor, alpha) -> torch.Tensor:
    """Step 3: S >= alpha * max_j S, or forced; alpha a float or a per-head tensor [H]."""
    alpha = torch.as_tensor(alpha, dtype=scores.dtype, device=scores.device).reshape(-1, 1, 1)
    return (scores >= alpha * scores.amax(-1, keepdim=True)) & (scores > 0) | forced


def keep_coverage(mass: torch.Tensor, forced: torch.Tensor, coverage) -> torch.Tensor:
    """The fewest highest-mass blocks that, with the forced ones, hold ``coverage`` of the row's mass.

    ``mass`` [H, nqb, nkb] >= 0 (0 off the causal triangle); coverage a float or per-head tensor [H].
    Written with a sort for clarity; the library finds the same set by a threshold search.
    """
    coverage = torch.as_tensor(coverage, dtype=mass.dtype, device=mass.device).reshape(-1, 1, 1)
    total = mass.sum(-1, keepdim=True)
    need = coverage * total - (mass * forced).sum(-1, keepdim=True)
    free = mass.masked_fill(forced, 0.0)
    ordered, order = free.sort(-1, descending=True)
    before = ordered.cumsum(-1) - ordered  # mass of the higher blocks, excluding this one
    keep_sorted = (before < need) & (ordered > 0)
    keep = torch.zeros(mass.shape, dtype=torch.bool, device=mass.device)
    keep.scatter_(-1, order, keep_sorted)
    return keep | forced


def true_block_mass(q: torch.Tensor, k: torch.Tensor, block: int, scale: float, rows_per_chunk: int = 1024) -> torch.Tensor:
    """[H, nqb, nkb]: the mean over block i's rows of the softmax mass they give key block j (exact)."""
    geo = Geometry(q.shape[0], k.shape[0], block)
    heads, group = q.shape[1], q.shape[1] // k.shape[1]
    nkb = geo.num_key_blocks
    offset = geo.len_kv - geo.len_q
    mass = torch.zeros(heads, geo.len_q, nkb, dtype=torch.float32, device=q.device)
    key_pos = torch.arange(geo.len_kv, device=q.device)
    for h in range(heads):
        kh = k[:, h // group].float()
        for t0 in range(0, geo.len_q, rows_per_chunk):
            qh = q[t0:t0 + rows_per_chunk, h].float()
            logits = scale * qh @ kh.T
            pos = offset + torch.arange(t0, t0 + qh.shape[0], device=q.device)
            logits.masked_fill_(key_pos[None, :] > pos[:, None], -math.inf)
            p = torch.softmax(logits, -1)
            p = torch.nn.functional.pad(p, (0, nkb * block - geo.len_kv))
            mass[h, t0:t0 + qh.shape[0]] = p.view(p.shape[0], nkb, block).sum(-1)
    grouped = _rows_by_query_block(mass, geo, 0.0)
    rows = _rows_by_query_block(torch.ones(1, geo.len_q, 1, device=q.device), geo, 0.0).sum(2)  # [1, nqb, 1]
    return grouped.sum(2) / rows


def layout_from_mask(keep: torch.Tensor, geo: Geometry, scale: float, params: dict) -> _api.Layout:
    """CSR layout (rows ordered head, query block; one sequence) of a keep mask [H, nqb, nkb]."""
    keep = keep & geo.causal(keep.device)
    flat = keep.reshape(-1, geo.num_key_blocks)
    counts = flat.sum(-1)
    row_ptr = torch.zeros(flat.shape[0] + 1, dtype=torch.int64, device=keep.device)
    row_ptr[1:] = counts.cumsum(0)
    col_idx = torch.zeros(keep.shape[0] * geo.causal_blocks(), dtype=torch.int32, device=keep.device)  # the capacity stage_shapes asks
    kept = flat.nonzero()[:, 1]
    col_idx[:kept.shape[0]] = kept.to(torch.int32)
    seq_row_offset = torch.tensor([0, flat.shape[0]], dtype=torch.int64, device=keep.device)
    p = _api._params(0.0, geo.block, params["sink_blocks"], params["window_blocks"], params["last_full_blocks"], 0, scale, False)
    return _api.Layout(seq_row_offset, row_ptr, col_idx, geo.block, keep.shape[0], geo.num_key_blocks, p)


def add_dropped_mean(q, k, v, keep, out, lse, block: int, scale: float):
    """Mean correction (FlashPrefillv2's idea): each dropped causal block j of a row adds its pooled
    contribution, weight n_j * exp(scale * q . Kbar_j) on value Vbar_j, to the kept blocks' exact softmax.

    q [L_q, H, D], k/v [L_kv, H_kv, D], keep [H, nqb, nkb], out [L_q, H, D] and lse [H, L_q] of the kept blocks.
    """
    geo = Geometry(q.shape[0], k.shape[0], block)
    group = q.shape[1] // k.shape[1]
    kbar = pooled_keys(k, geo).repeat_interleave(group, dim=1)  # [nkb, H, D]
    vbar = pooled_keys(v, geo).repeat_interleave(group, dim=1)
    counts = torch.clamp(geo.len_kv - torch.arange(geo.num_key_blocks, device=q.device) * block, max=block).float()
    logits = scale * torch.einsum("thd,jhd->htj", q.float(), kbar) + counts.log()  # [H, L_q, nkb]
    pos = (geo.len_kv - geo.len_q) + torch.arange(geo.len_q, device=q.device)
    dropped = (~keep & geo.causal(q.device))[:, pos // block - geo.first_query_block]  # [H, L_q, nkb]
    logits = logits.masked_fill(~dropped, -math.inf)
    top = torch.maximum(lse.float(), logits.amax(-1))  # [H, L_q]
    kept_weight = torch.exp(lse.float() - top)
    weights = torch.exp(logits - top[..., None])
    numerator = kept_weight[..., None] * out.float().transpose(0, 1) + torch.einsum("htj,jhd->htd", weights, vbar)
    return (numerator / (kept_weight + weights.sum(-1))[..., None]).transpose(0, 1).to(out.dtype)
