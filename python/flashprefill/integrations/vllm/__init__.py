"""flashprefill as a vLLM attention backend (vllm==0.26.0).

Installed with the Python package, registered through vLLM's ``vllm.general_plugins`` entry point, and
selected with ``--attention-backend CUSTOM`` (``LLM(..., attention_backend="CUSTOM")``): prefill and
extend segments of at least ``threshold`` keys go to flash_prefill on vLLM's paged KV cache, decodes and
short prefills to vLLM's FlashAttention, in the same step. Settings: :class:`routing.Settings`; the
README's "Serving with vLLM" section. Importing this package does not import vLLM (CI tests the plugin's
logic without it); :mod:`.backend` is the one module that does.
"""
from __future__ import annotations

VLLM_VERSION = "0.26.0"  # the release the adapter (backend.py) is written for
BACKEND_CLASS = "flashprefill.integrations.vllm.backend.FlashPrefillBackend"


def register() -> None:
    """vLLM's general-plugin hook (run in every vLLM process): make ``AttentionBackendEnum.CUSTOM`` this backend."""
    import vllm
    from vllm.logger import init_logger
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    if vllm.__version__.split("+")[0] != VLLM_VERSION:
        init_logger(__name__).warning("flashprefill's vLLM backend is written for vllm==%s; this is vllm %s",
                                      VLLM_VERSION, vllm.__version__)
    register_backend(AttentionBackendEnum.CUSTOM, BACKEND_CLASS)
