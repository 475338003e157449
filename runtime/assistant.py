"""The assistant: speech in, text + 24 kHz speech out, multi-turn, on exported artifacts (no torch).

    assistant = Assistant.load("artifacts/")
    reply = assistant.reply(wav, sample_rate)          # .text, .audio_codes, .audio (24 kHz float32)
    for chunk in assistant.stream(wav2, sample_rate):  # text deltas as they decode, then the audio
        ...
    assistant.reset()

A turn is four stages, each timed the same way: encode the audio (frontend, encoder, adapter), prefill
the prompt, decode the reply, speak it (token2wav, vocoder). DESIGN.md, "The runtime", says why.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from tokenizers import Tokenizer

from . import frontend
from .backends import Backend, BackendName, Device, load_backend
from .errors import ArtifactsError, ContextFullError, InputError, OptionError, at_least
from .manifest import GRAPH_IO, SPEECH_GRAPHS, Manifest
from .sampling import Sampling, pick, process_logits
from .token2wav import Token2Wav, Voice, manifest_voice

Mode = Literal["speech", "text"]
MODES: tuple[str, ...] = get_args(Mode)


@dataclass
class Reply:
    text: str
    text_ids: np.ndarray
    audio_codes: np.ndarray
    audio: np.ndarray | None  # 24 kHz float32; None in text mode, or when the reply holds no audio codes
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


@dataclass
class Debug:
    """Developer hooks for one turn (parity checks, diffing a device against the reference); a user of
    the assistant never needs them."""

    force_tokens: np.ndarray | None = None  # ids emitted instead of sampled (teacher forcing)
    noise: np.ndarray | None = None  # token2wav's x0 [1, factor * (P + N), z]
    dump: dict[str, np.ndarray] | None = None  # filled with the turn's intermediates (README, "--dump names")
    step_logits: int | Literal["all"] = 0  # per decode step into `dump`: 0 none, k the top k, "all" every logit

    def record(self, **arrays: Any) -> None:
        if self.dump is not None:
            self.dump.update({k: np.asarray(v) for k, v in arrays.items()})

    def record_steps(self, rows: list[np.ndarray]) -> None:
        """The decode steps' logits as asked: top-k ids and values (small), or the whole rows."""
        if self.dump is None or not self.step_logits:
            return
        logits = np.stack(rows) if rows else np.zeros((0, 0), np.float32)
        if self.step_logits == "all":
            self.dump["step_logits"] = logits
            return
        k = min(int(self.step_logits), logits.shape[1])
        top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        self.dump.update(step_top_ids=top, step_top_logits=np.take_along_axis(logits, top, 1))


def check_tokens(tokens: np.ndarray, vocab_size: int, where: str = "forced tokens") -> np.ndarray:
    """Ids to replay as int64 [N], or InputError naming what is wrong and the first bad id."""
    tokens = np.asarray(tokens)
    if tokens.dtype.kind not in "iu" or tokens.ndim != 1 or tokens.size == 0:
        raise InputError(f"{where} must be a non-empty 1-D array of integer ids, got {tokens.dtype} {tokens.shape}")
    bad = np.flatnonzero((tokens < 0) | (tokens >= vocab_size))
    if bad.size:
        raise InputError(f"{where}: id {tokens[bad[0]]} at index {bad[0]} is outside the vocabulary 0..{vocab_size - 1}")
    return tokens.astype(np.int64, copy=False)


class _Clock:
    """Seconds per stage; a stage entered several times (every decode step) adds up."""

    def __init__(self):
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0


class _TextStream:
    """Text deltas from ids one at a time, O(1) per id; an incomplete UTF-8 character waits for its rest."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.pending: list[int] = []
        self.shown = ""

    def push(self, token: int) -> str:
        self.pending.append(token)
        delta = self.tokenizer.decode(self.pending, skip_special_tokens=True)
        if delta.endswith("\ufffd"):
            return ""
        self.pending.clear()
        self.shown += delta
        return delta


class Assistant:
    """One conversation on one artifacts directory. Built by `Assistant.load`."""

    def __init__(self, artifacts: Path, manifest: Manifest, backend: Backend, mode: Mode, voice: Voice | None):
        self.artifacts = artifacts
        self.manifest = manifest
        self.backend = backend
        self.mode = mode
        self.voice = voice
        ids = manifest.tokenizer.ids
        self._tokenizer = load_tokenizer(artifacts / "tokenizer.json")
        self._code_offset = manifest.tokenizer.audio_code_offset
        self._audio_slot = ids["<|cAUDIO|>"]
        self._stop_id = ids["<|im_end|>" if mode == "speech" else "<|endoftext|>"]
        self._dtype = np.float16 if manifest.dtype == "float16" else np.float32
        self._token2wav = Token2Wav(backend, manifest) if mode == "speech" else None
        self._past_names = manifest.llm.past_names
        self._present_names = manifest.llm.present_names
        self._ones = np.ones((1, self.max_context), np.int64)  # attention mask: a view per step
        backend.prepare([g for g in GRAPH_IO if mode == "speech" or g not in SPEECH_GRAPHS])
        self.reset()

    @classmethod
    def load(cls, artifacts: str | Path, backend: BackendName = "onnxruntime", device: Device = "cpu",
             mode: Mode = "speech", voice: str | None = None) -> Assistant:
        """Open an artifacts directory written by `covo-edge export`: the manifest and every graph the mode
        needs are checked and loaded now, so the first turn pays for neither."""
        if mode not in MODES:
            raise OptionError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        artifacts = Path(artifacts)
        manifest = Manifest.load(artifacts)
        chosen = manifest_voice(artifacts, manifest, voice) if mode == "speech" else None
        return cls(artifacts, manifest, load_backend(backend, artifacts, manifest, device), mode, chosen)

    @property
    def max_context(self) -> int:
        return self.manifest.llm.max_context

    @property
    def context_length(self) -> int:
        """Tokens the conversation holds in the KV cache."""
        return self._length

    @property
    def turns(self) -> int:
        return self._turns

    def reset(self) -> None:
        """Forget the conversation (the KV cache and the turn count)."""
        llm = self.manifest.llm
        empty = np.zeros((1, llm.num_kv_heads, 0, llm.head_dim), self._dtype)
        self._past: list[Any] = [empty] * len(self._past_names)
        self._length = 0
        self._turns = 0

    def default_sampling(self) -> Sampling:
        """Upstream's rules: greedy on the first turn, sampling afterwards."""
        return self.manifest.sampling.first_turn if self._turns == 0 else self.manifest.sampling.later_turns

    def reply(self, wav: np.ndarray, sample_rate: int, *, greedy: bool | None = None, sampling: Sampling | None = None,
              max_new_tokens: int | None = None, seed: int | None = None, debug: Debug | None = None) -> Reply:
        """Answer one spoken turn; `stream` takes the same arguments."""
        for chunk in self.stream(wav, sample_rate, greedy=greedy, sampling=sampling, max_new_tokens=max_new_tokens,
                                 seed=seed, debug=debug):
            if chunk.reply is not None:
                return chunk.reply
        raise AssertionError("stream ended without a reply")

    def stream(self, wav: np.ndarray, sample_rate: int, *, greedy: bool | None = None,
               sampling: Sampling | None = None, max_new_tokens: int | None = None, seed: int | None = None,
               debug: Debug | None = None) -> Iterator[Chunk]:
        """Answer one spoken turn, yielding text deltas as they decode and the audio at the end.

        greedy: override the turn's default (greedy on turn 1 only); sampling: full control of the rules;
        max_new_tokens: cap on new ids (default from the manifest); seed: sampling and ODE noise.
        """
        s = sampling or self.default_sampling()
        if greedy is not None:
            s = s.but(greedy=bool(greedy))
        limit = at_least("max_new_tokens", self.manifest.sampling.max_new_tokens if max_new_tokens is None
                         else max_new_tokens, 1)
        if seed is not None:
            at_least("seed", seed, 0)
        debug = debug or Debug()
        if debug.force_tokens is not None:
            debug = replace(debug, force_tokens=check_tokens(debug.force_tokens, self.manifest.llm.vocab_size))
            limit = min(limit, len(debug.force_tokens))
        return self._turn(wav, sample_rate, s, limit, np.random.default_rng(seed), debug)

    def _turn(self, wav: np.ndarray, sample_rate: int, sampling: Sampling, limit: int, rng: np.random.Generator,
              debug: Debug) -> Iterator[Chunk]:
        clock = _Clock()
        n_slots, features = self._encode_audio(wav, sample_rate, clock, debug)
        ids = np.asarray(self._tokenizer.encode(self.manifest.prompt.render(n_slots, self._turns == 0)).ids, np.int64)
        self._check_room(len(ids))
        with clock("prefill"):
            logits = self._prefill(ids, features, debug)
        text = _TextStream(self._tokenizer)
        tokens: list[int] = []
        for tok in self._decode(logits, ids, sampling, limit, rng, clock, debug):
            tokens.append(tok)
            if tok < self._code_offset and tok != self._stop_id:
                delta = text.push(tok)
                if delta:
                    yield Chunk(text=delta)
        self._turns += 1
        tokens_a = np.asarray(tokens, np.int64)
        codes = tokens_a[tokens_a >= self._code_offset] - self._code_offset
        audio = self._speak(codes, rng, clock, debug) if self._token2wav is not None and codes.size else None
        text_ids = tokens_a[tokens_a < self._code_offset]
        clock.timings["decode_per_token"] = clock.timings.get("decode", 0.0) / max(len(tokens) - 1, 1)
        debug.record(tokens=tokens_a, audio_codes=codes)
        reply = Reply(
            text=self._tokenizer.decode(text_ids.tolist(), skip_special_tokens=True), text_ids=text_ids,
            audio_codes=codes, audio=audio, sample_rate=self.manifest.token2wav.sample_rate, tokens=tokens_a,
            finish_reason="stop" if tokens[-1] == self._stop_id else "length" if len(tokens) == limit else "context_full",
            timings=clock.timings,
        )
        yield Chunk(text=reply.text[len(text.shown):], audio=audio, reply=reply)

    def _encode_audio(self, wav: np.ndarray, sample_rate: int, clock: _Clock, debug: Debug) -> tuple[int, np.ndarray]:
        """Stage 1: the question's audio -> (number of <|cAUDIO|> slots, adapter frames [S*188, H])."""
        with clock("frontend"):
            wav24, n_slots, mel = frontend.prepare(wav, sample_rate)
        with clock("encoder"):
            hidden = self.backend.run("audio_encoder", {"mel": mel.astype(self._dtype)}, host=["hidden"])["hidden"]
        with clock("adapter"):
            features = self.backend.run("audio_adapter", {"hidden": hidden}, host=["features"])["features"]
            features = features.reshape(-1, features.shape[-1])
        debug.record(wav_24k=wav24, mel=mel, encoder_out=hidden, adapter_out=features)
        return n_slots, features

    def _check_room(self, n_prompt: int) -> None:
        if self._length + n_prompt + 1 > self.max_context:
            raise ContextFullError(
                f"the conversation holds {self._length} tokens and this turn's prompt {n_prompt}: more than the "
                f"{self.max_context}-token context. Call reset() to start a new conversation, or export with a "
                "larger --max-context"
            )

    def _prefill(self, ids: np.ndarray, features: np.ndarray, debug: Debug) -> np.ndarray:
        """Stage 2: the prompt's embeddings, the audio frames in its <|cAUDIO|> slots, into the KV cache."""
        embeds = self.backend.run("embed_tokens", {"input_ids": ids[None]}, host=["inputs_embeds"])["inputs_embeds"]
        slots = ids == self._audio_slot
        embeds[0, slots] = features[: int(slots.sum())].astype(embeds.dtype)
        logits = self._feed(embeds, len(ids))
        debug.record(input_ids=ids, inputs_embeds=embeds[0], prefill_logits=logits)
        return logits

    def _decode(self, logits: np.ndarray, ids: np.ndarray, sampling: Sampling, limit: int, rng: np.random.Generator,
                clock: _Clock, debug: Debug) -> Iterator[int]:
        """Stage 3: pick a token, feed it, repeat, until the stop id, `limit` ids or a full context. As
        upstream, the token that ends the turn is never fed: the next turn continues right before it."""
        seq = np.empty(len(ids) + limit, np.int64)  # the turn's ids, for the penalties
        seq[: len(ids)] = ids
        rows = []
        for step in range(limit):
            with clock("decode"):
                n = len(ids) + step
                if debug.force_tokens is not None:
                    tok = int(debug.force_tokens[step])
                else:
                    tok = pick(process_logits(logits, seq[:n], sampling), sampling, rng)
                seq[n] = tok
                if debug.step_logits:
                    rows.append(logits)
            yield tok
            if tok == self._stop_id or step + 1 == limit or self._length + 1 > self.max_context:
                break
            with clock("decode"):
                embeds = self.backend.run("embed_tokens", {"input_ids": np.array([[tok]], np.int64)})["inputs_embeds"]
                logits = self._feed(embeds, 1)
        debug.record_steps(rows)

    def _feed(self, embeds: Any, n_new: int) -> np.ndarray:
        """Append n_new positions to the KV cache; the last position's logits [V] (float32)."""
        total = self._length + n_new
        feeds = {
            "inputs_embeds": embeds,
            "attention_mask": self._ones[:, :total],
            "position_ids": np.arange(self._length, total, dtype=np.int64)[None],
            **dict(zip(self._past_names, self._past)),
        }
        out = self.backend.run("backbone", feeds, host=["logits"])
        self._past = [out[n] for n in self._present_names]
        self._length = total
        return out["logits"][0]

    def _speak(self, codes: np.ndarray, rng: np.random.Generator, clock: _Clock, debug: Debug) -> np.ndarray:
        """Stage 4: audio codes -> latents (token2wav) -> 24 kHz wav (vocoder)."""
        with clock("token2wav"):
            noise = debug.noise
            if noise is None:
                noise = rng.standard_normal(self._token2wav.noise_shape(len(codes), self.voice)).astype(np.float32)
            latents = self._token2wav.latents(codes, self.voice, noise)
        with clock("vocoder"):
            audio = self._token2wav.vocode(latents)
        debug.record(latents=latents, wav=audio)
        return audio


def load_tokenizer(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for unreadable files
        raise ArtifactsError(f"cannot read {path} ({str(e).splitlines()[0]}); restore it or re-run "
                             "`covo-edge export`") from None
