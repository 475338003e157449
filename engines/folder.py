"""`covo-edge build ART --target rtx|tensorrt -o ENGINES`: the artifacts' graphs to engines, engines.json beside.

An ENGINES folder that an earlier build wrote is updated: an engine whose recipe (the graph's checksum,
builder and version, target, compute capabilities, profiles) is unchanged is kept as it is, the others are
rebuilt. The new folder is staged beside the old one and swapped in at the end (runtime/files.py), so a
failed or interrupted build leaves the old folder whole.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from covo_edge.runtime.engines_manifest import (
    BUILDERS,
    ENGINES_SCHEMA_VERSION,
    RTX_PORTABLE,
    EngineEntry,
    EngineRecipe,
    EnginesManifest,
    graph_checksum,
)
from covo_edge.runtime.errors import ArtifactsError, DeviceError, OptionError
from covo_edge.runtime.files import staged_directory, written_by
from covo_edge.runtime.manifest import Manifest, sha256

from .build import build_engine, shrink_profiles, tensorrt, trtexec_command

TIMING_CACHE = "timing.cache"
MIN_CONTEXT = 256  # as `covo-edge export --max-context`


@dataclass
class BuildOptions:
    target: str = "rtx"
    graphs: list[str] | None = None  # None: every graph of the artifacts
    max_context: int | None = None  # shrink the LLM graphs' profiles to this many tokens
    max_batch: int | None = None
    compute_capabilities: tuple[str, ...] = ()  # rtx only; () = portable


@dataclass
class BuildReport:
    index: EnginesManifest
    built: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def _graphs(manifest: Manifest, options: BuildOptions) -> list[str]:
    names = options.graphs or list(manifest.graphs)
    unknown = [g for g in names if g not in manifest.graphs]
    if unknown:
        raise OptionError(f"--graphs: no graph {unknown[0]!r} in the artifacts (they have {', '.join(manifest.graphs)})")
    if options.max_context is not None and not MIN_CONTEXT <= options.max_context <= manifest.llm.max_context:
        raise OptionError(f"--max-context must be {MIN_CONTEXT} ... {manifest.llm.max_context} (the artifacts' "
                          f"context), got {options.max_context}")
    if options.compute_capabilities and options.target != "rtx":
        raise OptionError("--compute-capability is for --target rtx: classic TensorRT builds for the GPU it runs on")
    return names


def recipes(manifest: Manifest, options: BuildOptions, names: list[str], version: str,
            gpu_capability: str | None) -> dict[str, EngineRecipe]:
    """What each engine will be built from and for: compared with engines.json to skip unchanged builds."""
    if options.target == "rtx":
        caps, portable = list(options.compute_capabilities) or list(RTX_PORTABLE), not options.compute_capabilities
    else:
        caps, portable = [gpu_capability], False
    out = {}
    for g in names:
        spec = manifest.graphs[g]
        out[g] = EngineRecipe(
            source=spec.files, source_sha256=graph_checksum(manifest, g), precision=manifest.graph_precision(g),
            builder=BUILDERS[options.target], builder_version=version, target=options.target,
            compute_capabilities=caps, portable=portable,
            profiles=shrink_profiles(spec.profiles, options.max_context, options.max_batch), strongly_typed=True)
    return out


def trtexec_lines(artifacts: str | Path, out: str | Path, options: BuildOptions) -> list[str]:
    """`--print-trtexec`: the same builds as TensorRT command lines (needs no TensorRT here)."""
    artifacts, out = Path(artifacts), Path(out)
    manifest = Manifest.load(artifacts)
    cache = out / TIMING_CACHE if options.target == "tensorrt" else None
    lines = []
    for g in _graphs(manifest, options):
        spec = manifest.graphs[g]
        spec = replace(spec, profiles=shrink_profiles(spec.profiles, options.max_context, options.max_batch))
        lines.append(trtexec_command(artifacts / spec.file, out / f"{g}.engine", spec, options.target, cache))
    return lines


def _previous(out: Path) -> EnginesManifest | None:
    """The engines.json of an earlier build in `out`, if any is readable."""
    if written_by(out) != "build":
        return None
    try:
        return EnginesManifest.load(out)
    except ArtifactsError:
        return None


def _intact(path: Path, entry: EngineEntry) -> bool:
    return path.is_file() and path.stat().st_size == entry.bytes and sha256(path) == entry.sha256


def _carry(src: Path, dst: Path) -> None:
    """Keep an unchanged file in the new folder: a hard link (no copy of gigabytes) where the file system
    allows it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def build_engines(artifacts: str | Path, out: str | Path, options: BuildOptions, progress: bool = True) -> BuildReport:
    """Build (or keep) an engine per graph into `out`, with engines.json; see the module docstring."""
    from tqdm import tqdm

    artifacts, out = Path(artifacts), Path(out)
    manifest = Manifest.load(artifacts)
    names = _graphs(manifest, options)
    trt = tensorrt(options.target)
    gpu_capability = None
    if options.target == "tensorrt":  # the classic builder times kernels on the GPU it builds for
        from covo_edge.runtime.backends.cuda import probe

        gpu = probe()
        if isinstance(gpu, str):
            raise DeviceError(f"--target tensorrt builds on the GPU the engines are for: {gpu}; on a machine without "
                              "one use --target rtx, or --print-trtexec and run the lines on the device")
        gpu_capability = gpu.compute_capability
    wanted = recipes(manifest, options, names, trt.__version__, gpu_capability)
    old = _previous(out)
    report = BuildReport(EnginesManifest(ENGINES_SCHEMA_VERSION, manifest.source.release, {}))
    with staged_directory(out, "build", force=True) as tmp:
        cache_bytes = None
        if options.target == "tensorrt" and (out / TIMING_CACHE).is_file():
            cache_bytes = (out / TIMING_CACHE).read_bytes()
        if old is not None:  # engines of graphs not asked for this time stay
            for g, entry in old.engines.items():
                if g not in names and _intact(out / entry.file, entry):
                    _carry(out / entry.file, tmp / entry.file)
                    report.index.engines[g] = entry
        bar = tqdm(names, desc="build", unit="engine", disable=not progress)
        for g in bar:
            bar.set_postfix_str(g)
            previous = old.engines.get(g) if old is not None else None
            if previous is not None and previous.recipe == wanted[g] and _intact(out / previous.file, previous):
                _carry(out / previous.file, tmp / previous.file)
                report.index.engines[g] = previous
                report.kept.append(g)
                continue
            spec = replace(manifest.graphs[g], profiles=wanted[g].profiles)
            result = build_engine(artifacts / spec.file, spec, options.target, options.compute_capabilities, cache_bytes)
            cache_bytes = result.timing_cache or cache_bytes
            path = tmp / f"{g}.engine"
            path.write_bytes(result.engine)
            report.index.engines[g] = EngineEntry(
                file=path.name, bytes=result.engine.nbytes, sha256=sha256(path), recipe=wanted[g],
                build_seconds=round(result.seconds, 3), built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                warnings=result.warnings)
            del result  # the plan's memory goes before the next graph is parsed
            report.built.append(g)
        if cache_bytes:
            (tmp / TIMING_CACHE).write_bytes(cache_bytes)
            report.index.timing_cache = TIMING_CACHE
        report.index.save(tmp)
    return report
