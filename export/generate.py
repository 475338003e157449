"""Reference decoding in torch: upstream's logits processing (transformers generate + Covo's windowed
penalty) and the prefill/decode loop over a KV cache. The runtime's numpy twins live in runtime/sampling.py."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from covo_edge.runtime.sampling import Sampling

from .model import CovoAudio


def reference_penalize(scores: torch.Tensor, ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """Once per distinct id: negative scores times the penalty, positive ones divided by it."""
    if penalty == 1.0 or ids.numel() == 0:
        return scores
    ids = ids.unique()
    picked = scores[ids]
    scores = scores.clone()
    scores[ids] = torch.where(picked < 0, picked * penalty, picked / penalty)
    return scores


def reference_process_logits(logits: torch.Tensor, seq: torch.Tensor, s: Sampling) -> torch.Tensor:
    """Raw logits [V] of the next position + the turn's ids so far -> scores to pick from."""
    scores = reference_penalize(logits.float(), seq, s.repetition_penalty)
    if s.window > 0:
        scores = reference_penalize(scores, seq[-s.window :], s.window_penalty)
    if s.greedy:
        return scores
    scores = scores / s.temperature
    if s.top_k > 0:
        kth = torch.topk(scores, min(s.top_k, scores.numel())).values[-1]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if s.top_p < 1.0:
        sorted_scores, order = torch.sort(scores)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        drop = cum <= 1 - s.top_p
        drop[-1] = False
        scores = scores.masked_fill(drop.scatter(0, order, drop), -float("inf"))
    return scores


def reference_pick(scores: torch.Tensor, s: Sampling, generator: torch.Generator | None) -> int:
    if s.greedy:
        return int(scores.argmax())
    return int(torch.multinomial(scores.softmax(-1), 1, generator=generator))


@dataclass
class Generation:
    tokens: list[int]
    stopped: bool  # ended on the stop id (else on max_new_tokens or the end of forced tokens)
    step_logits: list[torch.Tensor] = field(default_factory=list)  # raw logits that chose each token
    prefill_s: float = 0.0
    decode_s: float = 0.0


@torch.inference_mode()
def generate(
    model: CovoAudio,
    inputs_embeds: torch.Tensor,
    prompt_ids: torch.Tensor,
    cache,
    stop_id: int,
    sampling: Sampling,
    max_new_tokens: int,
    generator: torch.Generator | None = None,
    force_tokens: Sequence[int] | None = None,
    keep_logits: bool = False,
) -> Generation:
    """Prefill the prompt, then decode one token at a time until the stop id.

    As upstream, the token that ends the turn is never fed through the model: the cache ends just
    before it, and the next turn's text begins with `\\n<|im_start|>user`. With `force_tokens`, those
    ids are emitted instead of sampled (teacher forcing), so every step's logits can be compared.
    """
    t0 = time.perf_counter()
    logits = model(inputs_embeds, cache)[0, -1]
    out = Generation(tokens=[], stopped=False, prefill_s=time.perf_counter() - t0)
    seq = prompt_ids.reshape(-1).clone()
    limit = max_new_tokens if force_tokens is None else min(max_new_tokens, len(force_tokens))
    embed = model.llm.get_input_embeddings()
    t0 = time.perf_counter()
    for step in range(limit):
        if keep_logits:
            out.step_logits.append(logits.clone())
        if force_tokens is None:
            tok = reference_pick(reference_process_logits(logits, seq, sampling), sampling, generator)
        else:
            tok = int(force_tokens[step])
        out.tokens.append(tok)
        seq = torch.cat([seq, torch.tensor([tok])])
        if tok == stop_id:
            out.stopped = True
            break
        if step + 1 < limit:
            logits = model(embed(torch.tensor([[tok]])), cache)[0, -1]
    out.decode_s = time.perf_counter() - t0
    return out
