"""Speech that starts before the reply ends: token2wav chunk by chunk over a voice cache, and a vocoder
whose chunk joins are exact (DESIGN.md, "Streaming speech").

token2wav's DiT attends over the whole sequence (the voice prompt and every code of the reply), so no
chunked computation equals the whole-reply one: `SpeechStream` is an approximation and `deviation`
measures how far it is from `Token2Wav.latents` on the same codes and noise. The vocoder is causal but
for a few frames of look-ahead, so `VocoderStream` gives the very samples of one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .frontend import mel_filters
from .token2wav import NoiseTape, Token2Wav, Voice


@dataclass(frozen=True)
class Streaming:
    """The chunk schedule, in audio codes (4 latent frames, 40 ms of speech each)."""

    first_chunk: int = 6  # codes in the first chunk: the first audio waits for these (plus the look-ahead)
    max_chunk: int = 40  # chunks double up to this
    lookahead: int = 2  # codes past a chunk computed with it (and again with the next chunk)
    prompt_frames: int | None = 512  # voice prompt frames the chunks attend to (None: all of them)
    history_frames: int | None = 512  # earlier reply frames the chunks attend to (None: all of them)


@dataclass
class FieldCache:
    """What a chunk's frames attend to besides themselves, per ODE evaluation: each DiT block's keys and
    values of the frames before it, the position conv's left context, and the next frame's rotary position.
    The voice prompt's frames (`prefix`, computed once per voice) are shared by every stream of the voice and
    joined to the stream's own (`past`) only while an evaluation runs: a stream holds its own frames, not a
    copy of the voice's (1.7 GiB at the released DiT's width). Arrays are replaced, never written into."""

    prefix: list[list[np.ndarray]]  # [evaluation][tensor] -> [2, heads, frames, head_dim], the voice's frames
    past: list[list[np.ndarray]]  # the same for this stream's frames, at most `history` of them
    context: list[np.ndarray]  # [evaluation] -> [2, conv_context, H]
    position: int = 0
    names: list[str] = field(default_factory=list)  # the field's past_key_values.* inputs

    @classmethod
    def empty(cls, t2w: Token2Wav) -> FieldCache:
        n = len(t2w.evaluations)
        none = [t2w.no_cache[name] for name in t2w.spec.past_names]
        return cls([none] * n, [none] * n, [t2w.no_cache["conv_context"]] * n, 0, t2w.spec.past_names)

    def copy(self) -> FieldCache:
        return FieldCache(self.prefix, list(self.past), list(self.context), self.position, self.names)

    def as_prefix(self) -> FieldCache:
        """This cache's frames as the shared prefix of the streams that copy the result."""
        return FieldCache(self.past, [[p[:, :, :0] for p in ev] for ev in self.past], self.context, self.position,
                          self.names)

    def feeds(self, k: int) -> dict[str, np.ndarray]:
        return {"conv_context": self.context[k], "position": np.array([self.position], np.int64),
                **{name: _join(a, b) for name, a, b in zip(self.names, self.prefix[k], self.past[k])}}

    def append(self, outputs: list[dict[str, np.ndarray]], keep: int, present: list[str],
               history: int | None = None) -> None:
        """Add the first `keep` new frames of every evaluation, keeping the last `history` of this stream's
        frames (all with None; positions keep counting)."""
        for k, out in enumerate(outputs):
            past = [_join(p, out[name][:, :, :keep]) for p, name in zip(self.past[k], present)]
            if history is not None and past[0].shape[2] > history:
                past = [p[:, :, -history:] if history else p[:, :, :0] for p in past]
            self.past[k] = past
            context = self.context[k]
            self.context[k] = np.concatenate([context, out["frames"][:, :keep]], 1)[:, -context.shape[1] :]
        self.position += keep


def _join(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Frames of `a` then `b` (axis 2); either as it is when the other has none."""
    return b if a.shape[2] == 0 else a if b.shape[2] == 0 else np.concatenate([a, b], 2)


class SpeechStream:
    """Codes in as they decode, de-normalised latents out chunk by chunk. Each chunk runs the whole ODE over
    its own frames plus a few codes of look-ahead, attending to the voice cache (the last prompt frames,
    computed once per voice by `voice_cache`) and to the chunks before it; frames once emitted never change."""

    def __init__(self, t2w: Token2Wav, voice: Voice, noise: NoiseTape, settings: Streaming, cache: FieldCache):
        self.t2w, self.voice, self.noise, self.settings = t2w, voice, noise, settings
        self.modulation = t2w.tables(voice).modulation
        self.cache = cache.copy()
        self.codes = list(voice.prompt_token)
        self.start = t2w.factor * len(voice.prompt_token)  # the next chunk's first frame
        self.prefix = len(voice.prompt_latent)  # frames before this are the prompt's: computed, not emitted
        self.chunk = settings.first_chunk

    def push(self, code: int) -> None:
        self.codes.append(int(code))

    def ready(self) -> bool:
        """Are there codes enough for the next chunk and its look-ahead?"""
        need = self.start + self.t2w.factor * (self.chunk + self.settings.lookahead)
        return self.t2w.factor * len(self.codes) >= need

    def next(self, final: bool = False) -> np.ndarray:
        """Latents [n, z] of the next chunk (with `final`: of every frame left), de-normalised."""
        f = self.t2w.factor
        available = f * len(self.codes)
        end = available if final else self.start + f * self.chunk
        stop = available if final else min(available, end + f * self.settings.lookahead)
        if end <= self.start:
            return np.zeros((0, self.t2w.z), np.float32)
        codes = np.asarray(self.codes[: stop // f], np.int64)  # a chunk sees the codes through its look-ahead only
        conditioning = self.t2w.conditioning(self.voice, codes, self.start, stop)
        z, outputs = self.t2w.solve(self.modulation, conditioning, self.noise.take(self.start, stop), self.cache.feeds)
        self.cache.append(outputs, end - self.start, self.t2w.spec.present_names, self.settings.history_frames)
        first = max(self.start, self.prefix)
        latents = z[first - self.start : end - self.start]
        self.start, self.chunk = end, min(2 * self.chunk, self.settings.max_chunk)
        return self.t2w.denormalise(latents)


def voice_cache(t2w: Token2Wav, voice: Voice, frames: int | None) -> FieldCache:
    """The last `frames` frames of the voice prompt (all with None) run through the ODE on their own, their
    keys, values and conv context kept per evaluation: the prefix every stream of this voice attends to
    (compute it once, at load; streams share it)."""
    stop = t2w.factor * len(voice.prompt_token)
    start = 0 if frames is None else max(0, stop - frames)
    tables = t2w.tables(voice)
    cache = FieldCache.empty(t2w)
    _, outputs = t2w.solve(tables.modulation, t2w.conditioning(voice, np.asarray(voice.prompt_token), start, stop),
                           tables.noise[start:stop], cache.feeds)
    cache.append(outputs, stop - start, t2w.spec.present_names)
    return cache.as_prefix()


class VocoderStream:
    """Latents in, 24 kHz samples out, each sample equal to what one pass over all latents gives: a window
    is vocoded with the `vocoder_context` frames before it, and only output frames whose look-ahead
    (`vocoder_lookahead` frames) is already there are kept; the rest waits for the next latents."""

    def __init__(self, t2w: Token2Wav):
        self.t2w = t2w
        self.context, self.lookahead = t2w.spec.vocoder_context, t2w.spec.vocoder_lookahead
        self.latents = np.zeros((0, t2w.z), np.float32)  # the tail still needed, from frame `offset` on
        self.offset = 0  # global frame of self.latents[0]
        self.done = 0  # output frames emitted

    def push(self, latents: np.ndarray, final: bool = False) -> np.ndarray:
        self.latents = np.concatenate([self.latents, latents])
        available = self.offset + len(self.latents)
        end = available if final else available - self.lookahead
        if end <= self.done:
            return np.zeros(0, np.float32)
        start = max(self.offset, self.done - self.context)
        window = self.latents[start - self.offset : available - self.offset]
        wav = self.t2w.vocode(window[None])
        hop = self.t2w.spec.hop
        out = wav[(self.done - start) * hop : (end - start) * hop]
        self.done = end
        keep = max(self.offset, self.done - self.context)
        self.latents, self.offset = self.latents[keep - self.offset :], keep
        return out


def log_mel(wav: np.ndarray, sample_rate: int = 24000) -> np.ndarray:
    """An 80-bin log-mel of a 24 kHz reply (1024-point frames, hop 256), the spectrum the deviation
    between two renderings of one reply is measured on."""
    n_fft, hop = 1024, 256
    if len(wav) < n_fft:
        wav = np.pad(wav, (0, n_fft - len(wav)))
    frames = np.lib.stride_tricks.sliding_window_view(wav, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    return np.log(np.maximum(mel_filters(80, sample_rate, n_fft) @ power.T, 1e-5))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


@dataclass
class Deviation:
    """How far a streamed reply is from the whole-reply computation on the same codes and noise."""

    latent_rms: list[float]  # per chunk: RMS of the latent difference / RMS of the exact latents
    wav_rms: list[float]  # per chunk: the same on the waveform
    log_mel_l1: float  # mean |log-mel difference| of the whole reply (natural log)
    chunk_frames: list[int]


def deviation(exact_latents: np.ndarray, chunks: list[np.ndarray], exact_wav: np.ndarray, wav: np.ndarray,
              hop: int) -> Deviation:
    """Compare per chunk (the chunk's frames and their samples) and over the whole reply's log-mel."""
    ref = exact_latents.reshape(-1, exact_latents.shape[-1])
    latent_rms, wav_rms, at = [], [], 0
    for c in chunks:
        n = len(c)
        latent_rms.append(rms(c - ref[at : at + n]) / max(rms(ref[at : at + n]), 1e-12))
        a, b = at * hop, (at + n) * hop
        wav_rms.append(rms(wav[a:b] - exact_wav[a:b]) / max(rms(exact_wav[a:b]), 1e-12))
        at += n
    mel_l1 = float(np.mean(np.abs(log_mel(wav) - log_mel(exact_wav))))
    return Deviation(latent_rms, wav_rms, mel_l1, [len(c) for c in chunks])
