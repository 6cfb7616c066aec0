"""``alpha`` as one value per query head (Params::head_alpha): one call gives, head by head, the output, lse and layout
of a call with that head's scalar alpha; padded (GQA), varlen, paged, robust discovery, NumPy, torch.compile and CUDA
graphs; errors for a wrong length or range name ``alpha``."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the per-head alpha tests need it")
import flashprefill as fp  # noqa: E402
from test_paged import LENGTHS, make_paged  # noqa: E402
from test_torch import make, needs_gpu  # noqa: E402

ALPHAS = [0.0, 0.3, 0.05, 1.0, 0.12, 0.12]  # dense rows, the ends of the range, two heads sharing a value


def _bits(x):
    return x.view(torch.int16) if x.dtype in (torch.bfloat16, torch.float16) else x


def expect_each_head_is_its_scalar_call(call, alphas, head_axis_out, head_axis_lse):
    """call(alpha) -> (out, lse); per-head alpha against a scalar call per head, bit for bit."""
    out, lse = call(alphas)
    for h, a in enumerate(alphas):
        out_h, lse_h = call(float(a))
        assert torch.equal(_bits(out.select(head_axis_out, h)), _bits(out_h.select(head_axis_out, h))), f"head {h}"
        assert torch.equal(lse.select(head_axis_lse, h), lse_h.select(head_axis_lse, h)), f"lse of head {h}"


@pytest.mark.parametrize("discovery", ["exact", "robust"])
@pytest.mark.parametrize("form", ["list", "tuple", "numpy", "tensor"])
def test_padded_gqa_per_head_alpha_is_one_call_per_head(rng, form, discovery):
    q, k, v = make(rng, 2, 500, 900, 6, 2, 64)  # a chunk over a cached prefix
    alphas = list(rng.permutation(ALPHAS))
    given = {"list": alphas, "tuple": tuple(alphas), "numpy": np.array(alphas),
             "tensor": torch.tensor(alphas)}[form]
    call = lambda a: fp.flash_prefill(q, k, v, alpha=a, block_size=64, return_lse=True, discovery=discovery)
    out, lse = call(given)
    for h, a in enumerate(alphas):
        out_h, lse_h = call(float(a))
        assert torch.equal(_bits(out[:, :, h]), _bits(out_h[:, :, h])), f"head {h}"
        assert torch.equal(lse[:, h], lse_h[:, h])


def test_varlen_and_paged_per_head_alpha(rng):
    t = make_paged(rng, LENGTHS, 32)
    alphas = list(rng.permutation(ALPHAS[:4]))
    varlen = lambda a: fp.flash_prefill_varlen(t["q"], t["k"], t["v"], t["cu_q"], t["cu_kv"], t["max_q"], t["max_kv"],
                                               alpha=a, block_size=64, return_lse=True)
    paged = lambda a: fp.flash_prefill_paged(t["q"], t["cache"][0], t["cache"][1], t["table"], t["seq_lens"], t["cu_q"],
                                             t["max_q"], t["max_kv"], alpha=a, block_size=64, return_lse=True)
    expect_each_head_is_its_scalar_call(varlen, alphas, 1, 0)
    expect_each_head_is_its_scalar_call(paged, alphas, 1, 0)
    assert torch.equal(_bits(varlen(alphas)[0]), _bits(paged(alphas)[0]))


def test_select_blocks_rows_follow_their_head(rng):
    q, k, _ = make(rng, 1, 1000, 1000, 6, 2, 64)
    alphas = list(rng.permutation(ALPHAS))
    rows = fp.select_blocks(q, k, alpha=alphas, block_size=64).rows()
    per_head = len(rows) // 6
    for h, a in enumerate(alphas):
        scalar = fp.select_blocks(q, k, alpha=a, block_size=64).rows()
        assert rows[h * per_head:(h + 1) * per_head] == scalar[h * per_head:(h + 1) * per_head], f"head {h}"
    assert rows != fp.select_blocks(q, k, alpha=alphas[0], block_size=64).rows()


def test_numpy_inputs_take_per_head_alpha(rng):
    q, k, v = (x.float().numpy() for x in make(rng, 1, 300, 300, 4, 2, 64))
    alphas = [0.5, 0.0, 0.2, 0.9]
    out = fp.flash_prefill(q, k, v, alpha=np.array(alphas, dtype=np.float32), block_size=32)
    for h, a in enumerate(alphas):
        assert np.array_equal(out[:, :, h], fp.flash_prefill(q, k, v, alpha=a, block_size=32)[:, :, h])


def test_all_equal_is_the_scalar_alpha(rng):
    q, k, v = make(rng, 1, 700, 700, 4, 1, 128)
    scalar = fp.flash_prefill(q, k, v, alpha=0.2, block_size=64)
    assert torch.equal(_bits(fp.flash_prefill(q, k, v, alpha=[0.2] * 4, block_size=64)), _bits(scalar))


def test_per_head_tensor_under_torch_compile(rng):
    q, k, v = make(rng, 1, 400, 400, 4, 2, 64)
    alphas = torch.tensor([0.0, 0.4, 0.1, 0.2])
    call = lambda a, b, c, al: fp.flash_prefill(a, b, c, alpha=al, block_size=32)
    compiled = torch.compile(call, fullgraph=True, backend="eager")
    assert torch.equal(_bits(compiled(q, k, v, alphas)), _bits(call(q, k, v, alphas)))


@pytest.mark.parametrize("alpha, message", [
    ([0.1, 0.2, 0.3], r"alpha has 3 values; expected a float or one per query head \(H_q = 4\)"),
    (torch.tensor([0.1] * 5), r"alpha has 5 values; expected a float or one per query head \(H_q = 4\)"),
    ([0.1, 1.5, 0.2, 0.3], r"alpha\[1\] is 1.5; expected a value in \[0, 1\]"),
    (torch.tensor([0.1, 0.2, -0.5, 0.3]), r"alpha\[2\] is -0.5; expected a value in \[0, 1\]"),
    ([0.1, float("nan"), 0.2, 0.3], r"alpha\[1\] is nan"),
    ([[0.1, 0.2], [0.3, 0.4]], r"alpha has shape \(2, 2\)"),
    (torch.ones(4, dtype=torch.int32), r"alpha is a torch.int32 tensor"),
    ("0.1", r"alpha"),
])
def test_bad_per_head_alpha_names_alpha(rng, alpha, message):
    q, k, v = make(rng, 1, 64, 64, 4, 2, 64)
    with pytest.raises(fp.FlashPrefillError, match=message):
        fp.flash_prefill(q, k, v, alpha=alpha)
    with pytest.raises(fp.FlashPrefillError, match="alpha"):
        fp.select_blocks(q, k, alpha=alpha)


@needs_gpu
def test_cuda_per_head_tensor_is_one_call_per_head_and_graph_safe(rng):
    q, k, v = make(rng, 1, 3000, 3000, 8, 2, 128, device="cuda")
    alphas = torch.tensor([0.0, 0.3, 0.05, 1.0, 0.12, 0.12, 0.5, 0.01], device="cuda")
    for block_size in (64, 128):  # the sm_80 score kernel, and the sm_90 one on Hopper
        call = lambda a: fp.flash_prefill(q, k, v, alpha=a, block_size=block_size, return_lse=True)
        expect_each_head_is_its_scalar_call(call, alphas.tolist(), 2, 1)
    eager = fp.flash_prefill(q, k, v, alpha=alphas)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fp.flash_prefill(q, k, v, alpha=alphas)
    static_out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(_bits(static_out), _bits(eager))
    alphas.copy_(torch.tensor([0.5] * 8))  # the graph reads the tensor's current values at replay
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(_bits(static_out), _bits(fp.flash_prefill(q, k, v, alpha=0.5)))


@needs_gpu
def test_cuda_per_head_values_checked_with_check_inputs(rng):
    q, k, v = make(rng, 1, 256, 256, 4, 2, 64, device="cuda")
    bad = torch.tensor([0.1, 0.2, 2.0, 0.3], device="cuda")
    with pytest.raises(fp.FlashPrefillError, match=r"head_alpha\[2\].*expected a value in \[0, 1\]"):
        fp.flash_prefill(q, k, v, alpha=bad, check_inputs=True)
