"""Host cost of the Python layer over the C++ call, for bench/RESULTS.md (a measurement, not a test).

The C++ flash_prefill is timed in C++ (no Python between calls, _C.host_time_of_cpp_call) on the same
tensors and, as the public call, with the library's cached workspace; the public call also allocates its
output, as every user call does. Both sides are host time: the device is synchronised every `batch` calls,
outside the timed span. Rounds are interleaved, so drifts of clock or load hit both sides alike.

    PYTHONPATH=python python3 bench/python_overhead.py [--rounds 5]   (needs a CUDA device and the extension)
"""
import argparse
import time

import torch

import flashprefill as fp
from flashprefill import _C, _torch_ops


def host_us_per_call(fn, repeats=2000, batch=20):
    seconds = 0.0
    for _ in range(repeats // batch):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        seconds += time.perf_counter() - start
    torch.cuda.synchronize()
    return seconds / (repeats // batch * batch) * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not (torch.cuda.is_available() and fp.cuda_available()):
        raise SystemExit("python_overhead: no CUDA device")
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 128, 1, 64, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
    # The public defaults as _torch_ops passes them: ..., check_inputs, discovery (exact), head_alpha (none).
    params = (0.12, 128, 2, 4, 2, 0, 0.0, False, 0, None)
    stream = torch.cuda.current_stream().cuda_stream
    out = torch.empty_like(q)
    described = tuple(_torch_ops._describe(t, n) for t, n in ((q, "q"), (k, "k"), (v, "v"), (out, "out"))) + (
        None, None, None, 0, 0, *params, stream)
    rounds = []
    for _ in range(args.rounds):
        for _ in range(50):
            fp.flash_prefill(q, k, v)
        cpp_us = _C.host_time_of_cpp_call(*described, 0, 0, 2000, 20)  # workspace 0: the library's cached one
        api_us = host_us_per_call(lambda: fp.flash_prefill(q, k, v))
        rounds.append((cpp_us, api_us))
    cpp_us, api_us = min(r[0] for r in rounds), min(r[1] for r in rounds)
    median_difference = sorted(a - c for c, a in rounds)[len(rounds) // 2]
    print(f"[overhead] C++ flash_prefill {cpp_us:.1f} us/call (host), public API {api_us:.1f} us/call: "
          f"the Python layer adds {api_us - cpp_us:.1f} us (minima of {len(rounds)} rounds; median of the "
          f"per-round differences {median_difference:.1f} us)")


if __name__ == "__main__":
    main()
