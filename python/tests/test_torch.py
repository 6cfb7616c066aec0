"""PyTorch tensors: the torch.library operators on CPU and CUDA, torch.compile, CUDA graphs, and the
transformers integration. Skipped where PyTorch (or a GPU, for the CUDA tests) is missing."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the torch tests need it")
import flashprefill as fp  # noqa: E402
from reference import attention, rel_error  # noqa: E402

needs_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and fp.cuda_available()),
                               reason="no CUDA device: the GPU tests run only on a GPU machine")
BF16_TOL = 1e-2


def make(rng, b, lq, lkv, hq, hkv, d, device="cpu", dtype=torch.bfloat16):
    gen = lambda *shape: torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(device=device, dtype=dtype)
    return gen(b, lq, hq, d), gen(b, lkv, hkv, d), gen(b, lkv, hkv, d)


def ref_of(q, k, v, **kw):
    return attention(q.float().cpu().numpy(), k.float().cpu().numpy(), v.float().cpu().numpy(), **kw)


def test_torch_cpu_tensors(rng):
    q, k, v = make(rng, 1, 200, 200, 4, 2, 64)
    out, lse = fp.flash_prefill(q, k, v, alpha=0.0, block_size=64, return_lse=True)
    ref, ref_lse = ref_of(q[0], k[0], v[0], block_size=64)
    assert out.dtype == torch.bfloat16 and rel_error(out[0].float().numpy(), ref) <= BF16_TOL
    np.testing.assert_allclose(lse[0].numpy(), ref_lse, rtol=2e-3, atol=2e-3)


@needs_gpu
def test_cuda_matches_cpu_backend_and_reference(rng):
    q, k, v = make(rng, 2, 1000, 1000, 8, 2, 128)
    cpu_layout = fp.select_blocks(q, k, alpha=0.12).rows()
    qc, kc, vc = q.cuda(), k.cuda(), v.cuda()
    gpu_layout = fp.select_blocks(qc, kc, alpha=0.12).rows()
    differing = sum(a != b for a, b in zip(cpu_layout, gpu_layout))
    assert differing <= len(cpu_layout) // 50, f"{differing} of {len(cpu_layout)} rows differ between backends"
    out = fp.flash_prefill(qc, kc, vc, alpha=0.12)
    nqb = len(gpu_layout) // (2 * 8)
    for b in range(2):
        ref, _ = ref_of(q[b], k[b], v[b], kept=lambda h, i: gpu_layout[b * 8 * nqb + h * nqb + i])
        assert rel_error(out[b].float().cpu().numpy(), ref) <= BF16_TOL


@needs_gpu
def test_varlen_cuda(rng):
    lengths = [700, 5, 300]
    cu = torch.tensor(np.cumsum([0] + lengths), dtype=torch.int32, device="cuda")
    q, k, v = make(rng, 1, sum(lengths), sum(lengths), 4, 2, 64, device="cuda")
    out = fp.flash_prefill_varlen(q[0], k[0], v[0], cu, cu, max(lengths), max(lengths), alpha=0.0)
    for b, start in enumerate(np.cumsum([0] + lengths)[:-1]):
        end = start + lengths[b]
        ref, _ = ref_of(q[0, start:end], k[0, start:end], v[0, start:end])
        assert rel_error(out[start:end].float().cpu().numpy(), ref) <= BF16_TOL


@needs_gpu
def test_torch_compile_and_cuda_graph(rng):
    q, k, v = make(rng, 1, 2048, 2048, 8, 2, 128, device="cuda")
    eager = fp.flash_prefill(q, k, v)
    compiled = torch.compile(lambda a, b, c: fp.flash_prefill(a, b, c) * 1.0, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), eager, rtol=0, atol=0)
    static_out = fp.flash_prefill(q, k, v)  # warm-up on this stream
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fp.flash_prefill(q, k, v)
    static_out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static_out, eager, rtol=0, atol=0)


@pytest.mark.parametrize("case, message", [
    ("float32", "k has dtype bf16 but q has fp32; expected the same"),  # fp32 is accepted, but mixed dtypes are not
    ("int_k", "k has dtype int32 but q has bf16; expected the same"),
    ("float64", "q has dtype torch.float64; expected bfloat16, float16 or float32"),
    ("gqa", "GQA"),
    ("head_dim", "head dim"),
    ("requires_grad", "no backward"),
])
def test_torch_errors_name_the_argument(rng, case, message):
    q, k, v = make(rng, 1, 64, 64, 4, 2, 64)
    if case == "float32":
        q = q.float()
    elif case == "float64":
        q = q.double()
    elif case == "int_k":
        k = k.to(torch.int32)
    elif case == "gqa":
        k, v = k[:, :, :1].repeat(1, 1, 3, 1), v[:, :, :1].repeat(1, 1, 3, 1)
    elif case == "head_dim":
        q, k, v = q[..., :48].contiguous(), k[..., :48].contiguous(), v[..., :48].contiguous()
    elif case == "requires_grad":
        q.requires_grad_(True)
    with pytest.raises(fp.FlashPrefillError, match=message):
        fp.flash_prefill(q, k, v)


@needs_gpu
def test_cuda_device_mismatch_names_the_argument(rng):
    q, k, v = make(rng, 1, 64, 64, 4, 2, 64, device="cuda")
    with pytest.raises(fp.FlashPrefillError, match="k is on cpu but q is on cuda"):
        fp.flash_prefill(q, k.cpu(), v)


@needs_gpu
def test_two_streams_use_their_own_workspaces(rng):
    """Eager calls take the library's workspace cache of their stream: calls on two streams at once must
    not share scratch (the kernels are deterministic, so the outputs are bit-identical)."""
    q, k, v = make(rng, 1, 3000, 3000, 8, 2, 128, device="cuda")
    expected = fp.flash_prefill(q, k, v)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        on_side = fp.flash_prefill(q, k, v)
    on_main = fp.flash_prefill(q, k, v)
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(on_side, expected, rtol=0, atol=0)
    torch.testing.assert_close(on_main, expected, rtol=0, atol=0)


def _small_config(transformers, family):
    """A few-layer GQA model of each supported family (random weights)."""
    common = dict(vocab_size=512, hidden_size=512, intermediate_size=1024, num_hidden_layers=3, num_attention_heads=8,
                  num_key_value_heads=2, max_position_embeddings=8192)
    if family == "llama":
        return transformers.LlamaConfig(**common), transformers.LlamaForCausalLM
    if family == "qwen2":
        return transformers.Qwen2Config(**common, use_sliding_window=False), transformers.Qwen2ForCausalLM
    if family == "qwen3":
        return transformers.Qwen3Config(**common, head_dim=128), transformers.Qwen3ForCausalLM
    return transformers.MistralConfig(**common, sliding_window=None), transformers.MistralForCausalLM


def test_transformers_alpha_defaults_by_model_type():
    pytest.importorskip("transformers", reason="transformers is not installed")
    import flashprefill.integrations.transformers as fpt
    from types import SimpleNamespace
    saved = fpt.settings.alpha
    try:
        fpt.configure(alpha=None)
        for model_type, alpha in [("llama", 0.18), ("qwen2", 0.08), ("qwen3", 0.12), ("mistral", fpt.DEFAULT_ALPHA)]:
            assert fpt._alpha_for(SimpleNamespace(config=SimpleNamespace(model_type=model_type))) == alpha
        fpt.configure(alpha=0.3)  # a global override wins over the family default ...
        assert fpt._alpha_for(SimpleNamespace(config=SimpleNamespace(model_type="llama"))) == 0.3
        module = SimpleNamespace(config=SimpleNamespace(model_type="llama", flashprefill_alpha=0.05))
        assert fpt._alpha_for(module) == 0.05  # ... and a per-model config value wins over both
    finally:
        fpt.configure(alpha=saved)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_gpu)])
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_transformers_model_matches_sdpa_and_generates(rng, family, device):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    import flashprefill.integrations.transformers as fpt
    config, model_class = _small_config(transformers, family)
    torch.manual_seed(int(rng.integers(1 << 30)))
    # Separate configs: the attention implementation is a config attribute.
    ref_model = model_class._from_config(copy.deepcopy(config), attn_implementation="sdpa")
    ref_model = ref_model.to(device, torch.bfloat16).eval()
    ours = model_class._from_config(copy.deepcopy(config), attn_implementation="flashprefill")
    ours = ours.to(device, torch.bfloat16).eval()
    ours.load_state_dict(ref_model.state_dict())
    assert ours.config._attn_implementation == "flashprefill" and ref_model.config._attn_implementation == "sdpa"
    ids = torch.randint(0, 512, (1, 2048), device=device)
    fpt.configure(alpha=0.0, threshold=1024, collect_density=True)
    fpt.settings.densities.clear()
    with torch.no_grad():
        logits = ours(ids).logits.float()
        ref_logits = ref_model(ids).logits.float()
    assert len(fpt.settings.densities) == 3, "every layer's prefill must have gone through FlashPrefill"
    assert all(abs(d["density"] - 1.0) < 1e-9 for d in fpt.settings.densities)
    assert rel_error(logits.cpu().numpy(), ref_logits.cpu().numpy()) <= 2e-2
    fpt.configure(alpha=0.12, threshold=1024, collect_density=False)
    with torch.no_grad():
        # min_new_tokens: a random model may pick its EOS id, which would end generation early.
        generated = ours.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert generated.shape == (1, 2048 + 8)
