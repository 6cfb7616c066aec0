"""``attn_implementation="flashprefill"`` for Hugging Face transformers (Llama, Qwen2, Qwen3, Mistral-style).

    import flashprefill.integrations.transformers as fpt
    fpt.register()                      # once; importing this module also registers
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="flashprefill", torch_dtype=torch.bfloat16)

Prefill of at least ``threshold`` tokens (default 4096) with a plain causal mask goes through FlashPrefill
(also chunked prefill, ``q_len < kv_len``, bottom-right aligned). Shorter prefills, decoding, padded batches
(an explicit mask), training and unsupported head dims go to the model's SDPA path.

Alpha: ``config.flashprefill_alpha``, else ``configure(alpha=...)``, else a calibration profile (per layer or
per query head; ``configure(profile=path)``, or by default one shipped in ``flashprefill/profiles`` that
matches the model's config: docs/SELECTION.md), else the paper's alpha of the model family.

transformers 5 treats every implementation name containing "flash" as a FlashAttention kernel: it builds
FlashAttention-style masks for it (None without padding, else the 2D padding mask), which suits us, and it
tries to preload a FlashAttention kernel of that name, which does not exist; ``register`` therefore makes
that preload skip our name, and the SDPA fallback turns the 2D mask back into a 4D one.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import torch

from .. import _api

# The paper's alpha per model family; anything else uses DEFAULT_ALPHA.
MODEL_ALPHA: Dict[str, float] = {"llama": 0.18, "qwen2": 0.08, "qwen3": 0.12, "qwen3_moe": 0.12}
DEFAULT_ALPHA = 0.12
PROFILE_FORMAT = "flashprefill-profile/1"
PROFILE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "profiles")
# The config fields a profile's "match" may name: a shipped profile applies to a model whose config has them all.
MATCH_FIELDS = ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim")


@dataclass
class Settings:
    alpha: Optional[float] = None  # None: the profile's per-layer alpha, else MODEL_ALPHA by model_type
    # Per-layer alpha calibrated on text (python -m flashprefill.calibrate): "auto" uses a profile shipped in
    # flashprefill/profiles whose "match" fits the model's config, if any; None uses none; else a path or dict.
    profile: Union[str, dict, None] = "auto"
    threshold: int = 4096          # shortest prefill (query tokens) that uses FlashPrefill
    block_size: int = 128
    sink_blocks: int = 2
    window_blocks: int = 4
    last_full_blocks: int = 2
    discovery: str = "exact"       # "robust" (docs/ROBUST.md) also keeps blocks holding a short dominant span
    collect_density: bool = False  # record the kept fraction per layer (adds a discovery pass and a sync)
    densities: List[dict] = field(default_factory=list)


settings = Settings()


def configure(**kwargs) -> Settings:
    """Override the defaults: ``configure(alpha=0.1, threshold=8192, collect_density=True)``."""
    for name, value in kwargs.items():
        if not hasattr(settings, name):
            raise ValueError(f"flashprefill.integrations.transformers.configure: unknown setting '{name}'")
        setattr(settings, name, value)
    return settings


def load_profile(source: Union[str, dict]) -> dict:
    """A calibration profile (python -m flashprefill.calibrate) from a path or a dict, checked."""
    where = source if isinstance(source, str) else "profile"
    if isinstance(source, str):
        with open(source) as f:
            source = json.load(f)
    if not isinstance(source, dict) or source.get("format") != PROFILE_FORMAT:
        raise ValueError(f"{where}: 'format' is {source.get('format') if isinstance(source, dict) else source!r}; "
                         f"expected '{PROFILE_FORMAT}'")
    if source.get("rule") != "threshold":
        raise ValueError(f"{where}: 'rule' is {source.get('rule')!r}; expected 'threshold' (a per-layer alpha)")
    values = source.get("values")
    alpha_ok = lambda a: isinstance(a, (int, float)) and 0.0 <= a <= 1.0
    if not isinstance(values, list) or not values or not all(
            alpha_ok(v) or (isinstance(v, list) and v and all(alpha_ok(a) for a in v)) for v in values):
        raise ValueError(f"{where}: 'values' must be a non-empty list with, per layer, one alpha in [0, 1] or a list of "
                         f"one per query head; got {values!r}")
    return source


def _matches(profile: dict, config) -> bool:
    match = profile.get("match") or {}
    return bool(match) and all(getattr(config, name, None) == value for name, value in match.items())


_shipped_cache: Dict[str, Optional[dict]] = {}


def shipped_profile(config) -> Optional[dict]:
    """The profile in flashprefill/profiles whose "match" fits `config`, or None."""
    key = json.dumps({name: getattr(config, name, None) for name in MATCH_FIELDS}, sort_keys=True, default=str)
    if key not in _shipped_cache:
        found = None
        for path in sorted(glob.glob(os.path.join(PROFILE_DIR, "*.json"))):
            profile = load_profile(path)
            if _matches(profile, config):
                found = profile
                break
        _shipped_cache[key] = found
    return _shipped_cache[key]


_loaded_profile: Dict[int, dict] = {}


def _profile_for(config) -> Optional[dict]:
    if settings.profile is None or config is None:
        return None
    if settings.profile == "auto":
        return shipped_profile(config)
    key = id(settings.profile)
    if key not in _loaded_profile:
        _loaded_profile.clear()
        _loaded_profile[key] = load_profile(settings.profile)
    return _loaded_profile[key]


def profile_alpha(profile: dict, layer: Optional[int], num_heads: Optional[int], heads: Optional[slice] = None,
                  layer_name: str = "layer_idx") -> Union[float, List[float]]:
    """A profile's alpha of one layer: a float, or one per query head of ``heads`` (default: all; a
    tensor-parallel rank passes its own slice); equal values collapse to a float. ``num_heads``: the model's
    query heads, which a per-head entry must match (None: not checked); ``layer_name`` names the layer's
    index in errors."""
    values = profile["values"]
    if layer is None or not 0 <= layer < len(values):
        raise ValueError(f"flashprefill profile has alphas for {len(values)} layers; {layer_name} {layer} is "
                         "outside it")
    value = values[layer]
    if not isinstance(value, list):
        return float(value)
    if num_heads is not None and len(value) != num_heads:
        raise ValueError(f"flashprefill profile: layer {layer} has {len(value)} per-head alphas; the model has "
                         f"{num_heads} heads")
    heads = heads or slice(0, len(value))
    if heads.stop > len(value):
        raise ValueError(f"flashprefill profile: layer {layer} has {len(value)} per-head alphas; heads "
                         f"{heads.start}..{heads.stop - 1} were asked for")
    chosen = value[heads]
    return [float(a) for a in chosen] if len(set(chosen)) > 1 else float(chosen[0])


def _alpha_for(module) -> Union[float, List[float]]:
    """config.flashprefill_alpha, else configure(alpha=...), else the profile's alpha of this layer, else the
    paper's alpha of the model family."""
    config = getattr(module, "config", None)
    if config is not None and getattr(config, "flashprefill_alpha", None) is not None:
        return float(config.flashprefill_alpha)
    if settings.alpha is not None:
        return float(settings.alpha)
    profile = _profile_for(config)
    if profile is not None:
        return profile_alpha(profile, getattr(module, "layer_idx", None), getattr(config, "num_attention_heads", None))
    return MODEL_ALPHA.get(getattr(config, "model_type", None), DEFAULT_ALPHA)


def _uses_flashprefill(module, query, key, attention_mask, dropout) -> bool:
    q_len, kv_len = query.shape[2], key.shape[2]
    return (attention_mask is None and not module.training and dropout == 0.0 and q_len >= settings.threshold
            and q_len <= kv_len and query.dtype in (torch.bfloat16, torch.float16) and query.shape[-1] in (64, 128)
            and query.shape[1] % key.shape[1] == 0)


def causal_blocks_per_head(q_len: int, kv_len: int, block_size: int) -> int:
    """Causal blocks of one head of one sequence: query blocks i = first .. nkb - 1 (bottom-right aligned,
    ALGORITHM.md's absolute numbering) each see i + 1 key blocks; chunked prefill (q_len < kv_len) starts
    at first = (kv_len - q_len) // block_size, not at 0."""
    num_key_blocks = -(-kv_len // block_size)
    first = (kv_len - q_len) // block_size
    rows = num_key_blocks - first
    return rows * (2 * first + rows + 1) // 2


def _density_record(module, q, k, layout) -> dict:
    """Kept fraction of the causal blocks, overall and per query head (mean over the batch)."""
    batch, q_len, heads = q.shape[0], q.shape[1], q.shape[2]
    causal = causal_blocks_per_head(q_len, k.shape[1], settings.block_size)
    row_ptr = layout.row_ptr.cpu()
    kept = (row_ptr[1:] - row_ptr[:-1]).view(batch, heads, -1).sum(dim=(0, 2)).double()
    per_head = (kept / (batch * causal)).tolist()
    return {"layer": getattr(module, "layer_idx", None), "q_len": q_len, "kv_len": k.shape[1],
            "density": sum(per_head) / heads, "per_head": per_head}


def _sdpa_fallback(module, query, key, value, attention_mask, scaling, dropout, **kwargs):
    """The model's SDPA path, with the mask it needs: bottom-right causal (decoding, chunks), plus padding."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    q_len, kv_len = query.shape[2], key.shape[2]
    if attention_mask is None and q_len == kv_len:
        return sdpa_attention_forward(module, query, key, value, None, scaling=scaling, dropout=dropout, **kwargs)
    if attention_mask is not None and attention_mask.dim() == 4:
        mask = attention_mask
    else:
        positions = torch.arange(kv_len - q_len, kv_len, device=query.device)
        mask = (torch.arange(kv_len, device=query.device)[None, :] <= positions[:, None])[None, None]
        if attention_mask is not None:  # [B, L_kv] padding mask of the FlashAttention-style builder
            mask = mask & attention_mask[:, None, None, -kv_len:].bool()
    return sdpa_attention_forward(module, query, key, value, mask, scaling=scaling, dropout=dropout, **kwargs)


def flashprefill_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: query ``[B, H_q, L_q, D]``, key/value ``[B, H_kv, L_kv, D]``;
    returns ``([B, L_q, H_q, D], None)`` like the SDPA implementation."""
    if not _uses_flashprefill(module, query, key, attention_mask, dropout):
        return _sdpa_fallback(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # [B, L, H, D] views, D contiguous
    alpha = _alpha_for(module)
    params = dict(block_size=settings.block_size, sink_blocks=settings.sink_blocks, window_blocks=settings.window_blocks,
                  last_full_blocks=settings.last_full_blocks, softmax_scale=scaling, discovery=settings.discovery)
    if isinstance(alpha, list):  # a per-head profile: one call, Params::head_alpha
        alpha = _head_alpha_tensor(module, alpha, q.device)
    if settings.collect_density:
        settings.densities.append(_density_record(module, q, k, _api.select_blocks(q, k, alpha=alpha, **params)))
    return _api.flash_prefill(q, k, v, alpha=alpha, **params), None


def _head_alpha_tensor(module, alpha: list, device) -> torch.Tensor:
    """The layer's per-head alphas as a float32 tensor on the inputs' device, made once per layer and device (so a
    forward copies nothing to the GPU and a CUDA graph captures a tensor that stays alive)."""
    key = (tuple(alpha), str(device))
    cached = getattr(module, "_flashprefill_head_alpha", None)
    if cached is None or cached[0] != key:
        cached = (key, torch.tensor(alpha, dtype=torch.float32, device=device))
        module._flashprefill_head_alpha = cached
    return cached[1]


def _skip_flash_kernel_preload(name: str) -> None:
    import transformers.modeling_utils as modeling_utils
    preload = getattr(modeling_utils, "lazy_import_flash_attention", None)
    if preload is None or getattr(preload, "flashprefill_names", None) is not None:
        if preload is not None:
            preload.flashprefill_names.add(name)
        return

    def preload_except_flashprefill(implementation, *args, **kwargs):
        if implementation is not None and implementation.split("|")[-1] in preload_except_flashprefill.flashprefill_names:
            return None
        return preload(implementation, *args, **kwargs)

    preload_except_flashprefill.flashprefill_names = {name}
    modeling_utils.lazy_import_flash_attention = preload_except_flashprefill


def register(name: str = "flashprefill") -> None:
    """Registers the attention function and its mask builder (FlashAttention's: None for a plain causal mask)."""
    from transformers import AttentionInterface
    AttentionInterface.register(name, flashprefill_attention_forward)
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, flash_attention_mask)
    except ImportError:  # older transformers build their masks without this registry
        pass
    if "flash" in name:
        _skip_flash_kernel_preload(name)


register()
