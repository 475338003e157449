"""Concurrent conversations' decode steps as one backbone call: a decode step at batch 1 reads every weight
for one token, so B conversations stepping together read them once for B tokens.

The batch keeps one KV cache for all its rows, [B, kv_heads, T, head_dim] per layer, each row's history
right-aligned behind masked columns (left padding); a step appends one column to every row, so no cache is
copied per step beyond what the graph itself writes. Rows without a pending step ride along with a masked
column (decode is memory-bound: an idle row costs next to nothing) so the rows never fall out of line;
masks keep every row's attention to its own tokens, and positions are per row, so each row computes what
it would alone (within float rounding of a different matrix shape). Copies happen only when a
conversation joins (its cache padded into the batch) or leaves (its columns cut back out), and when the
holes left by idle rows would run past the context (the rows are then packed again).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import OptionError

Feed = Callable[[np.ndarray, np.ndarray, np.ndarray, list[Any]], tuple[np.ndarray, list[Any]]]
ToHost = Callable[[Any], np.ndarray]


@dataclass
class _Row:
    length: int  # the conversation's tokens in the cache
    embeds: np.ndarray | None = None  # [H], the step it waits for
    logits: np.ndarray | None = None  # [V], its answer
    error: Exception | None = None  # what the call raised instead


@dataclass
class BatchStats:
    """What the batch did: calls, rows fed (idle ones included), steps answered, the seconds the calls took,
    and how many calls answered how many steps."""

    calls: int = 0
    rows: int = 0
    active_rows: int = 0
    seconds: float = 0.0
    steps_per_call: Counter = field(default_factory=Counter)
    packs: int = 0  # times the rows were packed again (holes would have run past the context)
    step_seconds: deque = field(default_factory=lambda: deque(maxlen=100_000))  # each step as its caller waited


class DecodeBatch:
    """Up to `max_batch` conversations decoding at once. A conversation `join`s with its KV cache when its
    decode starts, calls `step` once per token (blocking until the batch has run it) and `leave`s when the
    turn ends (finished, cancelled or failed), taking its cache back. A step runs as soon as every member
    has one pending, or `linger_s` after the first arrived (a member busy speaking a chunk does not hold
    the others); a conversation that finds the batch full waits for a row to free up."""

    def __init__(self, feed: Feed, to_host: ToHost, max_batch: int, max_context: int, linger_s: float = 0.005):
        if max_batch < 1:
            raise OptionError(f"max_batch must be at least 1, got {max_batch}")
        self._feed, self._to_host = feed, to_host
        self.max_batch, self.max_context, self.linger_s = max_batch, max_context, linger_s
        self._cv = threading.Condition()
        self._rows: dict[object, _Row] = {}  # by conversation, in batch order
        self._past: list[Any] = []  # per layer tensor [B, kv, T, d]
        self._mask = np.zeros((0, 0), np.int64)  # [B, T]: 1 where a row has a token
        self._running = False
        self.stats = BatchStats()

    @property
    def members(self) -> int:
        with self._cv:
            return len(self._rows)

    def __contains__(self, key: object) -> bool:
        with self._cv:
            return key in self._rows

    def join(self, key: object, past: list[Any], length: int) -> None:
        """Add a conversation with its cache (`length` tokens); waits while the batch is full."""
        rows = [np.asarray(self._to_host(p)) for p in past]
        with self._cv:
            self._cv.wait_for(lambda: not self._running and len(self._rows) < self.max_batch)
            width = self._mask.shape[1]
            if self._rows and length > width:  # the newcomer is longer: pad the others on the left
                self._past = [_pad_left(p, length - width) for p in self._host_past()]
                self._mask = np.pad(self._mask, ((0, 0), (length - width, 0)))
            width = max(width, length) if self._rows else length
            rows = [_pad_left(p, width - length) for p in rows]
            mask = np.concatenate([np.zeros(width - length, np.int64), np.ones(length, np.int64)])[None]
            if self._rows:
                self._past = [np.concatenate([h, r]) for h, r in zip(self._host_past(), rows)]
                self._mask = np.concatenate([self._mask, mask])
            else:
                self._past, self._mask = [np.ascontiguousarray(r) for r in rows], mask
            self._rows[key] = _Row(length)
            self._cv.notify_all()

    def leave(self, key: object) -> tuple[list[np.ndarray], int]:
        """Take a conversation out: its cache [1, kv, length, d] per layer and its length."""
        with self._cv:
            self._cv.wait_for(lambda: not self._running)
            index = list(self._rows).index(key)
            row = self._rows.pop(key)
            host = self._host_past()
            keep = self._mask[index] > 0
            mine = [np.ascontiguousarray(p[index : index + 1, :, keep]) for p in host]
            if self._rows:
                others = [np.delete(p, index, 0) for p in host]
                mask = np.delete(self._mask, index, 0)
                used = mask.any(0)  # columns masked in every row that stays are dropped
                self._past = [np.ascontiguousarray(p[:, :, used]) for p in others]
                self._mask = np.ascontiguousarray(mask[:, used])
            else:
                self._past, self._mask = [], np.zeros((0, 0), np.int64)
            self._cv.notify_all()
        return mine, row.length

    def step(self, key: object, embeds: Any) -> np.ndarray:
        """Feed one token's embedding [1, 1, H] for this conversation; its logits [V] once the batch ran it."""
        t0 = time.perf_counter()
        value = np.asarray(self._to_host(embeds)).reshape(-1)
        with self._cv:
            row = self._rows[key]
            row.embeds, row.logits, row.error = value, None, None
            first = time.perf_counter()
            self._cv.notify_all()
            while row.embeds is not None:
                pending = sum(r.embeds is not None for r in self._rows.values())
                ready = pending == len(self._rows) or time.perf_counter() - first >= self.linger_s
                if not self._running and ready:
                    self._run()
                else:
                    self._cv.wait(timeout=None if self._running else self.linger_s)
            self.stats.step_seconds.append(time.perf_counter() - t0)
        if row.error is not None:
            raise row.error
        return row.logits

    def _run(self) -> None:
        """One backbone call for every row (called holding the lock, released while the graph runs). A
        failure is raised in every conversation whose step was in the call; the batch stays usable."""
        self._running = True
        if self._mask.shape[1] + 1 > self.max_context:
            self._pack()
        rows = list(self._rows.values())
        active = np.array([r.embeds is not None for r in rows])
        sample = next(r.embeds for r in rows if r.embeds is not None)
        embeds = np.zeros((len(rows), 1, sample.shape[0]), sample.dtype)
        for i, r in enumerate(rows):
            if active[i]:
                embeds[i, 0] = r.embeds
        positions = np.array([[r.length] for r in rows], np.int64)
        mask = np.concatenate([self._mask, active[:, None].astype(np.int64)], 1)
        self._cv.release()
        try:
            t0 = time.perf_counter()
            logits, present = self._feed(embeds, mask, positions, self._past)
            seconds, error = time.perf_counter() - t0, None
        except Exception as e:  # handed to the conversations that asked, not lost in this thread
            error = e
        finally:
            self._cv.acquire()
        if error is None:
            self._past, self._mask = present, mask
            self.stats.calls += 1
            self.stats.rows += len(rows)
            self.stats.active_rows += int(active.sum())
            self.stats.seconds += seconds
            self.stats.steps_per_call[int(active.sum())] += 1
        for i, r in enumerate(rows):
            if active[i]:
                if error is None:
                    r.length += 1
                    r.logits = logits[i]
                r.embeds, r.error = None, error
        self._running = False
        self._cv.notify_all()

    def _pack(self) -> None:
        """Right-align every row's own columns again, dropping the holes (the batch would pass the context)."""
        self.stats.packs += 1
        host = self._host_past()
        width = max(r.length for r in self._rows.values())
        packed = [np.zeros((p.shape[0], p.shape[1], width, p.shape[3]), p.dtype) for p in host]
        mask = np.zeros((len(self._rows), width), np.int64)
        for i, r in enumerate(self._rows.values()):
            keep = self._mask[i] > 0
            for out, p in zip(packed, host):
                out[i, :, width - r.length :] = p[i][:, keep]
            mask[i, width - r.length :] = 1
        self._past, self._mask = packed, mask

    def _host_past(self) -> list[np.ndarray]:
        return [np.asarray(self._to_host(p)) for p in self._past]


def _pad_left(p: np.ndarray, n: int) -> np.ndarray:
    """n masked (zero) columns before a cache's own, on the sequence axis."""
    return np.pad(p, ((0, 0), (0, 0), (n, 0), (0, 0))) if n else p
