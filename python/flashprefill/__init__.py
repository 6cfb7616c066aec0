"""flashprefill: FlashPrefill block-sparse prefill attention (Fan et al., 2026) for NumPy and PyTorch.

Layouts follow FlashAttention: ``q`` is ``[B, L_q, H_q, D]``, ``k`` and ``v`` are ``[B, L_kv, H_kv, D]``
(``H_q`` a multiple of ``H_kv``, GQA), causal with bottom-right alignment (``L_q <= L_kv`` is chunked
prefill against a cached prefix). Packed batches use :func:`flash_prefill_varlen`; a paged K/V cache
(vLLM's page pools and block table) :func:`flash_prefill_paged`. PyTorch tensors (CPU or CUDA, bf16 or
fp16; fp32 on the CPU) go through the ``torch.ops.flashprefill`` operators, which work under
``torch.compile`` and in CUDA graphs; NumPy arrays (float16 or float32) run on the CPU backend.
"""
from ._api import (FlashPrefillError, Layout, block_sparse_attention, cpu_kernel_variant, cuda_available, dense_attention,
                   flash_prefill, flash_prefill_paged, flash_prefill_varlen, make_structured_input, select_blocks)

__all__ = [
    "FlashPrefillError", "Layout", "block_sparse_attention", "cpu_kernel_variant", "cuda_available", "dense_attention",
    "flash_prefill", "flash_prefill_paged", "flash_prefill_varlen", "make_structured_input", "select_blocks",
]
__version__ = "0.1.0"
