"""Density of robust discovery's prototype rule (bench/needle_suite.py's proto-dual with e4m3 products: `gfe`,
the mean query of sessions 13-17; `--core`, `gfec`, the library's rule since session 18) at several margins,
beside the library's exact and robust layouts, on the structured input of ../shared/docs/BENCHMARK.md (seed 0)
at the llama3-8b shape (32 query heads, 8 kv heads, D 128).

    python bench/proto_density.py --length 32K --ratios 0.0144,0.005,0.0017

A ratio r keeps a block whose representative's best key lies within ln(1 / r) of the row's best (the
library: r = alpha^2). The prototype holds [H_q, L, L / 128] scores in fp32, so its memory grows as L^2.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

import flashprefill as fp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import needle_suite  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", default="32K")
    parser.add_argument("--alpha", type=float, default=0.12)
    parser.add_argument("--ratios", default="0.0144,0.005,0.0017")
    parser.add_argument("--far2", action="store_true", help="the prototype's gfe2: far2 in place of the mean query")
    parser.add_argument("--core", action="store_true", help="the prototype's gfec: the core query (the library's)")
    parser.add_argument("--device", default="cpu", help="where the prototype and the library run (cpu, cuda)")
    args = parser.parse_args()
    length = needle_suite.parse_len(args.length)
    started = time.time()
    q, k, _ = (torch.from_numpy(a).view(torch.bfloat16) for a in fp.make_structured_input(length, 32, 8, 128, seed=0))
    q, k = q.to(args.device), k.to(args.device)
    nb = -(-length // needle_suite.BLOCK)
    causal = 32 * nb * (nb + 1) // 2
    exact = fp.select_blocks(q, k, alpha=args.alpha).density(causal)
    print(f"{args.length}: library exact {exact:.5f}, library robust "
          f"{fp.select_blocks(q, k, alpha=args.alpha, discovery='robust').density(causal):.5f}", flush=True)
    for ratio in (float(r) for r in args.ratios.split(",")):
        mask = needle_suite.proto_dual_layout(q[0], k[0], args.alpha, ratio, pool_group=True, far_query=True, fp8=True,
                                              far2=args.far2, core=args.core)
        density = float(mask.sum()) / causal
        print(f"{args.length}: prototype gfe{'2' if args.far2 else ''}{'c' if args.core else ''}, ratio {ratio}: {density:.5f} ({density / exact:.3f}x exact) "
              f"[{time.time() - started:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
