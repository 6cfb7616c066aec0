"""The harness's PyTorch selection prototypes (flashprefill.eval.selection) against the library and
against their definitions, so that what the harness measures is the rule it names."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed")
import flashprefill  # noqa: E402
from flashprefill.eval import selection as sel  # noqa: E402

PARAMS = dict(sink_blocks=2, window_blocks=4, last_full_blocks=2)


def _inputs(rng, len_q, len_kv, heads_q=6, heads_kv=2, dim=64):
    q = torch.from_numpy(rng.standard_normal((len_q, heads_q, dim), dtype=np.float32))
    k = torch.from_numpy(rng.standard_normal((len_kv, heads_kv, dim), dtype=np.float32))
    v = torch.from_numpy(rng.standard_normal((len_kv, heads_kv, dim), dtype=np.float32))
    # a few hot key blocks, so thresholds between 0 and 1 drop some blocks and keep others
    for j in rng.choice(len_kv // 128, size=3, replace=False):
        k[j * 128:(j + 1) * 128] += 0.5 * q[rng.integers(len_q), ::heads_q // heads_kv]
    return q.to(torch.bfloat16), k.to(torch.bfloat16), v.to(torch.bfloat16)


@pytest.mark.parametrize("len_q,len_kv", [(2000, 2000), (1000, 3000), (700, 1500), (3072, 3072)])
@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.3, 0.9])
def test_threshold_prototype_chooses_the_libraries_blocks(rng, len_q, len_kv, alpha):
    q, k, v = _inputs(rng, len_q, len_kv)
    scale = 64 ** -0.5
    geo = sel.Geometry(len_q, len_kv, 128)
    keep = sel.keep_threshold(sel.block_scores(q, k, 128, scale), geo.forced(**PARAMS, device="cpu"), alpha)
    ours = sel.layout_from_mask(keep, geo, scale, PARAMS)
    library = flashprefill.select_blocks(q[None], k[None], alpha=alpha, softmax_scale=scale, **PARAMS)
    # ALGORITHM.md allows disagreement only within rounding of the threshold
    mismatched = sum(a != b for a, b in zip(ours.rows(), library.rows()))
    assert len(ours.rows()) == len(library.rows()) and mismatched <= max(1, len(library.rows()) // 100)
    out = flashprefill.block_sparse_attention(q[None], k[None], v[None], ours)
    if mismatched == 0:
        assert torch.equal(out, flashprefill.flash_prefill(q[None], k[None], v[None], alpha=alpha, softmax_scale=scale, **PARAMS))


def test_coverage_keeps_the_fewest_blocks_that_reach_the_share(rng):
    mass = torch.from_numpy(rng.random((3, 5, 12), dtype=np.float32)) ** 4
    forced = torch.zeros(5, 12, dtype=torch.bool)
    forced[:, 0] = True
    for coverage in (0.5, 0.8, 0.95, 1.0):
        keep = sel.keep_coverage(mass, forced, coverage)
        for h in range(3):
            for i in range(5):
                row, kept = mass[h, i], keep[h, i]
                assert kept[0]
                assert row[kept].sum() >= coverage * row.sum() - 1e-5
                # minimal: dropping the smallest kept non-forced block falls under the share
                optional = [j for j in range(12) if kept[j] and j != 0]
                if optional:
                    smallest = min(optional, key=lambda j: row[j])
                    assert row[kept].sum() - row[smallest] < coverage * row.sum() + 1e-6
                # the highest: every dropped block is no larger than every kept optional block
                dropped = [row[j] for j in range(12) if not kept[j]]
                if optional and dropped:
                    assert max(dropped) <= min(row[j] for j in optional)


def test_true_block_mass_rows_sum_to_one(rng):
    q, k, _ = _inputs(rng, 1000, 1500)
    mass = sel.true_block_mass(q, k, 128, 0.125)
    assert mass.shape == (6, sel.Geometry(1000, 1500, 128).num_query_blocks, 12)
    assert torch.allclose(mass.sum(-1), torch.ones(mass.shape[:2]), atol=1e-4)


def test_mean_correction_changes_nothing_when_nothing_is_dropped(rng):
    q, k, v = _inputs(rng, 1000, 1000)
    geo = sel.Geometry(1000, 1000, 128)
    keep = geo.causal("cpu").expand(6, -1, -1)
    layout = sel.layout_from_mask(keep, geo, 0.125, PARAMS)
    out, lse = flashprefill.block_sparse_attention(q[None], k[None], v[None], layout, softmax_scale=0.125, return_lse=True)
    corrected = sel.add_dropped_mean(q, k, v, keep, out[0], lse[0], 128, 0.125)
    assert torch.allclose(corrected.float(), out[0].float(), atol=1e-2)


def test_method_names_parse():
    from flashprefill.eval.methods import Method
    robust = Method.parse("robust:0.18")
    assert (robust.kind, robust.value, robust.sparse) == ("robust", 0.18, True)
    assert Method.parse("default-robust").kind == "default-robust"
    with pytest.raises(SystemExit, match="robust:A"):
        Method.parse("sturdy:0.1")


def test_density_grid_of_a_run_without_sparse_calls_is_none():
    """`default` below the transformers integration's threshold (4096 keys) leaves every prefill to dense
    attention: no layer records a density, and the harness reports the method as dense instead of
    failing (it raised ValueError from max() of nothing at 2K)."""
    from flashprefill.eval import harness as H
    assert H.density_grid({}) is None
    grid = H.density_grid({0: [np.array([0.5, 1.0])], 2: [np.array([0.25, 0.75]), np.array([0.75, 0.25])]})
    assert grid.shape == (3, 2)
    assert np.isnan(grid[1]).all()
    np.testing.assert_allclose(grid[[0, 2]], [[0.5, 1.0], [0.5, 0.5]])
