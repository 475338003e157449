"""TensorRT backend: runs the engines `covo-edge build` wrote, with `tensorrt` (Jetson, datacenter GPUs) or
`tensorrt_rtx` (desktop RTX; the same Python API), device memory and the stream through cuda-bindings.

Before anything is deserialized, engines.json is compared with the TensorRT version here, this GPU's
compute capability and the artifacts' graph checksums (`compatibility_problem`): a mismatch is refused
with one line, never run. Creating a TensorRT runtime without a GPU crashes the process, so the GPU is
probed first (`cuda.probe`).

Outputs not asked for on the host stay on the device as `DeviceArray`s and are fed back as they are: the
KV cache lives on the GPU across steps and turns, decode-step embeddings never come back, only logits
and audio are copied out. Each step's present cache is a new tensor (the graph's Concat of past and new)
from the power-of-two pool in `cuda.py`, so past and present alternate between two blocks per tensor
instead of being allocated per step; a max-context buffer updated in place would need the graph to write
into its input, which the exported backbone (KV cache as plain graph I/O, DESIGN.md) does not.

The backbone's engine has two optimization profiles, prefill and decode; each call takes the most
specialised profile that holds its input shapes (`choose_profile`), switching only when it changes.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from math import prod
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..engines_manifest import (
    BUILDERS,
    EnginesManifest,
    build_command,
    compatibility_problem,
)
from ..errors import ArtifactsError, DeviceError
from ..manifest import Manifest, TensorSpec
from .cuda import Cuda, DeviceArray, probe

DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT64": "int64", "INT32": "int32", "BOOL": "bool", "INT8": "int8",
          "UINT8": "uint8"}
Ranges = dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # input -> (min shape, max shape) of one profile


def choose_profile(profiles: list[Ranges], shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """The profile whose ranges hold every input shape, the most specialised one (fewest shapes in its
    ranges) when several do: a one-token step on a short history fits prefill and decode, and decode is
    the one tuned for it. None when none holds them."""
    fits = []
    for k, ranges in enumerate(profiles):
        if all(len(shapes[n]) == len(lo) and all(a <= s <= b for s, a, b in zip(shapes[n], lo, hi))
               for n, (lo, hi) in ranges.items()):
            fits.append((prod(b - a + 1 for lo, hi in ranges.values() for a, b in zip(lo, hi)), k))
    return min(fits)[1] if fits else None


def import_builder(name: str) -> ModuleType | None:
    """The TensorRT module engines.json names (`tensorrt` or `tensorrt_rtx`), None when not installed."""
    if name not in BUILDERS.values():
        raise ArtifactsError(f"engines.json names an unknown builder {name!r}; rebuild with `covo-edge build`")
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


class _Engine:
    """One deserialized engine, its execution context and I/O bookkeeping."""

    def __init__(self, trt: ModuleType, engine: Any, path: Path):
        self.path = path
        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: np.dtype(DTYPES.get(engine.get_tensor_dtype(n).name, "void")) for n in names}
        self.ranges = [{n: tuple(tuple(s) for s in engine.get_tensor_profile_shape(n, k)[::2]) for n in self.inputs}
                       for k in range(engine.num_optimization_profiles)]
        self.profile = 0

    def specs(self, names: list[str], order: list[TensorSpec]) -> list[TensorSpec]:
        """The engine's tensors as manifest specs (dynamic dims as '?'), in the manifest's order where the
        names agree: TensorRT binds by name, so only names, dtypes, ranks and fixed dims matter."""
        rank = {t.name: i for i, t in enumerate(order)}
        specs = [TensorSpec(n, self.dtypes[n].name, [d if d >= 0 else "?" for d in self.engine.get_tensor_shape(n)])
                 for n in names]
        return sorted(specs, key=lambda t: rank.get(t.name, len(rank)))


class TensorRTBackend:
    device = "cuda"

    def __init__(self, artifacts: Path, manifest: Manifest, engines: Path):
        self.artifacts = Path(artifacts)
        self.manifest = manifest
        self.dir = Path(engines)
        self.index = EnginesManifest.load(self.dir)
        builders = {e.recipe.builder for e in self.index.engines.values()}
        if len(builders) > 1:
            raise ArtifactsError(f"{self.dir} mixes engines of {' and '.join(sorted(builders))}: rebuild them all with "
                                 f"`{build_command(self.artifacts, self.dir, 'rtx')}` (or --target tensorrt)")
        self.builder = builders.pop() if builders else "tensorrt_rtx"
        self.trt = import_builder(self.builder)
        gpu = probe()
        if isinstance(gpu, str):
            raise DeviceError(f"the TensorRT backend needs a CUDA GPU: {gpu}; use --backend onnxruntime on this machine")
        self.gpu = gpu
        self._cap_context()
        self._engines: dict[str, _Engine] = {}
        self.cuda: Cuda | None = None
        self.runtime = None

    def _cap_context(self) -> None:
        """Engines built with a smaller --max-context bound the conversation: the assistant reads the
        manifest's context, so the manifest it shares with this backend carries the engines' limit."""
        entry = self.index.engines.get("backbone")
        if entry is not None:
            limit = max(p["total_sequence"][2] for p in entry.recipe.profiles if "total_sequence" in p)
            self.manifest.llm.max_context = min(self.manifest.llm.max_context, limit)

    def prepare(self, graphs: Iterable[str]) -> None:
        graphs = [g for g in graphs if g not in self._engines]
        problem = compatibility_problem(self.dir, self.index, self.artifacts, self.manifest, graphs, self.builder,
                                        getattr(self.trt, "__version__", None), self.gpu.compute_capability)
        if problem:
            raise ArtifactsError(problem)
        if self.runtime is None:  # only now: a GPU is there and the engines asked for are compatible
            self.cuda = Cuda(self.gpu.ordinal)
            self.runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.ERROR))
        for g in graphs:
            self._engines[g] = self._load(g)

    def _engine(self, graph: str) -> _Engine:
        if graph not in self._engines:
            self.prepare([graph])
        return self._engines[graph]

    def _load(self, graph: str) -> _Engine:
        entry = self.index.engines[graph]
        path = self.dir / entry.file
        engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ArtifactsError(f"{self.builder} cannot deserialize {path}: rebuild with "
                                 f"`{build_command(self.artifacts, self.dir, entry.recipe.target)}`")
        e = _Engine(self.trt, engine, path)
        spec = self.manifest.graphs[graph]
        spec.check_io(path, e.specs(e.inputs, spec.inputs), e.specs(e.outputs, spec.outputs))
        return e

    def run(self, graph: str, feeds: Mapping[str, Any], host: Iterable[str] = ()) -> dict[str, Any]:
        e = self._engine(graph)
        cuda = self.cuda
        shapes = {n: tuple(np.shape(v)) if not isinstance(v, DeviceArray) else v.shape for n, v in feeds.items()}
        k = choose_profile(e.ranges, shapes)
        if k is None:
            given = ", ".join(f"{n} {list(s)}" for n, s in list(shapes.items())[:3])
            raise ArtifactsError(f"{graph}: inputs ({given}, ...) fall outside every optimization profile of {e.path}: "
                                 "rebuild with larger --max-context/--max-batch")
        if k != e.profile:
            e.context.set_optimization_profile_async(k, cuda.stream_handle)
            e.profile = k
        inputs = []  # held until the run is queued; the stream orders any reuse of their blocks after it
        for n in e.inputs:
            v = feeds[n]
            if not isinstance(v, DeviceArray):
                v = cuda.to_device(np.asarray(v, e.dtypes[n]))
            elif v.dtype != e.dtypes[n]:
                raise ArtifactsError(f"{graph}: {n} is {v.dtype} on the device, {e.path} takes {e.dtypes[n]}")
            inputs.append(v)
            e.context.set_input_shape(n, v.shape)
            e.context.set_tensor_address(n, v.ptr)
        out = {}
        for n in e.outputs:
            out[n] = cuda.empty(tuple(e.context.get_tensor_shape(n)), e.dtypes[n])
            e.context.set_tensor_address(n, out[n].ptr)
        if not e.context.execute_async_v3(cuda.stream_handle):
            raise DeviceError(f"{self.builder} failed to run {e.path}")
        host = set(host)
        return {n: cuda.to_host(v) if n in host else v for n, v in out.items()}

    def to_host(self, value: Any) -> np.ndarray:
        return self.cuda.to_host(value) if isinstance(value, DeviceArray) else np.asarray(value)
