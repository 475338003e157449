"""The PyTorch reference of a whole Covo-Audio-Chat conversation: the parity oracle for every exported graph.

    chat = ReferenceChat("/path/to/release")
    turn = chat.reply(wav, sample_rate)       # text, audio codes, 24 kHz speech, per-stage timings
    turn = chat.reply(wav2, sample_rate)      # second turn, on the cached history
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from covo_edge.runtime.assistant import MODES
from covo_edge.runtime.errors import OptionError
from covo_edge.runtime.frontend import check_audio
from covo_edge.runtime.prompt import SYSTEM_PROMPT, turn_text
from covo_edge.runtime.sampling import FIRST_TURN, LATER_TURNS, Sampling

from . import audio
from .generate import generate
from .release import Release, load_covo, load_token2wav


@dataclass
class Turn:
    input_ids: np.ndarray
    tokens: np.ndarray  # every new id, the stop id included
    text_ids: np.ndarray  # new ids below len(tokenizer)
    codes: np.ndarray  # audio codes (id - len(tokenizer))
    text: str
    wav: np.ndarray | None  # 24 kHz float32, speech mode only
    inputs_embeds: np.ndarray  # [L, H] prompt embeddings, audio features in their slots
    step_logits: list[np.ndarray]  # raw logits that chose each token (with keep_logits)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


class ReferenceChat:
    def __init__(
        self,
        model_dir: str | Path,
        mode: str = "speech",
        voice: str | Path | None = None,
        dtype: torch.dtype = torch.float32,
        system_prompt: str = SYSTEM_PROMPT,
    ):
        if mode not in MODES:
            raise OptionError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.release = Release.open(model_dir)
        self.mode = mode
        self.system_prompt = system_prompt
        self.model = load_covo(self.release, dtype)
        self.tokenizer = Tokenizer.from_file(str(self.release.tokenizer_file))
        self.text_vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.audio_slot = self._token_id("<|cAUDIO|>")
        self.stop_id = self._token_id("<|im_end|>" if mode == "speech" else "<|endoftext|>")
        self.token2wav = load_token2wav(self.release) if mode == "speech" else None
        self.voice = self.release.voice(voice) if mode == "speech" else None
        self.reset()

    def _token_id(self, token: str) -> int:
        i = self.tokenizer.token_to_id(token)
        if i is None:
            raise ValueError(f"tokenizer has no {token}: not a Covo-Audio-Chat tokenizer")
        return i

    def reset(self) -> None:
        """Forget the conversation."""
        self.cache = self.model.new_cache()
        self.turns = 0

    @torch.inference_mode()
    def encode_audio(self, wav: np.ndarray, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor, int, dict]:
        """-> (mel [S,128,3000], adapter features [S*188, H], number of audio slots, timings)."""
        timings = {}
        t0 = time.perf_counter()
        wav24 = audio.to_model_rate(torch.from_numpy(check_audio(wav, sample_rate)), sample_rate)
        n_slots = audio.num_audio_tokens(wav24.shape[0])
        mel = audio.mel_segments(wav24)
        timings["frontend"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        hidden = self.model.encoder(mel.to(self.model.encoder.conv1.weight.dtype)).last_hidden_state
        timings["encoder"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        feats = self.model.audio_adapter(hidden).flatten(0, 1)
        timings["adapter"] = time.perf_counter() - t0
        return mel, feats, n_slots, timings

    @torch.inference_mode()
    def reply(
        self,
        wav: np.ndarray,
        sample_rate: int,
        *,
        sampling: Sampling | None = None,
        max_new_tokens: int = 2048,
        seed: int = 0,
        noise: torch.Tensor | None = None,
        force_tokens: list[int] | None = None,
        keep_logits: bool = False,
    ) -> Turn:
        """One spoken turn: answer `wav` given the conversation so far."""
        first = self.turns == 0
        sampling = sampling or (FIRST_TURN if first else LATER_TURNS)
        generator = torch.Generator().manual_seed(seed)
        _, feats, n_slots, timings = self.encode_audio(wav, sample_rate)
        ids = torch.tensor([self.tokenizer.encode(turn_text(n_slots, first, self.system_prompt)).ids])
        embeds = self.model.embed(ids, self.audio_slot, feats)
        gen = generate(
            self.model, embeds, ids, self.cache, self.stop_id, sampling, max_new_tokens, generator, force_tokens,
            keep_logits,
        )
        self.turns += 1
        timings["prefill"] = gen.prefill_s
        timings["decode"] = gen.decode_s
        timings["decode_per_token"] = gen.decode_s / max(len(gen.tokens) - 1, 1)
        tokens = np.asarray(gen.tokens, dtype=np.int64)
        text_ids = tokens[tokens < self.text_vocab]
        codes = tokens[tokens >= self.text_vocab] - self.text_vocab
        wav_out = None
        if self.mode == "speech":
            t0 = time.perf_counter()
            if noise is None:
                noise = self.token2wav.noise(len(codes), self.voice, generator)
            latents = self.token2wav.latents(torch.from_numpy(codes), self.voice, noise)
            timings["token2wav"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            wav_out = self.token2wav.vocode(latents).numpy()
            timings["vocoder"] = time.perf_counter() - t0
        return Turn(
            input_ids=ids[0].numpy(),
            tokens=tokens,
            text_ids=text_ids,
            codes=codes,
            text=self.tokenizer.decode(text_ids.tolist(), skip_special_tokens=True),
            wav=wav_out,
            inputs_embeds=embeds[0].numpy(),
            step_logits=[lg.numpy() for lg in gen.step_logits],
            timings=timings,
        )
