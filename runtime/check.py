"""`covo-edge check ART`: is this artifacts directory intact and runnable? Every file against its sha256,
every graph loaded through the backend (its real I/O against the manifest) and run once on the smallest
inputs of its first engine profile, outputs checked for the manifest's shapes and finite values."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .assistant import load_tokenizer
from .backends import Backend, load_backend
from .errors import CovoEdgeError
from .manifest import GraphSpec, Manifest, dim_value
from .token2wav import manifest_voice


@dataclass
class Finding:
    name: str  # a graph, or "other files"
    ok: bool
    detail: str  # one line


def profile_feeds(spec: GraphSpec, rng: np.random.Generator, profile: int = 0,
                  corner: int = 0) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Inputs at one corner (0 min, 1 opt, 2 max) of one engine profile's dims (consistent by construction:
    past + new = total). Ids, codes and positions are 0, the attention mask 1, floats small noise."""
    dims = {name: values[corner] for name, values in spec.profiles[profile].items()}
    feeds = {}
    for t in spec.inputs:
        shape = [dim_value(d, dims) for d in t.shape]
        if t.dtype.startswith("int"):
            feeds[t.name] = np.full(shape, 1 if t.name == "attention_mask" else 0, t.dtype)
        else:
            feeds[t.name] = (0.5 * rng.standard_normal(shape)).astype(t.dtype)
    return feeds, dims


def run_graph(backend: Backend, name: str, spec: GraphSpec) -> str:
    """Run once: a one-line summary, or ValueError when an output breaks the manifest."""
    feeds, dims = profile_feeds(spec, np.random.default_rng(0))
    t0 = time.perf_counter()
    out = backend.run(name, feeds, host=[t.name for t in spec.outputs])
    ms = 1000 * (time.perf_counter() - t0)
    for t in spec.outputs:
        want = [dim_value(d, dims) for d in t.shape]
        got = out[t.name]
        if list(got.shape) != want:
            raise ValueError(f"output {t.name} has shape {list(got.shape)}, the manifest says {want}")
        if got.dtype.kind == "f" and not np.isfinite(got).all():
            raise ValueError(f"output {t.name} holds NaN or infinite values")
    first_in, first_out = spec.inputs[0], spec.outputs[0]
    return (f"ran {first_in.name} {list(feeds[first_in.name].shape)} -> {first_out.name} "
            f"{list(out[first_out.name].shape)}, finite, {ms:.0f} ms")


def check_artifacts(artifacts: str | Path, backend: str = "onnxruntime", device: str = "cpu",
                    engines: str | None = None) -> Iterator[Finding]:
    root = Path(artifacts)
    manifest = Manifest.load(root, check_sizes=False)  # an unreadable manifest is bad input (exit 2)
    problems = manifest.file_problems(root, checksums=True)
    engine = load_backend(backend, root, manifest, device, engines)
    for name, spec in manifest.graphs.items():
        bad = [f"{f}: {problems[f]}" for f in spec.files if f in problems]
        if bad:
            yield Finding(name, False, "; ".join(bad))
            continue
        try:
            engine.prepare([name])
            ran = run_graph(engine, name, spec)
        except Exception as e:  # a report, not a crash: the backend's own error types included
            yield Finding(name, False, str(e).strip().splitlines()[0])
            continue
        yield Finding(name, True, f"{len(spec.files)} files, sha256 ok; {ran}")
    in_graphs = {f for spec in manifest.graphs.values() for f in spec.files}
    others = [f for f in manifest.files if f not in in_graphs]
    bad = [f"{f}: {problems[f]}" for f in others if f in problems]
    if not bad:
        try:
            load_tokenizer(root / "tokenizer.json")
            for voice in manifest.voices:
                manifest_voice(root, manifest, voice)
        except CovoEdgeError as e:
            bad.append(str(e))
    voices = ", ".join(manifest.voices) or "none"
    yield Finding("other files", not bad, "; ".join(bad) or f"{len(others)} files, sha256 ok; tokenizer loads; "
                  f"voices fit the graphs ({voices})")


def run_check(artifacts: str, backend: str = "onnxruntime", device: str = "cpu", engines: str | None = None) -> int:
    """Print one line per graph (and one for the other files); exit status 1 if any failed."""
    failed = 0
    for f in check_artifacts(artifacts, backend, device, engines):
        failed += not f.ok
        print(f"{'ok' if f.ok else 'FAIL':<5} {f.name:<19} {f.detail}", flush=True)
    print(f"{artifacts}: {'all checks passed' if not failed else f'{failed} check(s) failed'}")
    return 1 if failed else 0
