"""ONNX Runtime backend: CPU, or CUDA with onnxruntime-gpu. Only the graphs a mode needs are opened
(text-only mode never loads token2wav); inputs and outputs go through IO bindings so device-resident
values are reused."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..errors import ArtifactsError
from ..manifest import Manifest, TensorSpec

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
ACCURACY_LEVEL = 4
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(int32)": "int32", "tensor(bool)": "bool"}


def _specs(args: list[ort.NodeArg]) -> list[TensorSpec]:
    return [TensorSpec(a.name, ORT_DTYPES.get(a.type, a.type), [d if isinstance(d, int) else str(d) for d in a.shape])
            for a in args]


@cache
def _share_cpu_arena() -> None:
    """Register one CPU memory arena with ORT's environment, once per process, for sessions to share."""
    cpu = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(cpu, ort.OrtArenaCfg({}))


class OnnxRuntimeBackend:
    def __init__(self, artifacts: Path, manifest: Manifest, device: str = "cpu"):
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ArtifactsError("device='cuda' needs onnxruntime-gpu (pip install onnxruntime-gpu) and a CUDA GPU")
        self.artifacts = Path(artifacts)
        self.manifest = manifest
        self.device = device
        self.sessions: dict[str, ort.InferenceSession] = {}

    def session(self, graph: str) -> ort.InferenceSession:
        if graph not in self.sessions:
            spec = self.manifest.graphs[graph]
            path = self.artifacts / spec.file
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # Quantized graphs: ORT fuses int4/int8 DequantizeLinear + MatMul into MatMulNBits; level 4 computes
            # in int8 on the CPU (the fast path, as onnxruntime-genai does). Graphs without DQ ignore it.
            options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(ACCURACY_LEVEL))
            if self.device == "cpu":
                # One arena for every graph's intermediates instead of one per session: an arena keeps its
                # high-water mark, so per-session arenas held the sum of the encoder's, backbone's, field's and
                # vocoder's peaks. Small fp32 artifacts (2.76 GB on disk), one spoken turn of 1714 tokens: peak
                # RSS 3.54 -> 3.14 GB, same speed, same outputs.
                _share_cpu_arena()
                options.add_session_config_entry("session.use_env_allocators", "1")
            try:
                session = ort.InferenceSession(str(path), options, providers=PROVIDERS[self.device])
            except Exception as e:  # ORT raises its own exception types for unreadable models
                raise ArtifactsError(f"cannot load {path}: {str(e).splitlines()[0]}; restore the file or re-run "
                                     "`covo-edge export`") from None
            spec.check_io(path, _specs(session.get_inputs()), _specs(session.get_outputs()))
            self.sessions[graph] = session
        return self.sessions[graph]

    def prepare(self, graphs: Iterable[str]) -> None:
        """Open the graphs, largest first: while a session loads, ORT holds a graph's weights twice (the
        mapped file and the prepacked copy), so the biggest graph's double is paid before the rest is
        resident. Full-width fp32 artifacts (10.1 GiB): peak at load 8.73 -> 7.49 GiB."""
        for g in sorted(graphs, key=self._bytes, reverse=True):
            self.session(g)

    def _bytes(self, graph: str) -> int:
        return sum(self.manifest.files[f].bytes for f in self.manifest.graphs[graph].files)

    def run(self, graph: str, feeds: Mapping[str, Any], host: Iterable[str] = ()) -> dict[str, Any]:
        s = self.session(graph)
        binding = s.io_binding()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        names = [o.name for o in s.get_outputs()]
        for name in names:
            binding.bind_output(name, "cpu" if name in host or self.device == "cpu" else "cuda")
        s.run_with_iobinding(binding)
        host = set(host)
        return {n: (v.numpy() if n in host else v) for n, v in zip(names, binding.get_outputs())}

    def to_host(self, value: Any) -> np.ndarray:
        return value.numpy() if isinstance(value, ort.OrtValue) else np.asarray(value)
