"""The GPU benchmark of BENCHMARK.md, in one process: flashprefill (total, and discovery / attention
split through the stage API), PyTorch SDPA (FlashAttention-2 and cuDNN backends), our dense path,
and optionally the paper's reference Triton code and FlashPrefillv2, all on the same structured synthetic input,
CUDA-event medians after warm-up. A second mode times the sparse kernel alone at fixed densities.

    python3 bench/gpu_bench.py --lengths 4K,16K,32K,128K [--shape llama3-8b] [--reference DIR] [--fpv2 DIR] [--json F]
    python3 bench/gpu_bench.py --fixed-density 0.01,0.035,0.1,0.176,0.29,0.46,0.704,1.0 --lengths 32K
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import flashprefill as fp
from timing import time_ms

SHAPES = {"llama3-8b": (32, 8, 128), "qwen2.5-7b": (28, 4, 128), "small": (9, 3, 64)}


def parse_length(text):
    text = text.strip().upper()
    return int(text[:-1]) * 1024 if text.endswith("K") else int(text)


def load_reference(path):
    """The paper's Triton code (qhfan/FlashPrefill checkout): its ops package, with a stand-in for the
    two helpers it imports from flash-linear-attention when that package is absent."""
    sys.path.insert(0, path)
    from ops import flash_prefill as reference  # noqa
    return reference


def attention_recall(q, k, layout_rows, nqb, block, samples, gen):
    """Share of the dense softmax mass of sampled rows that falls inside their kept blocks (fp32 on the GPU)."""
    _, length, heads_q, dim = q.shape
    group = heads_q // k.shape[2]
    total = 0.0
    for _ in range(samples):
        h, t = int(gen.integers(heads_q)), int(gen.integers(length))
        logits = (k[0, : t + 1, h // group].float() @ q[0, t, h].float()) / math.sqrt(dim)
        p = torch.softmax(logits, dim=0)
        kept = torch.zeros(t // block + 1, dtype=torch.bool, device=q.device)
        kept[torch.tensor(layout_rows[h * nqb + t // block], device=q.device, dtype=torch.long)] = True
        total += float(p[kept.repeat_interleave(block)[: t + 1]].sum())
    return total / samples


def load_fpv2(path, alpha):
    """FlashPrefillv2 (qhfan/FlashPrefillv2), built by the trimmed recipe kept beside the reference checkout
    (not committed): its full call, its selection and its sparse attention, on [B, L, H, D] inputs. Block 128
    (its default is 64) and the same alpha, so that its layout has our granularity along the keys."""
    # Its package is also named `flashprefill`: import it with ours set aside, then put ours back over the
    # names both use (its objects keep references to their own modules; its other submodules stay).
    ours = {name: sys.modules.pop(name) for name in list(sys.modules) if name == "flashprefill" or name.startswith("flashprefill.")}
    sys.path.insert(0, path)
    from fpv2_api import FPV2  # noqa
    fpv2 = FPV2(alpha=alpha, k_block_n=128)
    sys.modules.update(ours)
    return fpv2


def run_structured(args, length, reference, fpv2=None):
    heads_q, heads_kv, dim = SHAPES[args.shape]
    q_np, k_np, v_np = fp.make_structured_input(length, heads_q, heads_kv, dim, seed=args.seed)
    q, k, v = (torch.from_numpy(x).view(torch.bfloat16).cuda() for x in (q_np, k_np, v_np))
    params = dict(alpha=args.alpha)
    row = {"shape": args.shape, "seq_len": length, "alpha": args.alpha}
    repeats = 5 if length >= 131072 else 10
    # From 512K a dense causal call takes seconds (cuDNN ~4 s at 512K, ~17 s at 1M on an H200): the dense
    # baselines are timed with one warm-up and two runs there, and FA2 (slower than cuDNN at every
    # length) is left out.
    very_long = length >= 524288
    dense_timing = dict(warmup=1, repeats=2) if very_long else dict(repeats=repeats)
    our_dense_timing = dense_timing if very_long else dict(repeats=3 if length >= 131072 else repeats)
    row["ours_ms"] = time_ms(lambda: fp.flash_prefill(q, k, v, **params), repeats=repeats)
    layout = fp.select_blocks(q, k, **params)
    row["discovery_ms"] = time_ms(lambda: fp.select_blocks(q, k, **params), repeats=repeats)
    row["attention_ms"] = time_ms(lambda: fp.block_sparse_attention(q, k, v, layout), repeats=repeats)
    nqb = -(-length // 128)
    rows = layout.rows()
    causal = heads_q * nqb * (nqb + 1) // 2
    row["density"] = sum(len(r) for r in rows) / causal
    ours = fp.flash_prefill(q, k, v, **params)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2).repeat_interleave(heads_q // heads_kv, 1), v.transpose(1, 2).repeat_interleave(heads_q // heads_kv, 1)
    sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
    for name, backend in (("fa2", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        if name == "fa2" and very_long:
            row["fa2_note"] = "not timed from 512K (seconds per call; cuDNN is the stronger dense baseline)"
            continue
        with sdpa_kernel(backend):
            row[name + "_ms"] = time_ms(sdpa, **dense_timing)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        dense_out = sdpa().transpose(1, 2)
    row["our_dense_ms"] = time_ms(lambda: fp.dense_attention(q, k, v), **our_dense_timing)
    row["rel_error_vs_dense"] = float((ours.float() - dense_out.float()).norm() / dense_out.float().norm())
    row["attention_recall"] = attention_recall(q, k, rows, nqb, 128, args.recall_samples, np.random.default_rng(args.seed))
    if fpv2 is not None:
        try:
            run_fpv2(fpv2, q, k, v, dense_out, repeats, row)
        except Exception as error:  # a baseline's failure is recorded, not fatal to the table
            row["fpv2_error"] = str(error)[:300]
    if reference is not None:
        try:
            out = torch.empty_like(q)
            run_ref = lambda: reference(q, k, v, out, 128, 2, 4, args.alpha, 2, 0)
            row["reference_ms"] = time_ms(run_ref, repeats=repeats)
        except Exception as error:
            row["reference_error"] = str(error)[:300]
    return finish_row(row, length, dim, heads_q)


def run_fpv2(fpv2, q, k, v, dense_out, repeats, row):
    """FlashPrefillv2's full call, its selection and its attention on the same input; its density counts
    64-token key tiles (its kernel's unit)."""
    v2_out = fpv2(q, k, v)
    row["fpv2_rel_error_vs_dense"] = float((v2_out.float() - dense_out.float()).norm() / dense_out.float().norm())
    row["fpv2_ms"] = time_ms(lambda: fpv2(q, k, v), repeats=repeats)
    row["fpv2_selection_ms"] = time_ms(lambda: fpv2.select(q, k, v), repeats=repeats)
    index = fpv2.select(q, k, v)  # the next select would overwrite it: time its attention now
    row["fpv2_attention_ms"] = time_ms(lambda: fpv2.attend(q, k, v, index), repeats=repeats)
    row["fpv2_density_64_token_tiles"] = fpv2.density(index, q, k)


def finish_row(row, length, dim, heads_q):
    flops = 2.0 * length * length * dim * heads_q
    for key in [k_ for k_ in list(row) if k_.endswith("_ms")]:
        row[key.replace("_ms", "_tflops")] = flops / (row[key] * 1e-3) / 1e12
    row["speedup_vs_cudnn"] = row["cudnn_ms"] / row["ours_ms"]
    if "fa2_ms" in row:
        row["speedup_vs_fa2"] = row["fa2_ms"] / row["ours_ms"]
    if "reference_ms" in row:
        row["speedup_vs_reference"] = row["reference_ms"] / row["ours_ms"]
    if "fpv2_ms" in row:
        row["speedup_vs_fpv2"] = row["fpv2_ms"] / row["ours_ms"]
    return row


def run_fixed_density(args, length, density, gen):
    """A random layout with the given fraction of causal blocks (plus sinks and the window), sparse kernel alone."""
    heads_q, heads_kv, dim = SHAPES[args.shape]
    q = torch.randn(1, length, heads_q, dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, length, heads_kv, dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    layout = fp.select_blocks(q, k, alpha=0.0)  # every causal block: full-capacity arrays to rewrite
    nqb = -(-length // 128)
    row_ptr, col_idx = [0], []
    for h in range(heads_q):
        for i in range(nqb):
            extra = gen.random(i + 1) < density
            kept = [j for j in range(i + 1) if j < 2 or i - j < 4 or extra[j]]
            col_idx += kept
            row_ptr.append(len(col_idx))
    layout.row_ptr[: len(row_ptr)] = torch.tensor(row_ptr, device="cuda")
    layout.col_idx[: len(col_idx)] = torch.tensor(col_idx, device="cuda", dtype=torch.int32)
    kept_fraction = len(col_idx) / (heads_q * nqb * (nqb + 1) // 2)
    sparse_ms = time_ms(lambda: fp.block_sparse_attention(q, k, v, layout))
    dense_ms = time_ms(lambda: fp.dense_attention(q, k, v))
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2).repeat_interleave(heads_q // heads_kv, 1), v.transpose(1, 2).repeat_interleave(heads_q // heads_kv, 1)
        cudnn_ms = time_ms(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True))
    return {"seq_len": length, "target_density": density, "density": kept_fraction, "sparse_ms": sparse_ms,
            "our_dense_ms": dense_ms, "cudnn_ms": cudnn_ms, "sparse_over_density_x_dense": sparse_ms / (kept_fraction * dense_ms),
            "sparse_over_density_x_cudnn": sparse_ms / (kept_fraction * cudnn_ms)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="4K,16K,32K")
    parser.add_argument("--shape", default="llama3-8b", choices=SHAPES)
    parser.add_argument("--alpha", type=float, default=0.12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recall-samples", type=int, default=64)
    parser.add_argument("--reference", default=None, help="path of a qhfan/FlashPrefill checkout to time beside ours")
    parser.add_argument("--fpv2", default=None, help="folder holding fpv2_api.py and a trimmed FlashPrefillv2 build, to time beside ours")
    parser.add_argument("--fixed-density", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    lengths = [parse_length(x) for x in args.lengths.split(",")]
    results = []
    if args.fixed_density:
        gen = np.random.default_rng(args.seed)
        for length in lengths:
            for density in [float(x) for x in args.fixed_density.split(",")]:
                results.append(run_fixed_density(args, length, density, gen))
                print(json.dumps(results[-1]), flush=True)
    else:
        reference = load_reference(args.reference) if args.reference else None
        fpv2 = load_fpv2(args.fpv2, args.alpha) if args.fpv2 else None
        for length in lengths:
            results.append(run_structured(args, length, reference, fpv2))
            print(json.dumps(results[-1]), flush=True)
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
