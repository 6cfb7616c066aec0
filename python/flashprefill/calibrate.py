"""Calibrate a per-layer (optionally per-head) selection profile on held-out text.

    python -m flashprefill.calibrate --out profile.json [--rule threshold|coverage] [--target-error 0.02]
                                     [--length 8K] [--windows 2] [--per-head] [--model-file PATH] [--device cpu|cuda]

Runs the dense model over windows of the calibration region of the text (disjoint from the evaluation
region the harness measures on), captures every layer's q/k/v, and for each layer (or head) picks the
sparsest value of the rule's grid whose attention output stays within ``--target-error`` (relative
Frobenius error against fp32 dense attention, the worst over the windows). The profile is a small JSON
file that ``flashprefill.integrations.transformers.configure(profile=...)`` loads.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os

import numpy as np
import torch

# From sparsest to densest; the last value keeps every block.
GRIDS = {
    "threshold": [0.5, 0.35, 0.25, 0.18, 0.12, 0.08, 0.05, 0.03, 0.02, 0.01, 0.005, 0.002, 0.0],
    "coverage": [0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 1.0],
}
PROFILE_FORMAT = "flashprefill-profile/1"


def layer_head_errors(q, k, v, keep_fn, values, scale, block=128, params=None):
    """For each grid value: (per-head relative error [H], per-head density [H]) of one layer's attention."""
    from . import _api
    from .eval import harness, selection as sel
    params = params or dict(sink_blocks=2, window_blocks=4, last_full_blocks=2)
    ref = harness.dense_reference(q, k, v, scale)  # [L, H, D] fp32
    ref_norm = ref.norm(dim=(0, 2))
    geo = sel.Geometry(q.shape[0], k.shape[0], block)
    forced = geo.forced(**params, device=q.device)
    scores = sel.block_scores(q, k, block, scale)
    results = []
    for value in values:
        keep = keep_fn(scores, forced, value) & geo.causal(q.device)
        layout = sel.layout_from_mask(keep, geo, scale, params)
        out = _api.block_sparse_attention(q[None], k[None], v[None], layout, softmax_scale=scale)[0].float()
        error = ((out - ref).norm(dim=(0, 2)) / ref_norm).cpu().numpy()
        density = (keep.sum(dim=(1, 2)).double() / geo.causal_blocks()).cpu().numpy()
        results.append((error, density))
    return results


def choose(errors: np.ndarray, target: float) -> np.ndarray:
    """errors [grid, ...] (grid sparsest first): index of the sparsest value within target (the densest if none)."""
    ok = errors <= target
    first_ok = np.argmax(ok, axis=0)
    return np.where(ok.any(axis=0), first_ok, errors.shape[0] - 1)


def main(argv=None) -> None:
    from .eval import harness, methods as M, model as model_io
    p = argparse.ArgumentParser(prog="python -m flashprefill.calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="profile JSON to write")
    p.add_argument("--rule", default="threshold", choices=sorted(GRIDS))
    p.add_argument("--target-error", type=float, default=0.02)
    p.add_argument("--length", default="8K")
    p.add_argument("--windows", type=int, default=2)
    p.add_argument("--per-head", action="store_true", help="one value per query head (default: one per layer)")
    p.add_argument("--model-file", default=None)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--dump", default=None, help="also save the measured errors and densities (npz)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from .eval.__main__ import parse_length
    from .eval import selection as sel
    length = parse_length(args.length)
    M.register()
    loaded = model_io.load(args.model_file, args.device, M.NAME)
    tokens = model_io.region(model_io.jargon_tokens(loaded.tokenizer), "calibration")
    config = loaded.model.config
    scale = config.head_dim ** -0.5
    grid = GRIDS[args.rule]
    keep_fn = sel.keep_threshold if args.rule == "threshold" else sel.keep_coverage
    errors, densities = None, None  # [windows, layers, grid, heads]
    for w, ids in enumerate(model_io.windows(tokens, length, args.windows)):
        captured = harness.run_method(loaded.model, M.Method("sdpa", label="sdpa"), ids, capture=True)["captured"]
        per_layer = []
        for layer in sorted(captured):
            q, k, v = (x.to(args.device) for x in captured[layer])
            per_layer.append(layer_head_errors(q, k, v, keep_fn, grid, scale))
            print(f"[calibrate] window {w} layer {layer}: error at each value "
                  + " ".join(f"{e.mean():.3f}" for e, _ in per_layer[-1]), flush=True)
        e = np.array([[r[0] for r in layer] for layer in per_layer])
        d = np.array([[r[1] for r in layer] for layer in per_layer])
        errors = e[None] if errors is None else np.concatenate([errors, e[None]])
        densities = d[None] if densities is None else np.concatenate([densities, d[None]])
    if args.dump:
        np.savez(args.dump, errors=errors, densities=densities, grid=np.array(grid))
    worst = errors.max(axis=0)  # [layers, grid, heads]
    if args.per_head:
        index = choose(worst.transpose(1, 0, 2), args.target_error)  # [layers, heads]
        values = [[grid[i] for i in row] for row in index]
        chosen_density = np.take_along_axis(densities.mean(0), index[:, None, :], axis=1)[:, 0, :].mean()
    else:
        # a layer's value must keep every head within the target
        index = choose(worst.max(axis=2).T, args.target_error)  # [layers]
        values = [grid[i] for i in index]
        chosen_density = np.mean([densities.mean(0)[l, i].mean() for l, i in enumerate(index)])
    profile = {
        "format": PROFILE_FORMAT, "rule": args.rule, "values": values,
        "block_size": 128, "sink_blocks": 2, "window_blocks": 4, "last_full_blocks": 2,
        "match": {name: getattr(config, name) for name in ("model_type", "num_hidden_layers", "hidden_size",
                                                            "num_attention_heads", "num_key_value_heads", "head_dim")
                  if getattr(config, name, None) is not None},
        "model": os.path.basename(loaded.path), "num_layers": len(values), "num_heads": config.num_attention_heads,
        "calibration": {"target_error": args.target_error, "length": length, "windows": args.windows,
                        "text": f"{model_io.JARGON} region {model_io.REGIONS['calibration']}",
                        "per_head": args.per_head, "mean_density_at_length": round(float(chosen_density), 4),
                        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")},
    }
    with open(args.out, "w") as f:
        json.dump(profile, f, indent=1)
    print(f"[calibrate] wrote {args.out}: {args.rule} values {values}; density at {length}: {chosen_density:.3f}")


if __name__ == "__main__":
    main()
