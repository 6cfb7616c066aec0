"""fp32 inputs on the CPU backend (NumPy and torch) against the fp64 reference, and the choice of CPU
kernel variant (cpu_kernel_variant, FLASHPREFILL_CPU_KERNELS)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import flashprefill as fp
from reference import attention, rel_error

# fp32 is computed in fp32 throughout (scores, exp2 with relative error ~1e-7, P, sums): 1e-5 is
# ~10x what fp32 rounding over a few hundred keys gives, and far below fp16's 2e-3.
FP32_TOL = 1e-5
VARIANTS = ("amx", "avx512bf16", "avx512", "avx2", "generic")


def make(rng, b, lq, lkv, hq, hkv, d):
    q = rng.standard_normal((b, lq, hq, d)).astype(np.float32)
    k = rng.standard_normal((b, lkv, hkv, d)).astype(np.float32)
    v = rng.standard_normal((b, lkv, hkv, d)).astype(np.float32)
    q += np.float32(0.5) * k[:, -1:, :1].repeat(lq, 1).repeat(hq, 2)  # some structure: not uniform attention
    return q, k, v


@pytest.mark.parametrize("d", [64, 128, 256])
def test_numpy_fp32_dense_and_lse(rng, d):
    q, k, v = make(rng, 2, 150, 150, 4, 2, d)
    out, lse = fp.flash_prefill(q, k, v, alpha=0.0, block_size=64, return_lse=True)
    assert out.dtype == np.float32
    for b in range(2):
        ref_out, ref_lse = attention(q[b], k[b], v[b], block_size=64)
        assert rel_error(out[b], ref_out) <= FP32_TOL
        np.testing.assert_allclose(lse[b], ref_lse, rtol=1e-5, atol=1e-5)
        assert rel_error(fp.dense_attention(q, k, v)[b], ref_out) <= FP32_TOL


def test_numpy_fp32_sparse_chunked_is_attention_restricted_to_the_layout(rng):
    q, k, v = make(rng, 1, 200, 333, 6, 2, 128)  # chunked prefill (L_q < L_kv), GQA, partial blocks
    u = rng.standard_normal(128).astype(np.float32)  # key blocks 1 and 5 draw most attention: others drop
    q += 0.5 * u
    k[:, 32:64] += u
    k[:, 160:192] += u
    params = dict(alpha=0.3, block_size=32, sink_blocks=1, window_blocks=1, last_full_blocks=0)  # few forced blocks
    layout = fp.select_blocks(q, k, **params)
    rows = layout.rows()
    nqb = len(rows) // 6
    first = (333 - 200) // 32
    out = fp.flash_prefill(q, k, v, **params)
    ref, _ = attention(q[0], k[0], v[0], kept=lambda h, i: rows[h * nqb + i - first], block_size=32)
    assert rel_error(out[0], ref) <= FP32_TOL
    causal = sum(first + i + 1 for i in range(nqb)) * 6
    assert layout.density(causal) < 1.0, "the threshold should drop blocks on this input"


def test_torch_fp32_matches_numpy_and_reference(rng):
    q, k, v = make(rng, 1, 257, 257, 3, 3, 64)
    out = fp.flash_prefill(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), alpha=0.2)
    assert out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), fp.flash_prefill(q, k, v, alpha=0.2))
    layout = fp.select_blocks(q, k, alpha=0.2)
    rows, nqb = layout.rows(), (257 + 127) // 128
    ref, _ = attention(q[0], k[0], v[0], kept=lambda h, i: rows[h * nqb + i])
    assert rel_error(out[0].numpy(), ref) <= FP32_TOL


def test_torch_fp32_varlen(rng):
    lengths = [70, 1, 130]
    q, k, v = make(rng, 1, sum(lengths), sum(lengths), 4, 2, 64)
    cu = torch.tensor(np.cumsum([0] + lengths), dtype=torch.int32)
    out = fp.flash_prefill_varlen(torch.from_numpy(q[0]), torch.from_numpy(k[0]), torch.from_numpy(v[0]), cu, cu, max(lengths),
                                  max(lengths), alpha=0.0, block_size=32)
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        ref, _ = attention(q[0, start:end], k[0, start:end], v[0, start:end], block_size=32)
        assert rel_error(out[start:end].numpy(), ref) <= FP32_TOL


def test_cpu_kernel_variant_names():
    bf16 = fp.cpu_kernel_variant(torch.bfloat16)
    assert bf16 in VARIANTS
    for dtype in (torch.float16, torch.float32, np.float32, "fp32"):
        assert fp.cpu_kernel_variant(dtype) in ("avx512", "avx2", "generic"), "fp16 and fp32 use the fp32 products"
    assert fp.cpu_kernel_variant(np.float16) == fp.cpu_kernel_variant(torch.float32)
    with pytest.raises(fp.FlashPrefillError, match="expected bfloat16, float16 or float32"):
        fp.cpu_kernel_variant(torch.int32)


def _run_with_ceiling(ceiling: str, code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, FLASHPREFILL_CPU_KERNELS=ceiling)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(__file__))


def test_environment_caps_the_variant_and_results_still_match():
    # generic runs everywhere: bf16 then goes through the fp32 products, and still matches the reference.
    code = """
        import numpy as np, torch, flashprefill as fp
        from reference import attention, rel_error
        rng = np.random.default_rng(1)
        q, k, v = (torch.from_numpy(rng.standard_normal(s).astype(np.float32)).bfloat16() for s in
                   ((1, 100, 2, 64), (1, 100, 1, 64), (1, 100, 1, 64)))
        out = fp.flash_prefill(q, k, v, alpha=0.0, block_size=32)
        ref, _ = attention(q[0].float().numpy(), k[0].float().numpy(), v[0].float().numpy(), block_size=32)
        print(fp.cpu_kernel_variant(torch.bfloat16), rel_error(out[0].float().numpy(), ref) <= 1e-2)
    """
    result = _run_with_ceiling("generic", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["generic", "True"]


def test_environment_with_an_unknown_variant_is_an_error():
    result = _run_with_ceiling("sse9", """
        import numpy as np, flashprefill as fp
        q = np.ones((1, 8, 1, 64), np.float32)
        fp.flash_prefill(q, q, q)
    """)
    assert result.returncode != 0
    assert "FLASHPREFILL_CPU_KERNELS is 'sse9'; expected amx, avx512bf16, avx512, avx2 or generic" in result.stderr
