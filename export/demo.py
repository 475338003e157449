"""`covo-edge demo`: one spoken question answered end to end by the PyTorch reference."""

from __future__ import annotations

import json

import numpy as np

from covo_edge.runtime.chat import write_wav
from covo_edge.runtime.frontend import load_audio

from .pipeline import ReferenceChat


def synthetic_utterance(seconds: float = 3.0, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A voiced, syllable-modulated harmonic signal: speech-like enough to exercise every stage."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
    wav = 0.3 * voiced * syllables + 0.003 * rng.standard_normal(t.size)
    return wav.astype(np.float32)


def run_demo(model_dir: str, input_wav: str | None, output: str, mode: str = "speech",
             max_new_tokens: int = 60, seed: int = 0) -> None:
    if input_wav is None:
        wav, sr = synthetic_utterance(), 16000
    else:
        wav, sr = load_audio(input_wav)
    chat = ReferenceChat(model_dir, mode=mode)
    turn = chat.reply(wav, sr, max_new_tokens=max_new_tokens, seed=seed)
    print(f"input ids ({len(turn.input_ids)}), {np.count_nonzero(turn.input_ids == chat.audio_slot)} audio slots")
    print(f"text ids: {turn.text_ids.tolist()}")
    print(f"text: {turn.text!r}")
    print(f"audio codes ({len(turn.codes)}): {turn.codes.tolist()}")
    if turn.wav is not None:
        write_wav(output, turn.wav, chat.release.token2wav_config.sample_rate)
        print(f"wrote {output}: {len(turn.wav)} samples at {chat.release.token2wav_config.sample_rate} Hz")
    print("timings_ms " + json.dumps({k: round(v * 1000, 2) for k, v in turn.timings.items()}))
