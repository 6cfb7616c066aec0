"""The vLLM-facing adapter (written for vllm==0.26.0; a later vLLM API is a change here only).

FlashPrefillBackend is vLLM's FlashAttention backend with the same KV-cache layout, the same cache
writes (``do_kv_cache_update`` is inherited) and the same decode path; its metadata builder plans, once
per step, which requests go to flash_prefill (routing.py), and its forward sends those to
flash_prefill_paged on the paged cache and the rest to FlashAttention, in the same step.
"""
from __future__ import annotations

import dataclasses
import re
from typing import ClassVar, Optional

import torch
from vllm.config import get_current_vllm_config_or_none
from vllm.v1.attention.backend import AttentionCGSupport, AttentionType, CommonAttentionMetadata
from vllm.v1.attention.backends.flash_attn import (FlashAttentionBackend, FlashAttentionImpl, FlashAttentionMetadata,
                                                   FlashAttentionMetadataBuilder)

from . import routing


def _settings(vllm_config) -> routing.Settings:
    extra = getattr(vllm_config, "additional_config", None) or {}
    return routing.Settings.from_sources(overrides=extra.get("flashprefill") if isinstance(extra, dict) else None)


@dataclasses.dataclass
class FlashPrefillMetadata(FlashAttentionMetadata):
    # None: the whole batch goes to FlashAttention with this metadata.
    flashprefill_plan: Optional[routing.RoutePlan] = None


class FlashPrefillMetadataBuilder(FlashAttentionMetadataBuilder):
    # Full CUDA graphs only for uniform batches (decodes, speculative verification), which never reach
    # flash_prefill (min_query_len exceeds their length); mixed batches run attention eagerly (piecewise).
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.UNIFORM_BATCH

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        settings = _settings(vllm_config)
        spec = getattr(vllm_config, "speculative_config", None)
        uniform_len = 1 + (getattr(spec, "num_speculative_tokens", 0) or 0) if spec is not None else 1
        self.settings = dataclasses.replace(settings, min_query_len=max(settings.min_query_len, uniform_len + 1))

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> FlashAttentionMetadata:
        cm = common_attn_metadata
        seq_lens_cpu = cm.seq_lens_cpu_upper_bound
        if seq_lens_cpu is None:
            if cm.max_query_len < self.settings.min_query_len or cm.max_seq_len < self.settings.threshold:
                return super().build(common_prefix_len, cm, fast_build)
            seq_lens_cpu = cm.seq_lens.cpu()  # only without vLLM's host copy: a synchronisation
        plan = routing.plan_batch(cm.query_start_loc, cm.query_start_loc_cpu, cm.seq_lens, seq_lens_cpu,
                                  cm.block_table_tensor, cm.num_reqs, self.settings)
        if plan is None:
            return super().build(common_prefix_len, cm, fast_build)
        if plan.short is not None:
            short = plan.short
            plan.short_metadata = super().build(
                0,
                dataclasses.replace(cm, query_start_loc=short.query_start_loc,
                                    query_start_loc_cpu=short.query_start_loc_cpu, seq_lens=short.seq_lens,
                                    num_reqs=short.num_reqs, num_actual_tokens=short.num_tokens,
                                    max_query_len=short.max_query_len, max_seq_len=short.max_seq_len,
                                    block_table_tensor=short.block_table, seq_lens_cpu_upper_bound=short.seq_lens_cpu,
                                    _seq_lens_cpu=None, _num_computed_tokens_cpu=None,
                                    _num_computed_tokens_cache=None, _token_to_req_indices_cache=None,
                                    is_prefilling=None,
                                    positions=None, mm_req_doc_ranges=None, rswa_prefix_lens=None,
                                    dcp_local_seq_lens=None, dcp_local_seq_lens_cpu=None), fast_build)
        whole = super().build(0, cm, fast_build=True)  # for anything that reads the batch's metadata
        fields = {f.name: getattr(whole, f.name) for f in dataclasses.fields(FlashAttentionMetadata)}
        return FlashPrefillMetadata(**fields, flashprefill_plan=plan)

    def use_cascade_attention(self, *args, **kwargs) -> bool:
        return False  # a shared-prefix split would hide the long segments' own prefix from flash_prefill


class FlashPrefillImpl(FlashAttentionImpl):

    def __init__(self, num_heads, head_size, scale, num_kv_heads, alibi_slopes, sliding_window, kv_cache_dtype,
                 logits_soft_cap=None, attn_type=AttentionType.DECODER, kv_sharing_target_layer_name=None, sinks=None,
                 **kwargs):
        super().__init__(num_heads, head_size, scale, num_kv_heads, alibi_slopes, sliding_window, kv_cache_dtype,
                         logits_soft_cap, attn_type, kv_sharing_target_layer_name, sinks=sinks, **kwargs)
        if getattr(self, "dcp_world_size", 1) > 1:
            raise ValueError("flashprefill vLLM backend: decode context parallelism (--decode-context-parallel-size "
                             f"{self.dcp_world_size}) is not supported")
        reasons = routing.unsupported_reasons(head_size=head_size, alibi=alibi_slopes is not None,
                                              sliding_window=sliding_window, logits_soft_cap=logits_soft_cap,
                                              kv_cache_dtype=kv_cache_dtype, attn_type=str(attn_type),
                                              has_sink=sinks is not None)
        if reasons:
            raise ValueError("flashprefill vLLM backend (attention_backend='CUSTOM'): " + "; ".join(reasons))
        vllm_config = get_current_vllm_config_or_none()
        self.settings = _settings(vllm_config)
        self._hf_config = vllm_config.model_config.hf_config if vllm_config is not None else None
        self._alpha = None

    def _layer_alpha(self, layer, device):
        if self._alpha is None:
            from vllm.distributed import get_tensor_model_parallel_rank
            match = re.search(r"layers\.(\d+)\.", getattr(layer, "layer_name", ""))
            try:
                rank = get_tensor_model_parallel_rank()
            except AssertionError:  # no distributed state (a layer built outside an engine): one rank
                rank = 0
            alpha = routing.model_alpha(self._hf_config, int(match.group(1)) if match else None, self.num_heads,
                                        rank * self.num_heads, self.settings)
            # Per-head alphas live on the device once: no copy or synchronisation per call.
            self._alpha = alpha if isinstance(alpha, float) else torch.tensor(alpha, dtype=torch.float32,
                                                                                device=device)
        return self._alpha

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None,
                output_block_scale=None):
        plan = getattr(attn_metadata, "flashprefill_plan", None)
        if plan is None or self.attn_type != AttentionType.DECODER:
            return super().forward(layer, query, key, value, kv_cache, attn_metadata, output, output_scale,
                                   output_block_scale)
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("fused output quantization is not supported by the flashprefill backend")
        q = query.view(-1, self.num_heads, self.head_size)
        out = output.view(-1, self.num_heads, self.head_size)
        fa_forward = super().forward
        routing.forward(q, out, kv_cache, self.head_size, plan,
                        attend_short=lambda q_, out_, meta: fa_forward(layer, q_, None, None, kv_cache, meta, out_),
                        alpha=self._layer_alpha(layer, query.device), softmax_scale=self.scale, settings=self.settings,
                        layer_name=getattr(layer, "layer_name", ""))
        return output


class FlashPrefillBackend(FlashAttentionBackend):
    supported_dtypes: ClassVar[list] = list(routing.SUPPORTED_DTYPES)
    supported_kv_cache_dtypes: ClassVar[list] = ["auto", "float16", "bfloat16"]

    @staticmethod
    def get_name() -> str:
        return "CUSTOM"  # AttentionBackendEnum.CUSTOM, registered to this class

    @staticmethod
    def get_impl_cls():
        return FlashPrefillImpl

    @staticmethod
    def get_builder_cls():
        return FlashPrefillMetadataBuilder

    @staticmethod
    def get_supported_kernel_block_sizes() -> list:
        return list(routing.SUPPORTED_PAGE_SIZES)

    @classmethod
    def get_preferred_block_size(cls, default_block_size: int) -> int:
        """vLLM asks this only when --block-size is not given (a given size wins if supported)."""
        return _settings(get_current_vllm_config_or_none()).page_size

    @classmethod
    def supports_head_size(cls, head_size: int) -> bool:
        return head_size in routing.SUPPORTED_HEAD_SIZES

    @classmethod
    def supports_sliding_window(cls) -> bool:
        return False

    @classmethod
    def supports_non_causal(cls) -> bool:
        return False

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type == AttentionType.DECODER

    @classmethod
    def supports_sink(cls) -> bool:
        return False

    @classmethod
    def supports_mm_prefix(cls) -> bool:
        return False

    @classmethod
    def supports_per_head_quant_scales(cls) -> bool:
        return False

    @classmethod
    def supports_batch_invariance(cls) -> bool:
        return False

    @classmethod
    def validate_configuration(cls, head_size, dtype, kv_cache_dtype, block_size, use_mla, has_sink, use_sparse,
                               use_mm_prefix, use_per_head_quant_scales, device_capability, attn_type,
                               has_sliding_window=False, use_non_causal=False, **kwargs) -> list:
        """vLLM's checks, each reason naming the setting to change."""
        capability = (device_capability.major, device_capability.minor) if device_capability is not None else None
        return routing.unsupported_reasons(head_size=head_size, dtype=dtype, kv_cache_dtype=kv_cache_dtype,
                                           block_size=block_size, use_mla=use_mla, has_sink=has_sink,
                                           use_sparse=use_sparse, use_mm_prefix=use_mm_prefix,
                                           use_per_head_quant_scales=use_per_head_quant_scales,
                                           device_capability=capability, attn_type=str(attn_type),
                                           has_sliding_window=has_sliding_window, use_non_causal=use_non_causal,
                                           **{k: v for k, v in kwargs.items() if k in routing.OTHER_FEATURES})
