"""Upstream's decoding rules in numpy: repetition penalty over the turn's ids, Covo's windowed penalty
over the last 8, then (sampling only) temperature, top-k, top-p, and a draw from the softmax."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Sampling:
    """Order as in transformers' generate: repetition penalty over the turn's ids, the windowed penalty
    over the last `window` ids, then temperature, top-k, top-p (sampling only)."""

    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.05
    window_penalty: float = 1.05
    window: int = 8

    @classmethod
    def from_dict(cls, d: dict) -> Sampling:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def but(self, **changes) -> Sampling:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


FIRST_TURN = Sampling()  # upstream: greedy
LATER_TURNS = Sampling(greedy=False, temperature=0.5, top_k=50, top_p=0.9)


def penalize(scores: np.ndarray, ids: np.ndarray, penalty: float) -> None:
    """In place, once per distinct id: negative scores times the penalty, positive ones divided by it."""
    if penalty == 1.0 or ids.size == 0:
        return
    ids = np.unique(ids)
    picked = scores[ids]
    scores[ids] = np.where(picked < 0, picked * np.float32(penalty), picked / np.float32(penalty))


def process_logits(logits: np.ndarray, seq: np.ndarray, s: Sampling) -> np.ndarray:
    """Raw logits [V] of the next position + the turn's ids so far -> scores to pick from (a new array)."""
    scores = np.array(logits, dtype=np.float32)
    penalize(scores, seq, s.repetition_penalty)
    if s.window > 0:
        penalize(scores, seq[-s.window :], s.window_penalty)
    if s.greedy:
        return scores
    scores /= np.float32(s.temperature)
    if 0 < s.top_k < scores.size:
        kth = np.partition(scores, -s.top_k)[-s.top_k]
        scores[scores < kth] = -np.inf
    if s.top_p < 1.0:
        order = np.argsort(scores, kind="stable")
        ordered = scores[order]
        p = np.exp(ordered - ordered[-1])
        drop = np.cumsum(p / p.sum()) <= 1 - s.top_p
        drop[-1] = False
        scores[order[drop]] = -np.inf
    return scores


def pick(scores: np.ndarray, s: Sampling, rng: np.random.Generator) -> int:
    if s.greedy:
        return int(np.argmax(scores))
    p = np.exp(scores.astype(np.float64) - scores.max())
    return int(rng.choice(scores.size, p=p / p.sum()))
