"""Robust discovery (docs/ROBUST.md) from Python on the CPU: the needles the exact rule drops are kept,
the layout is the rule the bench prototype measured (bench/needle_suite.py), varlen agrees with each
sequence alone, and a wrong ``discovery`` is named."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the needle suite builds its inputs with it")
import flashprefill as fp  # noqa: E402
from flashprefill import needles  # noqa: E402

BLOCK = 128


def prototype_kept(q, k, alpha, sink_blocks=2, window_blocks=4, last_full_blocks=2):
    """The rule in plain torch (fp32), one sequence [L, H, D]: kept mask [H_q, nb, nb] (bench/needle_suite.py's
    prototype, the union of the exact rule and the threshold on x_eff, with ln(n_j) for a partial last block)."""
    length, heads_q, dim = q.shape
    nb = -(-length // BLOCK)
    padded = torch.nn.functional.pad(k.float(), (0, 0, 0, 0, 0, nb * BLOCK - length)).view(nb, BLOCK, *k.shape[1:])
    valid = (torch.arange(nb * BLOCK) < length).view(nb, BLOCK)
    counts = valid.sum(1).float()
    mean = (padded.sum(1) / counts[:, None, None]).to(k.dtype).float()
    spread = ((padded - mean[:, None]) ** 2).sum(-1).masked_fill(~valid[:, :, None], -1.0)
    far = torch.gather(padded, 1, spread.argmax(1)[:, None, :, None].expand(nb, 1, *k.shape[1:]))[:, 0]
    group = heads_q // k.shape[1]
    scale = 1.0 / math.sqrt(dim)
    x_mean = torch.einsum("thd,jhd->htj", q.float(), mean.repeat_interleave(group, 1)) * scale
    x_far = torch.einsum("thd,jhd->htj", q.float(), far.repeat_interleave(group, 1)) * scale - counts.log()
    last_key = torch.clamp((torch.arange(nb) + 1) * BLOCK, max=length) - 1
    hidden = (last_key[None, :] > torch.arange(length)[:, None])[None]

    def passes(x):
        x = x.masked_fill(hidden, float("-inf"))
        rows = torch.nn.functional.pad(x, (0, 0, 0, nb * BLOCK - length), value=float("-inf")).view(heads_q, nb, BLOCK, nb)
        scores = torch.exp(rows - rows.amax(dim=(2, 3), keepdim=True)).sum(2)
        return scores >= alpha * scores.amax(-1, keepdim=True)

    i, j = torch.arange(nb)[:, None], torch.arange(nb)[None, :]
    forced = (j < sink_blocks) | (i - j < window_blocks) | (i >= nb - last_full_blocks)
    keep = passes(x_mean) | passes(torch.maximum(x_mean, x_far)) | forced[None]
    return keep & (j <= i)[None]


def kept_mask(layout, heads, nb):
    mask = torch.zeros(heads * nb, nb, dtype=torch.bool)
    for r, kept in enumerate(layout.rows()):
        mask[r, kept] = True
    return mask.view(heads, nb, nb)


@pytest.mark.parametrize("span_len,share", [(4, 0.9), (16, 0.9), (48, 0.6)])
def test_robust_keeps_the_needles_the_exact_rule_drops(span_len, share):
    case = needles.make_needle_case(8192, span_len=span_len, dense_share=share, seed=span_len)
    exact = needles.needle_metrics(case, fp.flash_prefill(case.q, case.k, case.v, alpha=0.12))
    robust = needles.needle_metrics(case, fp.flash_prefill(case.q, case.k, case.v, alpha=0.12, discovery="robust"))
    assert robust.affected_rows > 0
    assert robust.kept_share >= 0.95, f"robust kept {robust.kept_share:.2f} (exact {exact.kept_share:.2f})"
    if span_len == 4:
        assert exact.kept_share < 0.5, "the case should defeat the exact rule"


def test_robust_layout_is_the_prototype_rule():
    """The library's robust layout equals the plain-torch rule block for block, up to blocks whose score lies within
    fp32 rounding of the threshold (a handful at most), on the structured input with a partial last block."""
    q, k, _ = (torch.from_numpy(a).view(torch.bfloat16) for a in fp.make_structured_input(5000, 6, 2, 64, seed=7))
    layout = fp.select_blocks(q, k, alpha=0.12, discovery="robust")
    nb = -(-5000 // BLOCK)
    got, want = kept_mask(layout, 6, nb), prototype_kept(q[0], k[0], 0.12)
    assert (got != want).sum().item() <= 3, f"{(got != want).sum().item()} of {int(want.sum())} kept blocks differ"
    exact = kept_mask(fp.select_blocks(q, k, alpha=0.12), 6, nb)
    assert not torch.equal(got, exact), "robust and exact should differ on this input"
    assert not (exact & ~got).any(), "robust keeps every block the exact rule keeps"


def test_robust_varlen_equals_each_sequence():
    cases = [needles.make_needle_case(n, span_len=8, dense_share=0.8, seed=n) for n in (2048, 3000)]
    q, k, v, cu, max_len, offsets = needles.pack_varlen(cases)
    out = fp.flash_prefill_varlen(q, k, v, cu, cu, max_len, max_len, discovery="robust")
    for case, start in zip(cases, offsets):
        alone = fp.flash_prefill(case.q, case.k, case.v, discovery="robust")
        assert torch.equal(out[start:start + case.q.shape[1]], alone[0])


def test_robust_numpy_path_equals_torch_path():
    q, k, v = fp.make_structured_input(1000, 4, 2, 64, seed=3)
    as_torch = [torch.from_numpy(a).view(torch.bfloat16) for a in (q, k, v)]
    q16, k16, v16 = (t.float().numpy().astype(np.float16) for t in as_torch)
    out_np = fp.flash_prefill(q16, k16, v16, discovery="robust")
    out_torch = fp.flash_prefill(*(torch.from_numpy(a) for a in (q16, k16, v16)), discovery="robust")
    np.testing.assert_array_equal(out_np, out_torch.numpy())


def test_unknown_discovery_is_named():
    q = torch.zeros(1, 128, 2, 64, dtype=torch.bfloat16)
    with pytest.raises(fp.FlashPrefillError, match="discovery is 'fast'; expected 'exact' or 'robust'"):
        fp.flash_prefill(q, q[:, :, :1], q[:, :, :1], discovery="fast")
    with pytest.raises(fp.FlashPrefillError, match="discovery"):
        fp.select_blocks(q, q[:, :, :1], discovery=1)
