"""ONNX graph -> serialized TensorRT engine, with the optimization profiles from the manifest.

Two builders share this code: TensorRT-RTX (`tensorrt_rtx`, target "rtx": desktop RTX GPUs; builds ahead
of time on a machine without a GPU, portable across Ampere, Ada and Blackwell unless compute capabilities
are named) and TensorRT 10/11 (`tensorrt`, target "tensorrt": Jetson and datacenter GPUs; builds on the
GPU it is for). Networks are strongly typed: precision comes from the ONNX graph (fp16 casts, Q/DQ), as
TensorRT 11 requires and 10.3 supports.
"""

from __future__ import annotations

import importlib
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from covo_edge.runtime.engines_manifest import BUILDERS
from covo_edge.runtime.errors import CovoEdgeError, OptionError
from covo_edge.runtime.manifest import GraphSpec

LLM_DIMS = ("sequence", "past_sequence", "total_sequence")  # the dims --max-context bounds
TOOLS = {"rtx": "tensorrt_rtx", "tensorrt": "trtexec"}  # each builder's command-line tool


class EngineError(CovoEdgeError, RuntimeError):
    """TensorRT is missing or refused a graph; the message carries the parser's or builder's words."""


def tensorrt(target: str = "rtx") -> ModuleType:
    name = BUILDERS[target]
    try:
        return importlib.import_module(name)
    except ImportError:
        hint = ("pip install 'covo-edge[engines]'" if target == "rtx" else
                "on Jetson it comes with JetPack (python3-libnvinfer); elsewhere pip install tensorrt")
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


def shrink_profiles(profiles: list[dict[str, list[int]]], max_context: int | None = None,
                    max_batch: int | None = None) -> list[dict[str, list[int]]]:
    """The manifest's profiles within a smaller context and batch (smaller engines, less activation memory).

    Every corner stays consistent (past + sequence = total). A cut max corner keeps room for both a history
    and new tokens (at least half the total for the history, as the export's profiles do), and the opt and
    min corners are cut to fit under it. A batch is never cut below the profile's opt, which is what the
    runtime feeds (the guidance pair of two for the token2wav field); the backbone's batch max is set to
    `max_batch`, raised too: the runtime's batched decode feeds up to that many rows."""
    out = []
    for p in profiles:
        q = {k: list(v) for k, v in p.items()}
        if max_context is not None and all(d in q for d in LLM_DIMS):
            seq, past, total = q["sequence"], q["past_sequence"], q["total_sequence"]
            if total[2] > max_context:
                seq[2] = min(seq[2], max_context - min(past[2], max_context // 2))
                past[2], total[2] = max_context - seq[2], max_context
            for i in (1, 0):
                seq[i], past[i] = min(seq[i], seq[2]), min(past[i], past[2])
                total[i] = seq[i] + past[i]
        elif max_context is not None:
            for d in LLM_DIMS:
                if d in q:
                    q[d] = [min(x, max_context) for x in q[d]]
        if max_batch is not None and "batch" in q:
            lo, opt, hi = q["batch"]
            # The backbone's batch is the conversations decoding together (covo_edge.runtime.batching): it
            # takes max_batch as given; elsewhere the batch is only cut.
            hi = max_batch if all(d in q for d in LLM_DIMS) else min(hi, max_batch)
            q["batch"] = [lo, opt, max(opt, hi)]
        out.append(q)
    return out


@dataclass
class BuildResult:
    engine: memoryview  # the builder's own buffer: a 15 GB plan is not copied into a bytes object to be written
    seconds: float
    warnings: list[str] = field(default_factory=list)
    timing_cache: bytes | None = None  # updated, for the next build (classic TensorRT only)


def build_engine(onnx_path: Path, spec: GraphSpec, target: str = "rtx", compute_capabilities: tuple[str, ...] = (),
                 timing_cache: bytes | None = None) -> BuildResult:
    """Parse and build one graph with `spec.profiles`; any parser or builder error raises EngineError naming it.

    compute_capabilities ("8.9", ...): TensorRT-RTX only, the GPUs to build for (default: portable).
    timing_cache: classic TensorRT reuses layer timings across builds; TensorRT-RTX has no timing cache
    (its calls are no-ops since 1.2), so it is not used there."""
    trt = tensorrt(target)
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
    if compute_capabilities:
        config.num_compute_capabilities = len(compute_capabilities)
        for i, cc in enumerate(compute_capabilities):
            config.set_compute_capability(getattr(trt.ComputeCapability, "SM" + cc.replace(".", "")), i)
    cache = None
    if target == "tensorrt":
        cache = config.create_timing_cache(timing_cache or b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
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
    del parser, network  # the parsed weights: the plan holds its own copy
    return BuildResult(engine=memoryview(engine), seconds=time.perf_counter() - t0, warnings=warnings,
                       timing_cache=bytes(cache.serialize()) if cache is not None else None)


def trtexec_command(onnx_path: Path, engine_path: Path, spec: GraphSpec, target: str,
                    timing_cache: Path | None = None) -> str:
    """The command line that builds the same engine with TensorRT's own tool (`trtexec`, or `tensorrt_rtx`
    for TensorRT-RTX): each profile as a --minShapes/--optShapes/--maxShapes group, in order. Compute
    capabilities are set through the Python builder only."""
    args = [TOOLS[target], f"--onnx={onnx_path}", f"--saveEngine={engine_path}", "--stronglyTyped"]
    for index in range(len(spec.profiles)):
        shapes = spec.profile_shapes(index)
        for flag, corner in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
            value = ",".join(f"{name}:{'x'.join(map(str, s[corner]))}" for name, s in shapes.items())
            args.append(f"{flag}={value}")
    if timing_cache is not None:
        args.append(f"--timingCacheFile={timing_cache}")
    return shlex.join(args)


def parse_compute_capability(text: str) -> str:
    """'8.9' or '89' -> '8.9', checked against what TensorRT-RTX can target."""
    cc = text if "." in text else f"{text[:-1]}.{text[-1:]}"
    known = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")
    if cc not in known:
        raise OptionError(f"--compute-capability must be one of {', '.join(known)}, got {text!r}")
    return cc
