"""The needle suite of robust discovery: share of affected query rows whose output keeps cosine >= 0.9
with dense attention, per selection mode, on planted short key spans (flashprefill.needles).

    python bench/needle_suite.py --lengths 16K,32K --device cpu --json needles.json

Modes: the exact rule (ALGORITHM.md) at the given alphas, the min_budget floor, `robust@alpha`, the
library's robust discovery (docs/ROBUST.md: flash_prefill(..., discovery="robust")), and
`proto-outlier`, the Python prototype that robust discovery was measured from (a second representative
per key block: the key farthest from the block mean, scored as max(x_mean, x_outlier - ln B) before
the exp-sum; union with the exact rule) that runs the library's block_sparse_attention on the layout
it builds. `proto-group@alpha@G` is the same prototype with one far key per group of G consecutive key
blocks (the block whose far key lies farthest from its own mean keeps it; the others score their mean
only), which needs 1/G of the far-key products (docs/ROBUST.md, "Tried: one far key per group of
blocks"); `proto-grouprel@alpha@G` picks the owner by its far key's distance relative to the block's
mean distance. The structured input's density (BENCHMARK.md) is reported per mode beside it, as the ratio
to the exact rule's.
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


def _representatives(k, group=1, relative=False):
    """Block means [nb, H_kv, D] and far keys; with group > 1 only the block of each group of `group`
    consecutive blocks whose far key lies farthest from its own mean keeps it (owner mask [nb, H_kv])."""
    length = k.shape[0]
    blocks, nb = _block_view(k, length)
    valid = (torch.arange(nb * BLOCK, device=k.device) < length).view(nb, BLOCK)
    mean = blocks.sum(1) / valid.sum(1).float()[:, None, None]
    mean = mean.to(k.dtype).float()  # pooled keys rounded to the input dtype, as every backend does
    spread = ((blocks - mean[:, None]) ** 2).sum(-1).masked_fill(~valid[:, :, None], -1.0)
    far = spread.argmax(1)
    outlier = torch.gather(blocks, 1, far[:, None, :, None].expand(nb, 1, *k.shape[1:]))[:, 0]
    if group == 1:
        return mean, outlier, torch.ones(nb, k.shape[1], dtype=torch.bool, device=k.device)
    best = spread.amax(1)  # [nb, H_kv]: each block's far-key distance
    if relative:  # against the block's mean squared distance: how far its far key stands out
        best = best / (spread.clamp(min=0).sum(1) / valid.sum(1).float()[:, None])
    groups = -(-nb // group)
    padded = torch.nn.functional.pad(best, (0, 0, 0, groups * group - nb), value=-2.0).view(groups, group, -1)
    owner = torch.zeros_like(padded, dtype=torch.bool).scatter_(1, padded.argmax(1, keepdim=True), True)
    return mean, outlier, owner.view(groups * group, -1)[:nb]


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


def proto_outlier_layout(q, k, alpha, params=dict(sink_blocks=2, window_blocks=4, last_full_blocks=2),
                         blocks_per_far_key=1, relative=False):
    """Kept mask [H_q, nb, nb] of the prototype rule for one sequence (blocks_per_far_key > 1: one far key
    per group of blocks, see _representatives)."""
    length, heads_q, dim = q.shape
    mean, outlier, owner = _representatives(k, blocks_per_far_key, relative)
    group = heads_q // k.shape[1]
    scale = 1.0 / math.sqrt(dim)
    positions = torch.arange(length, device=q.device)
    nb = mean.shape[0]
    last_key = torch.clamp((torch.arange(nb, device=q.device) + 1) * BLOCK, max=length) - 1
    hidden = last_key[None, :] > positions[:, None]
    x_mean = torch.einsum("thd,jhd->htj", q.float(), mean.repeat_interleave(group, 1)) * scale
    x_out = torch.einsum("thd,jhd->htj", q.float(), outlier.repeat_interleave(group, 1)) * scale - math.log(BLOCK)
    x_out.masked_fill_(~owner.repeat_interleave(group, 1).t()[:, None, :], float("-inf"))
    x_mean.masked_fill_(hidden[None], float("-inf"))
    x_out.masked_fill_(hidden[None], float("-inf"))
    return _selected(x_mean, length, alpha, params) | _selected(torch.maximum(x_mean, x_out), length, alpha, params)


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
    if mode.startswith("proto-outlier") or mode.startswith("proto-group"):
        # proto-group@A@G: one far key per group of G consecutive key blocks, owned by the block whose far
        # key is farthest from its mean; proto-grouprel@A@G: farthest relative to the block's mean distance
        alpha = float(mode.split("@")[1])
        blocks_per_far_key = int(mode.split("@")[2]) if mode.startswith("proto-group") else 1
        like = fp.select_blocks(q[:, :BLOCK], k[:, :BLOCK], alpha=alpha)
        mask = proto_outlier_layout(q[0], k[0], alpha, blocks_per_far_key=blocks_per_far_key,
                                    relative=mode.startswith("proto-grouprel"))
        return fp.block_sparse_attention(q, k, v, layout_of(mask, like)), float(mask.sum()) / causal
    raise ValueError(f"unknown mode {mode}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="16K,32K")
    parser.add_argument("--modes", default="exact@0.12,robust@0.12,proto-outlier@0.12")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--span-lens", default="4,16,48")
    parser.add_argument("--shares", default="0.6,0.9")
    parser.add_argument("--hidden", default="0,1", help="0: planted keys stand out; 1: keys keep their norms")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    lengths = [parse_len(x) for x in args.lengths.split(",")]
    modes = args.modes.split(",")
    records = []
    started = time.time()
    for length in lengths:
        q, k, v = (torch.from_numpy(a).view(torch.bfloat16).to(args.device) for a in fp.make_structured_input(length, 9, 3, 64, seed=1))
        structured = {mode: run_mode(mode, q, k, v)[1] for mode in modes}
        del q, k, v
        for hidden in [bool(int(h)) for h in args.hidden.split(",")]:
            for case in needles.suite([length], span_lens=[int(s) for s in args.span_lens.split(",")],
                                      dense_shares=[float(s) for s in args.shares.split(",")], device=args.device):
                if hidden:
                    d = case.description
                    case = needles.make_needle_case(length, span_len=d["span_len"], span_depth=d["span_depth"],
                                                    query_depth=d["query_depth"], dense_share=d["target_share"],
                                                    hidden=True, seed=d["seed"], device=args.device)
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
