"""The Python API on the CPU backend with NumPy (float16): agreement with an fp64 reference, the
stage API, varlen, chunked prefill, errors."""
import numpy as np
import pytest

import flashprefill as fp
from reference import attention, rel_error

FP16_TOL = 2e-3


def make(rng, b, lq, lkv, hq, hkv, d):
    q = rng.standard_normal((b, lq, hq, d)).astype(np.float16)
    k = rng.standard_normal((b, lkv, hkv, d)).astype(np.float16)
    v = rng.standard_normal((b, lkv, hkv, d)).astype(np.float16)
    q += np.float16(0.5) * k[:, -1:, :1].repeat(lq, 1).repeat(hq, 2)  # some structure: not uniform attention
    return q, k, v


def test_alpha_zero_is_dense_attention(rng):
    q, k, v = make(rng, 2, 200, 200, 4, 2, 64)
    out, lse = fp.flash_prefill(q, k, v, alpha=0.0, block_size=64, return_lse=True)
    for b in range(2):
        ref_out, ref_lse = attention(q[b], k[b], v[b], block_size=64)
        assert rel_error(out[b], ref_out) <= FP16_TOL
        np.testing.assert_allclose(lse[b], ref_lse, rtol=1e-3, atol=1e-3)
    for b in range(2):  # the dense baseline (its own tiling, so equal within rounding)
        assert rel_error(fp.dense_attention(q, k, v)[b], attention(q[b], k[b], v[b])[0]) <= FP16_TOL


def test_sparse_output_is_attention_restricted_to_the_layout(rng):
    q, k, v = make(rng, 1, 256, 320, 4, 1, 128)
    layout = fp.select_blocks(q, k, alpha=0.3, block_size=64)
    rows = layout.rows()
    nqb = len(rows) // 4
    first = (320 - 256) // 64
    assert len(rows) == 4 * nqb
    out = fp.flash_prefill(q, k, v, alpha=0.3, block_size=64)
    ref, _ = attention(q[0], k[0], v[0], kept=lambda h, i: rows[h * nqb + i - first], block_size=64)
    assert rel_error(out[0], ref) <= FP16_TOL
    np.testing.assert_array_equal(fp.block_sparse_attention(q, k, v, layout), out)


def test_own_layout(rng):
    q, k, v = make(rng, 1, 128, 128, 2, 1, 64)
    layout = fp.select_blocks(q, k, alpha=0.0, block_size=32)
    # Keep only the diagonal block of every row, by editing the CSR arrays.
    rows = layout.rows()
    layout.row_ptr[: len(rows) + 1] = np.arange(len(rows) + 1)
    layout.col_idx[: len(rows)] = [r[-1] for r in rows]
    out = fp.block_sparse_attention(q, k, v, layout)
    ref, _ = attention(q[0], k[0], v[0], kept=lambda h, i: [i], block_size=32)
    assert rel_error(out[0], ref) <= FP16_TOL


def test_varlen_matches_each_sequence(rng):
    lengths = [(150, 150), (0, 0), (7, 40), (90, 90)]
    hq, hkv, d = 4, 2, 64
    cu_q = np.cumsum([0] + [a for a, _ in lengths]).astype(np.int32)
    cu_k = np.cumsum([0] + [b for _, b in lengths]).astype(np.int32)
    q = rng.standard_normal((cu_q[-1], hq, d)).astype(np.float16)
    k = rng.standard_normal((cu_k[-1], hkv, d)).astype(np.float16)
    v = rng.standard_normal((cu_k[-1], hkv, d)).astype(np.float16)
    out, lse = fp.flash_prefill_varlen(q, k, v, cu_q, cu_k, 150, 150, alpha=0.2, block_size=32, return_lse=True)
    assert lse.shape == (hq, cu_q[-1])
    for b, (lq, lkv) in enumerate(lengths):
        if lq == 0:
            continue
        single = fp.flash_prefill(q[None, cu_q[b]:cu_q[b + 1]], k[None, cu_k[b]:cu_k[b + 1]], v[None, cu_k[b]:cu_k[b + 1]],
                                  alpha=0.2, block_size=32)
        np.testing.assert_array_equal(out[cu_q[b]:cu_q[b + 1]], single[0])


def test_chunked_prefill_matches_full_prefill_rows(rng):
    q, k, v = make(rng, 1, 256, 256, 2, 1, 64)
    full = fp.flash_prefill(q, k, v, alpha=0.0, block_size=64)
    chunk = fp.flash_prefill(np.ascontiguousarray(q[:, 192:]), k, v, alpha=0.0, block_size=64)
    np.testing.assert_array_equal(chunk, full[:, 192:])


def test_non_contiguous_views_are_read_through_strides(rng):
    q, k, v = make(rng, 1, 128, 128, 2, 2, 64)
    q_t = np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)  # [B, L, H, D] view of [B, H, L, D]
    assert not q_t.flags.c_contiguous
    np.testing.assert_array_equal(fp.flash_prefill(q_t, k, v, block_size=32), fp.flash_prefill(q, k, v, block_size=32))


@pytest.mark.parametrize("case, message", [
    ("float32", "k has dtype fp16 but q has fp32; expected the same"),  # fp32 is accepted, but mixed dtypes are not
    ("gqa", "GQA"),
    ("alpha", "params.alpha"),
    ("block", "params.block_size"),
    ("head_dim", "head dim"),
    ("lq_gt_lkv", "L_q = 65 > L_kv = 64"),
    ("nan", "q holds a NaN"),
])
def test_errors_name_the_argument(rng, case, message):
    q, k, v = make(rng, 1, 64, 64, 4, 2, 64)
    kwargs = {}
    if case == "float32":
        q = q.astype(np.float32)
    elif case == "gqa":
        k, v = k[:, :, :1].repeat(3, 2), v[:, :, :1].repeat(3, 2)
    elif case == "alpha":
        kwargs["alpha"] = 1.5
    elif case == "block":
        kwargs["block_size"] = 100
    elif case == "head_dim":
        q, k, v = q[..., :48].copy(), k[..., :48].copy(), v[..., :48].copy()
    elif case == "lq_gt_lkv":
        q = np.concatenate([q, q[:, :1]], axis=1)
    elif case == "nan":
        q[0, 3, 1, 5] = np.nan
        kwargs["check_inputs"] = True
    with pytest.raises(fp.FlashPrefillError, match=message):
        fp.flash_prefill(q, k, v, **kwargs)
    assert issubclass(fp.FlashPrefillError, ValueError)


def test_structured_input_is_deterministic():
    a = fp.make_structured_input(512, 4, 2, 64, seed=3)
    b = fp.make_structured_input(512, 4, 2, 64, seed=3)
    c = fp.make_structured_input(512, 4, 2, 64, seed=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    assert a[0].dtype == np.uint16 and a[0].shape == (1, 512, 4, 64)


def _describe(a):
    """What flashprefill._torch_ops passes for a tensor, built from a NumPy array (bf16 as float16 bits
    would differ in value, so the codes here are the arrays' own: float16 = 1, float32 = 2)."""
    code = {np.dtype(np.float16): 1, np.dtype(np.float32): 2}[a.dtype]
    return (a.ctypes.data, a.shape, tuple(s // a.itemsize for s in a.strides), code, -1)


def test_descriptor_entry_point_matches_dlpack_one(rng):
    """The PyTorch fast path's binding (tensors as (pointer, shape, stride, dtype, device) descriptors,
    None for absent ones) computes what the DLPack binding computes, here on the CPU backend."""
    from flashprefill import _C
    q, k, v = make(rng, 2, 200, 300, 4, 2, 64)
    params = (0.12, 128, 2, 4, 2, 0, 0.0, False, 0)  # the last: discovery (0: exact); then head_alpha, stream
    expected = fp.flash_prefill(q, k, v, alpha=0.12)
    out = np.full_like(q, np.nan)
    described = (_describe(q), _describe(k), _describe(v), _describe(out), None, None, None, 0, 0, *params, None, 0)
    assert _C.workspace_size_described(*described) > 0
    _C.flash_prefill_described(*described, 0, 0)
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(fp.FlashPrefillError, match="q has 5 dimensions"):
        bad = (q.ctypes.data, (1,) * 5, (1,) * 5, 1, -1)
        _C.flash_prefill_described(bad, *described[1:], 0, 0)
