"""Calibration data: what each graph to be quantized sees while the real runtime answers questions.

The source artifacts answer the utterances through the torch-free runtime (frontend, encoder, adapter,
prompt, prefill, decode), two turns per conversation so later turns see a history; a backend wrapper keeps
a host copy of the feeds of the graphs being quantized, prefill and decode steps alike. Without a folder
of the user's audio, synthetic utterances stand in, and the description says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from covo_edge.runtime.assistant import Assistant, Model
from covo_edge.runtime.backends import Backend, load_backend
from covo_edge.runtime.errors import InputError
from covo_edge.runtime.frontend import load_audio
from covo_edge.runtime.manifest import Manifest
from covo_edge.runtime.synthetic import synthetic_utterance

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au")
SYNTHETIC_SECONDS = (3.0, 4.5, 2.5, 6.0, 3.5, 5.0, 2.0, 4.0)


@dataclass
class Utterance:
    name: str
    wav: np.ndarray
    sample_rate: int


@dataclass
class Calibration:
    feeds: dict[str, list[dict[str, np.ndarray]]]  # graph -> its recorded feeds, in call order
    description: str  # where the audio came from, how much, how many steps

    def samples(self, graph: str, limit: int, prefills: int) -> list[dict[str, np.ndarray]]:
        """At most `limit` recorded feeds of one graph, spread over the recording. For the backbone: its
        one-token decode steps (all of one shape) and at most `prefills` question prefills (not the system
        prompt's, which is the same text every time)."""
        items = self.feeds[graph]
        long = []
        if "inputs_embeds" in items[0]:
            long = [f for f in items[1:] if f["inputs_embeds"].shape[1] > 1][:prefills]
            items = [f for f in items if f["inputs_embeds"].shape[1] == 1]
        if len(items) > limit - len(long):
            items = [items[i] for i in np.linspace(0, len(items) - 1, limit - len(long)).round().astype(int)]
        return items + long

    def reader(self, graph: str, limit: int, prefills: int) -> CalibrationDataReader:
        return _Reader(self.samples(graph, limit, prefills))


class _Reader(CalibrationDataReader):
    """ONNX Runtime's calibration reader over recorded feeds (ModelOpt also asks for the first one)."""

    def __init__(self, items: list[dict[str, np.ndarray]]):
        self.items = items
        self.next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.next == len(self.items):
            return None
        self.next += 1
        return self.items[self.next - 1]

    def get_first(self) -> dict[str, np.ndarray]:
        return self.items[0]

    def rewind(self) -> None:
        self.next = 0


class RecordingBackend:
    """A backend that runs graphs on another and keeps host copies of the feeds of some (`feeds`), and of
    the outputs those calls returned to the host (`outputs`, when given)."""

    def __init__(self, backend: Backend, feeds: dict[str, list[dict[str, np.ndarray]]],
                 outputs: dict[str, list[dict[str, np.ndarray]]] | None = None):
        self.backend = backend
        self.device = backend.device
        self.feeds = feeds
        self.outputs = outputs

    def prepare(self, graphs: Iterable[str]) -> None:
        self.backend.prepare(graphs)

    def run(self, graph: str, feeds: Mapping[str, Any], host: Iterable[str] = ()) -> dict[str, Any]:
        out = self.backend.run(graph, feeds, host)
        if graph in self.feeds:
            self.feeds[graph].append({k: np.array(v.numpy() if hasattr(v, "numpy") else v) for k, v in feeds.items()})
            if self.outputs is not None:
                self.outputs[graph].append({k: v for k, v in out.items() if isinstance(v, np.ndarray)})
        return out


def utterances(folder: str | Path | None, count: int) -> tuple[list[Utterance], str]:
    """Up to `count` recordings from `folder` (any format the runtime reads), or synthetic stand-ins."""
    if folder is None:
        made = [Utterance(f"synthetic-{i}", synthetic_utterance(SYNTHETIC_SECONDS[i % len(SYNTHETIC_SECONDS)],
                                                                16000, seed=i), 16000) for i in range(count)]
        return made, ("built-in fallback: synthetic utterances (no --calibration-dir given; real speech "
                      "calibrates the real checkpoint better)")
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--calibration-dir {folder} is not a directory: pass a folder of the user's recordings")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)[:count]
    if not paths:
        raise InputError(f"{folder} holds no audio ({', '.join(AUDIO_SUFFIXES)}): add recordings or leave out "
                         "--calibration-dir for the synthetic fallback")
    if len(paths) < 2:
        raise InputError(f"{folder} holds {len(paths)} recording(s): calibration and the report's two turns need at "
                         "least 2")
    found = [Utterance(p.name, *load_audio(p)) for p in paths]
    return found, f"recordings from {folder.resolve().name}/ ({', '.join(u.name for u in found[:4])}" + \
        (", ..." if len(found) > 4 else "") + ")"


def capture(artifacts: Path, graphs: Iterable[str], inputs: list[Utterance], source: str, decode_steps: int,
            progress: Callable[[str], None] = lambda _: None) -> Calibration:
    """Answer the utterances in conversations of two turns, recording the feeds of `graphs`. Replies are
    sampled (seeded), since a greedy random-weight model may stop at once; at most `decode_steps` new
    tokens per turn keep the recorded KV caches' memory bounded."""
    manifest = Manifest.load(artifacts)
    store: dict[str, list[dict[str, np.ndarray]]] = {g: [] for g in graphs}
    backend = RecordingBackend(load_backend("onnxruntime", artifacts, manifest, "cpu"), store)
    assistant = Assistant(Model(artifacts, manifest, backend, "text"), None)
    for i, u in enumerate(inputs):
        if i % 2 == 0:
            assistant.reset()
        progress(u.name)
        assistant.reply(u.wav, u.sample_rate, greedy=False, max_new_tokens=decode_steps, seed=i)
    steps = sum(f["inputs_embeds"].shape[1] == 1 for f in store.get("backbone", []))
    return Calibration(store, f"{source}: {len(inputs)} utterances, two turns per conversation, up to "
                              f"{decode_steps} sampled tokens per turn ({steps} decode steps recorded)")
