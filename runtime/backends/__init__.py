"""Backends run one named graph of the artifacts on named arrays; everything else is backend-free.

The interface is deliberately small so TensorRT sits behind it too (`tensorrt.py`, engines from
`covo-edge build`):
    prepare(graphs)                     open these graphs now (each checked against the manifest)
    run(graph, feeds, host=names)       -> {output name: value}
    to_host(value)                      -> the numpy array of an output that stayed on the backend
Outputs named in `host` come back as numpy arrays; the others stay as backend-native device values
(the KV cache, decode-step embeddings) that can be fed straight back in without a host round trip.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np

from ..errors import OptionError
from ..manifest import Manifest

BackendName = Literal["onnxruntime", "tensorrt"]
Device = Literal["cpu", "cuda"]
BACKENDS: tuple[str, ...] = get_args(BackendName)
DEVICES: tuple[str, ...] = get_args(Device)


class Backend(Protocol):
    device: str

    def prepare(self, graphs: Iterable[str]) -> None:
        """Load these graphs now, so the first turn does not pay for it; refuse files that break the manifest."""

    def run(self, graph: str, feeds: Mapping[str, Any], host: Iterable[str] = ()) -> dict[str, Any]: ...

    def to_host(self, value: Any) -> np.ndarray:
        """A backend-native value (a KV cache tensor) as a numpy array, e.g. to cut it; numpy passes through."""


def load_backend(name: BackendName, artifacts: Path, manifest: Manifest, device: Device,
                 engines: str | Path | None = None) -> Backend:
    """`engines`: the folder `covo-edge build` wrote, for (and only for) the TensorRT backend, which always
    runs on the GPU (`device` does not apply to it)."""
    if device not in DEVICES:
        raise OptionError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if (name == "tensorrt") != (engines is not None):
        raise OptionError("the tensorrt backend needs engines (--engines ENGINES, a folder `covo-edge build` wrote)"
                          if name == "tensorrt" else f"engines are for the tensorrt backend, not {name!r}")
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(artifacts, manifest, device)
    if name == "tensorrt":
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(artifacts, manifest, Path(engines))
    raise OptionError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
