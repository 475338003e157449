"""`GET /metrics` in the Prometheus text format (0.0.4): a handful of series, written here rather than
pulling a client library in for them."""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

FIRST_AUDIO_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self):
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        self.n += 1
        self.total += value
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1


class MetricsSink(Protocol):
    """Somewhere else the server's numbers go as they change (on Ray Serve: its own metrics, per replica)."""

    def sessions(self, open_now: int) -> None: ...

    def turn(self, status: str, first_audio: float | None, tokens: int, decode_seconds: float) -> None: ...

    def refused(self, code: str) -> None: ...


class Metrics:
    def __init__(self, max_sessions: int, sink: MetricsSink | None = None):
        self.lock = threading.Lock()
        self.max_sessions = max_sessions
        self.sink = sink
        self.refused: Counter[str] = Counter()  # connections turned away, by error code
        self.sessions_total = 0
        self.turns: Counter[str] = Counter()  # by final status
        self.errors: Counter[str] = Counter()  # error events sent, by code
        self.first_audio = Histogram(FIRST_AUDIO_BUCKETS)
        self.tokens = 0
        self.decode_seconds = 0.0
        self.last_tokens_per_second = 0.0

    def turn(self, status: str, first_audio: float | None, tokens: int, decode_seconds: float) -> None:
        with self.lock:
            self.turns[status] += 1
            if first_audio is not None:
                self.first_audio.observe(first_audio)
            self.tokens += tokens
            self.decode_seconds += decode_seconds
            if decode_seconds > 0:
                self.last_tokens_per_second = tokens / decode_seconds
        if self.sink is not None:
            self.sink.turn(status, first_audio, tokens, decode_seconds)

    def sessions(self, open_now: int) -> None:
        if self.sink is not None:
            self.sink.sessions(open_now)

    def turned_away(self, code: str) -> None:
        with self.lock:
            self.refused[code] += 1
        if self.sink is not None:
            self.sink.refused(code)

    def render(self, sessions_open: int) -> str:
        with self.lock:
            lines = [
                *_series("covo_sessions_open", "gauge", "realtime sessions open now", [("", sessions_open)]),
                *_series("covo_sessions_max", "gauge", "--max-sessions", [("", self.max_sessions)]),
                *_series("covo_sessions_total", "counter", "sessions opened", [("", self.sessions_total)]),
                *_series("covo_turns_total", "counter", "responses by final status",
                         [(f'{{status="{k}"}}', v) for k, v in sorted(self.turns.items())]),
                *_series("covo_errors_total", "counter", "error events sent, by code",
                         [(f'{{code="{k}"}}', v) for k, v in sorted(self.errors.items())]),
                *_series("covo_refused_total", "counter", "connections turned away, by error code",
                         [(f'{{code="{k}"}}', v) for k, v in sorted(self.refused.items())]),
                *_series("covo_decode_tokens_total", "counter", "tokens decoded", [("", self.tokens)]),
                *_series("covo_decode_seconds_total", "counter", "seconds spent decoding", [("", self.decode_seconds)]),
                *_series("covo_decode_tokens_per_second", "gauge", "decode speed of the last turn",
                         [("", self.last_tokens_per_second)]),
                "# HELP covo_first_audio_seconds time from the end of the user's turn to the first audio sent",
                "# TYPE covo_first_audio_seconds histogram",
                *[f'covo_first_audio_seconds_bucket{{le="{edge:g}"}} {n}'
                  for edge, n in zip(self.first_audio.buckets, self.first_audio.counts)],
                f'covo_first_audio_seconds_bucket{{le="+Inf"}} {self.first_audio.n}',
                f"covo_first_audio_seconds_sum {self.first_audio.total:g}",
                f"covo_first_audio_seconds_count {self.first_audio.n}",
                *_series("process_resident_memory_bytes", "gauge", "resident memory of this process", [("", rss())]),
            ]
        return "\n".join(lines) + "\n"


def _series(name: str, kind: str, help: str, samples: list[tuple[str, float]]) -> list[str]:
    return [f"# HELP {name} {help}", f"# TYPE {name} {kind}", *(f"{name}{labels} {value:g}" for labels, value in samples)]


def rss(pid: int | str = "self") -> int:
    """Resident memory in bytes (Linux /proc; 0 where there is none)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0
