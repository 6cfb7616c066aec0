#!/usr/bin/env bash
# Issue 14 point 1 on the GPU, in three device calls (each well under the 10-minute limit;
# /tmp/fp-build is kept while the machine stays warm):
#   bash bench/paged_device.sh tests     build, CTest with CUDA (every test; the paged ones are
#                                        Cuda.Paged*)
#   bash bench/paged_device.sh sanitize  compute-sanitizer memcheck and racecheck on Cuda.Paged*
#   bash bench/paged_device.sh bench     paged vs contiguous K/V at 32K and 128K, pages of 16 and 128
#                                        (bench/paged_ab.sh), and the contiguous path of this tree
#                                        against BASE (default: main) with bench/ab_cli.sh
# Results under $OUT. LENGTHS / PAGES / ROUNDS / BASE override the defaults.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
B=/tmp/fp-build
case "${1:-}" in
  tests)
    CLI=0 SANITIZE=0 bash bench/device_run.sh
    ;;
  sanitize)
    [ -x $B/tests/cuda/test_cuda_backend ] || CLI=0 SANITIZE=0 TESTS=0 bash bench/device_run.sh
    start=$(date +%s)
    timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/cuda/test_cuda_backend \
      --gtest_filter='Cuda.Paged*' > "$OUT/paged_memcheck.log" 2>&1; echo "paged memcheck exit $?"
    timeout 150 compute-sanitizer --tool racecheck --error-exitcode 9 $B/tests/cuda/test_cuda_backend \
      --gtest_filter='Cuda.PagedEqualsContiguousDefaultKernels' > "$OUT/paged_racecheck.log" 2>&1
    echo "paged racecheck exit $? (sanitizers $(( $(date +%s) - start )) s)"
    tail -n 3 "$OUT/paged_memcheck.log" "$OUT/paged_racecheck.log"
    ;;
  bench)
    ROUNDS=${ROUNDS:-3} bash bench/paged_ab.sh "${LENGTHS:-32K,128K}" "${PAGES:-16,128}"
    BASE=${BASE:-main} ROUNDS=${ROUNDS:-3} TAG=contiguous bash bench/ab_cli.sh "${LENGTHS:-32K,128K}"
    ;;
  *)
    echo "usage: bash bench/paged_device.sh tests|sanitize|bench"; exit 2 ;;
esac
