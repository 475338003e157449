"""The assistant: speech in, text + 24 kHz speech out, multi-turn, on exported artifacts (no torch).

    assistant = Assistant.load("artifacts/")
    reply = assistant.reply(wav, sample_rate)          # .text, .audio_codes, .audio (24 kHz float32)
    for chunk in assistant.stream(wav2, sample_rate):  # text deltas as they decode, then the audio
        ...
    assistant.truncate(audio_ms)                       # the user heard only this much of the last reply
    assistant.reset()

What is loaded once (graphs, tokenizer, voices and their streaming caches, the system prompt's KV cache)
is a `Model`; each `Conversation` owns only its KV cache, length and turn count, so many conversations
share one model (`model.conversation()`), from several threads: the model runs one graph call at a time.
`Assistant` is one model with one conversation.

A turn is four stages, each timed the same way: encode the audio (frontend, encoder, adapter), prefill
the prompt, decode the reply, speak it (token2wav, vocoder). Speaking is done whole after the decode
(`token2wav="exact"`, upstream's computation) or chunk by chunk while it runs ("streaming", audio
within about a second). DESIGN.md, "The runtime" and "Streaming speech", says why.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from tokenizers import Tokenizer

from . import frontend
from .backends import Backend, BackendName, Device, load_backend
from .batching import DecodeBatch
from .errors import ArtifactsError, ContextFullError, InputError, OptionError, at_least
from .manifest import GRAPH_IO, SPEECH_GRAPHS, Manifest
from .sampling import Sampling, pick, process_logits
from .streaming import SpeechStream, Streaming, VocoderStream, voice_cache
from .token2wav import NoiseTape, Token2Wav, Voice, manifest_voice

Mode = Literal["speech", "text"]
MODES: tuple[str, ...] = get_args(Mode)
Token2WavMode = Literal["exact", "streaming"]
TOKEN2WAV_MODES: tuple[str, ...] = get_args(Token2WavMode)
_NO_AUDIO = np.zeros(0, np.float32)  # a decode step that completed no chunk
PREFILL_CHUNK = 256  # positions per prefill call when conversations share a decode batch (the export's opt)


@dataclass
class Reply:
    text: str
    text_ids: np.ndarray
    audio_codes: np.ndarray
    audio: np.ndarray | None  # 24 kHz float32; None in text mode, or when the reply holds no audio codes
    sample_rate: int
    tokens: np.ndarray  # every new id, the stop id included
    finish_reason: str  # "stop" | "length" | "context_full" | "cancelled"
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, first_text and first_audio
    alignment: np.ndarray | None = None  # per token: the reply's audio samples that must play before it is heard
    prompt_tokens: int = 0  # ids this turn added to the context before the reply (the system prompt's not counted)
    audio_slots: int = 0  # of them, the question's audio frames


def audio_alignment(tokens: np.ndarray, code_offset: int, samples_per_code: int, lead: int) -> np.ndarray:
    """Per token, the sample of the reply's audio by which it has been heard: an audio code when its own
    samples have played (code j ends at samples_per_code * (j + 1) - lead), a text id with the next code
    (the text rides on the speech that follows it), anything after the last code at the audio's end."""
    codes = np.flatnonzero(tokens >= code_offset)
    if not len(codes):
        return np.zeros(len(tokens), np.int64)
    ends = samples_per_code * np.arange(1, len(codes) + 1, dtype=np.int64) - lead
    return np.append(ends, ends[-1])[np.searchsorted(codes, np.arange(len(tokens)))]


class Cancel:
    """Set from anywhere (another thread, a server's event loop) to end a running turn within one decode
    step or one token2wav chunk; the turn then ends as `cancelled`, its history kept up to the cut."""

    def __init__(self):
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


@dataclass
class Chunk:
    """One streamed piece: a text delta or new 24 kHz samples (in order: all chunks' audio concatenated is
    the reply's audio); the last chunk also carries the whole reply."""

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
        top = np.argpartition(-logits, k - 1, axis=1)[:, :k]  # the k best, then in order: no full sort of V
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(logits, top, 1), axis=1, kind="stable"), 1)
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
    """Seconds per stage; a stage entered several times (every decode step) adds up. `mark` records when
    something first happened, since the turn began (the end of the user's question), and how far each
    stage had got by then (`first_audio.decode`: the decode time before the first audio)."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self.stages: list[str] = []
        self.start = time.perf_counter()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        if stage not in self.timings:
            self.stages.append(stage)
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0

    def mark(self, event: str) -> None:
        if event not in self.timings:
            self.timings[event] = time.perf_counter() - self.start
            self.timings.update({f"{event}.{stage}": self.timings[stage] for stage in self.stages})


@dataclass
class _Prefix:
    """The system prompt's ids, embeddings and KV cache (one array or device value per tensor)."""

    ids: np.ndarray
    embeds: np.ndarray
    past: list[Any]


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


class _FirstComeLock:
    """A lock taken in the order it was asked for. A plain lock lets the thread that releases it take it
    again at once, so a long prefill's chunks could run back to back while a batched decode step waits."""

    def __init__(self):
        self._cv = threading.Condition()
        self._next = self._serving = 0

    def __enter__(self) -> None:
        with self._cv:
            ticket, self._next = self._next, self._next + 1
            self._cv.wait_for(lambda: self._serving == ticket)

    def __exit__(self, *exc: object) -> None:
        with self._cv:
            self._serving += 1
            self._cv.notify_all()


class _Serialized:
    """A backend whose graph calls run one at a time, in the order they come, whichever conversation or thread
    makes them: a backend session (and a GPU stream) is one worker, and every call already uses all of its
    threads. `waited` adds up the seconds calls spent queued behind another conversation's."""

    def __init__(self, backend: Backend):
        self.inner = backend
        self.lock = _FirstComeLock()
        self.waited = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def prepare(self, graphs: Iterable[str]) -> None:
        with self.lock:
            self.inner.prepare(graphs)

    def run(self, graph: str, feeds: Mapping[str, Any], host: Iterable[str] = ()) -> dict[str, Any]:
        t0 = time.perf_counter()
        with self.lock:
            self.waited += time.perf_counter() - t0
            return self.inner.run(graph, feeds, host)

    def to_host(self, value: Any) -> np.ndarray:
        with self.lock:
            return self.inner.to_host(value)


class Model:
    """What is loaded once and shared by every conversation: the manifest, the backend and its graphs, the
    tokenizer, the voices with their tables and streaming caches, the system prompt's KV cache. Built by
    `Model.load`; `conversation()` opens a conversation on it, which costs only that conversation's KV cache."""

    def __init__(self, artifacts: Path, manifest: Manifest, backend: Backend, mode: Mode,
                 streaming: Streaming = Streaming(), max_batch: int = 1):
        self.artifacts = artifacts
        self.manifest = manifest
        self.backend = _Serialized(backend)
        self.mode = mode
        self.streaming = streaming
        ids = manifest.tokenizer.ids
        self.tokenizer = load_tokenizer(artifacts / "tokenizer.json")
        self.code_offset = manifest.tokenizer.audio_code_offset
        self.audio_slot = ids["<|cAUDIO|>"]
        self.stop_id = ids["<|im_end|>" if mode == "speech" else "<|endoftext|>"]
        self.dtype = np.float16 if manifest.dtype == "float16" else np.float32
        self.token2wav = Token2Wav(self.backend, manifest) if mode == "speech" else None
        self.ones = np.ones((1, self.max_context), np.int64)  # attention mask: a view per step
        self.backend.prepare([g for g in GRAPH_IO if mode == "speech" or g not in SPEECH_GRAPHS])
        self._voices: dict[str, tuple[Voice, Any]] = {}
        self._voices_lock = threading.Lock()
        if mode == "speech":
            self.voice()  # the default voice's tables and cache for streamed speech, so no turn waits for them
        self.prefix = self._system_prompt()
        # Conversations decoding at once step together (one backbone call for all); 1 runs each alone.
        self.batch = DecodeBatch(self.feed_batch, self.backend.to_host, at_least("max_batch", max_batch, 1),
                                 self.max_context) if max_batch > 1 else None

    @classmethod
    def load(cls, artifacts: str | Path, backend: BackendName = "onnxruntime", device: Device = "cpu",
             mode: Mode = "speech", streaming: Streaming = Streaming(), engines: str | Path | None = None,
             max_batch: int = 1) -> Model:
        """Open an artifacts directory written by `covo-edge export`: the manifest and every graph the mode
        needs are checked and loaded now, the default voice's cache for streamed speech computed and the
        system prompt prefilled, so the first turn pays for none of it. `streaming` sets the chunk schedule
        of streamed speech; `engines` is the folder `covo-edge build` wrote, for backend="tensorrt";
        `max_batch` > 1 runs the decode steps of up to that many concurrent conversations as one call
        (`covo_edge.runtime.batching`): faster in aggregate, the same answers."""
        if mode not in MODES:
            raise OptionError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        artifacts = Path(artifacts)
        manifest = Manifest.load(artifacts)
        return cls(artifacts, manifest, load_backend(backend, artifacts, manifest, device, engines), mode, streaming,
                   max_batch)

    @property
    def max_context(self) -> int:
        return self.manifest.llm.max_context

    def voice(self, name: str | None = None) -> Voice:
        """A voice of the artifacts (default: the first exported), its streaming cache computed once."""
        return self._voice(name)[0]

    def voice_cache(self, voice: Voice) -> Any:
        return self._voice(voice.name)[1]

    def _voice(self, name: str | None) -> tuple[Voice, Any]:
        name = name or next(iter(self.manifest.voices), None)
        with self._voices_lock:
            if name not in self._voices:
                voice = manifest_voice(self.artifacts, self.manifest, name)
                self._voices[voice.name] = (voice, voice_cache(self.token2wav, voice, self.streaming.prompt_frames))
            return self._voices[name]

    def conversation(self, voice: str | None = None) -> Conversation:
        """A new conversation on this model, spoken in `voice` (speech mode; default: the first exported)."""
        return Conversation(self, self.voice(voice) if self.mode == "speech" else None)

    def _system_prompt(self) -> _Prefix:
        """Every conversation's first turn starts with the same ids (the system prompt and the template up
        to the question's audio): their keys and values are computed once, here, and each first turn only
        prefills the rest. The shared ids are those the renderings without and with audio agree on."""
        llm = self.manifest.llm
        a, b = (self.tokenizer.encode(self.manifest.prompt.render(n, True)).ids for n in (0, 1))
        n = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        ids = np.asarray(a[:n], np.int64)
        embeds = self.backend.run("embed_tokens", {"input_ids": ids[None]}, host=["inputs_embeds"])["inputs_embeds"]
        empty = np.zeros((1, llm.num_kv_heads, 0, llm.head_dim), self.dtype)
        _, past = self.feed(embeds, [empty] * len(llm.past_names), 0, n)
        return _Prefix(ids, embeds[0], past)

    def feed(self, embeds: Any, past: list[Any], length: int, n_new: int) -> tuple[np.ndarray, list[Any]]:
        """Append n_new positions to a KV cache of `length`: the last position's logits [V] and the new cache."""
        total = length + n_new
        logits, present = self.feed_batch(embeds, self.ones[:, :total],
                                          np.arange(length, total, dtype=np.int64)[None], past)
        return logits[0], present

    def feed_batch(self, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray,
                   past: list[Any]) -> tuple[np.ndarray, list[Any]]:
        """Positions for each of B rows: embeds [B, S, H], mask [B, T + S], positions [B, S], past [B, kv, T, d]
        per layer -> the last position's logits [B, V] and the new cache."""
        llm = self.manifest.llm
        feeds = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions,
                 **dict(zip(llm.past_names, past))}
        out = self.backend.run("backbone", feeds, host=["logits"])
        return out["logits"], [out[n] for n in llm.present_names]


class Conversation:
    """One conversation on a shared `Model`: its KV cache, length and turn count, and the last reply's
    alignment for `truncate`. Built by `Model.conversation()` (or `Assistant.load` for one model, one
    conversation)."""

    def __init__(self, model: Model, voice: Voice | None):
        self.model = model
        self.voice = voice
        self._last: tuple[Reply, int] | None = None  # the last reply and where its tokens start in the cache
        self.reset()

    @property
    def manifest(self) -> Manifest:
        return self.model.manifest

    @property
    def backend(self) -> Backend:
        return self.model.backend

    @property
    def artifacts(self) -> Path:
        return self.model.artifacts

    @property
    def streaming(self) -> Streaming:
        return self.model.streaming

    @property
    def max_context(self) -> int:
        return self.model.max_context

    @property
    def context_length(self) -> int:
        """Tokens the conversation holds in the KV cache."""
        return self._length

    @property
    def turns(self) -> int:
        return self._turns

    @property
    def last_reply(self) -> Reply | None:
        """The last turn's reply (cancelled ones too): what `truncate` cuts."""
        return self._last[0] if self._last else None

    def reset(self) -> None:
        """Forget the conversation: back to the system prompt's cached keys and values, turn count 0."""
        self._past: list[Any] = list(self.model.prefix.past)
        self._length = len(self.model.prefix.ids)
        self._turns = 0
        self._last = None

    def truncate(self, audio_ms: float) -> str:
        """The user heard only the first `audio_ms` ms of the last reply's audio: keep its tokens up to the
        last audio code whose samples lie within them (with the text ids before that code), roll the KV cache
        back to there (no recomputation), and return the transcript kept. The next turn continues from it."""
        if self._last is None:
            raise InputError("there is no reply to truncate: truncate() follows a turn")
        reply, start = self._last
        if reply.alignment is None or reply.audio is None:
            raise InputError("the last reply has no audio to truncate")
        heard = int(np.floor(float(audio_ms) * reply.sample_rate / 1000))
        if not 0 <= heard <= len(reply.audio):
            raise InputError(f"audio_ms must be between 0 and the reply's {1000 * len(reply.audio) / reply.sample_rate:g} "
                             f"ms of audio, got {audio_ms}")
        keep = int(np.searchsorted(reply.alignment, heard, side="right"))  # alignment never decreases
        fed = self._length - start
        if keep < fed:
            self._past = [np.ascontiguousarray(self.backend.to_host(p)[:, :, : start + keep]) for p in self._past]
            self._length = start + keep
        kept = reply.tokens[:keep]
        text_ids = kept[(kept < self.model.code_offset) & (kept != self.model.stop_id)]
        text = self.model.tokenizer.decode(text_ids.tolist(), skip_special_tokens=True)
        self._last = (replace(reply, text=text, text_ids=text_ids, tokens=kept, alignment=reply.alignment[:keep],
                              audio=reply.audio[:heard], audio_codes=kept[kept >= self.model.code_offset]
                              - self.model.code_offset), start)  # a later truncate cuts what is left
        return text

    def default_sampling(self) -> Sampling:
        """Upstream's rules: greedy on the first turn, sampling afterwards."""
        return self.manifest.sampling.first_turn if self._turns == 0 else self.manifest.sampling.later_turns

    def reply(self, wav: np.ndarray, sample_rate: int, *, greedy: bool | None = None, sampling: Sampling | None = None,
              max_new_tokens: int | None = None, seed: int | None = None, token2wav: Token2WavMode = "exact",
              speak: bool = True, cancel: Cancel | None = None, debug: Debug | None = None) -> Reply:
        """Answer one spoken turn; `stream` takes the same arguments. The audio comes whole, so it is computed
        whole by default: upstream's computation, no streaming approximation."""
        for chunk in self.stream(wav, sample_rate, greedy=greedy, sampling=sampling, max_new_tokens=max_new_tokens,
                                 seed=seed, token2wav=token2wav, speak=speak, cancel=cancel, debug=debug):
            if chunk.reply is not None:
                return chunk.reply
        raise AssertionError("stream ended without a reply")

    def stream(self, wav: np.ndarray, sample_rate: int, *, greedy: bool | None = None,
               sampling: Sampling | None = None, max_new_tokens: int | None = None, seed: int | None = None,
               token2wav: Token2WavMode = "streaming", speak: bool = True, cancel: Cancel | None = None,
               debug: Debug | None = None) -> Iterator[Chunk]:
        """Answer one spoken turn, yielding text deltas as they decode and audio as it is ready.

        greedy: override the turn's default (greedy on turn 1 only); sampling: full control of the rules;
        max_new_tokens: cap on new ids (default from the manifest); seed: sampling and ODE noise;
        token2wav: "streaming" (default here: audio chunks while the reply decodes, an approximation whose
        distance from the whole-reply computation `streaming.deviation` measures) or "exact" (the audio
        in the last chunk); speak: False answers in text only, the audio codes decoded but not spoken (a
        speech model asked for a text reply); cancel: a `Cancel` that ends the turn early (so does closing the iterator: the
        conversation then holds the reply up to the cut, as it holds a finished one).
        """
        if token2wav not in TOKEN2WAV_MODES:
            raise OptionError(f"token2wav must be one of {', '.join(TOKEN2WAV_MODES)}, got {token2wav!r}")
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
        # Sampling and the ODE noise draw from separate generators: the noise of a frame is then the same
        # whether the reply is spoken whole or streamed, whatever was sampled in between.
        sample_rng, noise_rng = np.random.default_rng(seed).spawn(2)
        return self._turn(wav, sample_rate, s, limit, sample_rng, noise_rng, token2wav, speak, cancel or Cancel(), debug)

    def _turn(self, wav: np.ndarray, sample_rate: int, sampling: Sampling, limit: int, rng: np.random.Generator,
              noise_rng: np.random.Generator, token2wav: Token2WavMode, speak: bool, cancel: Cancel,
              debug: Debug) -> Iterator[Chunk]:
        m = self.model
        clock = _Clock()
        n_slots, features = self._encode_audio(wav, sample_rate, clock, debug)
        ids = np.asarray(m.tokenizer.encode(self.manifest.prompt.render(n_slots, self._turns == 0)).ids, np.int64)
        cached = len(m.prefix.ids) if self._turns == 0 else 0  # the system prompt is in the cache already
        if not np.array_equal(ids[:cached], m.prefix.ids[:cached]):
            raise AssertionError("the first turn's prompt does not start with the cached system prompt")
        self._check_room(len(ids) - cached)
        with clock("prefill"):
            logits = self._prefill(ids, cached, features, debug)
        start = self._length
        text = _TextStream(m.tokenizer)
        speech = self._speech(noise_rng, token2wav, debug) if speak else None
        prompt = (len(ids) - cached, n_slots)
        tokens: list[int] = []
        audio: list[np.ndarray] = []
        finished = False
        try:
            for tok in self._decode(logits, ids, sampling, limit, rng, clock, cancel, debug):
                tokens.append(tok)
                if tok < m.code_offset and tok != m.stop_id:
                    delta = text.push(tok)
                    if delta:
                        clock.mark("first_text")
                        yield Chunk(text=delta)
                elif tok >= m.code_offset and speech is not None:
                    new = speech.push(tok - m.code_offset, clock)
                    if new.size:
                        audio.append(new)
                        clock.mark("first_audio")
                        yield Chunk(audio=new)
            finished = True
        finally:
            if not finished:  # the caller closed the stream: the turn ends here, its history kept to the cut
                self._close(tokens, None, start, "cancelled", clock, prompt)
        if not tokens:  # cancelled before the first token
            reply = self._close(tokens, None, start, "cancelled", clock, prompt)
            yield Chunk(reply=reply)
            return
        tokens_a = np.asarray(tokens, np.int64)
        codes = tokens_a[tokens_a >= m.code_offset] - m.code_offset
        last = None
        if speech is not None and codes.size and not cancel.is_set():  # cancelled: the audio sent so far is all
            last = speech.finish(codes, clock)
            audio.append(last)
            clock.mark("first_audio")
        clock.timings["decode_per_token"] = clock.timings.get("decode", 0.0) / max(len(tokens) - 1, 1)
        whole = np.concatenate(audio) if audio else None
        debug.record(tokens=tokens_a, audio_codes=codes, **({} if whole is None else {"wav": whole}))
        reason = ("cancelled" if cancel.is_set() else "stop" if tokens[-1] == m.stop_id
                  else "length" if len(tokens) == limit else "context_full")
        reply = self._close(tokens, whole, start, reason, clock, prompt)
        yield Chunk(text=reply.text[len(text.shown):], audio=last, reply=reply)

    def _close(self, tokens: list[int], audio: np.ndarray | None, start: int, reason: str, clock: _Clock,
               prompt: tuple[int, int]) -> Reply:
        """End the turn the way every turn ends: the cache holds the prompt and the fed reply ids (the last id
        is never fed, as upstream's `generate`), the turn counts, and the reply is kept for `truncate`."""
        m = self.model
        tokens_a = np.asarray(tokens, np.int64)
        text_ids = tokens_a[tokens_a < m.code_offset]
        self._turns += 1
        t2w = m.manifest.token2wav
        hop = t2w.hop  # samples per latent frame; a code is 4 frames, the reply's first 3 frames are the prompt's
        reply = Reply(
            text=m.tokenizer.decode(text_ids.tolist(), skip_special_tokens=True), text_ids=text_ids,
            audio_codes=tokens_a[tokens_a >= m.code_offset] - m.code_offset, audio=audio,
            sample_rate=t2w.sample_rate, tokens=tokens_a, finish_reason=reason, timings=clock.timings,
            alignment=audio_alignment(tokens_a, m.code_offset, 4 * hop, 3 * hop), prompt_tokens=prompt[0],
            audio_slots=prompt[1],
        )
        self._last = (reply, start)
        return reply

    def _encode_audio(self, wav: np.ndarray, sample_rate: int, clock: _Clock, debug: Debug) -> tuple[int, np.ndarray]:
        """Stage 1: the question's audio -> (number of <|cAUDIO|> slots, adapter frames [S*188, H])."""
        with clock("frontend"):
            wav24, n_slots, mel = frontend.prepare(wav, sample_rate)
        with clock("encoder"):
            hidden = self.backend.run("audio_encoder", {"mel": mel.astype(self.model.dtype)}, host=["hidden"])["hidden"]
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

    def _prefill(self, ids: np.ndarray, cached: int, features: np.ndarray, debug: Debug) -> np.ndarray:
        """Stage 2: the prompt's embeddings (but the first `cached`, already in the KV cache), the audio
        frames in its <|cAUDIO|> slots, into the KV cache."""
        new = ids[cached:]
        embeds = self.backend.run("embed_tokens", {"input_ids": new[None]}, host=["inputs_embeds"])["inputs_embeds"]
        slots = new == self.model.audio_slot
        embeds[0, slots] = features[: int(slots.sum())].astype(embeds.dtype)
        logits = self._feed(embeds, len(new))
        if debug.dump is not None:
            whole = np.concatenate([self.model.prefix.embeds, embeds[0]]) if cached else embeds[0]
            debug.record(input_ids=ids, inputs_embeds=whole, prefill_logits=logits)
        return logits

    def _decode(self, logits: np.ndarray, ids: np.ndarray, sampling: Sampling, limit: int, rng: np.random.Generator,
                clock: _Clock, cancel: Cancel, debug: Debug) -> Iterator[int]:
        """Stage 3: pick a token, feed it, repeat, until the stop id, `limit` ids, a full context or a cancel.
        As upstream, the token that ends the turn is never fed: the next turn continues right before it."""
        seq = np.empty(len(ids) + limit, np.int64)  # the turn's ids, for the penalties
        seq[: len(ids)] = ids
        rows = []
        batch = self.model.batch
        if batch is not None:
            batch.join(self, self._past, self._length)
        try:
            yield from self._steps(logits, ids, seq, rows, sampling, limit, rng, clock, cancel, debug)
        finally:
            if batch is not None:  # finished, cancelled or failed: the row frees at once
                self._past, self._length = batch.leave(self)
        debug.record_steps(rows)

    def _steps(self, logits: np.ndarray, ids: np.ndarray, seq: np.ndarray, rows: list[np.ndarray],
               sampling: Sampling, limit: int, rng: np.random.Generator, clock: _Clock, cancel: Cancel,
               debug: Debug) -> Iterator[int]:
        for step in range(limit):
            if cancel.is_set():
                break
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
            if tok == self.model.stop_id or step + 1 == limit or self._length + 1 > self.max_context or cancel.is_set():
                break
            with clock("decode"):
                embeds = self.backend.run("embed_tokens", {"input_ids": np.array([[tok]], np.int64)})["inputs_embeds"]
                logits = self._feed(embeds, 1)

    def _feed(self, embeds: Any, n_new: int) -> np.ndarray:
        """Append n_new positions to the conversation's KV cache; the last position's logits [V] (float32).
        In a batch a decode step goes through it; a prompt runs alone, in chunks of PREFILL_CHUNK positions
        so that no graph call of a decoding conversation waits behind more than one chunk."""
        batch = self.model.batch
        if batch is not None and n_new == 1 and self in batch:
            self._length += 1
            return batch.step(self, embeds)
        chunk = PREFILL_CHUNK if batch is not None else n_new
        for at in range(0, n_new, chunk):
            part = min(chunk, n_new - at)
            logits, self._past = self.model.feed(embeds[:, at : at + part] if part < n_new else embeds, self._past,
                                                 self._length, part)
            self._length += part
        return logits

    def _speech(self, noise_rng: np.random.Generator, mode: Token2WavMode, debug: Debug) -> _Speaker | None:
        """Stage 4's speaker for this turn (None in text mode)."""
        t2w = self.model.token2wav
        if t2w is None:
            return None
        tape = NoiseTape(t2w.tables(self.voice).noise, noise_rng, debug.noise)
        stream = None
        if mode == "streaming":
            stream = SpeechStream(t2w, self.voice, tape, self.streaming, self.model.voice_cache(self.voice))
        return _Speaker(t2w, self.voice, tape, stream, debug)


class Assistant(Conversation):
    """One model, one conversation: the convenience for a single user (a CLI, a script). A server holds one
    `Model` and a `Conversation` per client instead."""

    @classmethod
    def load(cls, artifacts: str | Path, backend: BackendName = "onnxruntime", device: Device = "cpu",
             mode: Mode = "speech", voice: str | None = None, streaming: Streaming = Streaming(),
             engines: str | Path | None = None) -> Assistant:
        """`Model.load` (same arguments) with one conversation in `voice` on it."""
        model = Model.load(artifacts, backend, device, mode, streaming, engines)
        return cls(model, model.voice(voice) if mode == "speech" else None)


class _Speaker:
    """Stage 4, speak: audio codes -> latents (token2wav) -> 24 kHz samples (vocoder). Streaming, it takes the
    codes as they decode and returns samples chunk by chunk; exact, it speaks the whole reply at the end."""

    def __init__(self, t2w: Token2Wav, voice: Voice, noise: NoiseTape, stream: SpeechStream | None, debug: Debug):
        self.t2w, self.voice, self.noise, self.stream, self.debug = t2w, voice, noise, stream, debug
        self.vocoder = VocoderStream(t2w)
        self.latents: list[np.ndarray] = []

    def push(self, code: int, clock: _Clock) -> np.ndarray:
        """New samples once a chunk's codes (and look-ahead) are in; none otherwise."""
        if self.stream is None:
            return _NO_AUDIO
        self.stream.push(code)
        return self._chunk(clock, final=False) if self.stream.ready() else _NO_AUDIO

    def finish(self, codes: np.ndarray, clock: _Clock) -> np.ndarray:
        """The samples not yet returned, the reply's codes all in."""
        if self.stream is not None:
            return self._chunk(clock, final=True)
        with clock("token2wav"):
            noise = self.noise.take(0, self.t2w.noise_shape(len(codes), self.voice)[1])[None]
            latents = self.t2w.latents(codes, self.voice, noise)
        with clock("vocoder"):
            audio = self.t2w.vocode(latents)
        self.debug.record(latents=latents)
        return audio

    def _chunk(self, clock: _Clock, final: bool) -> np.ndarray:
        with clock("token2wav"):
            latents = self.stream.next(final)
        self.latents.append(latents)
        with clock("vocoder"):
            audio = self.vocoder.push(latents, final)
        if final:
            self.debug.record(latents=np.concatenate(self.latents)[None], chunk_frames=[len(c) for c in self.latents])
        return audio


def load_tokenizer(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for unreadable files
        raise ArtifactsError(f"cannot read {path} ({str(e).splitlines()[0]}); restore it or re-run "
                             "`covo-edge export`") from None
