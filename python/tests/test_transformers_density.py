"""The transformers integration's reported density: kept blocks over the causal blocks of the call,
including chunked prefill (queries shorter than keys), where the causal blocks are not a triangle."""
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed")
pytest.importorskip("transformers", reason="transformers is not installed")
import flashprefill  # noqa: E402
import flashprefill.integrations.transformers as fpt  # noqa: E402


def _causal_blocks_by_counting(q_len, kv_len, block):
    """Causal (query block, key block) pairs by enumeration: query block of position P is P // block."""
    rows = {p // block for p in range(kv_len - q_len, kv_len)}
    return sum(i + 1 for i in rows)


@pytest.mark.parametrize("q_len,kv_len", [(4096, 4096), (2048, 4096), (1000, 4096), (2100, 2100), (128, 1000), (300, 4000)])
def test_causal_blocks_per_head_counts_the_chunk(q_len, kv_len):
    assert fpt.causal_blocks_per_head(q_len, kv_len, 128) == _causal_blocks_by_counting(q_len, kv_len, 128)


def _call(q_len, kv_len, alpha, rng, batch=1):
    module = SimpleNamespace(layer_idx=5, training=False, config=None)
    shape_q, shape_k = (batch, 6, q_len, 64), (batch, 2, kv_len, 64)
    q = torch.from_numpy(rng.standard_normal(shape_q, dtype=np.float32)).to(torch.bfloat16)
    k = torch.from_numpy(rng.standard_normal(shape_k, dtype=np.float32)).to(torch.bfloat16)
    saved = (fpt.settings.alpha, fpt.settings.threshold, fpt.settings.collect_density, fpt.settings.profile)
    fpt.configure(alpha=alpha, threshold=64, collect_density=True, profile=None)
    fpt.settings.densities.clear()
    try:
        fpt.flashprefill_attention_forward(module, q, k, k, None, scaling=0.125)
        return fpt.settings.densities[-1], q, k
    finally:
        fpt.configure(alpha=saved[0], threshold=saved[1], collect_density=saved[2], profile=saved[3])


@pytest.mark.parametrize("q_len,kv_len", [(2048, 4096), (1000, 3000), (4096, 4096)])
def test_density_is_one_at_alpha_zero_also_for_chunked_prefill(rng, q_len, kv_len):
    # The bug: q 2048 against kv 4096 at alpha 0 reported 2.88 (kept / query-block triangle).
    record, _, _ = _call(q_len, kv_len, 0.0, rng)
    assert record["density"] == pytest.approx(1.0)
    assert record["per_head"] == pytest.approx([1.0] * 6)
    assert record["q_len"] == q_len and record["kv_len"] == kv_len and record["layer"] == 5


def test_density_of_a_sparse_chunk_matches_the_layout(rng):
    record, q, k = _call(1500, 4000, 0.5, rng, batch=2)
    layout = flashprefill.select_blocks(q.transpose(1, 2), k.transpose(1, 2), alpha=0.5, softmax_scale=0.125)
    kept = np.diff(layout.row_ptr.numpy()).reshape(2, 6, -1).sum(axis=(0, 2))
    causal = _causal_blocks_by_counting(1500, 4000, 128)
    assert record["per_head"] == pytest.approx(list(kept / (2 * causal)))
    assert 0.0 < record["density"] <= 1.0
