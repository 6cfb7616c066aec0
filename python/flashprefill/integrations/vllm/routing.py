"""The plugin's own logic, free of vLLM: settings, which requests of a batch go to flash_prefill, and
running them on vLLM's paged KV cache. backend.py adapts it to vLLM's attention-backend API.

A batch (vLLM's ``query_start_loc``, ``seq_lens`` and block table) is split into two groups of requests:
*long* segments (a prefill or extend of at least ``min_query_len`` tokens whose sequence, cached prefix
included, holds at least ``threshold`` keys) go to :func:`flashprefill.flash_prefill_paged`; everything
else (decodes, speculative verification, short prefills) stays with vLLM's FlashAttention. Each group is
either one contiguous run of requests (then its tokens are a slice of the batch, with no copy) or, when
the two interleave, gathered by token index.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from ... import _api

# Head dims and dtypes the kernels are built for (the CPU backend takes any head dim, CUDA 64 and 128).
SUPPORTED_HEAD_SIZES = (64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
# Page sizes the paged kernels read in place (powers of two, vLLM's default 16 included).
SUPPORTED_PAGE_SIZES = (16, 32, 64, 128, 256)


# Feature flags of vLLM's backend check that unsupported_reasons also takes.
OTHER_FEATURES = ("use_batch_invariant", "use_kv_connector", "use_pcp")


def unsupported_reasons(*, head_size: int, dtype=None, kv_cache_dtype=None, block_size=None, use_mla=False,
                        has_sink=False, use_sparse=False, use_mm_prefix=False, use_per_head_quant_scales=False,
                        device_capability=None, attn_type="decoder", has_sliding_window=False, use_non_causal=False,
                        alibi=False, sliding_window=None, logits_soft_cap=None, use_batch_invariant=False,
                        use_kv_connector=False, use_pcp=False) -> list:
    """Why the backend cannot serve this configuration, one reason per setting, each naming it (empty:
    supported). The backend's configuration check and its layers' construction both ask this."""
    reasons = []
    if head_size not in SUPPORTED_HEAD_SIZES:
        reasons.append(f"head_size={head_size}: flashprefill's kernels are built for head dims "
                       f"{', '.join(map(str, SUPPORTED_HEAD_SIZES))}")
    if dtype is not None and dtype not in SUPPORTED_DTYPES:
        reasons.append(f"dtype={dtype}: flashprefill takes float16 or bfloat16 activations (--dtype)")
    if kv_cache_dtype not in (None, "auto", "float16", "bfloat16", "half"):
        reasons.append(f"kv_cache_dtype={kv_cache_dtype!r}: only a float16/bfloat16 KV cache; FP8 inputs are not "
                       "supported yet (--kv-cache-dtype auto)")
    if block_size is not None and block_size not in SUPPORTED_PAGE_SIZES:
        reasons.append(f"block_size={block_size}: flashprefill reads pages of "
                       f"{', '.join(map(str, SUPPORTED_PAGE_SIZES))} tokens (--block-size)")
    if use_mla:
        reasons.append("use_mla=True: MLA (latent attention, DeepSeek-style models) is not supported")
    if has_sink:
        reasons.append("has_sink=True: learned attention-sink logits (e.g. gpt-oss) are not supported")
    if use_sparse:
        reasons.append("use_sparse=True: the model's own sparse attention is not supported")
    if use_mm_prefix:
        reasons.append("use_mm_prefix=True: bidirectional multimodal prefixes (prefix-LM) are not supported")
    if use_per_head_quant_scales:
        reasons.append("use_per_head_quant_scales=True: quantized (FP8) KV scales are not supported")
    if device_capability is not None and tuple(device_capability) < (8, 0):
        reasons.append(f"device capability {device_capability[0]}.{device_capability[1]}: flashprefill's CUDA "
                       "kernels need sm_80 or newer")
    if str(attn_type).lower() not in ("decoder", "attentiontype.decoder"):
        reasons.append(f"attn_type={attn_type!r}: only decoder self-attention; encoder, encoder-only and "
                       "encoder-decoder (cross) attention are not supported")
    if has_sliding_window or sliding_window is not None:
        reasons.append("sliding window (the model config's sliding_window): not supported; flashprefill attends to "
                       "the whole causal prefix")
    if use_non_causal:
        reasons.append("use_non_causal=True: only causal attention is supported")
    if alibi:
        reasons.append("alibi_slopes: ALiBi position biases are not supported")
    if logits_soft_cap:
        reasons.append(f"logits_soft_cap={logits_soft_cap}: attention logit soft-capping is not supported")
    if use_batch_invariant:
        reasons.append("VLLM_BATCH_INVARIANT=1: not supported (the kept blocks depend on how a prompt is chunked)")
    if use_pcp:
        reasons.append("prefill context parallelism (--prefill-context-parallel-size > 1) is not supported")
    del use_kv_connector  # served as FlashAttention serves it: the cache layout and writes are FlashAttention's
    return reasons


@dataclass(frozen=True)
class Settings:
    """What the plugin does. From environment variables (``FLASHPREFILL_*``, below) overridden by
    ``additional_config={"flashprefill": {...}}`` of vLLM's config (same names, lower case, no prefix)."""
    threshold: int = 4096  # FLASHPREFILL_VLLM_THRESHOLD: a segment's keys (prefix + chunk) before flash_prefill
    min_query_len: int = 16  # FLASHPREFILL_VLLM_MIN_QUERY_LEN: shorter segments (decodes) stay with FlashAttention
    alpha: Optional[float] = None  # FLASHPREFILL_ALPHA: None = the model's profile, else the family's alpha
    profile: str = "auto"  # FLASHPREFILL_PROFILE: "auto" (shipped profile matching the model), "none" or a path
    block_size: int = 128  # FLASHPREFILL_BLOCK_SIZE
    sink_blocks: int = 2  # FLASHPREFILL_SINK_BLOCKS
    window_blocks: int = 4  # FLASHPREFILL_WINDOW_BLOCKS
    last_full_blocks: int = 2  # FLASHPREFILL_LAST_FULL_BLOCKS
    min_budget: int = 0  # FLASHPREFILL_MIN_BUDGET
    discovery: str = "exact"  # FLASHPREFILL_DISCOVERY: "exact" or "robust"
    density_log: Optional[str] = None  # FLASHPREFILL_VLLM_DENSITY_LOG: append kept/causal blocks per call (slow)
    # FLASHPREFILL_VLLM_PAGE_SIZE: the KV-cache block size the backend asks vLLM for when --block-size is not
    # given. On an H200 (bench/RESULTS.md) paged attention is within 2% of contiguous K/V on pages of 128 and
    # within 4% on 16 and 32; 128 is the default because vLLM's FlashAttention call is also faster there.
    page_size: int = 128

    @classmethod
    def from_sources(cls, environ=None, overrides: Optional[dict] = None) -> "Settings":
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            env_name = ("FLASHPREFILL_" if f.name in _LIBRARY_SETTINGS else "FLASHPREFILL_VLLM_") + f.name.upper()
            if env_name in environ:
                values[f.name] = environ[env_name]
        unknown = set(overrides or {}) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"additional_config['flashprefill'] has unknown keys {sorted(unknown)}; expected some of "
                             f"{[f.name for f in fields(cls)]}")
        values.update(overrides or {})
        return cls(**{name: _parse(name, value) for name, value in values.items()}).checked()

    def checked(self) -> "Settings":
        if self.threshold < 0:
            raise ValueError(f"flashprefill threshold is {self.threshold}; expected a number of keys >= 0")
        if self.min_query_len < 2:
            raise ValueError(f"flashprefill min_query_len is {self.min_query_len}; expected >= 2 (decodes stay "
                             "with FlashAttention)")
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"flashprefill alpha is {self.alpha}; expected a value in [0, 1]")
        if self.page_size not in SUPPORTED_PAGE_SIZES:
            raise ValueError(f"flashprefill page_size is {self.page_size}; expected one of {list(SUPPORTED_PAGE_SIZES)}")
        if self.discovery not in ("exact", "robust"):
            raise ValueError(f"flashprefill discovery is {self.discovery!r}; expected 'exact' or 'robust'")
        return self

    def library_params(self) -> dict:
        return dict(block_size=self.block_size, sink_blocks=self.sink_blocks, window_blocks=self.window_blocks,
                    last_full_blocks=self.last_full_blocks, min_budget=self.min_budget, discovery=self.discovery)


# Settings shared with the library's other integrations are named FLASHPREFILL_<NAME>; the plugin's own
# FLASHPREFILL_VLLM_<NAME>.
_LIBRARY_SETTINGS = {"alpha", "profile", "block_size", "sink_blocks", "window_blocks", "last_full_blocks", "min_budget",
                     "discovery"}


def _parse(name: str, value):
    kind = {f.name: f.type for f in fields(Settings)}[name]
    if value is None or not isinstance(value, str):
        return value
    try:
        if "int" in kind:
            return int(value)
        if "float" in kind:
            return None if value.lower() in ("", "none", "auto") else float(value)
    except ValueError:
        raise ValueError(f"flashprefill setting {name} is {value!r}; expected a {kind.split('[')[-1].strip(']')}") from None
    return value


@dataclass
class Segments:
    """Some requests of a batch, packed for one attention call."""
    requests: np.ndarray  # their indices in the batch
    tokens: Union[slice, torch.Tensor]  # their rows of the batch's q / output: a slice, or a device index
    num_tokens: int
    query_start_loc: torch.Tensor  # int32 [n + 1] on the device, from 0 over this group's packed tokens
    query_start_loc_cpu: torch.Tensor
    seq_lens: torch.Tensor  # int32 [n] on the device
    seq_lens_cpu: torch.Tensor
    block_table: torch.Tensor  # int32 [n, max_pages] on the device
    max_query_len: int
    max_seq_len: int

    @property
    def num_reqs(self) -> int:
        return len(self.requests)


def split_requests(query_start_loc_cpu, seq_lens_cpu, num_reqs: int, settings: Settings):
    """(short, long): the batch's request indices that stay with FlashAttention and those that go to
    flash_prefill. ``seq_lens_cpu`` needs to be exact only for requests of ``min_query_len`` tokens or more
    (vLLM's upper bound is exact for prefills)."""
    starts = np.asarray(query_start_loc_cpu[:num_reqs + 1], dtype=np.int64)
    query_lens = starts[1:] - starts[:-1]
    seq_lens = np.asarray(seq_lens_cpu[:num_reqs], dtype=np.int64)
    is_long = (query_lens >= settings.min_query_len) & (seq_lens >= settings.threshold)
    return np.flatnonzero(~is_long), np.flatnonzero(is_long)


def _is_run(requests: np.ndarray) -> bool:
    return len(requests) > 0 and int(requests[-1]) - int(requests[0]) + 1 == len(requests)


def take_segments(requests: np.ndarray, query_start_loc, query_start_loc_cpu, seq_lens, seq_lens_cpu,
                  block_table) -> Segments:
    """The metadata of ``requests`` (ascending indices), on the device without a host synchronisation."""
    starts_cpu = torch.as_tensor(np.asarray(query_start_loc_cpu), dtype=torch.int32)
    first, last = int(requests[0]), int(requests[-1])
    index_cpu = torch.as_tensor(requests, dtype=torch.long)
    sub_lens_cpu = (starts_cpu[1:] - starts_cpu[:-1])[index_cpu]
    sub_starts_cpu = torch.zeros(len(requests) + 1, dtype=torch.int32)
    torch.cumsum(sub_lens_cpu, 0, out=sub_starts_cpu[1:])
    seq_lens_sub_cpu = torch.as_tensor(np.asarray(seq_lens_cpu), dtype=torch.int32)[index_cpu]
    device = seq_lens.device
    if _is_run(requests):
        begin, end = int(starts_cpu[first]), int(starts_cpu[last + 1])
        tokens: Union[slice, torch.Tensor] = slice(begin, end)
        rows = slice(first, last + 1)
        sub_starts = query_start_loc[first:last + 2] - query_start_loc[first]
        sub_seq_lens, sub_block_table = seq_lens[rows], block_table[rows]
    else:
        token_rows = torch.cat([torch.arange(int(starts_cpu[r]), int(starts_cpu[r + 1])) for r in requests])
        tokens = _to_device(token_rows, device)
        index = _to_device(index_cpu, device)
        sub_starts = _to_device(sub_starts_cpu, device)
        sub_seq_lens, sub_block_table = seq_lens.index_select(0, index), block_table.index_select(0, index)
    return Segments(requests=np.asarray(requests), tokens=tokens, num_tokens=int(sub_starts_cpu[-1]),
                    query_start_loc=sub_starts, query_start_loc_cpu=sub_starts_cpu, seq_lens=sub_seq_lens,
                    seq_lens_cpu=seq_lens_sub_cpu, block_table=sub_block_table,
                    max_query_len=int(sub_lens_cpu.max()), max_seq_len=int(seq_lens_sub_cpu.max()))


def _to_device(t: torch.Tensor, device) -> torch.Tensor:
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)  # stream-ordered; the host does not wait


@dataclass
class RoutePlan:
    """One step's routing, shared by every layer of a KV-cache group. ``short_metadata`` is the backend's
    own metadata for ``short`` (None when every request is long)."""
    long: Segments
    short: Optional[Segments]
    short_metadata: Any = None


def plan_batch(query_start_loc, query_start_loc_cpu, seq_lens, seq_lens_cpu, block_table, num_reqs: int,
               settings: Settings) -> Optional[RoutePlan]:
    """None when no request is long (the batch goes to FlashAttention as it is)."""
    short, long = split_requests(query_start_loc_cpu, seq_lens_cpu, num_reqs, settings)
    if len(long) == 0:
        return None
    args = (query_start_loc, query_start_loc_cpu[:num_reqs + 1], seq_lens, seq_lens_cpu[:num_reqs], block_table)
    return RoutePlan(long=take_segments(long, *args), short=take_segments(short, *args) if len(short) else None)


def paged_kv_views(kv_cache: torch.Tensor, head_size: int):
    """K and V page pools ``[num_pages, page_size, H_kv, D]`` as views of vLLM's FlashAttention cache,
    logical ``[num_pages, H_kv, page_size, 2 * D]`` (K and V side by side in the last dim), in either of
    its memory layouts (NHD or HND): the library reads any strides with D contiguous."""
    return kv_cache.transpose(1, 2).split(head_size, dim=-1)


def rows_of(t: torch.Tensor, tokens: Union[slice, torch.Tensor]) -> torch.Tensor:
    return t[tokens] if isinstance(tokens, slice) else t.index_select(0, tokens)


def attend_segments(query: torch.Tensor, output: torch.Tensor, seg: Segments,
                    attend: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
    """Run ``attend(q, out)`` on the segment's rows of ``query`` / ``output`` ([tokens, H, D]): in place for a
    slice, through a gathered copy otherwise."""
    if isinstance(seg.tokens, slice):
        attend(query[seg.tokens], output[seg.tokens])
        return
    out = torch.empty((seg.num_tokens, *output.shape[1:]), dtype=output.dtype, device=output.device)
    attend(query.index_select(0, seg.tokens), out)
    output.index_copy_(0, seg.tokens, out)


def flash_prefill_on_cache(q: torch.Tensor, out: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor,
                           seg: Segments, *, alpha: Union[float, Sequence[float]], softmax_scale: float,
                           settings: Settings) -> None:
    """flash_prefill_paged of the segment's queries against its sequences' pages, into ``out``. ``alpha``
    is one value or one per query head."""
    _api.flash_prefill_paged(q, k_pages, v_pages, seg.block_table, seg.seq_lens, seg.query_start_loc,
                             seg.max_query_len, seg.max_seq_len, alpha=alpha, softmax_scale=softmax_scale, out=out,
                             **settings.library_params())


def log_density(path: str, layer: str, q: torch.Tensor, k_pages: torch.Tensor, seg: Segments, *,
                alpha: Union[float, Sequence[float]], softmax_scale: float, settings: Settings) -> None:
    """Diagnostics (FLASHPREFILL_VLLM_DENSITY_LOG): the kept and the causal key blocks of this call's
    layout, appended to ``path`` as one JSON line. Gathers the keys into a contiguous copy: slow."""
    from ..transformers import causal_blocks_per_head  # one definition of the causal block count
    starts = seg.query_start_loc_cpu.tolist()
    kept = causal = 0
    page = k_pages.shape[1]
    for i in range(seg.num_reqs):
        L_q, L_kv = starts[i + 1] - starts[i], int(seg.seq_lens_cpu[i])
        pages = seg.block_table[i, :(L_kv + page - 1) // page].long()
        k = k_pages.index_select(0, pages).flatten(0, 1)[:L_kv]
        layout = _api.select_blocks(q[None, starts[i]:starts[i + 1]], k[None], alpha=alpha, softmax_scale=softmax_scale,
                                    **settings.library_params())
        kept += int(layout.row_ptr[-1])
        causal += causal_blocks_per_head(L_q, L_kv, settings.block_size) * q.shape[1]
    with open(path, "a") as f:
        f.write(json.dumps({"layer": layer, "kept": kept, "causal": causal, "tokens": seg.num_tokens}) + "\n")


def forward(query: torch.Tensor, output: torch.Tensor, kv_cache: torch.Tensor, head_size: int, plan: RoutePlan, *,
            attend_short: Callable[[torch.Tensor, torch.Tensor, Any], None], alpha, softmax_scale: float,
            settings: Settings, layer_name: str = "") -> torch.Tensor:
    """One layer's attention for a routed batch: ``attend_short(q, out, plan.short_metadata)`` (vLLM's
    FlashAttention) on the short requests, flash_prefill on the long ones. ``query`` and ``output`` are
    ``[tokens, H_q, D]``; the new K/V are already in ``kv_cache``."""
    if plan.short is not None:
        attend_segments(query, output, plan.short, lambda q, out: attend_short(q, out, plan.short_metadata))
    k_pages, v_pages = paged_kv_views(kv_cache, head_size)
    run = lambda q, out: flash_prefill_on_cache(q, out, k_pages, v_pages, plan.long, alpha=alpha,
                                                softmax_scale=softmax_scale, settings=settings)
    attend_segments(query, output, plan.long, run)
    if settings.density_log:
        log_density(settings.density_log, layer_name, rows_of(query, plan.long.tokens), k_pages, plan.long,
                    alpha=alpha, softmax_scale=softmax_scale, settings=settings)
    return output


def model_alpha(hf_config, layer_index: Optional[int], num_heads: int, head_offset: int,
                settings: Settings) -> Union[float, list]:
    """This layer's alpha for the heads of this rank (``head_offset`` = tensor-parallel rank x heads per
    rank): the setting, else the calibration profile (shipped or given), else the model family's alpha,
    as the transformers integration chooses them."""
    from .. import transformers as hf
    if settings.alpha is not None:
        return float(settings.alpha)
    profile = None
    if settings.profile == "auto":
        profile = hf.shipped_profile(hf_config) if hf_config is not None else None
    elif settings.profile not in ("none", "", None):
        profile = hf.load_profile(settings.profile)
    if profile is not None and layer_index is not None:
        return hf.profile_alpha(profile, layer_index, getattr(hf_config, "num_attention_heads", None),
                                slice(head_offset, head_offset + num_heads), layer_name="layer")
    model_type = getattr(hf_config, "model_type", None)
    return float(hf.MODEL_ALPHA.get(model_type, hf.DEFAULT_ALPHA))


__all__ = ["unsupported_reasons", "OTHER_FEATURES", "Settings", "Segments", "RoutePlan", "split_requests", "take_segments", "plan_batch", "paged_kv_views",
           "forward", "model_alpha", "SUPPORTED_HEAD_SIZES", "SUPPORTED_DTYPES", "SUPPORTED_PAGE_SIZES"]
