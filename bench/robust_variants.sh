#!/usr/bin/env bash
# A/B of source-tree variants of robust discovery in one device call: each variant is built in its
# own build folder (in parallel), then, per variant, per-kernel GPU time of the exact and robust
# modes (ncu gpu__time_duration, the CLI on the llama3-8b structured input) and the CLI's discovery
# A/B (exact and robust interleaved, median of ROUNDS), so that variants are compared within one
# machine and one call.
#
# Variants are folders holding a whole source tree, given as NAME=DIR pairs (DIR relative to the
# repository root; "." is the tree itself). Prepare the others on the development machine with
#   mkdir -p .variants/NAME && git archive BRANCH | tar -x -C .variants/NAME
# and carry .variants (run's carry list), e.g.
#   VARIANTS="main=. summary=.variants/summary-lean" bash bench/robust_variants.sh
# A variant given as NAME=@BUILD_DIR is a tree already built there (e.g. main=@/tmp/fp-build after
# bench/robust_device.sh), so the tree that was just tested is the one timed.
# Switches:
#   LENGTHS (default "32K 128K"), ROUNDS (default 3);
#   TESTS=1 also runs CTest's robust and exact-mode CUDA tests (CTEST_REGEX, default
#     'Cuda.Robust|ExactMode') of the variants named in TEST_VARIANTS (default all);
#   BUILD_ONLY=1 stops after the builds (to build while another job uses the GPU; BUILD_NICE=19
#     yields the CPU to it, BUILD_TARGET=flashprefill builds the CLI alone);
#   NCU_MODES (default "exact robust"; empty skips the per-kernel times).
# Results under $OUT: variants_kernel_times.txt, variants_ab.txt.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
ROOT=$PWD
VARIANTS=${VARIANTS:-main=.}
GTEST_ARG=""; [ -d .ext/googletest ] && GTEST_ARG="-DFLASHPREFILL_GTEST_SOURCE=$ROOT/.ext/googletest"
CUTLASS_ARG=""; [ -d .ext/cutlass/include ] && CUTLASS_ARG="-DFLASHPREFILL_CUTLASS_INCLUDE=$ROOT/.ext/cutlass/include"
build_of() {  # NAME -> its build folder
  for pair in $VARIANTS; do
    if [ "${pair%%=*}" = "$1" ]; then
      case ${pair#*=} in @*) echo "${pair#*=@}"; return ;; esac
    fi
  done
  echo "/tmp/fp-variant-$1"
}

# 1. Builds, in parallel (16 cores shared).
pids=()
for pair in $VARIANTS; do
  name=${pair%%=*} dir=${pair#*=}
  case $dir in @*) continue ;; esac
  (cmake -S "$ROOT/$dir" -B "$(build_of "$name")" -G Ninja -DCMAKE_BUILD_TYPE=Release $GTEST_ARG $CUTLASS_ARG \
     > "/tmp/configure-$name.log" 2>&1 &&
   nice -n "${BUILD_NICE:-0}" cmake --build "$(build_of "$name")" -j 8 ${BUILD_TARGET:+--target $BUILD_TARGET} > "/tmp/build-$name.log" 2>&1
   echo "build $name: exit $?") &
  pids+=($!)
done
wait "${pids[@]}"
for pair in $VARIANTS; do
  name=${pair%%=*}
  [ -x "$(build_of "$name")/flashprefill" ] || { echo "variant $name did not build:"; grep -m5 -A3 error "/tmp/build-$name.log"; exit 1; }
done
[ "${BUILD_ONLY:-0}" = 1 ] && exit 0

# 2. Tests (optional).
if [ "${TESTS:-0}" = 1 ]; then
  for pair in $VARIANTS; do
    name=${pair%%=*}
    case " ${TEST_VARIANTS:-$name} " in *" $name "*) ;; *) continue ;; esac
    (cd "$(build_of "$name")" && timeout 300 ctest --timeout 150 -j 4 -R "${CTEST_REGEX:-Cuda.Robust|ExactMode}" \
       > "$OUT/ctest-$name.log" 2>&1)
    echo "ctest $name: exit $? ($(grep -E 'tests passed' "$OUT/ctest-$name.log"))"
  done
fi

# 3. Per-kernel times.
for pair in $VARIANTS; do
  name=${pair%%=*} B=$(build_of "$name")
  for L in ${LENGTHS:-32K 128K}; do
    for mode in ${NCU_MODES-exact robust}; do
      echo "== $name $L $mode" >> "$OUT/variants_kernel_times.txt"
      timeout 150 ncu --csv --metrics gpu__time_duration.sum "$B/flashprefill" bench --backend cuda \
        --shape llama3-8b --seq-len "$L" --discovery $mode --no-dense --repeats 2 --recall-samples 1 2>/dev/null \
        | python3 bench/kernel_times.py | grep -v sparse_attention >> "$OUT/variants_kernel_times.txt"
    done
  done
done
[ -f "$OUT/variants_kernel_times.txt" ] && cat "$OUT/variants_kernel_times.txt"

# 4. Discovery A/B: every variant's exact and robust runs interleaved, round by round.
JSONL="$OUT/variants_ab.jsonl"; rm -f "$JSONL"
for L in ${LENGTHS:-32K 128K}; do
  for round in $(seq "${ROUNDS:-3}"); do
    for pair in $VARIANTS; do
      name=${pair%%=*} B=$(build_of "$name")
      for mode in exact robust; do
        timeout 100 "$B/flashprefill" bench --backend cuda --shape llama3-8b --seq-len "$L" --discovery $mode \
          --repeats 10 --no-dense --recall-samples 16 --json | sed "s/^{/{\"variant\":\"$name\",\"length\":\"$L\",/" >> "$JSONL"
      done
    done
  done
done
python3 - "$JSONL" <<'EOF' | tee "$OUT/variants_ab.txt"
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
keys = ("discovery_ms", "total_ms", "density")
print(f"{'variant':>12} {'L':>6} {'exact disc':>10} {'robust disc':>11} {'disc r/e':>8} {'total r/e':>9} {'density r/e':>11}")
for variant in dict.fromkeys(r["variant"] for r in rows):
    for length in dict.fromkeys(r["length"] for r in rows):
        med = {m: {k: statistics.median(r[k] for r in rows if r["variant"] == variant and r["length"] == length
                                         and r["discovery"] == m) for k in keys} for m in ("exact", "robust")}
        e, r = med["exact"], med["robust"]
        print(f"{variant:>12} {length:>6} {e['discovery_ms']:10.3f} {r['discovery_ms']:11.3f} "
              f"{r['discovery_ms'] / e['discovery_ms']:8.3f} {r['total_ms'] / e['total_ms']:9.3f} "
              f"{r['density'] / e['density']:11.3f}")
EOF
