"""Dense causal baselines on the GPU: PyTorch scaled_dot_product_attention with the
FlashAttention-2 and cuDNN backends, CUDA-event timing, median after warm-up.

Dense attention time does not depend on the values, so random bf16 inputs of the benchmark's
shapes are used. Usage: python3 bench/sdpa_baseline.py --lengths 4096,16384 [--shape llama3-8b]
"""
import argparse
import json

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from timing import time_ms

SHAPES = {"llama3-8b": (32, 8, 128), "qwen2.5-7b": (28, 4, 128), "small": (9, 3, 64)}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", default="4096,16384,32768")
    parser.add_argument("--shape", default="llama3-8b", choices=SHAPES)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    heads_q, heads_kv, dim = SHAPES[args.shape]
    results = []
    for length in [int(x) for x in args.lengths.split(",")]:
        q = torch.randn(1, heads_q, length, dim, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, heads_kv, length, dim, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        # GQA: SDPA's enable_gqa repeats kv heads inside the kernel where the backend supports it.
        k_full = k.repeat_interleave(heads_q // heads_kv, dim=1)
        v_full = v.repeat_interleave(heads_q // heads_kv, dim=1)
        row = {"shape": args.shape, "seq_len": length}
        for name, backend in (("fa2", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
            try:
                with sdpa_kernel(backend):
                    row[name + "_ms"] = time_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k_full, v_full, is_causal=True),
                                                repeats=5 if length > 65536 else 10)
            except RuntimeError as error:
                row[name + "_ms"] = None
                row[name + "_error"] = str(error).splitlines()[0]
        flops = 2.0 * length * length * dim * heads_q
        for name in ("fa2", "cudnn"):
            if row.get(name + "_ms"):
                row[name + "_tflops"] = flops / (row[name + "_ms"] * 1e-3) / 1e12
        results.append(row)
        print(json.dumps(row), flush=True)
        del q, k, v, k_full, v_full
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
