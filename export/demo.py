"""`covo-edge demo`: one spoken question answered end to end by the PyTorch reference, summarised in a
few lines (a random model's text is thousands of characters of noise)."""

from __future__ import annotations

import json
import sys

import numpy as np

from covo_edge.runtime.cli import shorten
from covo_edge.runtime.files import check_output_file, write_wav
from covo_edge.runtime.frontend import load_audio
from covo_edge.runtime.synthetic import synthetic_utterance

from .pipeline import ReferenceChat

def run_demo(model_dir: str, input_wav: str | None, output: str, mode: str = "speech",
             max_new_tokens: int = 60, seed: int = 0) -> int:
    """Returns 1 when a speech reply holds no audio codes (nothing to write), else 0."""
    if mode == "speech":
        check_output_file(output, "--output")
    wav, rate = (synthetic_utterance(), 16000) if input_wav is None else load_audio(input_wav)
    chat = ReferenceChat(model_dir, mode=mode)
    turn = chat.reply(wav, rate, max_new_tokens=max_new_tokens, seed=seed)
    slots = int(np.count_nonzero(turn.input_ids == chat.audio_slot))
    print(f"question: {wav.shape[-1] / rate:.2f} s -> {slots} audio slots in a {len(turn.input_ids)}-token prompt")
    print(f"reply: {len(turn.text_ids)} text ids, {len(turn.codes)} audio codes")
    print(f"text: {shorten(turn.text)}")
    print("timings_ms " + json.dumps({k: round(v * 1000, 1) for k, v in turn.timings.items()}))
    if mode != "speech":
        return 0
    if turn.codes.size == 0:
        print(f"covo-edge demo: the reply holds no audio codes, so there is no speech: {output} was not written",
              file=sys.stderr)
        return 1
    rate_out = chat.release.token2wav_config.sample_rate
    write_wav(output, turn.wav, rate_out)
    print(f"wrote {output}: {len(turn.wav) / rate_out:.2f} s at {rate_out} Hz")
    return 0
