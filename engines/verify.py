"""`covo-edge verify ART --engines ENGINES`: every engine against ONNX Runtime on the same inputs.

Each engine runs through the runtime's own TensorRT backend (the code the assistant uses), on inputs at
the opt shapes of each of its optimization profiles; ONNX Runtime on the CPU runs the graph it was built
from. Polygraphy's comparator decides, with a tolerance per precision: an output passes when every element
is within atol + rtol * |reference|. One table row per output, exit status 1 when any fails.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from covo_edge.runtime.backends import Backend
from covo_edge.runtime.check import profile_feeds
from covo_edge.runtime.engines_manifest import EnginesManifest
from covo_edge.runtime.manifest import Manifest

# (atol, rtol) by the graph's precision; anything else (a quantization recipe's words) gets the loosest.
TOLERANCES = {"float32": (1e-3, 1e-3), "float16": (2e-2, 2e-2)}
QUANTIZED = (1e-1, 1e-1)


def tolerance(precision: str) -> tuple[float, float]:
    return TOLERANCES.get(precision, QUANTIZED)


@dataclass
class Row:
    graph: str
    profile: int
    precision: str
    output: str
    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    passed: bool


def compare(graph: str, profile: int, precision: str, reference: dict[str, np.ndarray],
            candidate: dict[str, np.ndarray]) -> list[Row]:
    """The candidate's outputs against the reference's, through Polygraphy's comparator."""
    from polygraphy import comparator
    from polygraphy.logger import G_LOGGER

    atol, rtol = tolerance(precision)
    iteration = comparator.IterationResult
    results = comparator.RunResults([("onnxruntime", [iteration(reference, runner_name="onnxruntime")]),
                                     ("engine", [iteration(candidate, runner_name="engine")])])
    simple = getattr(comparator, "SimpleCompareFunc", None) or comparator.CompareFunc.simple  # newer Polygraphy's name
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        accuracy = comparator.Comparator.compare_accuracy(
            results, compare_func=simple(atol=atol, rtol=rtol, check_error_stat="elemwise"))
    if not isinstance(accuracy, dict):  # newer Polygraphy: a list, one per compare function
        accuracy = accuracy[0]
    (outputs,) = next(iter(accuracy.values()))
    return [Row(graph, profile, precision, name, float(r.max_absdiff), float(r.max_reldiff), atol, rtol, bool(r))
            for name, r in outputs.items()]


def verify(artifacts: str | Path, engines: str | Path, candidate: Backend | None = None) -> list[Row]:
    """Rows for every output of every engine at every profile. `candidate` replaces the TensorRT backend
    (tests inject another backend to check the comparison; that runs no engine)."""
    from covo_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend

    artifacts = Path(artifacts)
    manifest = Manifest.load(artifacts)
    index = EnginesManifest.load(engines)
    if candidate is None:
        from covo_edge.runtime.backends.tensorrt import TensorRTBackend

        candidate = TensorRTBackend(artifacts, manifest, Path(engines))
    reference = OnnxRuntimeBackend(artifacts, manifest, "cpu")
    rng = np.random.default_rng(0)
    rows = []
    for graph, entry in index.engines.items():
        spec = replace(manifest.graphs[graph], profiles=entry.recipe.profiles)
        names = [t.name for t in spec.outputs]
        for k in range(len(spec.profiles)):
            feeds, _ = profile_feeds(spec, rng, k, corner=1)
            rows += compare(graph, k, entry.recipe.precision, reference.run(graph, feeds, host=names),
                            candidate.run(graph, feeds, host=names))
    return rows


def table(rows: list[Row]) -> str:
    head = f"{'graph':<19} {'profile':>7} {'precision':<9} {'output':<24} {'max abs':>9} {'max rel':>9} {'atol/rtol':>15}  result"
    lines = [head]
    for r in rows:
        lines.append(f"{r.graph:<19} {r.profile:>7} {r.precision:<9.9} {r.output:<24.24} {r.max_abs:>9.2e} "
                     f"{r.max_rel:>9.2e} {f'{r.atol:g}/{r.rtol:g}':>15}  {'ok' if r.passed else 'FAIL'}")
    return "\n".join(lines)


def run_verify(artifacts: str, engines: str, candidate: Backend | None = None) -> int:
    rows = verify(artifacts, engines, candidate)
    print(table(rows))
    failed = sorted({r.graph for r in rows if not r.passed})
    print(f"{engines}: " + (f"{len(failed)} engine(s) differ from ONNX Runtime: {', '.join(failed)}" if failed
                            else f"all {len({r.graph for r in rows})} engines match ONNX Runtime"))
    return 1 if failed else 0
