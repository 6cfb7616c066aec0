"""Calibration profiles in the transformers integration: per-layer and per-head alpha, shipped profiles
matched to a model's config, and clear errors for bad profiles."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed")
pytest.importorskip("transformers", reason="transformers is not installed")
import flashprefill  # noqa: E402
import flashprefill.integrations.transformers as fpt  # noqa: E402


def _profile(values, **extra):
    return {"format": fpt.PROFILE_FORMAT, "rule": "threshold", "values": values, **extra}


@pytest.fixture
def settings_restored():
    saved = (fpt.settings.alpha, fpt.settings.threshold, fpt.settings.profile, fpt.settings.collect_density)
    yield
    fpt.configure(alpha=saved[0], threshold=saved[1], profile=saved[2], collect_density=saved[3])
    fpt.settings.densities.clear()


def _inputs(rng, heads_q=6, heads_kv=2, length=3000):
    q = torch.from_numpy(rng.standard_normal((1, heads_q, length, 64), dtype=np.float32)).to(torch.bfloat16)
    k = torch.from_numpy(rng.standard_normal((1, heads_kv, length, 64), dtype=np.float32)).to(torch.bfloat16)
    v = torch.from_numpy(rng.standard_normal((1, heads_kv, length, 64), dtype=np.float32)).to(torch.bfloat16)
    k[:, :, 300:310] += 3 * q[:, ::3, 1000:1001]  # some structure, so alphas choose different blocks
    return q, k, v


def test_per_layer_alpha_of_a_profile_is_the_libraries_call_at_that_alpha(rng, settings_restored):
    q, k, v = _inputs(rng)
    fpt.configure(alpha=None, threshold=64, profile=_profile([0.0, 0.3, 0.05]))
    config = SimpleNamespace(num_attention_heads=6)
    for layer, alpha in enumerate([0.0, 0.3, 0.05]):
        module = SimpleNamespace(layer_idx=layer, training=False, config=config)
        out, _ = fpt.flashprefill_attention_forward(module, q, k, v, None, scaling=0.125)
        expected = flashprefill.flash_prefill(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), alpha=alpha, softmax_scale=0.125)
        assert torch.equal(out, expected)


def test_per_head_alpha_runs_each_head_at_its_alpha_in_one_call(rng, settings_restored, monkeypatch):
    q, k, v = _inputs(rng)
    alphas = [0.0, 0.0, 0.95, 0.05, 0.05, 0.05]
    fpt.configure(alpha=None, threshold=64, profile=_profile([alphas]), collect_density=True)
    fpt.settings.densities.clear()
    calls = []
    library_call = fpt._api.flash_prefill
    monkeypatch.setattr(fpt._api, "flash_prefill", lambda *a, **kw: calls.append(kw["alpha"]) or library_call(*a, **kw))
    module = SimpleNamespace(layer_idx=0, training=False, config=SimpleNamespace(num_attention_heads=6))
    out, _ = fpt.flashprefill_attention_forward(module, q, k, v, None, scaling=0.125)
    assert len(calls) == 1 and calls[0].tolist() == pytest.approx(alphas), "one library call per layer, alpha per head"
    monkeypatch.undo()
    assert out.shape == (1, 3000, 6, 64)
    per_head = fpt.settings.densities[-1]["per_head"]
    for h, alpha in enumerate(alphas):
        expected = flashprefill.flash_prefill(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), alpha=alpha, softmax_scale=0.125)
        assert torch.equal(out[:, :, h], expected[:, :, h]), f"head {h} (alpha {alpha})"
        layout = flashprefill.select_blocks(q.transpose(1, 2)[:, :, h:h + 1], k.transpose(1, 2)[:, :, h // 3:h // 3 + 1],
                                            alpha=alpha, softmax_scale=0.125)
        assert per_head[h] == pytest.approx(layout.density(fpt.causal_blocks_per_head(3000, 3000, 128)))
    assert per_head[0] == pytest.approx(1.0) and per_head[2] < 1.0


def test_explicit_alpha_wins_over_the_profile(settings_restored):
    module = SimpleNamespace(layer_idx=1, config=SimpleNamespace(model_type="llama"))
    fpt.configure(alpha=None, profile=_profile([0.01, 0.02]))
    assert fpt._alpha_for(module) == 0.02
    fpt.configure(alpha=0.3)
    assert fpt._alpha_for(module) == 0.3
    fpt.configure(alpha=None, profile=None)
    assert fpt._alpha_for(module) == fpt.MODEL_ALPHA["llama"]


def test_shipped_profile_matches_its_model_only(tmp_path, monkeypatch, settings_restored):
    match = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64}
    (tmp_path / "tiny.json").write_text(json.dumps(_profile([0.01, 0.02], match=match)))
    monkeypatch.setattr(fpt, "PROFILE_DIR", str(tmp_path))
    fpt._shipped_cache.clear()
    fpt.configure(alpha=None, profile="auto")
    fits = SimpleNamespace(layer_idx=1, config=SimpleNamespace(**match))
    other = SimpleNamespace(layer_idx=1, config=SimpleNamespace(**{**match, "hidden_size": 128}))
    assert fpt._alpha_for(fits) == 0.02
    assert fpt._alpha_for(other) == fpt.MODEL_ALPHA["llama"]
    fpt._shipped_cache.clear()


@pytest.mark.parametrize("profile,message", [
    ({"format": "other", "rule": "threshold", "values": [0.1]}, "'format'"),
    (_profile([0.1], rule="coverage"), "'rule'"),
    (_profile([]), "'values'"),
    (_profile([1.5]), "'values'"),
    (_profile([[0.1, "x"]]), "'values'"),
])
def test_bad_profiles_name_the_field(profile, message):
    with pytest.raises(ValueError, match=message):
        fpt.load_profile(profile)


def test_profile_too_short_for_the_layer_names_both(settings_restored):
    fpt.configure(alpha=None, profile=_profile([0.1]))
    with pytest.raises(ValueError, match="1 layers; layer_idx 3"):
        fpt._alpha_for(SimpleNamespace(layer_idx=3, config=SimpleNamespace(model_type="llama")))


def test_robust_discovery_setting_reaches_the_library(settings_restored):
    from flashprefill import needles
    case = needles.make_needle_case(4096, span_len=4, dense_share=0.9, seed=4)  # exact drops it, robust keeps it
    q, k, v = (t.transpose(1, 2) for t in (case.q, case.k, case.v))  # transformers' [B, H, L, D]
    fpt.configure(alpha=0.12, threshold=64, profile=None, discovery="robust")
    try:
        module = SimpleNamespace(layer_idx=0, training=False, config=SimpleNamespace(num_attention_heads=9))
        out, _ = fpt.flashprefill_attention_forward(module, q, k, v, None)
        robust = flashprefill.flash_prefill(case.q, case.k, case.v, alpha=0.12, discovery="robust")
        exact = flashprefill.flash_prefill(case.q, case.k, case.v, alpha=0.12)
        assert torch.equal(out, robust) and not torch.equal(out, exact)
    finally:
        fpt.configure(discovery="exact")
