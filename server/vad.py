"""Server voice activity detection: Silero VAD v6.2.3 (MIT, `assets/`) on the runtime's own onnxruntime,
and the `server_vad` turn rules of the Realtime protocol on top of it.

Why this VAD (../shared/notes/realtime-protocol.md, section 3): no new dependency (the `silero-vad`
package pulls torch), tones and noise are not speech (webrtcvad calls both speech), and one 32 ms
window costs about 0.1 ms on one CPU thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

MODEL = Path(__file__).parent / "assets" / "silero_vad.onnx"
RATE = 16000  # the model's rate; input arrives at 24 kHz and is decimated 3:2
WINDOW = 512  # samples per call at 16 kHz (32 ms) = 768 at 24 kHz
CONTEXT = 64  # samples of the previous window the v5/v6 models see
WINDOW_24K = WINDOW * 3 // 2
HYSTERESIS = 0.15  # speech ends below threshold - 0.15, as Silero's own iterator does

_session: ort.InferenceSession | None = None
_session_lock = threading.Lock()


def _model() -> ort.InferenceSession:
    """One session for every stream (its run() is thread-safe; each stream keeps its own state)."""
    global _session
    with _session_lock:
        if _session is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            _session = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
        return _session


class Silero:
    """Speech probability of each 32 ms window of one audio stream."""

    def __init__(self):
        self.session = _model()
        self.state = np.zeros((2, 1, 128), np.float32)
        self.context = np.zeros((1, CONTEXT), np.float32)
        self.rate = np.array(RATE, np.int64)

    def __call__(self, window16k: np.ndarray) -> float:
        x = np.concatenate([self.context, window16k[None].astype(np.float32, copy=False)], axis=1)
        p, self.state = self.session.run(None, {"input": x, "state": self.state, "sr": self.rate})
        self.context = x[:, -CONTEXT:]
        return float(p[0, 0])


def decimate(window24k: np.ndarray) -> np.ndarray:
    """24 kHz PCM16 -> 16 kHz float by linear interpolation (samples at 0, 1.5, 3, ...): enough for a VAD."""
    x = window24k.reshape(-1, 3).astype(np.float32) * np.float32(1 / 32768)
    return np.stack([x[:, 0], 0.5 * (x[:, 1] + x[:, 2])], axis=1).reshape(-1)


@dataclass
class VadEvent:
    kind: str  # "speech_started" | "speech_stopped"
    ms: int  # audio_start_ms (prefix padding included) or audio_end_ms, from the session's first sample
    audio: np.ndarray | None = None  # with speech_stopped: the turn's 24 kHz PCM16, prefix padding included


class TurnDetector:
    """`server_vad`: speech starts when a window's probability reaches `threshold`; it stops once the
    probability has stayed below threshold - 0.15 for `silence_duration_ms`; the turn's audio starts
    `prefix_padding_ms` before the first speech window. `max_seconds` bounds a turn: longer speech is
    cut there and committed as if it had stopped."""

    def __init__(self, threshold: float, prefix_padding_ms: int, silence_duration_ms: int, max_seconds: float):
        self.threshold = threshold
        self.prefix = prefix_padding_ms * 24
        self.silence_windows = -(-silence_duration_ms * 2 // 64)  # ms -> 32 ms windows, rounded up
        self.max_samples = int(max_seconds * 24000)
        self.vad = Silero()
        self.pending = np.zeros(0, np.int16)  # samples short of a window
        self.ring = np.zeros(0, np.int16)  # the last prefix_padding_ms before speech
        self.turn: list[np.ndarray] | None = None  # the current turn's windows, while speaking
        self.turn_samples = 0
        self.quiet = 0  # windows below the closing threshold since the last speech
        self.seen = 0  # samples processed since the session began

    @property
    def speaking(self) -> bool:
        return self.turn is not None

    def push(self, samples24k: np.ndarray) -> list[VadEvent]:
        """Feed 24 kHz PCM16 samples (int16, as the protocol carries them); the events they complete, in order."""
        x = np.concatenate([self.pending, samples24k]) if self.pending.size else samples24k
        n = len(x) // WINDOW_24K * WINDOW_24K
        self.pending = x[n:].copy()
        events = []
        for i in range(0, n, WINDOW_24K):
            event = self._window(x[i : i + WINDOW_24K])
            if event is not None:
                events.append(event)
        return events

    def _window(self, w: np.ndarray) -> VadEvent | None:
        p = self.vad(decimate(w))
        start = self.seen
        self.seen += len(w)
        if self.turn is None:
            if p >= self.threshold:
                self.turn, self.turn_samples, self.quiet = [self.ring, w], len(self.ring) + len(w), 0
                return VadEvent("speech_started", (start - len(self.ring)) // 24)
            self.ring = np.concatenate([self.ring, w])[-self.prefix:] if self.prefix else self.ring
            return None
        self.turn.append(w)
        self.turn_samples += len(w)
        self.quiet = self.quiet + 1 if p < self.threshold - HYSTERESIS else 0
        if self.quiet >= self.silence_windows or self.turn_samples >= self.max_samples:
            return self._stop(self.seen - self.quiet * WINDOW_24K)
        return None

    def _stop(self, end: int) -> VadEvent:
        audio = np.concatenate(self.turn)
        self.turn, self.ring = None, np.zeros(0, np.int16)
        return VadEvent("speech_stopped", end // 24, audio)

    def take(self) -> np.ndarray:
        """The turn heard so far (empty when no speech is going on), as if it had stopped here (a manual
        commit under server VAD)."""
        audio = np.concatenate(self.turn) if self.turn is not None else np.zeros(0, np.int16)
        self.clear()
        return audio

    def clear(self) -> None:
        """Drop the turn in progress (input_audio_buffer.clear); the stream's position goes on."""
        self.turn, self.ring, self.pending = None, np.zeros(0, np.int16), np.zeros(0, np.int16)
