"""engines.json of an engines directory (`covo-edge build`): what every engine was built from, with and for.

The builder writes it and the TensorRT backend reads it before deserializing anything, because an engine
built by another TensorRT version, for another GPU, or from another graph fails, crashes or silently
misbehaves. `compatibility_problem` turns every such mismatch into one line naming what differs and the
`covo-edge build` command that fixes it. It lives in the runtime (which imports nothing of engines/):
the builder imports it from here, so there is one definition.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ArtifactsError
from .manifest import Manifest, _parse

ENGINES_SCHEMA_VERSION = 1
ENGINES_JSON = "engines.json"
TARGETS = ("rtx", "tensorrt")
BUILDERS = {"rtx": "tensorrt_rtx", "tensorrt": "tensorrt"}  # target -> the Python module that builds and runs it
# TensorRT-RTX's portable engines run on these (Ampere, Ada, Blackwell RTX); not on Hopper 9.0 or Orin 8.7.
RTX_PORTABLE = ("8.6", "8.9", "12.0", "12.1")


@dataclass
class EngineRecipe:
    """Everything an engine depends on: an engine whose recipe equals the new one is not rebuilt."""

    source: list[str]  # the graph's files in the artifacts (the .onnx and its external data)
    source_sha256: str  # of those files' checksums in the artifacts' manifest (`graph_checksum`)
    precision: str  # the graph's precision (TensorRT builds strongly typed: the graph decides)
    builder: str  # tensorrt_rtx | tensorrt
    builder_version: str
    target: str  # rtx | tensorrt
    compute_capabilities: list[str]  # the GPUs it runs on, "8.6"...
    portable: bool  # TensorRT-RTX's default set (RTX_PORTABLE) rather than chosen ones
    profiles: list[dict[str, list[int]]]  # dynamic dim -> [min, opt, max], one dict per optimization profile
    strongly_typed: bool


@dataclass
class EngineEntry:
    file: str  # beside engines.json
    bytes: int
    sha256: str
    recipe: EngineRecipe
    build_seconds: float
    built_at: str  # UTC, ISO 8601
    warnings: list[str] = field(default_factory=list)  # the builder's


@dataclass
class EnginesManifest:
    schema_version: int
    release: str  # the artifacts' source release, for the reader
    engines: dict[str, EngineEntry]  # graph name -> its engine
    timing_cache: str | None = None  # file beside engines.json (classic TensorRT; TensorRT-RTX has none)

    def save(self, directory: Path) -> str:
        text = json.dumps(asdict(self), indent=2) + "\n"
        (Path(directory) / ENGINES_JSON).write_text(text)
        return text

    @classmethod
    def load(cls, directory: str | Path) -> EnginesManifest:
        path = Path(directory) / ENGINES_JSON
        if not path.is_file():
            what = "does not exist" if not Path(directory).exists() else f"has no {ENGINES_JSON}"
            raise ArtifactsError(f"{directory} {what}: pass a folder written by `covo-edge build`")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ArtifactsError(f"cannot read {path} ({e}); rebuild with `covo-edge build`") from None
        if not isinstance(d, dict) or d.get("schema_version") != ENGINES_SCHEMA_VERSION:
            raise ArtifactsError(f"{path} is not an engines.json this covo-edge reads (schema "
                                 f"{ENGINES_SCHEMA_VERSION}); rebuild with `covo-edge build`")
        return _parse(cls, d, ENGINES_JSON)


def graph_checksum(manifest: Manifest, graph: str) -> str:
    """One checksum for a graph's files, from the sha256s the artifacts' manifest records (no re-hashing
    of gigabytes at every load; `covo-edge check` verifies those)."""
    spec = manifest.graphs[graph]
    lines = "".join(f"{f} {manifest.files[f].sha256}\n" for f in spec.files)
    return hashlib.sha256(lines.encode()).hexdigest()


def build_command(artifacts: str | Path, engines: str | Path, target: str) -> str:
    return f"covo-edge build {artifacts} --target {target} -o {engines}"


def compatibility_problem(directory: str | Path, index: EnginesManifest, artifacts: str | Path, manifest: Manifest,
                          graphs: list[str], builder: str, version: str | None,
                          compute_capability: str | None) -> str | None:
    """None when every engine of `graphs` can run here; else one line naming what differs and the fix.

    builder/version: the TensorRT module importable here (version None: not installed);
    compute_capability: this GPU's ("8.9"), None to skip that check (no GPU probed yet)."""
    directory = Path(directory)
    for graph in graphs:
        entry = index.engines.get(graph)
        if entry is None:
            target = next(iter(index.engines.values())).recipe.target if index.engines else "rtx"
            return (f"{directory} has no engine for the {graph} graph: run "
                    f"`{build_command(artifacts, directory, target)}`")
        r = entry.recipe
        fix = f"`{build_command(artifacts, directory, r.target)}`"
        if r.builder != builder or version is None:
            return (f"{directory / entry.file} was built by {r.builder} {r.builder_version}, which is not installed "
                    f"here: install it, or rebuild with {fix}")
        if r.builder_version != version:
            return (f"{directory / entry.file} was built by {r.builder} {r.builder_version}, this machine has "
                    f"{version}: engines only run on the version that built them; rebuild with {fix}")
        if compute_capability is not None and compute_capability not in r.compute_capabilities:
            targets = ", ".join(r.compute_capabilities)
            if r.target == "rtx" and compute_capability not in RTX_PORTABLE:
                fix = f"use `--target tensorrt` (TensorRT-RTX does not run on it): `{build_command(artifacts, directory, 'tensorrt')}`"
            return (f"{directory / entry.file} was built for compute capability {targets}, this GPU is "
                    f"{compute_capability}: {fix}")
        if graph not in manifest.graphs or r.source_sha256 != graph_checksum(manifest, graph):
            return (f"{directory / entry.file} was built from another {graph} graph than the one in {artifacts} "
                    f"(re-exported or quantized since): rebuild with {fix}")
        path = directory / entry.file
        size = path.stat().st_size if path.is_file() else None
        if size != entry.bytes:
            what = "is missing" if size is None else f"has {size} bytes, engines.json says {entry.bytes}"
            return f"{path} {what}: rebuild with {fix}"
    return None
