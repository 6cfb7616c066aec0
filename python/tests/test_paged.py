"""Paged K/V (vLLM's page pools and block table) through flash_prefill_paged: the same output and
lse bits as the same K/V packed contiguously (flash_prefill_varlen), for torch tensors on the CPU
(and CUDA where present) and NumPy arrays; chunked sequences over a cached prefix; errors by name."""
import numpy as np
import pytest

import flashprefill as fp
from reference import attention, rel_error

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the paged torch tests need it")

needs_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and fp.cuda_available()),
                               reason="no CUDA device: the GPU tests run only on a GPU machine")

# (L_q, L_kv): chunks that start mid-block over a cached prefix, a single query, a full prefill.
LENGTHS = [(300, 1000), (1, 517), (250, 250), (37, 129)]


def make_paged(rng, lengths, page_size, hq=4, hkv=2, d=64, device="cpu", dtype=torch.bfloat16):
    """Packed q and contiguous k/v, and the same k/v in a vLLM-style [2, num_pages, page_size, H_kv, D]
    cache with pages in a random order, spare pages of NaN (never read) and a spare block-table column."""
    gen = lambda *shape: torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(dtype)
    lq = [a for a, _ in lengths]
    lkv = [b for _, b in lengths]
    q, k, v = gen(sum(lq), hq, d), gen(sum(lkv), hkv, d), gen(sum(lkv), hkv, d)
    pages = [-(-n // page_size) for n in lkv]
    num_pages = sum(pages) + 3
    cache = torch.full((2, num_pages, page_size, hkv, d), float("nan"), dtype=dtype)
    table = torch.full((len(lengths), max(pages) + 1), -1, dtype=torch.int32)
    order = rng.permutation(num_pages)
    used, start = 0, 0
    for b, n in enumerate(lkv):
        for p in range(pages[b]):
            page = int(order[used])
            used += 1
            table[b, p] = page
            rows = min(page_size, n - p * page_size)
            cache[0, page, :rows] = k[start + p * page_size:start + p * page_size + rows]
            cache[1, page, :rows] = v[start + p * page_size:start + p * page_size + rows]
            cache[:, page, rows:] = 0.5  # finite noise past the sequence in its last page
        start += n
    cu = lambda lens: torch.tensor(np.cumsum([0] + lens), dtype=torch.int32)
    seq_lens = torch.tensor(lkv, dtype=torch.int32)
    to = lambda t: t.to(device)
    return dict(q=to(q), k=to(k), v=to(v), cache=to(cache), table=to(table), seq_lens=to(seq_lens), cu_q=to(cu(lq)),
                cu_kv=to(cu(lkv)), max_q=max(lq), max_kv=max(lkv), lq=lq, lkv=lkv)


def paged_equals_varlen(t, **params):
    paged, paged_lse = fp.flash_prefill_paged(t["q"], t["cache"][0], t["cache"][1], t["table"], t["seq_lens"], t["cu_q"],
                                              t["max_q"], t["max_kv"], return_lse=True, **params)
    contiguous, lse = fp.flash_prefill_varlen(t["q"], t["k"], t["v"], t["cu_q"], t["cu_kv"], t["max_q"], t["max_kv"],
                                              return_lse=True, **params)
    assert torch.equal(paged.view(torch.int16), contiguous.view(torch.int16))
    assert torch.equal(paged_lse, lse)
    return paged


@pytest.mark.parametrize("page_size", [16, 32, 64, 128, 256])
def test_paged_equals_contiguous_torch_cpu(rng, page_size):
    t = make_paged(rng, LENGTHS, page_size)
    out = paged_equals_varlen(t, alpha=0.2, block_size=64)
    if page_size == 16:  # right, not only equal: dense (alpha 0) against the fp64 reference per sequence
        out = fp.flash_prefill_paged(t["q"], t["cache"][0], t["cache"][1], t["table"], t["seq_lens"], t["cu_q"],
                                     t["max_q"], t["max_kv"], alpha=0.0, block_size=64)
        qs, ks = np.cumsum([0] + t["lq"]), np.cumsum([0] + t["lkv"])
        for b in range(len(LENGTHS)):
            ref, _ = attention(t["q"][qs[b]:qs[b + 1]].float().numpy(), t["k"][ks[b]:ks[b + 1]].float().numpy(),
                               t["v"][ks[b]:ks[b + 1]].float().numpy(), block_size=64)
            assert rel_error(out[qs[b]:qs[b + 1]].float().numpy(), ref) <= 1e-2


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_gpu)])
def test_paged_robust_discovery_equals_contiguous(rng, device):
    """Robust discovery reads every key (scored against the query representatives) through the page table too."""
    t = make_paged(rng, LENGTHS, 16, device=device)
    paged_equals_varlen(t, alpha=0.3, block_size=64, discovery="robust")


def test_paged_head_major_strides(rng):
    """Pages stored head-major ([2, num_pages, H_kv, page_size, D] memory, vLLM's HND cache layout) and
    passed as permuted views: any strides with D contiguous."""
    t = make_paged(rng, LENGTHS, 32)
    hnd = t["cache"].permute(0, 1, 3, 2, 4).contiguous()
    t["cache"] = hnd.permute(0, 1, 3, 2, 4)
    assert not t["cache"][0].is_contiguous()
    paged_equals_varlen(t, alpha=0.2, block_size=64)


def test_paged_float32_cpu(rng):
    t = make_paged(rng, LENGTHS, 64, dtype=torch.float32)
    paged_equals_varlen(t, alpha=0.2, block_size=32)


def test_paged_numpy(rng):
    t = make_paged(rng, LENGTHS, 32, dtype=torch.float16)
    n = lambda x: x.numpy()
    paged = fp.flash_prefill_paged(n(t["q"]), n(t["cache"][0]), n(t["cache"][1]), n(t["table"]), n(t["seq_lens"]),
                                   n(t["cu_q"]), t["max_q"], t["max_kv"], alpha=0.1, block_size=32)
    contiguous = fp.flash_prefill_varlen(n(t["q"]), n(t["k"]), n(t["v"]), n(t["cu_q"]), n(t["cu_kv"]), t["max_q"],
                                         t["max_kv"], alpha=0.1, block_size=32)
    assert np.array_equal(paged.view(np.uint16), contiguous.view(np.uint16))


def test_paged_under_torch_compile(rng):
    t = make_paged(rng, [(40, 200), (64, 64)], 16)

    def call(q, kc, vc, table, seq_lens, cu_q):
        return fp.flash_prefill_paged(q, kc, vc, table, seq_lens, cu_q, 64, 200, alpha=0.0, block_size=32)

    compiled = torch.compile(call, fullgraph=True, backend="eager")
    args = (t["q"], t["cache"][0], t["cache"][1], t["table"], t["seq_lens"], t["cu_q"])
    assert torch.equal(compiled(*args).view(torch.int16), call(*args).view(torch.int16))


def test_paged_errors_name_the_argument(rng):
    t = make_paged(rng, [(40, 100), (10, 30)], 16)

    def call(k=t["cache"][0], v=t["cache"][1], table=t["table"], seq_lens=t["seq_lens"], max_kv=t["max_kv"]):
        return fp.flash_prefill_paged(t["q"], k, v, table, seq_lens, t["cu_q"], t["max_q"], max_kv)

    with pytest.raises(fp.FlashPrefillError, match="page_size"):
        call(k=t["cache"][0][:, :8], v=t["cache"][1][:, :8])
    with pytest.raises(fp.FlashPrefillError, match="block_table"):
        call(table=t["table"].long())
    with pytest.raises(fp.FlashPrefillError, match="seq_lens_kv"):
        call(seq_lens=t["seq_lens"][:1])
    with pytest.raises(fp.FlashPrefillError, match="max_seqlen_kv"):
        call(max_kv=10_000)
    bad = t["table"].clone()
    bad[0, 1] = 1000
    with pytest.raises(fp.FlashPrefillError, match=r"block_table\[0, 1\]"):
        call(table=bad)


@needs_gpu
@pytest.mark.parametrize("page_size", [16, 128])
def test_paged_equals_contiguous_cuda(rng, page_size):
    t = make_paged(rng, LENGTHS + [(700, 2100)], page_size, hq=8, hkv=2, d=128, device="cuda")
    paged_equals_varlen(t, alpha=0.2)  # block 128: the sm_90 kernel on Hopper
    paged_equals_varlen(t, alpha=0.2, block_size=64)
