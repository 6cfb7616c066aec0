"""The needle suite of robust discovery: share of affected query rows whose output keeps cosine >= 0.9
with dense attention, per selection mode, on planted short key spans (flashprefill.needles).

    python bench/needle_suite.py --lengths 16K,32K --device cpu --json needles.json

Modes: the exact rule (ALGORITHM.md) at the given alphas, the min_budget floor (`budget@N`),
`robust@alpha`, the library's robust discovery (docs/ROBUST.md: flash_prefill(..., discovery="robust")),
and `proto-dual@alpha@ratio[@flags]`, the plain-torch prototype robust discovery was chosen from: the
exact rule, or a block whose best single key against a pooled query of its query block lies within
ln(1 / ratio) of that query's best key in the row (flags: `g` the mean query over the GQA group's rows
and heads, `gf` that and the group's far query, `gF` the far query alone; without flags, the mean per
query head; `p` added: the mean query of each pair of query blocks serves both, `P` the farther of
the pair's far queries, `Q` the farthest of four blocks' far queries; `e` added: products of e4m3
values, each representative and each key block scaled by its own power of two, as docs/ROBUST.md; `2`
added: the far head's row farthest from the far row in place of the mean query; `s` added: in place of
the mean query, the group's mean over each head's rows on the far side's opposite, (q - mean) . (far -
mean) <= 0; `c` added: in place of the mean query, the group's mean over each head's rows whose
distance to the head's mean is at most the midrange of the block's distances). The
library's rule is `proto-dual@alpha@alpha^2@gfec` since session 18 (`gfe`, the mean query, sessions
13-17; `gf` its bf16-product form of session 16). The structured input's density
(BENCHMARK.md) is reported per mode beside it, as the ratio to the exact rule's.
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch

import flashprefill as fp
from flashprefill import needles

BLOCK = 128


def parse_len(text):
    return int(text[:-1]) * 1024 if text[-1] in "kK" else int(text)


# ---- the prototype rule (fp32 torch; one sequence [L, H, D]) ---------------------------------------
def _block_view(x, length):
    blocks = -(-length // BLOCK)
    padded = torch.nn.functional.pad(x.float(), (0, 0, 0, 0, 0, blocks * BLOCK - length))
    return padded.view(blocks, BLOCK, *x.shape[1:]), blocks


def _block_means(k):
    """Block means [nb, H_kv, D], rounded to the input dtype as every backend's pooled keys are."""
    length = k.shape[0]
    blocks, nb = _block_view(k, length)
    valid = (torch.arange(nb * BLOCK, device=k.device) < length).view(nb, BLOCK)
    return (blocks.sum(1) / valid.sum(1).float()[:, None, None]).to(k.dtype).float()


def _selected(logits, length, alpha, params):
    """ALGORITHM.md steps 2-3 on per-row logits x [H_q, L, nb]."""
    heads, _, nb = logits.shape
    rows = torch.nn.functional.pad(logits, (0, 0, 0, nb * BLOCK - length), value=float("-inf")).view(heads, nb, BLOCK, nb)
    row_max = rows.amax(dim=(2, 3), keepdim=True)
    scores = torch.exp(rows - row_max).sum(2)
    i = torch.arange(nb, device=logits.device)[:, None]
    j = torch.arange(nb, device=logits.device)[None, :]
    forced = (j < params["sink_blocks"]) | (i - j < params["window_blocks"]) | (i >= nb - params["last_full_blocks"])
    keep = (scores >= alpha * scores.amax(-1, keepdim=True)) | forced[None]
    return keep & (j <= i)[None]


def _e4m3_scaled(x, dims):
    """x rounded to e4m3 after scaling by the power of two that puts its largest magnitude over `dims`
    in [128, 256), and scaled back (the scaling is exact, so only the rounding to e4m3 remains)."""
    top = x.abs().amax(dim=dims, keepdim=True)
    exponent = torch.frexp(top)[1]
    scale = torch.where(top > 0, torch.ldexp(torch.ones_like(top), 8 - exponent), torch.ones_like(top))
    return (x * scale).to(torch.float8_e4m3fn).float() / scale


def proto_dual_layout(q, k, alpha, alpha2, pool_group=False, far_query=False, far_only=False, pair_mean=False,
                      far_run=0, fp8=False, far2=False, split=False, core=False, params=dict(sink_blocks=2, window_blocks=4, last_full_blocks=2)):
    """Kept mask [H_q, nb, nb]: the exact rule, or a block whose best single key, scored against the mean
    query of the query block, lies within ln(1/alpha2) of the row's best key (pool_group: the mean over the
    rows and the query heads of the GQA group). far_query (with pool_group): also the group's far query,
    the row farthest from its head's mean in the head whose is farthest (docs/ROBUST.md); far_only: that
    one alone; pair_mean: the mean query of each pair of query blocks serves both (half the mean's
    products; the far query stays per block); far_run = n: the farthest of the far queries of n
    consecutive query blocks serves all n, scored over the causal prefix of the last of them; fp8: the
    products of e4m3 values (_e4m3_scaled); far2, split, core: the mean query replaced (module
    docstring's flags 2, s, c). The library's rule is pool_group, far_query, core, fp8, alpha2 =
    alpha^2 (up to its rounding of the core query to the input dtype and of the distances in fp32)."""
    length, heads_q, dim = q.shape
    heads_kv = k.shape[1]
    group = heads_q // heads_kv
    scale = 1.0 / math.sqrt(dim)
    mean = _block_means(k)
    nb = mean.shape[0]
    positions = torch.arange(length, device=q.device)
    last_key = torch.clamp((torch.arange(nb, device=q.device) + 1) * BLOCK, max=length) - 1
    hidden = last_key[None, :] > positions[:, None]
    x_mean = torch.einsum("thd,jhd->htj", q.float(), mean.repeat_interleave(group, 1)) * scale
    x_mean.masked_fill_(hidden[None], float("-inf"))
    exact = _selected(x_mean, length, alpha, params)
    del x_mean
    qb, _ = _block_view(q, length)
    rows = torch.clamp(length - torch.arange(nb, device=q.device) * BLOCK, max=BLOCK).float()
    block_sums = qb.sum(1)                                            # [nb, H_q, D]
    qbar = block_sums / rows[:, None, None]
    if pair_mean:  # the mean query over the pair of query blocks 2m, 2m + 1, for both blocks
        pairs = -(-nb // 2)
        sums = torch.nn.functional.pad(block_sums, (0, 0, 0, 0, 0, 2 * pairs - nb)).view(pairs, 2, heads_q, dim).sum(1)
        counts = torch.nn.functional.pad(rows, (0, 2 * pairs - nb)).view(pairs, 2).sum(1)
        pair_qbar = (sums / counts[:, None, None]).repeat_interleave(2, 0)[:nb]
    far_q = None
    if far_query:  # per head, the row farthest from its head's mean; per group, the head whose is farthest
        rounded = qbar.to(q.dtype).float()                            # as the library: the rounded mean
        spread = ((qb.float() - rounded[:, None]) ** 2).sum(-1)       # [nb, B, H_q]
        rvalid = (torch.arange(nb * BLOCK, device=q.device) < length).view(nb, BLOCK)
        spread.masked_fill_(~rvalid[:, :, None], -1.0)
        best, row = spread.max(1)                                     # [nb, H_q]
        rows_q = torch.gather(qb.float(), 1, row[:, None, :, None].expand(nb, 1, heads_q, dim))[:, 0]
        head = best.view(nb, heads_kv, group).argmax(-1)              # [nb, H_kv]
        far_q = torch.gather(rows_q.view(nb, heads_kv, group, dim), 2,
                             head[:, :, None, None].expand(nb, heads_kv, 1, dim))[:, :, 0]
        if far2:  # the far head's row farthest from its far row, in place of the mean query
            hstar = head + torch.arange(heads_kv, device=q.device)[None, :] * group     # [nb, H_kv]
            own = qb.float()[torch.arange(nb, device=q.device)[:, None], :, hstar]     # [nb, H_kv, B, D]
            d2 = ((own - far_q[:, :, None]) ** 2).sum(-1).masked_fill(~rvalid[:, None, :], -1.0)
            far2_q = torch.gather(own, 2, d2.argmax(-1)[:, :, None, None].expand(nb, heads_kv, 1, dim))[:, :, 0]
        if split:  # per head, the mean of the rows on the far side's opposite; pooled over the group
            far_own = rows_q                                              # [nb, H_q, D]: each head's far row
            side = ((qb.float() - rounded[:, None]) * (far_own - rounded)[:, None]).sum(-1)   # [nb, B, H_q]
            opposite = (side <= 0) & rvalid[:, :, None]
            subset_sums = (qb.float() * opposite[..., None]).sum(1)        # [nb, H_q, D]
            subset_counts = opposite.sum(1).float()                        # [nb, H_q]
        if core:  # per head, the rows no farther from its mean than the midrange of their distances
            lowest = spread.masked_fill(~rvalid[:, :, None], float("inf")).amin(1)     # [nb, H_q]
            inner = (spread <= (lowest + best)[:, None] / 2) & rvalid[:, :, None]   # [nb, B, H_q]
            subset_sums = (qb.float() * inner[..., None]).sum(1)
            subset_counts = inner.sum(1).float()
        if far_run:  # the farthest of a run of far_run far queries serves all of its query blocks
            runs = -(-nb // far_run)
            d = best.view(nb, heads_kv, group).amax(-1)                # [nb, H_kv]
            d = torch.nn.functional.pad(d, (0, 0, 0, far_run * runs - nb), value=-2.0).view(runs, far_run, heads_kv)
            pick = d.argmax(1)                                         # [runs, H_kv]
            src = (far_run * torch.arange(runs, device=q.device)[:, None] + pick).repeat_interleave(far_run, 0)[:nb]
            far_q = far_q[src, torch.arange(heads_kv, device=q.device)[None, :]]
    if pair_mean:
        qbar = pair_qbar
    if pool_group:
        qbar = qbar.view(nb, heads_kv, group, dim).mean(2)            # [nb, H_kv, D]
    if far2:
        qbar = far2_q
    if split or core:
        qbar = (subset_sums.view(nb, heads_kv, group, dim).sum(2)
                / subset_counts.view(nb, heads_kv, group).sum(2).clamp(min=1)[..., None])
    kb, _ = _block_view(k, length)                                    # [nb, B, H_kv, D]
    if fp8:  # e4m3 products: each representative and each (key block, kv head) scaled on its own
        qbar = _e4m3_scaled(qbar.to(q.dtype).float(), (-1,))
        if far_q is not None:
            far_q = _e4m3_scaled(far_q, (-1,))
        kb = _e4m3_scaled(kb, (1, 3))
    valid = (torch.arange(nb * BLOCK, device=k.device) < length).view(nb, BLOCK)
    j = torch.arange(nb, device=q.device)
    future = j[None, :] > j[:, None]                                  # key block after the query block
    run = far_run or 1
    future_of_run = j[None, :] > (j[:, None] // run) * run + run - 1   # ... after its run's last block
    heads = qbar.shape[1]
    keep2 = torch.zeros(heads, nb, nb, dtype=torch.bool, device=q.device)
    for h in range(heads):
        hk = h if pool_group else h // group
        z = torch.einsum("id,jsd->ijs", qbar[:, h], kb[:, :, hk]) * scale
        z.masked_fill_(~valid[None], float("-inf"))
        best = z.amax(-1).masked_fill_(future, float("-inf"))         # [nb, nb]
        keep2[h] = best >= best.amax(-1, keepdim=True) + math.log(alpha2)
        if far_only:
            keep2[h] = False
        if far_q is not None:
            z = torch.einsum("id,jsd->ijs", far_q[:, h], kb[:, :, hk]) * scale
            z.masked_fill_(~valid[None], float("-inf"))
            # far_run: the run's best key over the run's causal prefix, the same for all its blocks
            best = z.amax(-1).masked_fill_(future_of_run, float("-inf"))
            keep2[h] |= best >= best.amax(-1, keepdim=True) + math.log(alpha2)
        del z
    if pool_group:
        keep2 = keep2.repeat_interleave(group, 0)
    return exact | (keep2 & ~future[None])


def layout_of(mask, like):
    heads, nb, _ = mask.shape
    rows = mask.reshape(heads * nb, nb).cpu()
    row_ptr = torch.zeros(heads * nb + 1, dtype=torch.int64)
    row_ptr[1:] = rows.sum(1).cumsum(0)
    col_idx = torch.zeros(heads * nb * nb, dtype=torch.int32)
    kept = rows.nonzero()[:, 1].to(torch.int32)
    col_idx[:kept.numel()] = kept
    dev = like.row_ptr.device
    return fp.Layout(torch.tensor([0, heads * nb], dtype=torch.int64, device=dev), row_ptr.to(dev), col_idx.to(dev),
                     BLOCK, heads, nb, like.params)


# ---- modes ------------------------------------------------------------------------------------------
def run_mode(mode, q, k, v):
    """(output, density) of a mode on a padded batch of one sequence."""
    nb = -(-q.shape[1] // BLOCK)
    causal = q.shape[2] * nb * (nb + 1) // 2
    if mode.startswith("exact"):
        alpha = float(mode.split("@")[1])
        layout = fp.select_blocks(q, k, alpha=alpha)
        return fp.block_sparse_attention(q, k, v, layout), layout.density(causal)
    if mode.startswith("robust"):
        alpha = float(mode.split("@")[1])
        layout = fp.select_blocks(q, k, alpha=alpha, discovery="robust")
        return fp.block_sparse_attention(q, k, v, layout), layout.density(causal)
    if mode.startswith("budget"):
        budget = int(mode.split("@")[1])
        layout = fp.select_blocks(q, k, alpha=0.12, min_budget=budget)
        return fp.block_sparse_attention(q, k, v, layout), layout.density(causal)
    if mode.startswith("proto-dual"):
        # proto-dual@A@A2[@g|gf|gF]: the exact rule at A, or a representative's best key within ln(1/A2)
        parts = mode.split("@")
        like = fp.select_blocks(q[:, :BLOCK], k[:, :BLOCK], alpha=float(parts[1]))
        mask = proto_dual_layout(q[0], k[0], float(parts[1]), float(parts[2]), pool_group=len(parts) > 3,
                                 far_query=len(parts) > 3 and "f" in parts[3].lower(),
                                 far_only=len(parts) > 3 and "F" in parts[3],
                                 pair_mean=len(parts) > 3 and "p" in parts[3],
                                 far_run=(4 if "Q" in parts[3] else 2 if "P" in parts[3] else 0) if len(parts) > 3 else 0,
                                 fp8=len(parts) > 3 and "e" in parts[3],
                                 far2=len(parts) > 3 and "2" in parts[3],
                                 split=len(parts) > 3 and "s" in parts[3],
                                 core=len(parts) > 3 and "c" in parts[3])
        return fp.block_sparse_attention(q, k, v, layout_of(mask, like)), float(mask.sum()) / causal
    raise ValueError(f"unknown mode {mode}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="16K,32K")
    parser.add_argument("--modes", default="exact@0.12,robust@0.12")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--span-lens", default="4,16,48")
    parser.add_argument("--shares", default="0.6,0.9")
    parser.add_argument("--hidden", default="0,1", help="0: planted keys stand out; 1: keys keep their norms")
    parser.add_argument("--head-dim", type=int, default=64,
                        help="64 (the suite's shape) or 128 (on Hopper: the e4m3 wgmma best keys)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    lengths = [parse_len(x) for x in args.lengths.split(",")]
    modes = args.modes.split(",")
    records = []
    started = time.time()
    for length in lengths:
        q, k, v = (torch.from_numpy(a).view(torch.bfloat16).to(args.device) for a in fp.make_structured_input(length, 9, 3, args.head_dim, seed=1))
        structured = {mode: run_mode(mode, q, k, v)[1] for mode in modes}
        del q, k, v
        for hidden in [bool(int(h)) for h in args.hidden.split(",")]:
            for case in needles.suite([length], span_lens=[int(s) for s in args.span_lens.split(",")],
                                      dense_shares=[float(s) for s in args.shares.split(",")],
                                      heads=(9, 3, args.head_dim), device=args.device):
                if hidden:
                    d = case.description
                    case = needles.make_needle_case(length, head_dim=args.head_dim, span_len=d["span_len"],
                                                    span_depth=d["span_depth"], query_depth=d["query_depth"],
                                                    dense_share=d["target_share"], hidden=True, seed=d["seed"],
                                                    device=args.device)
                for mode in modes:
                    out, density = run_mode(mode, case.q, case.k, case.v)
                    r = needles.needle_metrics(case, out)
                    records.append(dict(case.description, mode=mode, affected=r.affected_rows, kept_share=r.kept_share,
                                        median_rel_error=r.median_rel_error, density=density,
                                        structured_density=structured[mode]))
                print(f"[{time.time() - started:6.0f}s] L={length} span={case.span_len} share={case.dense_share:.2f} "
                      f"hidden={hidden}: " + " ".join(f"{m}={x['kept_share']:.2f}" for m, x in
                                                     zip(modes, records[-len(modes):])), file=sys.stderr, flush=True)
    print(f"| L | needles | mode | affected rows kept (cos >= {needles.COSINE_KEPT}) | worst case | median rel. error "
          f"| structured density (vs exact@0.12) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for length in lengths:
        for hidden in sorted({r["hidden"] for r in records}):
            for mode in modes:
                rs = [r for r in records if r["seq_len"] == length and r["mode"] == mode and r["hidden"] == hidden]
                base = [r for r in records if r["seq_len"] == length and r["mode"] == "exact@0.12"]
                kept = sum(r["kept_share"] * r["affected"] for r in rs) / max(sum(r["affected"] for r in rs), 1)
                ratio = rs[0]["structured_density"] / base[0]["structured_density"] if base else float("nan")
                print(f"| {length // 1024}K | {'hidden' if hidden else 'planted'} x{len(rs)} | {mode} | {kept:.3f} | "
                      f"{min(r['kept_share'] for r in rs):.2f} | {statistics.median(r['median_rel_error'] for r in rs):.3f} | "
                      f"{rs[0]['structured_density']:.4f} ({ratio:.2f}x) |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
