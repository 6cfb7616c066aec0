"""The vLLM plugin's own logic, without vLLM (flashprefill.integrations.vllm.routing): splitting a batch into
FlashAttention and flash_prefill requests, turning vLLM's metadata (query_start_loc, seq_lens, block table)
into paged arguments, and attending on vLLM's KV-cache layout, checked against fp64 dense attention on
random paged caches with the CPU backend. Tests that need vLLM itself skip when it is not installed."""
import importlib.util
import json

import numpy as np
import pytest

import flashprefill as fp
from reference import attention, rel_error

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the vLLM plugin tests need it")
from flashprefill.integrations.vllm import routing  # noqa: E402

needs_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and fp.cuda_available()),
                               reason="no CUDA device: the GPU tests run only on a GPU machine")
needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vLLM is not installed: its backend-class tests run where vllm==0.26.0 is")

HQ, HKV, D = 4, 2, 64
# Small threshold so that CPU tests stay fast; min_query_len as shipped.
SETTINGS = routing.Settings(threshold=512, min_query_len=16)


def make_batch(rng, requests, page_size, layout="NHD", dtype=torch.float32, device="cpu"):
    """vLLM's view of a step: requests as (query_len, context_len) - the new tokens and the cached prefix
    before them - their K/V written to a FlashAttention cache (logical [pages, H_kv, page, 2 D]) in a random
    page order, a block table with a spare column, and packed queries padded by 3 rows (CUDA-graph padding)."""
    gen = lambda *shape: torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(dtype)
    seq_lens = [q + c for q, c in requests]
    pages = [-(-n // page_size) for n in seq_lens]
    num_pages = sum(pages) + 2
    if layout == "NHD":
        cache = torch.full((num_pages, page_size, HKV, 2 * D), float("nan"), dtype=dtype).transpose(1, 2)
    else:
        cache = torch.full((num_pages, HKV, page_size, 2 * D), float("nan"), dtype=dtype)
    table = torch.full((len(requests), max(pages) + 1), 0, dtype=torch.int32)
    order = rng.permutation(num_pages)
    keys, values, used = [], [], 0
    for b, n in enumerate(seq_lens):
        k, v = gen(n, HKV, D), gen(n, HKV, D)
        keys.append(k)
        values.append(v)
        for p in range(pages[b]):
            page = int(order[used])
            used += 1
            table[b, p] = page
            rows = min(page_size, n - p * page_size)
            cache[page, :, :rows, :D] = k[p * page_size:p * page_size + rows].transpose(0, 1)
            cache[page, :, :rows, D:] = v[p * page_size:p * page_size + rows].transpose(0, 1)
            cache[page, :, rows:] = 0.25  # finite noise past the sequence in its last page
    query_lens = [q for q, _ in requests]
    starts = torch.tensor(np.cumsum([0] + query_lens), dtype=torch.int32)
    q = gen(int(starts[-1]) + 3, HQ, D)
    return dict(cache=cache.to(device), table=table.to(device), q=q.to(device), keys=keys, values=values,
                starts=starts.to(device), seq_lens=torch.tensor(seq_lens, dtype=torch.int32).to(device),
                requests=requests)


def dense_rows(batch, b, scale):
    """fp64 dense causal attention of request b's new tokens against its whole sequence."""
    s, e = int(batch["starts"][b]), int(batch["starts"][b + 1])
    out, _ = attention(batch["q"][s:e].double().cpu().numpy(), batch["keys"][b].double().numpy(),
                       batch["values"][b].double().numpy(), scale=scale)
    return out


def reference_short(batch, scale):
    """Stands in for vLLM's FlashAttention: dense attention of the short group, from its Segments only (the
    metadata the plugin hands it), reading K/V through the block table."""
    def attend(q, out, seg):
        k_pages, v_pages = routing.paged_kv_views(batch["cache"], D)
        page = k_pages.shape[1]
        starts = seg.query_start_loc.tolist()
        for i in range(seg.num_reqs):
            n = int(seg.seq_lens[i])
            rows = seg.block_table[i, :-(-n // page)].long()
            k = k_pages.index_select(0, rows).flatten(0, 1)[:n]
            v = v_pages.index_select(0, rows).flatten(0, 1)[:n]
            o, _ = attention(q[starts[i]:starts[i + 1]].double().cpu().numpy(), k.double().cpu().numpy(),
                             v.double().cpu().numpy(), scale=scale)
            out[starts[i]:starts[i + 1]] = torch.from_numpy(o).to(out.dtype)
    return attend


def run_plugin(batch, settings, alpha=0.0):
    plan = routing.plan_batch(batch["starts"], batch["starts"].cpu(), batch["seq_lens"], batch["seq_lens"].cpu(),
                              batch["table"], len(batch["requests"]), settings)
    assert plan is not None
    plan.short_metadata = plan.short
    scale = D**-0.5
    output = torch.full_like(batch["q"], float("nan"))
    routing.forward(batch["q"], output, batch["cache"], D, plan, attend_short=reference_short(batch, scale),
                    alpha=alpha, softmax_scale=scale, settings=settings)
    return plan, output


# Decodes and short prefills (FlashAttention) beside long prefills and chunked extends (flash_prefill):
# a chunk that starts mid-block over a cached prefix, a long prompt's first chunk, a long decode.
MIXED = [(1, 900), (40, 0), (300, 700), (1, 30), (600, 0), (20, 490), (5, 1200)]
# Decodes first, then the long requests, as vLLM's batch order often is: both groups are slices, no gather.
RUNS = [(1, 900), (1, 40), (300, 700), (600, 0)]


@pytest.mark.parametrize("page_size", [16, 64])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("requests", [MIXED, RUNS], ids=["interleaved", "runs"])
def test_alpha_zero_equals_dense_attention(rng, page_size, layout, requests):
    batch = make_batch(rng, requests, page_size, layout)
    plan, output = run_plugin(batch, SETTINGS)
    long = [b for b, (q, c) in enumerate(requests) if q >= 16 and q + c >= 512]
    assert plan.long.requests.tolist() == long
    assert plan.short.requests.tolist() == [b for b in range(len(requests)) if b not in long]
    for b in range(len(requests)):
        s, e = int(batch["starts"][b]), int(batch["starts"][b + 1])
        assert rel_error(output[s:e].double().numpy(), dense_rows(batch, b, D**-0.5)) < 1e-5, f"request {b}"
    assert torch.isnan(output[-3:]).all(), "the padding rows past the batch's tokens were written"


@needs_gpu
@pytest.mark.parametrize("page_size", [16, 128])
@pytest.mark.parametrize("requests", [MIXED, RUNS], ids=["interleaved", "runs"])
def test_alpha_zero_equals_dense_attention_cuda(rng, page_size, requests):
    """The CUDA kernels on vLLM's interleaved K|V pages (head stride 2 D), bf16."""
    batch = make_batch(rng, requests, page_size, dtype=torch.bfloat16, device="cuda")
    plan, output = run_plugin(batch, SETTINGS)
    for b in range(len(requests)):
        s, e = int(batch["starts"][b]), int(batch["starts"][b + 1])
        assert rel_error(output[s:e].double().cpu().numpy(), dense_rows(batch, b, D**-0.5)) < 2e-2, f"request {b}"
    assert torch.isnan(output[-3:]).all()


def test_group_tokens_are_slices_for_runs_and_gathers_otherwise(rng):
    batch = make_batch(rng, RUNS + [(40, 10)], 16)
    plan, _ = run_plugin(batch, SETTINGS)
    assert plan.long.tokens == slice(2, 902) and isinstance(plan.short.tokens, torch.Tensor)
    assert plan.short.tokens.tolist() == [0, 1] + list(range(902, 942))
    assert plan.short.query_start_loc.tolist() == [0, 1, 2, 42] and plan.short.seq_lens.tolist() == [901, 41, 50]
    batch = make_batch(rng, [(1, 900), (300, 700), (600, 0)], 16)
    plan, _ = run_plugin(batch, SETTINGS)
    assert plan.long.tokens == slice(1, 901) and plan.short.tokens == slice(0, 1)
    assert plan.long.query_start_loc.tolist() == [0, 300, 900]
    assert plan.long.seq_lens.tolist() == [1000, 600] and plan.long.max_seq_len == 1000
    assert torch.equal(plan.long.block_table, batch["table"][1:3])


def test_default_alpha_keeps_short_requests_exact_and_long_ones_close(rng):
    batch = make_batch(rng, MIXED, 16, dtype=torch.bfloat16)
    plan, output = run_plugin(batch, SETTINGS, alpha=0.12)
    for b in range(len(MIXED)):
        s, e = int(batch["starts"][b]), int(batch["starts"][b + 1])
        err = rel_error(output[s:e].double().numpy(), dense_rows(batch, b, D**-0.5))
        assert err < (1e-2 if b in plan.short.requests else 0.5), f"request {b}: {err}"
        assert torch.isfinite(output[s:e]).all()


def test_long_group_equals_a_direct_paged_call(rng):
    """The plugin's call is flash_prefill_paged on the cache's K and V views with the group's metadata."""
    batch = make_batch(rng, MIXED, 32, dtype=torch.bfloat16)
    plan, output = run_plugin(batch, SETTINGS, alpha=0.12)
    k_pages, v_pages = routing.paged_kv_views(batch["cache"], D)
    seg = plan.long
    q = batch["q"].index_select(0, seg.tokens)
    direct = fp.flash_prefill_paged(q, k_pages.contiguous(), v_pages.contiguous(), seg.block_table, seg.seq_lens,
                                    seg.query_start_loc, seg.max_query_len, seg.max_seq_len, alpha=0.12,
                                    softmax_scale=D**-0.5)
    assert torch.equal(output.index_select(0, seg.tokens).view(torch.int16), direct.view(torch.int16))


def test_batches_without_long_segments_are_not_routed(rng):
    batch = make_batch(rng, [(1, 5000), (15, 5000), (200, 100)], 16)
    assert routing.plan_batch(batch["starts"], batch["starts"], batch["seq_lens"], batch["seq_lens"], batch["table"], 3,
                              SETTINGS) is None
    short, long = routing.split_requests(batch["starts"], batch["seq_lens"], 3, routing.Settings(threshold=300))
    assert short.tolist() == [0, 1] and long.tolist() == [2]


def test_every_request_long(rng):
    batch = make_batch(rng, [(600, 0), (200, 400)], 16)
    plan, output = run_plugin(batch, SETTINGS)
    assert plan.short is None
    for b in range(2):
        s, e = int(batch["starts"][b]), int(batch["starts"][b + 1])
        assert rel_error(output[s:e].double().numpy(), dense_rows(batch, b, D**-0.5)) < 1e-5


def test_density_log(rng, tmp_path):
    batch = make_batch(rng, [(1, 900), (600, 0)], 16)
    log = tmp_path / "density.jsonl"
    settings = routing.Settings(threshold=512, density_log=str(log))
    run_plugin(batch, settings, alpha=0.0)
    record = json.loads(log.read_text().splitlines()[0])
    # alpha 0 keeps every causal block: 5 query blocks of 128 over 5 key blocks, per head.
    assert record["kept"] == record["causal"] == 15 * HQ and record["tokens"] == 600


def test_settings_from_environment_and_vllm_config():
    env = {"FLASHPREFILL_VLLM_THRESHOLD": "8192", "FLASHPREFILL_ALPHA": "0.05", "FLASHPREFILL_DISCOVERY": "robust",
           "FLASHPREFILL_VLLM_MIN_QUERY_LEN": "32"}
    s = routing.Settings.from_sources(env, {"threshold": 2048})
    assert (s.threshold, s.alpha, s.discovery, s.min_query_len) == (2048, 0.05, "robust", 32)
    assert routing.Settings.from_sources({}).threshold == 4096
    with pytest.raises(ValueError, match="alpha is 1.5"):
        routing.Settings.from_sources({"FLASHPREFILL_ALPHA": "1.5"})
    with pytest.raises(ValueError, match="threshold is 'many'"):
        routing.Settings.from_sources({"FLASHPREFILL_VLLM_THRESHOLD": "many"})
    with pytest.raises(ValueError, match="unknown keys \\['treshold'\\]"):
        routing.Settings.from_sources({}, {"treshold": 1})
    with pytest.raises(ValueError, match="discovery is 'fast'"):
        routing.Settings.from_sources({}, {"discovery": "fast"})
    assert routing.Settings.from_sources({}).page_size == 128
    assert routing.Settings.from_sources({"FLASHPREFILL_VLLM_PAGE_SIZE": "16"}).page_size == 16
    with pytest.raises(ValueError, match="page_size is 24; expected one of \\[16, 32, 64, 128, 256\\]"):
        routing.Settings.from_sources({}, {"page_size": 24})


def test_unsupported_configurations_name_the_setting():
    ok = dict(head_size=128, dtype=torch.bfloat16, kv_cache_dtype="auto", block_size=16, device_capability=(9, 0))
    assert routing.unsupported_reasons(**ok) == []
    cases = {"kv_cache_dtype='fp8'": dict(kv_cache_dtype="fp8"), "head_size=256": dict(head_size=256),
             "block_size=24": dict(block_size=24), "use_mla=True": dict(use_mla=True),
             "sliding window": dict(has_sliding_window=True), "encoder-decoder": dict(attn_type="encoder_decoder"),
             "dtype=torch.float32": dict(dtype=torch.float32), "device capability 7.5": dict(device_capability=(7, 5)),
             "logits_soft_cap=30": dict(logits_soft_cap=30.0), "has_sink=True": dict(has_sink=True)}
    for needle, change in cases.items():
        reasons = routing.unsupported_reasons(**{**ok, **change})
        assert len(reasons) == 1 and needle in reasons[0], (needle, reasons)


def test_model_alpha_follows_the_transformers_integration():
    from flashprefill.integrations import transformers as hf
    llama = type("Cfg", (), {"model_type": "llama"})()
    assert routing.model_alpha(llama, 3, 8, 0, routing.Settings()) == hf.MODEL_ALPHA.get("llama", hf.DEFAULT_ALPHA)
    assert routing.model_alpha(llama, 3, 8, 0, routing.Settings(alpha=0.3)) == 0.3
    profile = {"format": hf.PROFILE_FORMAT, "rule": "threshold", "values": [0.1, [0.2, 0.2, 0.3, 0.4]]}
    path = None
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(profile, f)
        path = f.name
    settings = routing.Settings(profile=path)
    assert routing.model_alpha(llama, 0, 2, 0, settings) == 0.1
    # Tensor parallelism: rank 1 of 2 holds query heads 2 and 3.
    assert routing.model_alpha(llama, 1, 2, 2, settings) == [0.3, 0.4]
    assert routing.model_alpha(llama, 1, 2, 0, settings) == 0.2
    with pytest.raises(ValueError, match="layer 5 is outside it"):
        routing.model_alpha(llama, 5, 2, 0, settings)


@needs_vllm
def test_backend_registers_and_refuses_by_name():
    from vllm.platforms.interface import DeviceCapability
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    from flashprefill.integrations import vllm as plugin
    from flashprefill.integrations.vllm.backend import FlashPrefillBackend
    plugin.register()
    assert AttentionBackendEnum.CUSTOM.get_class() is FlashPrefillBackend
    reasons = FlashPrefillBackend.validate_configuration(
        head_size=128, dtype=torch.bfloat16, kv_cache_dtype="fp8", block_size=16, use_mla=False, has_sink=False,
        use_sparse=False, use_mm_prefix=False, use_per_head_quant_scales=False,
        device_capability=DeviceCapability(9, 0), attn_type="decoder")
    assert len(reasons) == 1 and "kv_cache_dtype='fp8'" in reasons[0]


@needs_vllm
def test_backend_asks_for_its_page_size(monkeypatch):
    """Without --block-size vLLM takes the backend's preferred block size: 128 (whole tiles per page)
    unless FLASHPREFILL_VLLM_PAGE_SIZE says otherwise."""
    from flashprefill.integrations.vllm.backend import FlashPrefillBackend
    monkeypatch.delenv("FLASHPREFILL_VLLM_PAGE_SIZE", raising=False)
    assert FlashPrefillBackend.get_preferred_block_size(16) == 128
    monkeypatch.setenv("FLASHPREFILL_VLLM_PAGE_SIZE", "32")
    assert FlashPrefillBackend.get_preferred_block_size(16) == 32
    assert FlashPrefillBackend.supports_block_size(16) and not FlashPrefillBackend.supports_block_size(24)


@pytest.mark.parametrize("tp", [2])
def test_tensor_parallel_ranks_equal_the_whole(rng, tmp_path, tp):
    """Tensor parallelism as vLLM shards attention: rank r holds query heads [r Hq/tp, (r+1) Hq/tp) and
    their kv heads, its own slice of the cache, and the per-head profile's alphas of its heads
    (model_alpha's head offset). Each rank's output is bit for bit that heads' part of the whole run."""
    batch = make_batch(rng, MIXED, 16, dtype=torch.bfloat16)
    profile = {"format": "flashprefill-profile/1", "rule": "threshold", "values": [[0.05, 0.3, 0.12, 0.2]]}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    settings = routing.Settings(threshold=512, profile=str(path))
    whole_alpha = routing.model_alpha(None, 0, HQ, 0, settings)
    _, whole = run_plugin(batch, settings, alpha=torch.tensor(whole_alpha, dtype=torch.float32))
    hq, hkv = HQ // tp, HKV // tp
    for rank in range(tp):
        shard = dict(batch, q=batch["q"][:, rank * hq:(rank + 1) * hq].contiguous(),
                     cache=batch["cache"][:, rank * hkv:(rank + 1) * hkv])
        alpha = routing.model_alpha(None, 0, hq, rank * hq, settings)
        assert alpha == whole_alpha[rank * hq:(rank + 1) * hq]
        _, out = run_plugin(shard, settings, alpha=torch.tensor(alpha, dtype=torch.float32))
        real = int(batch["starts"][-1])
        assert torch.equal(out[:real].view(torch.int16), whole[:real, rank * hq:(rank + 1) * hq].view(torch.int16))


def _vllm_builder(settings, device):
    """flashprefill's metadata builder without a running engine: the attributes vLLM 0.26's FlashAttention
    builder reads in build(), set as an engine without CUDA graphs or AOT scheduling sets them."""
    import types

    from flashprefill.integrations.vllm.backend import FlashPrefillMetadataBuilder
    builder = object.__new__(FlashPrefillMetadataBuilder)
    builder.__dict__.update(settings=settings, aot_schedule=False, use_full_cuda_graph=False, max_cudagraph_size=None,
                            dcp_world_size=1, aot_sliding_window=(-1, -1), rswa_window=None, max_num_splits=0,
                            kv_cache_spec=types.SimpleNamespace(sliding_window=None), device=torch.device(device),
                            cache_config=types.SimpleNamespace(cache_dtype="auto"), kv_cache_dtype=torch.bfloat16,
                            vllm_config=None)
    return builder


def _common_metadata(batch):
    from vllm.v1.attention.backend import CommonAttentionMetadata
    starts, lens = batch["starts"], batch["seq_lens"]
    tokens = int(starts[-1])
    return CommonAttentionMetadata(
        query_start_loc=starts, query_start_loc_cpu=starts.cpu(), seq_lens=lens, num_reqs=len(batch["requests"]),
        num_actual_tokens=tokens, max_query_len=max(q for q, _ in batch["requests"]),
        max_seq_len=int(lens.max()), block_table_tensor=batch["table"],
        slot_mapping=torch.zeros(tokens, dtype=torch.int64, device=lens.device), seq_lens_cpu_upper_bound=lens.cpu())


@needs_vllm
def test_builder_plans_with_vllms_metadata():
    """build() on vLLM's own CommonAttentionMetadata: the long requests get a plan, the short ones
    FlashAttention metadata of their own (re-based query starts, their seq_lens and block-table rows)."""
    batch = make_batch(np.random.default_rng(0), MIXED, 16)
    metadata = _vllm_builder(SETTINGS, "cpu").build(0, _common_metadata(batch))
    plan = metadata.flashprefill_plan
    assert plan.long.requests.tolist() == [2, 4] and metadata.num_actual_tokens == int(batch["starts"][-1])
    short = plan.short_metadata
    assert short.num_actual_tokens == plan.short.num_tokens == 1 + 40 + 1 + 20 + 5
    assert short.query_start_loc.tolist() == [0, 1, 41, 42, 62, 67]
    assert short.seq_lens.tolist() == [901, 40, 31, 510, 1205]
    assert torch.equal(short.block_table, batch["table"][[0, 1, 3, 5, 6]])
    decode_only = make_batch(np.random.default_rng(1), [(1, 5000), (1, 700)], 16)
    assert getattr(_vllm_builder(SETTINGS, "cpu").build(0, _common_metadata(decode_only)), "flashprefill_plan",
                   None) is None


@needs_vllm
@needs_gpu
@pytest.mark.parametrize("requests", [MIXED, RUNS], ids=["interleaved", "runs"])
def test_backend_forward_equals_dense_attention(rng, requests):
    """The backend's forward in one step: vLLM's FlashAttention on the short requests and flash_prefill
    (alpha 0) on the long ones, on vLLM's cache layout, against fp64 dense attention of every request."""
    import types

    from flashprefill.integrations.vllm.backend import FlashPrefillImpl
    batch = make_batch(rng, requests, 16, dtype=torch.bfloat16, device="cuda")
    settings = routing.Settings(threshold=512, alpha=0.0)
    metadata = _vllm_builder(settings, "cuda").build(0, _common_metadata(batch))
    impl = FlashPrefillImpl(HQ, D, D**-0.5, HKV, None, None, "auto")
    impl.settings = settings
    one = torch.ones((), dtype=torch.float32, device="cuda")
    layer = types.SimpleNamespace(_q_scale=one, _k_scale=one, _v_scale=one, layer_name="model.layers.0.self_attn.attn")
    output = torch.full_like(batch["q"], float("nan"))
    impl.forward(layer, batch["q"], None, None, batch["cache"], metadata, output)
    for b in range(len(requests)):
        s, e = int(batch["starts"][b]), int(batch["starts"][b + 1])
        assert rel_error(output[s:e].double().cpu().numpy(), dense_rows(batch, b, D**-0.5)) < 2e-2, f"request {b}"
