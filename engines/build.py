"""ONNX graph -> serialized TensorRT engine, with the optimization profile from the manifest.

Two builders share this code: TensorRT-RTX (`tensorrt_rtx`, desktop RTX GPUs; builds ahead of time
on a machine without a GPU) and TensorRT 10/11 (`tensorrt`, Jetson and datacenter GPUs). Networks
are strongly typed: precision comes from the ONNX graph (fp16 casts, Q/DQ), as TensorRT 11 requires.
Building touches no GPU; running an engine (the runtime's job) needs one.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from covo_edge.runtime.manifest import GraphSpec

FLAVOURS = {"rtx": "tensorrt_rtx", "trt": "tensorrt"}


class EngineError(RuntimeError):
    """TensorRT is missing or refused a graph; the message carries the parser's or builder's words."""


def tensorrt(flavour: str = "rtx") -> ModuleType:
    name = FLAVOURS[flavour]
    try:
        return importlib.import_module(name)
    except ImportError:
        hint = "pip install tensorrt-rtx-cu12" if flavour == "rtx" else "install TensorRT from JetPack or NVIDIA's index"
        raise EngineError(f"{name} is not installed ({hint})") from None


_loggers: dict[str, object] = {}


def _logger(trt: ModuleType):
    """One logger per TensorRT module: TensorRT keeps the first one it is given, for the process."""

    class Collector(trt.ILogger):
        def __init__(self):
            super().__init__()
            self.messages: list[tuple[str, str]] = []

        def log(self, severity, msg):
            if severity <= trt.ILogger.Severity.WARNING:
                self.messages.append((severity.name, msg))

    if trt.__name__ not in _loggers:
        _loggers[trt.__name__] = Collector()
    return _loggers[trt.__name__]


@dataclass
class BuildResult:
    engine: bytes
    seconds: float
    warnings: list[str] = field(default_factory=list)


def build_engine(onnx_path: Path, spec: GraphSpec, flavour: str = "rtx") -> BuildResult:
    """Parse and build one graph; any parser or builder error raises EngineError naming it."""
    trt = tensorrt(flavour)
    log = _logger(trt)
    log.messages.clear()
    t0 = time.perf_counter()
    builder = trt.Builder(log)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{trt.__name__} cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    for index in range(len(spec.profiles)):
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in spec.profile_shapes(index).items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        errors = "; ".join(m for s, m in log.messages if s in ("ERROR", "INTERNAL_ERROR"))
        raise EngineError(f"{trt.__name__} failed to build {onnx_path.name}: {errors or 'no message'}")
    warnings = [m for s, m in log.messages if s == "WARNING"]
    return BuildResult(engine=bytes(engine), seconds=time.perf_counter() - t0, warnings=warnings)
