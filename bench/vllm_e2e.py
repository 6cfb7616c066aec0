"""End to end through vllm.LLM on a GPU: flashprefill's vLLM backend (attention_backend="CUSTOM") against
vLLM's own FlashAttention backend, same process, same random Llama-shaped model.

Checks (issue 14, point 4): with alpha 0 (every block kept) the greedy tokens equal FlashAttention's for
prompts of 4K-32K tokens, alone, repeated (a prefix-cache hit), concurrently with short requests (steps
that mix decodes and prefills), and with a small max_num_batched_tokens (many chunks per prompt). With
the default alpha: the density (kept / causal blocks, from the plugin's density log) and the share of
greedy tokens equal to FlashAttention's. Benchmark (point 5): time to first token of one request at the
given lengths, both backends; the attention-only time of one layer at the same shapes (flash_prefill
through the plugin's forward vs vLLM's flash_attn_varlen_func on the same paged cache); the plugin's own
host cost (planning + routing) against the step.

Usage (GPU machine, vllm==0.26.0 and flashprefill importable):
    python3 bench/vllm_e2e.py --out $OUT/vllm [--lengths 4096,8192,16384,32768] [--ttft 32768,65536,131072]
Writes summary.json and prints one line per check; exits 1 if an alpha-0 comparison differs.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time

import numpy as np

# The engine runs in this process (its start is seconds, and nothing waits on a child that failed), and
# vLLM's FlashInfer sampler stays off: the staged vLLM has no flashinfer package (bench/vllm_stage.py).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
# Tensor parallelism (--tp): NVLink multicast stays off, in every process vLLM starts (they inherit this).
os.environ.update(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")

# The model: Llama-shaped, small enough that a run takes minutes, head dim 128, GQA 4.
MODEL = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=2, head_dim=128, vocab_size=32000, max_position_embeddings=262144,
             rope_theta=1e6, tie_word_embeddings=False)
# Weights: transformers' random init (std 0.02, norms 1), saved as a checkpoint, rather than vLLM's
# load_format="dummy", whose uniform +-1e-3 weights (norms included) leave every logit near zero, so greedy
# tokens would be decided by rounding. The model runs in float16 (--dtype): its logits keep 10 mantissa
# bits, where bf16 logits of a sharpened lm_head (x32, session 11) were so coarse that top tokens tied
# exactly and FlashAttention parted from itself when only its chunking changed.
LM_HEAD_SCALE = 1.0
TOP_LOGPROBS = 5
# Two exact attentions agree when their greedy tokens are equal, or when they part only at a near-tie: the
# reference's own logprobs of the two tokens within LOGPROB_TOL, with every top logprob before that point
# within LOGPROB_TOL of the reference's too (so a wrong attention cannot pass as a tie).
LOGPROB_TOL = 0.05


def make_model(folder: str, dtype: str) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(**MODEL, torch_dtype=dtype)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    with torch.no_grad():
        model.lm_head.weight.mul_(LM_HEAD_SCALE)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def prompts(rng, length: int, count: int = 1) -> list:
    return [{"prompt_token_ids": rng.integers(100, MODEL["vocab_size"], size=length).tolist()} for _ in range(count)]


class Engine:
    """One vllm.LLM; flashprefill's settings go through the environment its engine process inherits."""

    def __init__(self, model: str, backend: str, env: dict, max_model_len: int, **kwargs):
        from vllm import LLM
        self.saved = {k: os.environ.get(k) for k in env}
        os.environ.update({k: str(v) for k, v in env.items()})
        start = time.perf_counter()
        self.llm = LLM(model=model, attention_backend=backend, max_model_len=max_model_len, skip_tokenizer_init=True,
                       enable_prefix_caching=True, seed=0, gpu_memory_utilization=0.12, **kwargs)
        self.startup_s = time.perf_counter() - start
        self.name = f"{backend} {env} {kwargs}"
        print(f"engine {self.name}: started in {self.startup_s:.1f} s", flush=True)

    def greedy(self, batch: list, max_tokens: int) -> list:
        from vllm import SamplingParams
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, detokenize=False, ignore_eos=True,
                                logprobs=TOP_LOGPROBS)
        outs = self.llm.generate(batch, params, use_tqdm=False)
        return [dict(tokens=list(o.outputs[0].token_ids), cached=o.num_cached_tokens or 0,
                     logprobs=[{int(t): float(getattr(lp, "logprob", lp)) for t, lp in position.items()}
                               for position in (o.outputs[0].logprobs or [])]) for o in outs]

    def ttft(self, batch: list) -> float:
        start = time.perf_counter()
        self.greedy(batch, 1)
        return time.perf_counter() - start

    def close(self):
        import torch
        try:
            self.llm.llm_engine.engine_core.shutdown()
        except Exception as e:  # noqa: BLE001 - best effort; the process exits anyway
            print(f"shutdown: {e}")
        del self.llm
        gc.collect()
        torch.cuda.empty_cache()
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def divergence(ref: dict, got: dict):
    """Where two greedy runs of one request part, and how close they were until then.

    Returns (position or None, the reference's own logprob gap between its token and the other run's token
    there (how near a tie it was), the largest |logprob difference| of a top token over the positions
    before it). The gap is a lower bound (TOP_LOGPROBS - 1 alternatives) when the other token is not in the
    reference's top list."""
    worst = 0.0
    for i, (a, b) in enumerate(zip(ref["tokens"], got["tokens"])):
        lr, lg = (ref["logprobs"][i], got["logprobs"][i]) if i < min(len(ref["logprobs"]), len(got["logprobs"])) else ({}, {})
        if a != b:
            gap = lr[a] - lr[b] if b in lr and a in lr else (lr[a] - min(lr.values()) if a in lr else None)
            return i, gap, worst
        worst = max([worst] + [abs(lr[t] - lg[t]) for t in lr if t in lg])
    return None, None, worst


def agreement(a: list, b: list) -> float:
    same = sum(x == y for ra, rb in zip(a, b) for x, y in zip(ra["tokens"], rb["tokens"]))
    total = sum(len(r["tokens"]) for r in a)
    return same / max(total, 1)


SCENARIOS = ("alone", "repeat", "extend", "mixed")


def scenario_prompts(rng, lengths):
    """alone: one prompt per length; repeat: the longest again (a prefix-cache hit, only its tail is computed);
    extend: the longest plus 1000 new tokens (a cache hit, then an extend over the cached prefix); mixed: new
    prompts of every length at once with 6 short ones that decode while the long ones prefill."""
    alone = [prompts(rng, n)[0] for n in lengths]
    extended = {"prompt_token_ids": alone[-1]["prompt_token_ids"] + prompts(rng, 1000)[0]["prompt_token_ids"]}
    return dict(alone=alone, repeat=[alone[-1]], extend=[extended],
                mixed=[prompts(rng, n)[0] for n in lengths] + prompts(rng, 64, 6))


def run_scenarios(engine: Engine, scen: dict, max_tokens: int) -> dict:
    out = {"alone": [engine.greedy([p], max_tokens)[0] for p in scen["alone"]]}
    for key in SCENARIOS[1:]:
        out[key] = engine.greedy(scen[key], max_tokens)
    return out


def compare(name: str, ref: dict, got: dict, lengths, summary: dict, must_equal: bool) -> bool:
    ok = True
    for key in SCENARIOS:
        share = agreement(ref[key], got[key])
        equal = all(a["tokens"] == b["tokens"] for a, b in zip(ref[key], got[key]))
        parts = [divergence(a, b) for a, b in zip(ref[key], got[key])]
        before = max(p[2] for p in parts)
        near_ties = before <= LOGPROB_TOL and all(p[0] is None or (p[1] is not None and p[1] <= LOGPROB_TOL)
                                                  for p in parts)
        cached = [r["cached"] for r in got[key]]
        first = [dict(request=r, position=p[0], reference_gap=p[1]) for r, p in enumerate(parts) if p[0] is not None]
        summary.setdefault("checks", []).append(dict(name=name, scenario=key, equal=equal, agreement=share,
                                                     equal_or_near_tie=equal or near_ties,
                                                     cached_tokens=cached, max_logprob_diff_before=before,
                                                     first_differences=first))
        where = "; ".join(f"request {f['request']} at token {f['position']}, reference gap "
                          f"{'n/a' if f['reference_gap'] is None else format(f['reference_gap'], '.3f')}" for f in first)
        print(f"{name:28s} {key:7s} greedy tokens equal: {equal} (or parting at near-ties: {equal or near_ties})  agreement {share:.3f}  cached tokens {cached}  "
              f"max |logprob diff| before: {before:.4f}" + (f"  parts: {where}" if where else ""), flush=True)
        ok &= equal or near_ties or not must_equal
    return ok


def attention_only(lengths, page_sizes=(16, 128)) -> list:
    """One layer's attention at the model's shapes on a paged cache (random page order): vLLM's
    flash_attn_varlen_func vs flash_prefill_paged (default alpha) and the plugin's forward, and the plugin's
    host cost per layer. Two inputs: random q/k/v (what a random model's layers see: flat attention, every
    block kept) and BENCHMARK.md's structured input (sinks, a local band and scattered heavy blocks: the
    sparsity a trained model's attention has)."""
    import torch
    from vllm.vllm_flash_attn import flash_attn_varlen_func

    import flashprefill as fp
    from flashprefill.integrations import transformers as hf
    from flashprefill.integrations.vllm import routing
    hq, hkv, d = MODEL["num_attention_heads"], MODEL["num_key_value_heads"], MODEL["head_dim"]
    rows = []
    for n, kind, page_size in [(n, kind, page) for n in lengths for kind in ("random", "structured")
                               for page in page_sizes]:
        pages = n // page_size
        table = torch.randperm(pages, dtype=torch.int32, device="cuda")[None]
        if kind == "random":
            q = torch.randn(n, hq, d, dtype=torch.bfloat16, device="cuda")
            k = torch.randn(n, hkv, d, dtype=torch.bfloat16, device="cuda")
            v = torch.randn(n, hkv, d, dtype=torch.bfloat16, device="cuda")
        else:
            q, k, v = (torch.from_numpy(x).view(torch.bfloat16)[0].cuda()
                       for x in fp.make_structured_input(n, hq, hkv, d))
        # vLLM's FlashAttention cache: logical [pages, H_kv, page, 2 D], stored [pages, page, H_kv, 2 D].
        stored = torch.empty(pages, page_size, hkv, 2 * d, dtype=torch.bfloat16, device="cuda")
        stored[table[0].long()] = torch.cat([k, v], dim=-1).view(pages, page_size, hkv, 2 * d)
        cache = stored.transpose(1, 2)
        settings = routing.Settings()
        alpha = hf.MODEL_ALPHA.get("llama", hf.DEFAULT_ALPHA)
        layout = fp.select_blocks(q[None], k[None], alpha=alpha, softmax_scale=d**-0.5, **settings.library_params())
        density = int(layout.row_ptr[-1]) / (hf.causal_blocks_per_head(n, n, settings.block_size) * hq)
        del k, v, layout
        k_pages, v_pages = routing.paged_kv_views(cache, d)
        out = torch.empty_like(q)
        cu = torch.tensor([0, n], dtype=torch.int32, device="cuda")
        lens = torch.tensor([n], dtype=torch.int32, device="cuda")

        def fa():
            flash_attn_varlen_func(q=q, k=k_pages, v=v_pages, out=out, cu_seqlens_q=cu, max_seqlen_q=n, seqused_k=lens,
                                   max_seqlen_k=n, softmax_scale=d**-0.5, causal=True, block_table=table, fa_version=3)

        def direct():
            fp.flash_prefill_paged(q, k_pages, v_pages, table, lens, cu, n, n, alpha=alpha, softmax_scale=d**-0.5,
                                   out=out, **settings.library_params())

        def plugin():  # the step's planning and the layer's routing, as the backend does them
            plan = routing.plan_batch(cu, cu.cpu(), lens, lens.cpu(), table, 1, settings)
            routing.forward(q, out, cache, d, plan, attend_short=None, alpha=alpha, softmax_scale=d**-0.5,
                            settings=settings)

        def gpu_ms(fn, reps=20):
            fn()
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / reps

        def host_us(fn, reps=200):
            cu_cpu, lens_cpu = cu.cpu(), lens.cpu()
            start = time.perf_counter()
            for _ in range(reps):
                fn(cu_cpu, lens_cpu)
            return (time.perf_counter() - start) / reps * 1e6

        plan_us = host_us(lambda c, s: routing.plan_batch(cu, c, lens, s, table, 1, settings))
        plan = routing.plan_batch(cu, cu.cpu(), lens, lens.cpu(), table, 1, settings)
        # Host time to enqueue one layer: the library call alone, and through the plugin's routing.
        direct_us = host_us(lambda c, s: direct(), reps=20)
        routed_us = host_us(lambda c, s: routing.forward(q, out, cache, d, plan, attend_short=None, alpha=alpha,
                                                         softmax_scale=d**-0.5, settings=settings), reps=20)
        torch.cuda.synchronize()
        row = dict(length=n, input=kind, page_size=page_size, fa_ms=gpu_ms(fa), flashprefill_ms=gpu_ms(direct), plugin_ms=gpu_ms(plugin),
                   plan_host_us=plan_us, call_host_us=direct_us, routed_call_host_us=routed_us,
                   density=density)
        row["speedup"] = row["fa_ms"] / row["flashprefill_ms"]
        rows.append(row)
        print(f"attention only L={n} {kind} page {page_size}: FlashAttention {row['fa_ms']:.3f} ms, flash_prefill {row['flashprefill_ms']:.3f} ms"
              f" ({row['speedup']:.2f}x, density {density:.3f}), planning + routing + flash_prefill {row['plugin_ms']:.3f} ms; host: planning "
              f"{plan_us:.1f} us per step, enqueue {direct_us:.1f} us direct / {routed_us:.1f} us routed per layer",
              flush=True)
        del cache, stored, q, out
        torch.cuda.empty_cache()
    return rows


def densities(path: str) -> dict:
    kept = causal = 0
    if os.path.exists(path):
        for line in open(path):
            r = json.loads(line)
            kept += r["kept"]
            causal += r["causal"]
    return dict(kept=kept, causal=causal, density=kept / causal if causal else None)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/out/vllm")
    parser.add_argument("--lengths", default="4096,8192,16384,32768")
    parser.add_argument("--ttft", default="32768,65536,131072")
    parser.add_argument("--attention-lengths", default="32768,65536,131072")
    parser.add_argument("--attention-page-sizes", default="16,128")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=2048, help="max_num_batched_tokens of the chunked scenario")
    parser.add_argument("--batched-tokens", type=int, default=32768, help="max_num_batched_tokens otherwise")
    parser.add_argument("--block-size", type=int, default=None,
                        help="KV-cache page size of every engine (default: each backend's own: 16 FlashAttention, 128 CUSTOM)")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"], help="the model's dtype")
    parser.add_argument("--tp", type=int, default=1, help="tensor_parallel_size of every engine")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: scenarios,ttft,chunked,attention")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    lengths = [int(x) for x in args.lengths.split(",")]
    ttft_lengths = [int(x) for x in args.ttft.split(",")] if "ttft" not in skip else []
    max_len = max(lengths + ttft_lengths) + 1000 + args.max_tokens + 64
    model = make_model(tempfile.mkdtemp(prefix="fp-llama-"), args.dtype)
    rng = np.random.default_rng(0)
    scen = scenario_prompts(rng, lengths)
    ttft_prompts = {n: prompts(rng, n, 4) for n in ttft_lengths}  # 1 warm-up + 3 timed, all distinct
    summary = dict(model=MODEL, dtype=args.dtype, block_size=args.block_size, lm_head_scale=LM_HEAD_SCALE, logprob_tol=LOGPROB_TOL, lengths=lengths, ttft_lengths=ttft_lengths, tp=args.tp)
    pages = {} if args.block_size is None else dict(block_size=args.block_size)
    common = dict(max_num_batched_tokens=args.batched_tokens, tensor_parallel_size=args.tp, dtype=args.dtype, **pages)
    ok = True

    def save():  # after every part, so a run cut short by a time limit keeps what it measured
        summary["alpha0_all_equal"] = bool(ok)
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1, default=str)

    def timed(engine, name):
        rows = {}
        for n, batch in ttft_prompts.items():
            engine.ttft([batch[0]])
            times = [engine.ttft([p]) for p in batch[1:]]
            rows[n] = min(times)
            print(f"TTFT {name:14s} L={n}: {min(times) * 1e3:.1f} ms (best of {len(times)})")
        return rows

    summary["startup_s"] = {}
    if "scenarios" not in skip or ttft_lengths:
        fa = Engine(model, "FLASH_ATTN", {}, max_len, **common)
        summary["startup_s"]["FLASH_ATTN"] = fa.startup_s
        if "scenarios" not in skip:
            ref = run_scenarios(fa, scen, args.max_tokens)
            # The noise floor: a prefix-cache hit recomputes only the prompt's tail, so FlashAttention's own
            # tokens for a repeated prompt may differ from its first run where two logits are nearly tied.
            summary["flash_attn_repeat_equals_first"] = ref["repeat"][0]["tokens"] == ref["alone"][-1]["tokens"]
            print(f"FLASH_ATTN repeat equals its first run: {summary['flash_attn_repeat_equals_first']}", flush=True)
        if ttft_lengths:
            summary["ttft_flash_attn"] = timed(fa, "FLASH_ATTN")
        fa.close()
        save()

    if "scenarios" not in skip:
        dense = Engine(model, "CUSTOM", {"FLASHPREFILL_ALPHA": 0}, max_len, **common)
        summary["startup_s"]["CUSTOM alpha 0"] = dense.startup_s
        ok &= compare("CUSTOM alpha 0", ref, run_scenarios(dense, scen, args.max_tokens), lengths, summary, True)
        dense.close()
        save()

        log = os.path.join(args.out, "density.jsonl")
        if os.path.exists(log):
            os.remove(log)
        sparse = Engine(model, "CUSTOM", {"FLASHPREFILL_VLLM_DENSITY_LOG": log}, max_len, **common)
        compare("CUSTOM default alpha", ref, run_scenarios(sparse, scen, args.max_tokens), lengths, summary, False)
        summary["density_default_alpha"] = densities(log)
        print(f"density at the default alpha (scenarios): {summary['density_default_alpha']}")
        sparse.close()
        save()

    if ttft_lengths:
        fast = Engine(model, "CUSTOM", {}, max_len, **common)
        summary["ttft_flashprefill"] = timed(fast, "CUSTOM")
        fast.close()
        for n in ttft_lengths:
            ratio = summary["ttft_flash_attn"][n] / summary["ttft_flashprefill"][n]
            print(f"TTFT L={n}: FlashAttention / flashprefill = {ratio:.2f}")
        save()

    if "chunked" not in skip:
        chunked = dict(max_num_batched_tokens=args.chunk, enforce_eager=True, tensor_parallel_size=args.tp, dtype=args.dtype,
                       **pages)
        fa_c = Engine(model, "FLASH_ATTN", {}, max_len, **chunked)
        ref_c = run_scenarios(fa_c, scen, args.max_tokens)
        fa_c.close()
        fp_c = Engine(model, "CUSTOM", {"FLASHPREFILL_ALPHA": 0}, max_len, **chunked)
        ok &= compare(f"CUSTOM alpha 0, chunks {args.chunk}", ref_c, run_scenarios(fp_c, scen, args.max_tokens), lengths,
                      summary, True)
        fp_c.close()
        if "scenarios" not in skip:  # FlashAttention's own noise floor: the same prompts, other chunks
            compare(f"FLASH_ATTN chunks {args.chunk} vs FLASH_ATTN", ref, ref_c, lengths, summary, False)
        save()

    if "attention" not in skip:
        summary["attention_only"] = attention_only([int(x) for x in args.attention_lengths.split(",")],
                                                   [int(x) for x in args.attention_page_sizes.split(",")])
        for row in summary["attention_only"]:
            step = summary.get("ttft_flashprefill", {}).get(row["length"])
            if step:  # the plugin's host work per step: planning once, routing per layer (beyond the library call)
                host_ms = (row["plan_host_us"] + MODEL["num_hidden_layers"] *
                           max(row["routed_call_host_us"] - row["call_host_us"], 0.0)) / 1e3
                row["plugin_host_share_of_step"] = host_ms / (step * 1e3)
                print(f"plugin host work at L={row['length']}: {host_ms:.3f} ms = "
                      f"{100 * row['plugin_host_share_of_step']:.2f}% of the step ({step * 1e3:.1f} ms)")
    save()
    print("alpha 0 greedy tokens equal FlashAttention's everywhere:", ok)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
