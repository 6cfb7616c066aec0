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
MATCH_FIELDS = ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim")


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
    p = argparse.ArgumentParser(prog="python -m flashprefill.calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="profile JSON to write")
    p.add_argument("--rule", default="threshold", choices=sorted(GRIDS))
    p.add_argument("--target-error", type=float, default=0.02)
    p.add_argument("--length", default="8K")
    p.add_argument("--windows", type=int, default=2)
    p.add_argument("--per-head", action="store_true", help="one value per query head (default: one per layer)")
    p.add_argument("--model-file", default=None)
    p.add_argument("--text", default=None, help="the jargon-text file (gzip; default: Debian's)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--dump", default=None, help="also save the measured errors and densities (npz)")
    p.add_argument("--from-dump", default=None, help="derive the profile from a --dump of an earlier run (no model run)")
    args = p.parse_args(argv)
    if args.from_dump:
        dump = np.load(args.from_dump)
        errors, densities, grid = dump["errors"], dump["densities"], dump["grid"].tolist()
        meta = json.loads(str(dump["meta"]))
    else:
        errors, densities, grid, meta = measure(args)
        if args.dump:
            np.savez(args.dump, errors=errors, densities=densities, grid=np.array(grid), meta=json.dumps(meta))
    profile = profile_from(errors, densities, grid, args.target_error, args.per_head, meta)
    with open(args.out, "w") as f:
        json.dump(profile, f, indent=1)
    print(f"[calibrate] wrote {args.out}: {profile['rule']} values {profile['values']}; "
          f"density at {meta['length']}: {profile['calibration']['mean_density_at_length']:.3f}")


def measure(args):
    """Errors and densities [windows, layers, grid, heads] of the rule's grid on captured q/k/v."""
    from .eval import harness, methods as M, model as model_io, selection as sel
    from .eval.__main__ import parse_length
    if args.threads:
        torch.set_num_threads(args.threads)
    length = parse_length(args.length)
    M.register()
    loaded = model_io.load(args.model_file, args.device, M.NAME)
    tokens = model_io.region(model_io.jargon_tokens(loaded.tokenizer, args.text or model_io.JARGON), "calibration")
    config = loaded.model.config
    scale = config.head_dim ** -0.5
    grid = GRIDS[args.rule]
    keep_fn = sel.keep_threshold if args.rule == "threshold" else sel.keep_coverage
    errors, densities = [], []
    for w, ids in enumerate(model_io.windows(tokens, length, args.windows)):
        captured = harness.run_method(loaded.model, M.Method("sdpa", label="sdpa"), ids, capture=True)["captured"]
        per_layer = []
        for layer in sorted(captured):
            q, k, v = (x.to(args.device) for x in captured[layer])
            per_layer.append(layer_head_errors(q, k, v, keep_fn, grid, scale))
            print(f"[calibrate] window {w} layer {layer}: error at each value "
                  + " ".join(f"{e.mean():.3f}" for e, _ in per_layer[-1]), flush=True)
        errors.append([[r[0] for r in layer] for layer in per_layer])
        densities.append([[r[1] for r in layer] for layer in per_layer])
    meta = {"rule": args.rule, "length": length, "windows": args.windows, "model": os.path.basename(loaded.path),
            "text": f"jargon-text, token region {model_io.REGIONS['calibration']} (evaluation uses {model_io.REGIONS['evaluation']})",
            "num_heads": config.num_attention_heads,
            "match": {name: getattr(config, name) for name in MATCH_FIELDS if getattr(config, name, None) is not None},
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    return np.array(errors), np.array(densities), grid, meta


def profile_from(errors, densities, grid, target, per_head, meta) -> dict:
    """The sparsest grid value per layer (or head) whose worst error over the windows is within target."""
    worst = errors.max(axis=0)  # [layers, grid, heads]
    mean_density = densities.mean(axis=0)
    if per_head:
        index = choose(worst.transpose(1, 0, 2), target)  # [layers, heads]
        values = [[grid[i] for i in row] for row in index]
        density = np.take_along_axis(mean_density, index[:, None, :], axis=1)[:, 0, :].mean()
    else:  # a layer's value keeps every head within the target
        index = choose(worst.max(axis=2).T, target)  # [layers]
        values = [grid[i] for i in index]
        density = np.mean([mean_density[layer, i].mean() for layer, i in enumerate(index)])
    return {"format": PROFILE_FORMAT, "rule": meta["rule"], "values": values,
            "block_size": 128, "sink_blocks": 2, "window_blocks": 4, "last_full_blocks": 2,
            "match": meta["match"], "model": meta["model"],
            "calibration": {"target_error": target, "length": meta["length"], "windows": meta["windows"], "text": meta["text"],
                            "per_head": per_head, "mean_density_at_length": round(float(density), 4), "date": meta["date"],
                            "command": "python -m flashprefill.calibrate --rule {} --target-error {} --length {} --windows {}{}".format(
                                meta["rule"], target, meta["length"], meta["windows"], " --per-head" if per_head else "")}}


if __name__ == "__main__":
    main()
