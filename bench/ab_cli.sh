#!/usr/bin/env bash
# A/B of the C++ CLI in one device call: the working tree (B) against a git revision (A), both built
# here, their runs interleaved (A B A B ...) so that clock drift lands on both. Prints, per length,
# the median discovery / attention / total of each side and B/A. The device's git history can lag
# behind local commits (there, HEAD was the session's first commit): the line "A = ..." names the
# revision actually built.
# Usage (on the device, after bench/device_run.sh built the working tree in /tmp/fp-build):
#   BASE=HEAD ROUNDS=3 bash bench/ab_cli.sh 32K,128K,256K
# Extra CMake flags for either side: A_FLAGS / B_FLAGS (e.g. B_FLAGS=-DCMAKE_CUDA_FLAGS=-DX=1
# builds B again in /tmp/fp-build-b). TAG=name writes $OUT/ab_name.jsonl instead of $OUT/ab.jsonl.
set -uo pipefail
LENGTHS=${1:-32K,128K,256K}
OUT=${OUT:-/tmp/out}
BASE=${BASE:-HEAD}
ROUNDS=${ROUNDS:-3}
mkdir -p "$OUT"
JSONL="$OUT/ab${TAG:+_$TAG}.jsonl"; rm -f "$JSONL"
CUTLASS_ARG=""; [ -d .ext/cutlass/include ] && CUTLASS_ARG="-DFLASHPREFILL_CUTLASS_INCLUDE=$PWD/.ext/cutlass/include"
build() {  # source dir, build dir, extra flags
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHPREFILL_BUILD_TESTS=OFF $CUTLASS_ARG ${3:-} > "$2.configure.log" 2>&1 &&
    cmake --build "$2" -j 16 --target flashprefill_cli > "$2.build.log" 2>&1 || { echo "build of $1 failed:"; tail -20 "$2.build.log"; return 1; }
}
if ! git rev-parse --verify -q "$BASE^{commit}" > /dev/null; then echo "ab_cli: no git revision $BASE here"; exit 1; fi
A_KEY="$(git rev-parse "$BASE") ${A_FLAGS:-}"
if [ "$(cat /tmp/fp-build-a.key 2>/dev/null)" != "$A_KEY" ]; then  # a second call with the same A reuses its build
  rm -rf /tmp/fp-base && git worktree prune && git worktree add -f --detach /tmp/fp-base "$BASE" > /dev/null 2>&1 || { echo "ab_cli: git worktree failed"; exit 1; }
  [ -d .ext ] && ln -sfn "$PWD/.ext" /tmp/fp-base/.ext
  build /tmp/fp-base /tmp/fp-build-a "${A_FLAGS:-}" || exit 1
  echo "$A_KEY" > /tmp/fp-build-a.key
fi
B_DIR=/tmp/fp-build
if [ -n "${B_FLAGS:-}" ] || [ ! -x $B_DIR/flashprefill ]; then B_DIR=/tmp/fp-build-b; build . $B_DIR "${B_FLAGS:-}" || exit 1; fi
echo "A = $BASE ($(git rev-parse --short "$BASE")) ${A_FLAGS:-}; B = working tree ${B_FLAGS:-}"
IFS=, read -ra LS <<< "$LENGTHS"
for L in "${LS[@]}"; do
  for round in $(seq "$ROUNDS"); do
    for side in a b; do
      bin=/tmp/fp-build-a/flashprefill; [ $side = b ] && bin=$B_DIR/flashprefill
      timeout 120 $bin bench --backend cuda --shape llama3-8b --seq-len "$L" --repeats 10 --no-dense --recall-samples 4 --json |
        sed "s/^{/{\"side\":\"$side\",\"length\":\"$L\",/" >> "$JSONL"
    done
  done
done
python3 - "$JSONL" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
print(f"{'L':>6} {'side':>4} {'discovery':>10} {'attention':>10} {'total':>8}   (ms, median of rounds)")
for length in dict.fromkeys(r["length"] for r in rows):
    med = {}
    for side in "ab":
        rs = [r for r in rows if r["length"] == length and r["side"] == side]
        med[side] = {k: statistics.median(r[k] for r in rs) for k in ("discovery_ms", "attention_ms", "total_ms")}
        m = med[side]
        print(f"{length:>6} {side:>4} {m['discovery_ms']:10.3f} {m['attention_ms']:10.3f} {m['total_ms']:8.3f}")
    print(f"{length:>6}  B/A {med['b']['discovery_ms'] / med['a']['discovery_ms']:10.3f} "
          f"{med['b']['attention_ms'] / med['a']['attention_ms']:10.3f} {med['b']['total_ms'] / med['a']['total_ms']:8.3f}")
EOF
