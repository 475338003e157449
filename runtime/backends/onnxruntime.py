"""ONNX Runtime backend: CPU, or CUDA with onnxruntime-gpu. Only the graphs a mode needs are opened
(text-only mode never loads token2wav); inputs and outputs go through IO bindings so device-resident
values are reused."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..manifest import ArtifactsError, Manifest

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


class OnnxRuntimeBackend:
    def __init__(self, artifacts: Path, manifest: Manifest, device: str = "cpu"):
        if device not in PROVIDERS:
            raise ValueError(f"device must be one of {', '.join(PROVIDERS)}, got {device!r}")
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ArtifactsError("device='cuda' needs onnxruntime-gpu (pip install onnxruntime-gpu) and a CUDA GPU")
        self.artifacts = Path(artifacts)
        self.manifest = manifest
        self.device = device
        self.sessions: dict[str, ort.InferenceSession] = {}

    def session(self, graph: str) -> ort.InferenceSession:
        if graph not in self.sessions:
            spec = self.manifest.graphs.get(graph)
            if spec is None:
                raise ArtifactsError(f"artifacts have no {graph} graph; re-run `covo-edge export`")
            path = self.artifacts / spec.file
            if not path.is_file():
                raise ArtifactsError(f"missing {path}: the artifacts directory is incomplete; re-run `covo-edge export`")
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            try:
                self.sessions[graph] = ort.InferenceSession(str(path), options, providers=PROVIDERS[self.device])
            except Exception as e:  # ORT raises its own exception types for unreadable models
                raise ArtifactsError(f"cannot load {path}: {str(e).splitlines()[0]}") from None
        return self.sessions[graph]

    def prepare(self, graphs: Iterable[str]) -> None:
        for g in graphs:
            self.session(g)

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
