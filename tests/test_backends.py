"""Backend conformance: the same tests for every backend this machine can run. ONNX Runtime always runs;
the TensorRT backend runs where there is a CUDA GPU and a TensorRT module for it (TensorRT-RTX on compute
capability 8.6/8.9/12.x, classic TensorRT elsewhere), on engines built from the same tiny artifacts, and
is skipped with the reason otherwise. Its turns are held to ONNX Runtime's tokens."""

import importlib.util

import numpy as np
import pytest
from covo_edge.runtime import Assistant, ContextFullError
from covo_edge.runtime.backends.cuda import Gpu, probe
from covo_edge.runtime.check import run_graph
from covo_edge.runtime.engines_manifest import RTX_PORTABLE
from covo_edge.runtime.synthetic import synthetic_utterance


def tensorrt_target() -> str:
    """The engine target this machine runs, or pytest.skip with why none."""
    gpu = probe()
    if not isinstance(gpu, Gpu):
        pytest.skip(f"TensorRT backend not run: no CUDA GPU ({gpu})")
    if importlib.util.find_spec("tensorrt_rtx") and gpu.compute_capability in RTX_PORTABLE:
        return "rtx"
    if importlib.util.find_spec("tensorrt"):
        return "tensorrt"
    pytest.skip(f"TensorRT backend not run: no TensorRT for this {gpu.name} (compute capability "
                f"{gpu.compute_capability}; TensorRT-RTX runs on {', '.join(RTX_PORTABLE)})")


@pytest.fixture(scope="session")
def trt_engines(tiny_art, tmp_path_factory):
    target = tensorrt_target()
    from covo_edge.engines.folder import BuildOptions, build_engines

    out = tmp_path_factory.mktemp("engines") / f"conformance-{target}"
    build_engines(tiny_art, out, BuildOptions(target), progress=False)
    return out


@pytest.fixture(params=["onnxruntime", "tensorrt"])
def load(request, tiny_art):
    kwargs = {"backend": request.param}
    if request.param == "tensorrt":
        kwargs["engines"] = request.getfixturevalue("trt_engines")
    return lambda **more: Assistant.load(tiny_art, **kwargs, **more)


@pytest.fixture(scope="module")
def reference(tiny_art):
    """ONNX Runtime's greedy tokens for two turns of one conversation (text mode)."""
    a = Assistant.load(tiny_art, mode="text")
    return [a.reply(synthetic_utterance(s, 16000, seed=n), 16000, greedy=True, max_new_tokens=8).tokens
            for n, s in enumerate((1.5, 1.0))]


def test_every_graph_gives_the_manifest_shapes(load):
    a = load()
    for name, spec in a.manifest.graphs.items():
        assert run_graph(a.backend, name, spec).startswith("ran ")


def test_turns_match_onnxruntime_with_the_cache_kept_across_them(load, reference):
    a = load(mode="text")
    first = a.reply(synthetic_utterance(1.5, 16000, seed=0), 16000, greedy=True, max_new_tokens=8)
    length = a.context_length
    second = a.reply(synthetic_utterance(1.0, 16000, seed=1), 16000, greedy=True, max_new_tokens=8)
    np.testing.assert_array_equal(first.tokens, reference[0])
    np.testing.assert_array_equal(second.tokens, reference[1])  # only right if the first turn's cache was kept
    assert a.context_length > length + len(second.tokens)


def test_a_full_context_ends_the_reply_then_refuses_the_next_turn(load):
    a = load(mode="text")
    a.manifest.llm.max_context = a.context_length + 60  # a 1 s question's prompt is about 30 tokens
    r = a.reply(synthetic_utterance(1.0), 16000, greedy=True, max_new_tokens=200)
    assert r.finish_reason == "context_full" and a.context_length == a.max_context
    with pytest.raises(ContextFullError, match="reset"):
        a.reply(synthetic_utterance(1.0), 16000, max_new_tokens=2)
