"""`covo-edge verify`'s comparison: Polygraphy's comparator with a tolerance per precision, a table, exit
status 1 on a failure. Engines cannot run here, so an injected backend stands in for the engine side:
ONNX Runtime itself (must pass) and ONNX Runtime with one output perturbed (must fail). This checks the
comparison, not any engine."""

import numpy as np
import pytest

pytest.importorskip("polygraphy")

from covo_edge.engines.verify import compare, run_verify, tolerance, verify
from covo_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
from covo_edge.runtime.cli import main
from covo_edge.runtime.manifest import Manifest


def test_tolerance_follows_the_precision():
    assert tolerance("float32") < tolerance("float16") < tolerance("int4 weights (block 32, AWQ)")


def test_compare_passes_within_tolerance_and_fails_beyond():
    ref = {"y": np.linspace(-1, 1, 100, dtype=np.float32)}
    near = {"y": ref["y"] + np.float32(5e-4)}
    far = {"y": ref["y"] + np.float32(5e-2)}
    assert compare("g", 0, "float32", ref, near)[0].passed
    (row,) = compare("g", 0, "float32", ref, far)
    assert not row.passed and row.max_abs == pytest.approx(5e-2, rel=1e-3)
    assert compare("g", 0, "float16", ref, far)[0].passed is False
    assert compare("g", 0, "float16", ref, {"y": ref["y"] + np.float32(1e-2)})[0].passed


class _Perturbed(OnnxRuntimeBackend):
    def run(self, graph, feeds, host=()):
        out = super().run(graph, feeds, host)
        if graph == "audio_adapter":
            out["features"] = out["features"] + np.float32(0.1)
        return out


def test_verify_table_and_exit_status(tiny_art, engines_index, capsys):
    folder, _ = engines_index(tiny_art, ["audio_adapter", "backbone"])
    manifest = Manifest.load(tiny_art)
    rows = verify(tiny_art, folder, OnnxRuntimeBackend(tiny_art, manifest))
    assert {(r.graph, r.profile) for r in rows} == {("audio_adapter", 0), ("backbone", 0), ("backbone", 1)}
    assert all(r.passed and r.max_abs == 0 for r in rows) and len(rows) == 1 + 2 * (1 + 4)
    assert run_verify(str(tiny_art), str(folder), _Perturbed(tiny_art, manifest)) == 1
    out = capsys.readouterr().out
    assert "audio_adapter" in out and "FAIL" in out and "1 engine(s) differ from ONNX Runtime: audio_adapter" in out


def test_verify_refuses_without_a_gpu(tiny_art, engines_index, capsys):
    from covo_edge.runtime.backends.cuda import Gpu, probe

    if isinstance(probe(), Gpu):
        pytest.skip("a CUDA GPU is present")
    folder, _ = engines_index(tiny_art, ["vocoder"])
    assert main(["verify", str(tiny_art), "--engines", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("covo-edge verify: the TensorRT backend needs a CUDA GPU") and "\n" not in err
