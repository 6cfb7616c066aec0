"""The measurements: perplexity, agreement with dense attention, passkey retrieval, density, layer error."""
from __future__ import annotations

import math
import re
import time
from typing import Dict, List, Optional

import numpy as np
import torch

from . import methods as M
from . import selection as sel

TAIL = 1024  # positions whose next-token distributions are compared (KL, top-1)


@torch.no_grad()
def forward_stats(model, ids: torch.Tensor, tail: int = TAIL) -> dict:
    """Mean next-token NLL over the window and the log-probabilities of its last `tail` positions."""
    ids = ids.to(model.device)
    hidden = model.model(ids[None]).last_hidden_state[0]
    nll_sum, tail_logprobs = 0.0, None
    length = ids.shape[0]
    for start in range(0, length, 1024):
        logprobs = torch.log_softmax(model.lm_head(hidden[start:start + 1024]).float(), dim=-1)
        targets = ids[start + 1:start + 1 + logprobs.shape[0]]
        nll_sum -= logprobs[torch.arange(targets.shape[0], device=ids.device), targets].double().sum().item()
        if start + logprobs.shape[0] > length - tail:
            keep = logprobs[max(0, length - tail - start):]
            tail_logprobs = keep if tail_logprobs is None else torch.cat([tail_logprobs, keep])
    return {"nll": nll_sum / (length - 1), "tail": tail_logprobs}


def agreement(dense_tail: torch.Tensor, other_tail: torch.Tensor) -> dict:
    kl = (dense_tail.exp() * (dense_tail - other_tail)).sum(-1)
    top1 = (dense_tail.argmax(-1) == other_tail.argmax(-1)).float()
    return {"kl": kl.mean().item(), "top1": top1.mean().item()}


def run_method(model, method: M.Method, ids: torch.Tensor, capture: bool = False) -> dict:
    M.state.method, M.state.density = method, {}
    M.state.capture = {} if capture else None
    start = time.perf_counter()
    stats = forward_stats(model, ids)
    stats["seconds"] = time.perf_counter() - start
    stats["density_grid"] = density_grid(M.state.density) if method.sparse else None
    stats["captured"], M.state.capture = M.state.capture, None
    return stats


def density_grid(density: Dict[int, List[np.ndarray]]) -> Optional[np.ndarray]:
    """[layers, heads] kept fraction (mean over the calls of each layer); None when no layer called
    flashprefill (``default`` below the integration's threshold leaves the prefill to dense attention)."""
    if not density:
        return None
    layers = max(density) + 1
    heads = len(next(iter(density.values()))[0])
    grid = np.full((layers, heads), np.nan)
    for layer, records in density.items():
        grid[layer] = np.mean(records, axis=0)
    return grid


# ---- per-layer output error on captured q/k/v --------------------------------------------------------

def dense_reference(q, k, v, scale) -> torch.Tensor:
    """fp32 dense causal attention of one layer's captured inputs ([L, H, D])."""
    group = q.shape[1] // k.shape[1]
    qf, kf, vf = (x.float().transpose(0, 1) for x in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(qf, kf.repeat_interleave(group, 0), vf.repeat_interleave(group, 0),
                                                           is_causal=True, scale=scale)
    return out.transpose(0, 1)


class _LayerStub:
    """What the integration's attention function reads from a transformers attention module."""

    is_causal, training = True, False

    def __init__(self, layer_idx, config):
        self.layer_idx, self.config = layer_idx, config
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads


@torch.no_grad()
def layer_errors(captured: dict, methods: List[M.Method], scale: float, config, device: str) -> dict:
    """Relative Frobenius error against fp32 dense attention, per layer, of each method's attention output
    (and of bf16 SDPA, the dtype's floor) on the q/k/v that the dense model produced."""
    errors = {m.label: [] for m in methods}
    errors["sdpa-bf16"] = []
    for layer in sorted(captured):
        q, k, v = (x.to(device) for x in captured[layer])
        ref = dense_reference(q, k, v, scale)
        norm = ref.norm().item()
        for m in methods + [M.Method("sdpa", label="sdpa-bf16")]:
            M.state.method, M.state.density = m, {}
            out, _ = M.attention_forward(_LayerStub(layer, config), q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                         v.transpose(0, 1)[None], None, scaling=scale)
            errors[m.label].append(((out[0].float() - ref).norm().item()) / norm)
    return errors


# ---- passkey retrieval ---------------------------------------------------------------------------

INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.\n\n")
NEEDLE = "\n\nThe pass key is {key}. Remember it. {key} is the pass key.\n\n"
QUESTION = "\n\nWhat is the pass key? The pass key is"


def passkey_prompt(tokenizer, filler: torch.Tensor, length: int, depth: float, key: int) -> torch.Tensor:
    encode = lambda text: tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    intro, needle, question = encode(INTRO), encode(NEEDLE.format(key=key)), encode(QUESTION)
    fill = length - len(intro) - len(needle) - len(question)
    at = int(depth * fill)
    return torch.cat([intro, filler[:at], needle, filler[at:fill], question])


@torch.no_grad()
def passkey_answer(model, tokenizer, ids: torch.Tensor, new_tokens: int = 8) -> str:
    ids = ids.to(model.device)[None]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def passkey_correct(answer: str, key: int) -> bool:
    digits = re.findall(r"\d+", answer)
    return bool(digits) and digits[0] == str(key)


def perplexity_change(nll_method: float, nll_dense: float) -> float:
    return math.exp(nll_method - nll_dense) - 1.0
