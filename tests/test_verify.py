"""`covo-edge verify`'s comparison: Polygraphy's comparator with a tolerance per precision, a table, exit
status 1 on a failure. Engines cannot run here, so an injected backend stands in for the engine side: the
PyTorch reference's modules (an independent computation of the same graphs: must pass at fp32 tolerance)
and ONNX Runtime with one output perturbed (must fail). This checks the comparison, not any engine."""

import numpy as np
import pytest

from conftest import needs

needs("polygraphy", "engines")

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


class _Reference:
    """The PyTorch reference's adapter, embedding table and vocoder behind the backend interface."""

    device = "cpu"

    def __init__(self, chat):
        self.chat = chat

    def prepare(self, graphs):
        pass

    def run(self, graph, feeds, host=()):
        import torch

        x = {k: torch.from_numpy(np.asarray(v)) for k, v in feeds.items()}
        with torch.no_grad():
            if graph == "audio_adapter":
                return {"features": self.chat.model.audio_adapter(x["hidden"]).numpy()}
            if graph == "embed_tokens":
                return {"inputs_embeds": self.chat.model.llm.get_input_embeddings()(x["input_ids"]).numpy()}
            if graph == "vocoder":
                return {"wav": self.chat.token2wav.wavegan(x["latents"]).numpy()}
        raise KeyError(graph)


GRAPHS = ["audio_adapter", "embed_tokens", "vocoder"]


def test_verify_passes_the_reference_and_fails_a_perturbed_graph(tiny_art, tiny_chat, engines_index, capsys):
    folder, _ = engines_index(tiny_art, GRAPHS)
    manifest = Manifest.load(tiny_art)
    rows = verify(tiny_art, folder, _Reference(tiny_chat))
    assert {r.graph for r in rows} == set(GRAPHS) and all(r.profile == 0 for r in rows)
    assert all(r.passed for r in rows), [r for r in rows if not r.passed]
    assert any(r.max_abs > 0 for r in rows)  # two computations, not one compared with itself
    assert run_verify(str(tiny_art), str(folder), _Perturbed(tiny_art, manifest)) == 1
    out = capsys.readouterr().out
    assert "audio_adapter" in out and "FAIL" in out and "1 engine(s) differ from ONNX Runtime: audio_adapter" in out


def test_verify_refuses_without_a_gpu(tiny_art, engines_index, capsys):
    from covo_edge.runtime.backends.cuda import Gpu, probe

    if isinstance(probe(), Gpu):
        pytest.skip("only without a GPU (a CUDA GPU is present)")
    folder, _ = engines_index(tiny_art, ["vocoder"])
    assert main(["verify", str(tiny_art), "--engines", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("covo-edge verify: the TensorRT backend needs a CUDA GPU") and "\n" not in err
