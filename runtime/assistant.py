"""The assistant: speech in, text + 24 kHz speech out, multi-turn, on exported artifacts (no torch).

    assistant = Assistant.load("artifacts/")
    reply = assistant.reply(wav, sample_rate)          # .text, .audio_codes, .audio (24 kHz float32)
    for chunk in assistant.stream(wav2, sample_rate):  # text deltas as they decode, then the audio
        ...
    assistant.reset()
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from . import frontend
from .backends import load_backend
from .manifest import Manifest
from .sampling import Sampling, pick, process_logits
from .token2wav import Token2Wav, Voice, manifest_voice

MODES = ("speech", "text")


class ContextFullError(ValueError):
    """The conversation no longer fits the model's context."""


@dataclass
class Reply:
    text: str
    text_ids: np.ndarray
    audio_codes: np.ndarray
    audio: np.ndarray | None  # 24 kHz float32 (speech mode)
    sample_rate: int
    tokens: np.ndarray  # every new id, the stop id included
    finish_reason: str  # "stop" | "length" | "context_full"
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


@dataclass
class Chunk:
    """One streamed piece: a text delta, or (at the end, in speech mode) the reply's audio."""

    text: str = ""
    audio: np.ndarray | None = None
    reply: Reply | None = None  # set on the last chunk


class Assistant:
    def __init__(self, artifacts: Path, manifest: Manifest, backend, mode: str, voice: Voice | None):
        self.artifacts = artifacts
        self.manifest = manifest
        self.backend = backend
        self.mode = mode
        self.voice = voice
        tok = manifest.tokenizer
        self.tokenizer = Tokenizer.from_file(str(artifacts / "tokenizer.json"))
        self.text_vocab = int(tok["len"])
        self.audio_slot = int(tok["ids"]["<|cAUDIO|>"])
        self.stop_id = int(tok["ids"]["<|im_end|>" if mode == "speech" else "<|endoftext|>"])
        self.max_context = int(manifest.llm["max_context"])
        self.dtype = np.float16 if manifest.dtype == "float16" else np.float32
        self.token2wav = Token2Wav(backend, manifest) if mode == "speech" else None
        self.kv_names = [t.name for t in manifest.graphs["backbone"].inputs[3:]]
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.kv_names]
        self.ones = np.ones((1, self.max_context), np.int64)  # attention mask: a view per step
        graphs = ["audio_encoder", "audio_adapter", "embed_tokens", "backbone"]
        if mode == "speech":
            graphs += ["token2latent_codes", "token2latent_field", "vocoder"]
        backend.prepare(graphs)
        self.reset()

    @classmethod
    def load(cls, artifacts: str | Path, backend: str = "onnxruntime", device: str = "cpu",
             mode: str = "speech", voice: str | None = None) -> Assistant:
        """Open an artifacts directory written by `covo-edge export`; graphs load on first use."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        artifacts = Path(artifacts)
        manifest = Manifest.load(artifacts)
        chosen = manifest_voice(artifacts, manifest, voice) if mode == "speech" else None
        return cls(artifacts, manifest, load_backend(backend, artifacts, manifest, device), mode, chosen)

    def reset(self) -> None:
        """Forget the conversation (the KV cache and the turn count)."""
        llm = self.manifest.llm
        empty = np.zeros((1, llm["num_kv_heads"], 0, llm["head_dim"]), self.dtype)
        self.past: list[Any] = [empty] * (2 * llm["num_layers"])
        self.length = 0
        self.turns = 0

    def sampling(self) -> Sampling:
        """Upstream's defaults: greedy on the first turn, sampling afterwards."""
        key = "first_turn" if self.turns == 0 else "later_turns"
        return Sampling.from_dict(self.manifest.sampling[key])

    def prompt(self, n_slots: int) -> np.ndarray:
        p = self.manifest.prompt
        template = p["first_turn"] if self.turns == 0 else p["later_turn"]
        text = template.replace("{system}", p["system"]).replace("{audio}", p["audio_slot"] * n_slots)
        return np.asarray(self.tokenizer.encode(text).ids, dtype=np.int64)

    def _backbone(self, embeds: Any, n_new: int) -> np.ndarray:
        """Append n_new positions to the cache; returns the last position's logits [V] (float32)."""
        total = self.length + n_new
        feeds = {
            "inputs_embeds": embeds,
            "attention_mask": self.ones[:, :total],
            "position_ids": np.arange(self.length, total, dtype=np.int64)[None],
            **dict(zip(self.kv_names, self.past)),
        }
        out = self.backend.run("backbone", feeds, host=["logits"])
        self.past = [out[n] for n in self.present_names]
        self.length = total
        return out["logits"][0]

    def _embed(self, ids: np.ndarray, host: bool) -> Any:
        out = self.backend.run("embed_tokens", {"input_ids": ids[None]}, host=["inputs_embeds"] if host else [])
        return out["inputs_embeds"]

    def _turn(self, wav: np.ndarray, sample_rate: int, sampling: Sampling, max_new_tokens: int, seed: int | None,
              noise: np.ndarray | None, force_tokens: np.ndarray | None, dump: dict | None) -> Iterator[Chunk]:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        wav24, n_slots, mel = frontend.prepare(wav, sample_rate)
        timings["frontend"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        hidden = self.backend.run("audio_encoder", {"mel": mel.astype(self.dtype)}, host=["hidden"])["hidden"]
        timings["encoder"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        feats = self.backend.run("audio_adapter", {"hidden": hidden}, host=["features"])["features"]
        feats = feats.reshape(-1, feats.shape[-1])
        timings["adapter"] = time.perf_counter() - t0
        ids = self.prompt(n_slots)
        if self.length + len(ids) + 1 > self.max_context:
            raise ContextFullError(
                f"the conversation holds {self.length} tokens and this turn's prompt {len(ids)}: more than the "
                f"{self.max_context}-token context. Call reset() to start a new conversation, or export with a "
                "larger --max-context"
            )
        t0 = time.perf_counter()
        embeds = self._embed(ids, host=True)
        slots = ids == self.audio_slot
        embeds[0, slots] = feats[: int(slots.sum())].astype(embeds.dtype)
        logits = self._backbone(embeds, len(ids))
        timings["prefill"] = time.perf_counter() - t0
        if dump is not None:
            dump.update(wav_24k=wav24, mel=mel, encoder_out=hidden, adapter_out=feats, input_ids=ids,
                        inputs_embeds=embeds[0], prefill_logits=logits)
        rng = np.random.default_rng(seed)
        limit = max_new_tokens if force_tokens is None else min(max_new_tokens, len(force_tokens))
        seq = np.empty(len(ids) + limit, np.int64)  # the turn's ids, for the penalties; filled as it grows
        seq[: len(ids)] = ids
        tokens: list[int] = []
        step_logits = []
        finish = "length"
        shown = ""  # text already yielded
        pending: list[int] = []  # text ids not yet yielded (an incomplete UTF-8 character waits here)
        t0 = time.perf_counter()
        for step in range(limit):
            if dump is not None:
                step_logits.append(logits)
            n = len(ids) + step
            tok = pick(process_logits(logits, seq[:n], sampling), sampling, rng) if force_tokens is None else int(force_tokens[step])
            tokens.append(tok)
            seq[n] = tok
            if tok < self.text_vocab and tok != self.stop_id:
                pending.append(tok)
                delta = self.tokenizer.decode(pending, skip_special_tokens=True)
                if not delta.endswith("\ufffd"):  # decode only what is new: O(1) per token
                    pending.clear()
                    if delta:
                        shown += delta
                        yield Chunk(text=delta)
            if tok == self.stop_id:
                finish = "stop"
                break
            if step + 1 == limit:
                break
            if self.length + 1 > self.max_context:
                finish = "context_full"
                break
            # Not the last token: feed it (as upstream, the token that ends a turn is never fed).
            logits = self._backbone(self._embed(np.array([tok], np.int64), host=False), 1)
        timings["decode"] = time.perf_counter() - t0
        timings["decode_per_token"] = timings["decode"] / max(len(tokens) - 1, 1)
        self.turns += 1
        tokens_a = np.asarray(tokens, np.int64)
        text_ids = tokens_a[tokens_a < self.text_vocab]
        codes = tokens_a[tokens_a >= self.text_vocab] - self.text_vocab
        audio = None
        if self.token2wav is not None:
            t0 = time.perf_counter()
            if noise is None:
                noise = rng.standard_normal(self.token2wav.noise_shape(len(codes), self.voice)).astype(np.float32)
            latents = self.token2wav.latents(codes, self.voice, noise)
            timings["token2wav"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            audio = self.token2wav.vocode(latents)
            timings["vocoder"] = time.perf_counter() - t0
            if dump is not None:
                dump.update(latents=latents, wav=audio)
        if dump is not None:
            dump.update(tokens=tokens_a, audio_codes=codes,
                        step_logits=np.stack(step_logits) if step_logits else np.zeros((0, 0), np.float32))
        reply = Reply(
            text=self.tokenizer.decode(text_ids.tolist(), skip_special_tokens=True), text_ids=text_ids,
            audio_codes=codes, audio=audio, sample_rate=int(self.manifest.token2wav["sample_rate"]),
            tokens=tokens_a, finish_reason=finish, timings=timings,
        )
        yield Chunk(text=reply.text[len(shown):], audio=audio, reply=reply)

    def stream(self, wav: np.ndarray, sample_rate: int, *, greedy: bool | None = None,
               sampling: Sampling | None = None, max_new_tokens: int | None = None, seed: int | None = None,
               noise: np.ndarray | None = None, force_tokens: np.ndarray | None = None,
               dump: dict | None = None) -> Iterator[Chunk]:
        """Answer one spoken turn, yielding text deltas as they decode and the audio at the end."""
        s = sampling or self.sampling()
        if greedy is not None:
            s = s.but(greedy=greedy)
        limit = max_new_tokens or int(self.manifest.sampling.get("max_new_tokens", 2048))
        yield from self._turn(wav, sample_rate, s, limit, seed, noise, force_tokens, dump)

    def reply(self, wav: np.ndarray, sample_rate: int, **kwargs) -> Reply:
        """Answer one spoken turn (see `stream` for the options)."""
        for chunk in self.stream(wav, sample_rate, **kwargs):
            if chunk.reply is not None:
                return chunk.reply
        raise AssertionError("stream ended without a reply")
