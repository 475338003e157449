"""Made-up inputs: a speech-like question (the tiny release's example, the demo's and the bench's input) and a
reply in the released model's token pattern (what bench and the accuracy report force)."""

from __future__ import annotations

import numpy as np


def synthetic_utterance(seconds: float = 3.0, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A voiced, syllable-modulated harmonic signal with breath noise: speech-like enough to exercise every
    stage (the encoder sees formant-like structure, not silence or a pure tone)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
    wav = 0.3 * voiced * syllables + 0.003 * rng.standard_normal(t.size)
    return wav.astype(np.float32)


def interleaved_reply(steps: int, code_offset: int, num_codes: int, seed: int = 0) -> np.ndarray:
    """`steps` ids: 5 text ids, then 15 audio codes, repeated (the released model's output pattern)."""
    rng = np.random.default_rng(seed)
    text = rng.integers(100, min(20100, code_offset), steps)
    codes = code_offset + rng.integers(0, num_codes, steps)
    return np.where(np.arange(steps) % 20 < 5, text, codes).astype(np.int64)
