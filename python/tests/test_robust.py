"""Robust discovery (docs/ROBUST.md) from Python on the CPU: the needles the exact rule drops are kept,
the layout is the rule written in plain torch here, varlen agrees with each sequence alone, and a wrong
``discovery`` is named."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the needle suite builds its inputs with it")
import flashprefill as fp  # noqa: E402
from flashprefill import needles  # noqa: E402

BLOCK = 128


def e4m3_scaled(x, dims):
    """x scaled by the power of two that puts its largest magnitude over `dims` in [128, 256), rounded to e4m3
    (ties to even) and scaled back."""
    top = x.abs().amax(dim=dims, keepdim=True)
    scale = torch.where(top > 0, torch.ldexp(torch.ones_like(top), 8 - torch.frexp(top)[1]), torch.ones_like(top))
    return (x * scale).to(torch.float8_e4m3fn).float() / scale


def rule_kept(q, k, alpha, sink_blocks=2, window_blocks=4, last_full_blocks=2):
    """The rule in plain torch (fp32), one sequence [L, H, D]: kept mask [H_q, nb, nb] (docs/ROBUST.md): the exact
    rule's blocks, plus those whose best key, scored against the query block's group core query (the mean of each
    head's rows no farther from its mean than the midrange of their distances, rounded to q's dtype) or its far query
    (the row farthest from its head's mean), lies within ln(1 / alpha^2) of that query's best block, all products of
    e4m3 values."""
    length, heads_q, dim = q.shape
    heads_kv = k.shape[1]
    group = heads_q // heads_kv
    nb = -(-length // BLOCK)
    pad = nb * BLOCK - length
    valid = (torch.arange(nb * BLOCK) < length).view(nb, BLOCK)
    counts = valid.sum(1).float()
    scale = 1.0 / math.sqrt(dim)
    i, j = torch.arange(nb)[:, None], torch.arange(nb)[None, :]

    # The exact rule: S = sum over a block's rows of exp(x - row max), x against the key blocks' means.
    keys = torch.nn.functional.pad(k.float(), (0, 0, 0, 0, 0, pad)).view(nb, BLOCK, heads_kv, dim)
    mean_keys = (keys.sum(1) / counts[:, None, None]).to(k.dtype).float()
    x = torch.einsum("thd,jhd->htj", q.float(), mean_keys.repeat_interleave(group, 1)) * scale
    last_key = torch.clamp((torch.arange(nb) + 1) * BLOCK, max=length) - 1
    x = x.masked_fill((last_key[None, :] > torch.arange(length)[:, None])[None], float("-inf"))
    rows = torch.nn.functional.pad(x, (0, 0, 0, pad), value=float("-inf")).view(heads_q, nb, BLOCK, nb)
    scores = torch.exp(rows - rows.amax(dim=(2, 3), keepdim=True)).sum(2)
    exact = scores >= alpha * scores.amax(-1, keepdim=True)

    # The representatives of each (query block, kv head): [nb, H_kv, 2, D].
    queries = torch.nn.functional.pad(q.float(), (0, 0, 0, 0, 0, pad)).view(nb, BLOCK, heads_q, dim)
    sums = queries.sum(1)
    head_means = (sums / counts[:, None, None]).to(q.dtype).float()  # the distances are to the rounded mean
    distance = ((queries - head_means[:, None]) ** 2).sum(-1)  # [nb, B, H_q]
    lowest = distance.masked_fill(~valid[:, :, None], float("inf")).amin(1)
    highest = distance.masked_fill(~valid[:, :, None], -1.0).amax(1)
    core = (distance <= (lowest + highest)[:, None] / 2) & valid[:, :, None]
    core_sums = (queries * core[..., None]).sum(1).view(nb, heads_kv, group, dim).sum(2)
    core_counts = core.sum(1).view(nb, heads_kv, group).sum(2).float()
    core_query = (core_sums / core_counts[..., None]).to(q.dtype).float()
    spread = distance.masked_fill(~valid[:, :, None], -1.0)
    spread = spread.view(nb, BLOCK, heads_kv, group).permute(0, 2, 3, 1).reshape(nb, heads_kv, group * BLOCK)
    far_index = spread.argmax(-1)  # the first maximum: the lowest head, then the lowest row
    far_row, far_head = far_index % BLOCK, far_index // BLOCK + torch.arange(heads_kv)[None, :] * group
    far = queries[torch.arange(nb)[:, None], far_row, far_head]
    reps = torch.stack([core_query, far], 2)

    # Products of e4m3 values: each representative and each (key block, kv head) scaled by the power of two
    # that puts its largest magnitude in [128, 256), rounded to e4m3 and scaled back.
    reps = e4m3_scaled(reps, (-1,))
    keys = e4m3_scaled(keys, (1, 3)).view(nb * BLOCK, heads_kv, dim)

    # y[i, hk, rep, j]: the best key of block j for the representative, no visibility mask; then j <= i only.
    per_key = torch.einsum("ihrd,shd->ihrs", reps, keys) * scale
    per_key = per_key.masked_fill(~valid.view(-1), float("-inf"))
    y = per_key.view(nb, heads_kv, 2, nb, BLOCK).amax(-1)
    y = y.masked_fill((j > i)[:, None, None, :], float("-inf"))
    robust = (y >= y.amax(-1, keepdim=True) + 2 * math.log(alpha)).any(2)  # [i, H_kv, j]: the threshold is alpha^2
    robust = robust.repeat_interleave(group, 1).permute(1, 0, 2)

    forced = (j < sink_blocks) | (i - j < window_blocks) | (i >= nb - last_full_blocks)
    keep = exact | robust | forced[None]
    return keep & (j <= i)[None]


def kept_mask(layout, heads, nb):
    mask = torch.zeros(heads * nb, nb, dtype=torch.bool)
    for r, kept in enumerate(layout.rows()):
        mask[r, kept] = True
    return mask.view(heads, nb, nb)


# (48, 0.6) uses the needle input of seed 48, whose 128 planted rows start 26 rows before the end of a query block: the
# query-representatives rule keeps 0.91 of its affected rows (the plain-torch rule below agrees block for block; the
# rule with the mean query in place of the core query kept 0.59); spans of 4 and 16 on that seed keep 1.00 at share
# 0.6. Strict: the case is a known miss of this rule, to be revisited with the rule.
@pytest.mark.parametrize("span_len,share", [
    (4, 0.9), (16, 0.9),
    pytest.param(48, 0.6, marks=pytest.mark.xfail(strict=True, reason="known miss of the query-representatives rule "
                                                                        "on the seed-48 placement (kept 0.91)"))])
def test_robust_keeps_the_needles_the_exact_rule_drops(span_len, share):
    case = needles.make_needle_case(8192, span_len=span_len, dense_share=share, seed=span_len)
    exact = needles.needle_metrics(case, fp.flash_prefill(case.q, case.k, case.v, alpha=0.12))
    robust = needles.needle_metrics(case, fp.flash_prefill(case.q, case.k, case.v, alpha=0.12, discovery="robust"))
    assert robust.affected_rows > 0
    assert robust.kept_share >= 0.95, f"robust kept {robust.kept_share:.2f} (exact {exact.kept_share:.2f})"
    if span_len == 4:
        assert exact.kept_share < 0.5, "the case should defeat the exact rule"


def test_robust_layout_is_the_rule():
    """The library's robust layout equals the plain-torch rule block for block, up to blocks whose score lies within
    fp32 rounding of the threshold (a handful at most), on the structured input with a partial last block (GQA g = 3)."""
    q, k, _ = (torch.from_numpy(a).view(torch.bfloat16) for a in fp.make_structured_input(5000, 6, 2, 64, seed=7))
    layout = fp.select_blocks(q, k, alpha=0.12, discovery="robust")
    nb = -(-5000 // BLOCK)
    got, want = kept_mask(layout, 6, nb), rule_kept(q[0], k[0], 0.12)
    assert (got != want).sum().item() <= 3, f"{(got != want).sum().item()} of {int(want.sum())} kept blocks differ"
    exact = kept_mask(fp.select_blocks(q, k, alpha=0.12), 6, nb)
    assert not torch.equal(got, exact), "robust and exact should differ on this input"
    assert not (exact & ~got).any(), "robust keeps every block the exact rule keeps"


@pytest.mark.parametrize("hidden", [False, True])
def test_robust_layout_is_the_rule_on_a_needle_case(hidden):
    """The same on a needle input (GQA g = 3, a partial last block), where the representatives add blocks around the
    planted span that the exact rule drops (about 20 here)."""
    case = needles.make_needle_case(4000, span_len=8, dense_share=0.8, seed=3, hidden=hidden)
    nb = -(-4000 // BLOCK)
    got = kept_mask(fp.select_blocks(case.q, case.k, alpha=0.12, discovery="robust"), 9, nb)
    want = rule_kept(case.q[0], case.k[0], 0.12)
    assert (got != want).sum().item() <= 3, f"{(got != want).sum().item()} of {int(want.sum())} kept blocks differ"
    exact = kept_mask(fp.select_blocks(case.q, case.k, alpha=0.12), 9, nb)
    assert (got & ~exact).sum().item() >= 10, "the representatives should add blocks on this input"


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
