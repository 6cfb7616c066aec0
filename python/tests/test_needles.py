"""The needle suite (robust discovery): its inputs do what they claim, and its metric can tell a
selection that keeps the planted span from one that drops it."""
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the needle suite builds its inputs with it")
import flashprefill as fp  # noqa: E402
from flashprefill import needles  # noqa: E402


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("span_len,share", [(4, 0.9), (48, 0.6)])
def test_needle_draws_the_requested_dense_share(span_len, share, hidden):
    case = needles.make_needle_case(4096, span_len=span_len, dense_share=share, hidden=hidden, seed=span_len)
    assert abs(case.dense_share - share) < 0.05
    assert case.affected.float().mean() >= 0.3, "most planted rows must depend on the span"
    assert case.q.dtype == torch.bfloat16 and case.q.shape == (1, 4096, 9, 64) and case.k.shape == (1, 4096, 3, 64)
    if hidden:  # the span's keys are no longer than they were
        base = fp.make_structured_input(4096, 9, 3, 64, seed=span_len)[1]
        base = torch.from_numpy(base).view(torch.bfloat16).float()[0]
        span = slice(case.span_start, case.span_start + span_len)
        assert torch.allclose(case.k[0, span].float().norm(dim=-1), base[span].norm(dim=-1), rtol=2e-2)


def test_dense_attention_keeps_every_affected_row():
    case = needles.make_needle_case(4096, span_len=16, dense_share=0.9, seed=3)
    result = needles.needle_metrics(case, fp.flash_prefill(case.q, case.k, case.v, alpha=0.0))
    assert result.affected_rows > 0 and result.kept_share == 1.0 and result.max_rel_error < 2e-2


def test_the_exact_rule_drops_a_short_span():
    """What the suite exists for: a 4-key span that takes 90% of its queries' dense mass is dropped by
    ALGORITHM.md's rule at the paper's alpha (the block mean dilutes it), and the metric shows it."""
    case = needles.make_needle_case(8192, span_len=4, dense_share=0.9, seed=4)
    result = needles.needle_metrics(case, fp.flash_prefill(case.q, case.k, case.v, alpha=0.12))
    assert result.kept_share < 0.5 and result.median_rel_error > 0.5


def test_varlen_batch_of_needles_matches_each_sequence():
    cases = [needles.make_needle_case(n, span_len=8, dense_share=0.8, seed=n) for n in (2048, 3000)]
    q, k, v, cu, max_len, offsets = needles.pack_varlen(cases)
    out = fp.flash_prefill_varlen(q, k, v, cu, cu, max_len, max_len, alpha=0.0)
    for case, start in zip(cases, offsets):
        result = needles.needle_metrics(case, out[start:start + case.q.shape[1]][None])
        assert result.kept_share == 1.0
