#!/usr/bin/env bash
# Paged vs contiguous K/V (issue 14) in one device call: for each length and page size, the CLI's
# `bench --page-size N` times discovery, block-sparse attention and flash_prefill on the same
# llama3-8b-shaped input twice in one process, queries packed in both, K/V contiguous and K/V in a
# shuffled [2, num_pages, N, H_kv, D] page pool, and checks the two outputs are bit-identical.
# ROUNDS processes per point; the summary is the median over rounds of each side and paged/contiguous.
# Usage (on the device; builds /tmp/fp-build unless bench/device_run.sh already did):
#   bash bench/paged_ab.sh 32K,128K 16,128          (results under $OUT: paged.jsonl, paged.txt)
# SHAPE=small|qwen2.5-7b changes the preset; ROUNDS=3 by default; IN_ORDER=1 keeps the pages in sequence
# order (a fresh cache) instead of shuffling them.
set -uo pipefail
LENGTHS=${1:-32K,128K}
PAGES=${2:-16,128}
OUT=${OUT:-/tmp/out}
ROUNDS=${ROUNDS:-3}
SHAPE=${SHAPE:-llama3-8b}
B=/tmp/fp-build
mkdir -p "$OUT"
if [ ! -x $B/flashprefill ]; then
  CUTLASS_ARG=""; [ -d .ext/cutlass/include ] && CUTLASS_ARG="-DFLASHPREFILL_CUTLASS_INCLUDE=$PWD/.ext/cutlass/include"
  cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHPREFILL_BUILD_TESTS=OFF $CUTLASS_ARG > "$OUT/paged_configure.log" 2>&1 &&
    cmake --build $B -j 16 --target flashprefill_cli > "$OUT/paged_build.log" 2>&1 || { tail -20 "$OUT/paged_build.log"; exit 1; }
fi
JSONL="$OUT/paged.jsonl"; rm -f "$JSONL"
IFS=, read -ra LS <<< "$LENGTHS"
IFS=, read -ra PS <<< "$PAGES"
for L in "${LS[@]}"; do
  for P in "${PS[@]}"; do
    for round in $(seq "$ROUNDS"); do
      timeout 150 $B/flashprefill bench --backend cuda --shape "$SHAPE" --seq-len "$L" --page-size "$P" --no-dense \
        $( [ "${IN_ORDER:-0}" = 1 ] && echo --pages-in-order ) --repeats 10 --recall-samples 4 --json | sed "s/^{/{\"length\":\"$L\",\"round\":$round,/" >> "$JSONL"
    done
  done
done
python3 - "$JSONL" <<'PY' | tee "$OUT/paged.txt"
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
points = {}
for r in rows:
    points.setdefault((r["seq_len"], r["page_size"]), []).append(r)
print(f"{'length':>8} {'page':>5} {'stage':>10} {'contiguous ms':>14} {'paged ms':>10} {'paged/contig':>13}  identical")
for (length, page), rs in sorted(points.items()):
    for stage in ("discovery", "attention", "total"):
        a = statistics.median(r[f"varlen_{stage}_ms"] for r in rs)
        b = statistics.median(r[f"paged_{stage}_ms"] for r in rs)
        same = all(r["paged_output_identical"] for r in rs)
        print(f"{length:>8} {page:>5} {stage:>10} {a:>14.3f} {b:>10.3f} {b / a:>13.3f}  {same} ({len(rs)} rounds)")
PY
