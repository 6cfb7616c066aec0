"""Why robust discovery misses a needle case: for each query block holding the case's affected queries
and each kv head, its far row (and whether it is one of the needle's query rows), and how far each
representative's best key on the span's block lies from its best key in the row (the rule keeps the
block at >= ln(alpha^2)); also a candidate third representative, far2, the far head's row farthest
from the far row. The library's rule in plain torch (bench/needle_suite.py's prototype pieces,
e4m3 products), one needle case of flashprefill.needles.

    python bench/needle_diagnose.py --length 32K --head-dim 128 --span-len 16 --share 0.6 \\
        --span-depth 0.55 --query-depth 0.85 --seed 9
"""
import argparse
import math
import sys
from pathlib import Path

from flashprefill import needles

sys.path.insert(0, str(Path(__file__).resolve().parent))
import needle_suite  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", default="32K")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--span-len", type=int, default=16)
    parser.add_argument("--share", type=float, default=0.6)
    parser.add_argument("--span-depth", type=float, default=0.55)
    parser.add_argument("--query-depth", type=float, default=0.85)
    parser.add_argument("--seed", type=int, default=9, help="the suite numbers its cases from 1")
    parser.add_argument("--alpha", type=float, default=0.12)
    args = parser.parse_args()
    length, dim, block = needle_suite.parse_len(args.length), args.head_dim, needle_suite.BLOCK
    case = needles.make_needle_case(length, head_dim=dim, span_len=args.span_len, span_depth=args.span_depth,
                                    query_depth=args.query_depth, dense_share=args.share, seed=args.seed)
    q, k = case.q[0], case.k[0]
    heads_q, heads_kv = q.shape[1], k.shape[1]
    group, nb = heads_q // heads_kv, -(-length // block)
    queries, _ = needle_suite._block_view(q, length)                         # [nb, B, H_q, D]
    keys, _ = needle_suite._block_view(k, length)                            # [nb, B, H_kv, D]
    sums = queries.sum(1)
    spread = ((queries - (sums / block).to(q.dtype).float()[:, None]) ** 2).sum(-1)  # [nb, B, H_q]
    needle_rows = range(case.query_start, case.query_start + case.query_rows)
    span_block = case.span_start // block
    print(f"span at {case.span_start} (block {span_block}), needle queries {needle_rows.start}..{needle_rows.stop - 1}, "
          f"threshold ln(alpha^2) = {2 * math.log(args.alpha):.2f}")
    for i in range(needle_rows.start // block, (needle_rows.stop - 1) // block + 1):
        print(f"query block {i}: needle rows {max(needle_rows.start, i * block) - i * block}.."
              f"{min(needle_rows.stop, (i + 1) * block) - 1 - i * block} of {block}")
        for hk in range(heads_kv):
            heads = slice(hk * group, (hk + 1) * group)
            best, row = spread[i, :, heads].max(0)
            far_head = int(best.argmax())
            t = int(row[far_head])
            far = queries[i, t, hk * group + far_head]
            # A candidate third representative: the row of the far head farthest from the far row.
            t2 = int(((queries[i, :, hk * group + far_head] - far) ** 2).sum(-1).argmax())
            reps = {"mean": (sums[i, heads].sum(0) / (group * block)).to(q.dtype).float(), "far": far,
                    "far2": queries[i, t2, hk * group + far_head]}
            scaled_keys = needle_suite._e4m3_scaled(keys[: i + 1, :, hk], (1, 2))
            kind = lambda row: "a needle row" if i * block + row in needle_rows else "not a needle row"  # noqa: E731
            line = f"  kv head {hk}: far row {t} ({kind(t)}), far2 row {t2} ({kind(t2)})"
            for name, rep in reps.items():
                y = (scaled_keys @ needle_suite._e4m3_scaled(rep, (-1,))).amax(1) / math.sqrt(dim)
                line += f"; {name}: y[span] - Y = {float(y[span_block] - y.max()):6.2f}"
            print(line)


if __name__ == "__main__":
    main()
